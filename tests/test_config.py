from __future__ import annotations

from pathlib import Path

import pytest

from watcher.config import build_config, load_config
from watcher.exceptions import ConfigError


def test_defaults_include_vertical() -> None:
    config = (
        load_config(None) if not Path("dropgpu.toml").exists() else build_config({}, source="x")
    )
    assert "vertical" in config.routes
    route = config.routes["vertical"]
    assert route.prefix == "inputs/vertical/"
    assert ".mp4" in route.accepted_extensions()


def test_toml_overrides_and_adds(tmp_path: Path) -> None:
    cfg = tmp_path / "dropgpu.toml"
    cfg.write_text(
        """
[watch]
lease_ttl_seconds = 30

[routes.vertical]
params = { fps = 25 }
settle_seconds = 0

[routes.shorts]
handler = "vertical"
params = { width = 720, height = 1280 }
extensions = ["mp4", ".MOV"]
"""
    )
    config = load_config(cfg)
    assert config.watch.lease_ttl_seconds == 30
    assert config.routes["vertical"].params == {"fps": 25}
    assert config.routes["vertical"].settle_seconds == 0
    assert config.routes["shorts"].extensions == (".mp4", ".mov")
    assert config.routes["shorts"].validated_params().width == 720


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[routes.x]\nhandler = "nope"\n', "routes.x: handler"),
        ('[routes."Bad/Name"]\nhandler = "vertical"\n', "routes.Bad/Name: name"),
        ('[routes.vertical]\nparams = { fps = "fast" }\n', "routes.vertical.params: fps"),
        ("[routes.vertical]\nparams = { bogus = 1 }\n", "routes.vertical.params: bogus"),
        ("[routes.vertical]\nmax_attempts = 0\n", "routes.vertical: max_attempts"),
        ("[watch]\nlease_ttl_seconds = -1\n", "watch: lease_ttl_seconds"),
        ("[wat]\n", "unknown section 'wat'"),
        ("[routes.y]\nparams = {}\n", "routes.y: handler: missing"),
        ("not toml = = =", "invalid TOML"),
    ],
)
def test_invalid_config_is_one_line_naming_the_field(
    tmp_path: Path, toml: str, needle: str
) -> None:
    cfg = tmp_path / "dropgpu.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_builtin_routes_order_and_defaults() -> None:
    # Declared by the handlers (default_routes), in this order, as the README lists them.
    config = build_config({}, source="built-in defaults")
    assert [(r.name, r.handler, r.params) for r in config.routes.values()] == [
        ("stems", "stems", {}),
        ("karaoke", "stems", {"two_stems": "vocals"}),
        ("vertical", "vertical", {}),
        ("proxy", "proxy", {}),
        ("frames", "frames", {}),
        ("highlights", "highlights", {}),
    ]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = [line.split("|")[1].strip(" `") for line in readme.splitlines() if line[:3] == "| `"]
    assert table[: len(config.routes)] == list(config.routes)
