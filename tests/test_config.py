from __future__ import annotations

from pathlib import Path

import pytest

from handlers.protocol import HandlerParams
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


def _route_url(url: str) -> str:
    return f'[routes.x]\nhandler = "vertical"\nnotify_url = "{url}"\n'


CONSTRUCTED: list[str] = []


class NotAHandler:
    """Has some handler members, but no Params: its constructor must never run."""

    name = "not-a-handler"
    version = "1"
    extensions = frozenset({".mp4"})

    def __init__(self) -> None:
        CONSTRUCTED.append(type(self).__name__)

    def run(self, ctx: object) -> None: ...


class NeedsArguments(NotAHandler):
    Params = HandlerParams

    def __init__(self, required: str) -> None:
        super().__init__()


class BadExtensions(NeedsArguments):
    extensions = ".mp4"  # type: ignore[assignment]


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
        # A class that is not a handler: refused by the protocol check, never instantiated.
        ('[routes.x]\nhandler = "subprocess:Popen"\n', "does not implement the handler protocol"),
        ('[routes.x]\nhandler = "os:system"\n', "routes.x: handler: 'os:system' does not"),
        ('[routes.x]\nhandler = "tests.test_config:NotAHandler"\n', "has no 'Params'"),
        ('[routes.x]\nhandler = "tests.test_config:NeedsArguments"\n', "cannot create handler"),
        ('[routes.x]\nhandler = "tests.test_config:BadExtensions"\n', "'extensions' must be"),
        # A webhook URL no request can reach is refused at load, not lost at delivery.
        (_route_url("http://127.0.0.1:99999/x"), "notify_url: Value error, its port is out of"),
        (_route_url("http://127.0.0.1:0/x"), "its port is out of range (1-65535)"),
        (_route_url("http://hooks.example:80a/x?token=s3cret"), "its port is not a number"),
        (_route_url("ftp://hooks.example/x"), "must start with http:// or https://"),
        (_route_url("https:///x"), "has no host"),
        (_route_url("https://hooks.example/a b"), "must not contain spaces"),
        (_route_url("https://hooks.example/\\u0007"), "control characters"),
        (_route_url("https://[::1/x"), "is not a valid URL"),
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
    assert "s3cret" not in message  # a webhook URL's token never reaches the message
    assert CONSTRUCTED == []  # refused before instantiating: no constructor ran


def test_a_good_webhook_url_is_kept_exactly() -> None:
    for url in (
        "https://hooks.example/x?token=abc",
        "http://127.0.0.1:8080/hook",
        "http://[::1]:1/",
    ):
        route = {"handler": "vertical", "notify_url": url}
        assert build_config({"routes": {"x": route}}, source="t").routes["x"].notify_url == url


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
        ("faces", "faces", {}),
        ("render", "render", {}),
    ]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = [line.split("|")[1].strip(" `") for line in readme.splitlines() if line[:3] == "| `"]
    assert table[: len(config.routes)] == list(config.routes)
