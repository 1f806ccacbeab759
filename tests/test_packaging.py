"""The wheel matches the code: every package, every data file it loads, every import declared.

Reads pyproject.toml and the source tree only; no build, no network.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
PRODUCT = ("handlers", "watcher", "gpu", "infra")
# Import names whose distribution is named differently.
DISTRIBUTION_OF = {
    "yaml": "pyyaml",
    "imageio_ffmpeg": "imageio-ffmpeg",
    "ffmpeg": "ffmpeg-python",
    "dlib": "dlib-bin",
}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _product_files(pattern: str) -> list[Path]:
    return sorted(
        path
        for package in PRODUCT
        for path in (REPO / package).rglob(pattern)
        if "__pycache__" not in path.parts
    )


def _package_dirs() -> set[str]:
    return {".".join(init.parent.relative_to(REPO).parts) for init in _product_files("__init__.py")}


def _owning_package(path: Path) -> str:
    """The package whose package-data covers ``path``: its nearest folder with __init__.py."""
    folder = path.parent
    while not (folder / "__init__.py").is_file():
        folder = folder.parent
    return ".".join(folder.relative_to(REPO).parts)


def _shipped_data(package: str) -> set[Path]:
    """What package-data ships for ``package``: globs relative to its folder, as setuptools."""
    folder = REPO.joinpath(*package.split("."))
    patterns = [
        *SETUPTOOLS["package-data"].get(package, []),
        *SETUPTOOLS["package-data"].get("*", []),
    ]
    return {match for pattern in patterns for match in folder.glob(pattern) if match.is_file()}


def test_find_config_discovers_every_package() -> None:
    find = SETUPTOOLS["packages"]["find"]
    found = set(
        find_packages(where=str(REPO), include=find["include"], exclude=find.get("exclude", ()))
    )
    assert found == _package_dirs()
    assert not {p for p in found if p.split(".")[0] not in PRODUCT}, "tests or bench would ship"


def test_every_folder_with_python_code_is_a_package() -> None:
    # A folder without __init__.py is a namespace package that the find config skips.
    missing = {
        str(path.parent.relative_to(REPO))
        for path in _product_files("*.py")
        if not (path.parent / "__init__.py").is_file()
    }
    assert not missing


def test_every_data_file_in_a_package_ships() -> None:
    data = [p for p in _product_files("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert data, "the scan found no data files at all"
    unshipped = [
        str(path.relative_to(REPO))
        for path in data
        if path not in _shipped_data(_owning_package(path))
    ]
    assert not unshipped


def _constant_strings(tree: ast.Module) -> dict[str, str]:
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _resource_path(node: ast.expr, constants: dict[str, str]) -> tuple[str, list[str]] | None:
    """``resources.files("pkg") / "a" / NAME`` or ``.joinpath("a/b")``: (package, parts)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        inner = _resource_path(node.left, constants)
        return inner and (inner[0], [*inner[1], _string(node.right, constants)])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr == "joinpath":
            inner = _resource_path(node.func.value, constants)
            return inner and (inner[0], [*inner[1], *(_string(a, constants) for a in node.args)])
        if node.func.attr == "files" and node.args:
            return _string(node.args[0], constants), []
    return None


def _string(node: ast.expr, constants: dict[str, str]) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    raise AssertionError(f"resource path part {ast.unparse(node)!r} is not a string constant")


def _loaded_resources() -> list[tuple[str, Path]]:
    """Every importlib.resources file the product code opens, as (package, path)."""
    found: list[tuple[str, Path]] = []
    for source in _product_files("*.py"):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        constants = _constant_strings(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.BinOp | ast.Call):
                continue
            resolved = _resource_path(node, constants)
            if resolved and resolved[1]:
                package, parts = resolved
                found.append((package, REPO.joinpath(*package.split("."), *parts)))
    # An expression nested in a longer one is a prefix of it: keep the longest.
    return [
        (pkg, path)
        for pkg, path in found
        if not any(other != path and path in other.parents for _, other in found)
    ]


def test_every_resource_the_code_loads_ships() -> None:
    loaded = _loaded_resources()
    names = {path.relative_to(REPO).as_posix() for _, path in loaded}
    # The scan itself: the two loads the code is known to make are found.
    assert {
        "handlers/contract/schema/manifest-v1.schema.json",
        "handlers/media/assets/DejaVuSans-Bold.ttf",
    } <= names
    for package, path in loaded:
        assert path.is_file(), path
        assert path in _shipped_data(package), f"{path.relative_to(REPO)} matches no package-data"


def _declared() -> set[str]:
    names = set()
    for requirement in PYPROJECT["project"]["dependencies"]:
        m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert m, requirement
        names.add(_normalize(m.group(0)))
    return names


def _third_party_imports() -> dict[str, list[str]]:
    """Top-level import name -> files importing it, module level or inside functions."""
    out: dict[str, list[str]] = {}
    for source in _product_files("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top not in sys.stdlib_module_names and top not in PRODUCT:
                    out.setdefault(top, []).append(str(source.relative_to(REPO)))
    return out


def test_every_third_party_import_is_declared() -> None:
    imports = _third_party_imports()
    assert {"aiohttp", "yaml", "structlog"} <= set(imports), "the scan missed known imports"
    undeclared = {
        name: files[0]
        for name, files in imports.items()
        if _normalize(DISTRIBUTION_OF.get(name, name)) not in _declared()
    }
    assert not undeclared, f"imported but not in [project.dependencies]: {undeclared}"


@pytest.mark.parametrize("module", sorted(DISTRIBUTION_OF))
def test_distribution_names_match_the_installed_metadata(module: str) -> None:
    providers = metadata.packages_distributions().get(module)
    if not providers:
        pytest.skip(f"{module} is not installed here")
    assert _normalize(DISTRIBUTION_OF[module]) in {_normalize(p) for p in providers}
