"""Conventions the whole product keeps (docs/architecture.md): checked, so they cannot drift.

- log event names are snake_case;
- every exception class dropgpu defines derives from the one root, DropgpuError;
- return types are annotations, not ``# -> ...`` comments.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

from infra.errors import DropgpuError
from tests.test_architecture import MODULES

LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
LOGGER_NAMES = {"log", "logger", "ctx.log"}


def _logger_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return _logger_name(node.func.value)  # log.bind(...).info(...)
    return None


def log_events(source: str) -> list[tuple[int, str]]:
    """(line, event) of every ``log.<level>("event", ...)`` call with a literal event."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in LOG_METHODS or _logger_name(node.func.value) not in LOGGER_NAMES:
            continue
        first = node.args[0] if node.args else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            out.append((node.lineno, first.value))
    return out


@pytest.mark.parametrize("module", sorted(MODULES))
def test_log_event_names_are_snake_case(module: str) -> None:
    events = log_events(MODULES[module].read_text(encoding="utf-8"))
    bad = [f"line {line}: {event!r}" for line, event in events if not SNAKE.fullmatch(event)]
    assert not bad, f"{module}: {bad}"


def test_the_event_check_sees_log_calls() -> None:
    src = 'log.info("job started")\nctx.log.bind(a=1).warning("ok_name")\nprint("x y")\n'
    assert log_events(src) == [(1, "job started"), (2, "ok_name")]


def _defined_exceptions(module_name: str) -> list[type[BaseException]]:
    module = importlib.import_module(module_name)
    return [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == module_name
    ]


# Importing these has effects (the Modal app is built; `python -m` runs the CLI);
# neither defines an exception (checked from the source below).
NOT_IMPORTED = {"infra.deploy.modal_app", "watcher.cli.__main__"}
IMPORTABLE = sorted(m for m in MODULES if m not in NOT_IMPORTED)


@pytest.mark.parametrize("module", IMPORTABLE)
def test_every_exception_derives_from_the_one_root(module: str) -> None:
    strays = [
        cls.__name__ for cls in _defined_exceptions(module) if not issubclass(cls, DropgpuError)
    ]
    # Private control-flow signals never leave their module.
    strays = [name for name in strays if not name.startswith("_")]
    assert not strays, f"{module} defines exceptions outside DropgpuError: {strays}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_comment_return_annotations(module: str) -> None:
    lines = MODULES[module].read_text(encoding="utf-8").splitlines()
    bad = [f"line {n}" for n, line in enumerate(lines, 1) if re.search(r"\)\s*:\s*#\s*->", line)]
    assert not bad, f"{module}: use a real return annotation at {bad}"


@pytest.mark.parametrize("module", sorted(NOT_IMPORTED))
def test_modules_not_imported_define_no_exceptions(module: str) -> None:
    tree = ast.parse(Path(MODULES[module]).read_text(encoding="utf-8"))
    bases = [
        ast.unparse(b)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for b in node.bases
    ]
    assert not [b for b in bases if b.endswith(("Error", "Exception"))], bases
