"""The one import rule (docs/architecture.md): a layer never imports a layer above it.

Every module of the product is assigned to exactly one layer; its imports (at
module level or inside functions) may name only its own layer or lower ones.
Only the two composition roots, the CLI and the Modal app, may import everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("infra", "gpu", "handlers", "watcher")

# Lowest first. A module belongs to the layer of the longest prefix that matches it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "infra",
            "infra.errors",
            "infra.text",
            "infra.log",
            "infra.version",
            "infra.hashing",
            "infra.pricing",
        ),
    ),
    ("storage", ("infra.storage", "infra.s3_server")),
    ("gpu", ("gpu",)),
    ("handler api", ("handlers.exceptions", "handlers.protocol")),
    ("media toolkit", ("handlers.media",)),
    # Route plugins live at the root of handlers/: a new one needs no entry here.
    ("handler plugins", ("handlers",)),
    ("registry", ("handlers.registry",)),
    ("contract", ("handlers.contract",)),
    ("job engine", ("handlers.jobs",)),
    ("control plane", ("watcher",)),
    ("local executor", ("watcher.local",)),
    ("composition roots", ("watcher.cli", "infra.deploy")),
]


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return best[1]


def product_modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def imported_modules(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            # "from handlers.jobs import webhooks" imports a module too.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in PACKAGES}


MODULES = product_modules()


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_it(module: str) -> None:
    own = layer_of(module)
    upward = []
    for name in sorted(imported_modules(MODULES[module], module)):
        # "from handlers.jobs import webhooks" also yields "handlers.jobs.webhooks";
        # names that are attributes rather than modules are judged by their module.
        target = name if name in MODULES else name.rpartition(".")[0]
        if target not in MODULES:
            continue
        if layer_of(target) > own:
            upward.append(f"{target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, f"{module} ({LAYERS[own][0]}) imports upward: {', '.join(upward)}"


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a storage module importing the engine is flagged."""
    bad = tmp_path / "bad.py"
    bad.write_text("from handlers.jobs.runner import JobRunner\n")
    found = imported_modules(bad, "infra.storage.bad")
    assert "handlers.jobs.runner" in found
    assert layer_of("handlers.jobs.runner") > layer_of("infra.storage.bad")


# Handlers are pure file-to-file functions (DESIGN §5.2): below the registry nothing
# reaches for the bucket, the engine, the contract or the watcher, although the
# storage layer sits lower in the table.
HANDLER_SIDE = {"handler api", "media toolkit", "handler plugins", "registry"}
NO_BUCKET_IO = ("infra.storage", "infra.s3_server", "handlers.jobs", "handlers.contract", "watcher")


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if LAYERS[layer_of(m)][0] in HANDLER_SIDE)
)
def test_handlers_do_no_bucket_io(module: str) -> None:
    names = imported_modules(MODULES[module], module)
    bad = sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in NO_BUCKET_IO))
    assert not bad, f"{module} imports {bad}: handlers do no bucket I/O"
