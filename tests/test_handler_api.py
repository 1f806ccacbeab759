"""The handler API: self-description, the one-line registration, and docs/handlers.md.

The example handler of the guide (docs/examples/loudness.py) runs end to end:
a dropgpu.toml route names it as "module:Attr", a real WAV goes into a folder
bucket, and a tick + run gives a schema-valid manifest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from handlers.protocol import (
    HandlerContext,
    HandlerInfo,
    HandlerParams,
    HandlerResult,
    OutputFile,
    describe,
)
from handlers.registry import BUILTIN_HANDLERS, get_handler, handler_info, known_handler_names
from infra.deploy.settings import deploy_settings
from infra.storage.local import LocalFolderBucket
from tests.handlers_for_tests import CountingHandler
from tests.media import make_audio, make_text_as_media, make_video
from tests.pipeline_helpers import REPO, make_config, put_file, read_manifest, run, tick_and_run
from tests.test_architecture import imported_modules
from watcher.config import build_config, builtin_routes, load_config
from watcher.doctor import model_checks
from watcher.exceptions import ConfigError

EXAMPLE = REPO / "docs/examples/loudness.py"
EXAMPLE_REF = "docs.examples.loudness:LoudnessHandler"
TAGGER_REF = "tests.test_handler_api:TaggerHandler"


class TaggerParams(HandlerParams):
    model: str = "tagger-base-test"


class TaggerHandler:
    """A would-be built-in that needs a model, a torch image and the audio GPU."""

    name: ClassVar[str] = "tagger"
    version: ClassVar[str] = "0.1.0"
    Params: ClassVar[type[HandlerParams]] = TaggerParams
    extensions: ClassVar[frozenset[str]] = frozenset({".wav"})
    modal_image: ClassVar[str] = "torch"
    gpu_kind: ClassVar[str] = "audio"
    default_routes: ClassVar[dict[str, dict[str, Any]]] = {
        "tags": {},
        "tags-fast": {"model": "tagger-small-test"},
    }

    def required_models(self, params: HandlerParams) -> list[str]:
        assert isinstance(params, TaggerParams)
        return [params.model]

    def run(self, ctx: HandlerContext) -> HandlerResult:
        out = ctx.output_dir / "tags.json"
        out.write_text("[]")
        return HandlerResult([OutputFile("tags.json", out, "tags", "application/json")])


class BadImageHandler(TaggerHandler):
    modal_image: ClassVar[str] = "cuda"


class BrokenModelsHandler(TaggerHandler):
    def required_models(self, params: HandlerParams) -> list[str]:
        raise RuntimeError("model table not loaded")


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    # get_handler caches by name; a name a test registers must not outlive the test.
    get_handler.cache_clear()
    yield
    get_handler.cache_clear()


# -- self-description --------------------------------------------------------------------


def test_a_minimal_custom_handler_gets_the_defaults() -> None:
    # tests/handlers_for_tests.py declares only the required members.
    assert describe(CountingHandler()) == HandlerInfo()
    info = HandlerInfo()
    assert (info.modal_image, info.gpu_kind, dict(info.default_routes)) == ("torch", "video", {})
    assert info.required_models(HandlerParams()) == []


def test_built_in_handlers_declare_image_gpu_and_models() -> None:
    declared = {
        name: (handler_info(name).modal_image, handler_info(name).gpu_kind)
        for name in BUILTIN_HANDLERS
    }
    assert declared == {
        "stems": ("torch", "audio"),
        "vertical": ("ffmpeg", "video"),
        "proxy": ("ffmpeg", "video"),
        "frames": ("ffmpeg", "video"),
        "highlights": ("ffmpeg", "video"),
        "faces": ("torch", "video"),
        "render": ("ffmpeg", "video"),
    }
    stems = get_handler("stems")
    assert handler_info("stems").required_models(stems.Params(model="htdemucs_ft")) == [
        "htdemucs_ft"
    ]
    assert handler_info("vertical").required_models(get_handler("vertical").Params()) == []
    for name in BUILTIN_HANDLERS:
        assert handler_info(name).default_routes, f"{name} declares no default route"


def test_a_bad_self_description_is_a_one_line_config_error() -> None:
    routes = {"x": {"handler": "tests.test_handler_api:BadImageHandler", "params": {}}}
    with pytest.raises(ConfigError) as err:
        build_config({"routes": routes}, source="dropgpu.toml")
    message = str(err.value)
    assert message.startswith("dropgpu.toml: routes.x: handler: ")
    assert "modal_image must be one of ('ffmpeg', 'torch'), not 'cuda'" in message
    assert "\n" not in message


def test_a_custom_handler_declaration_reaches_modal_settings_and_doctor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DROPGPU_MODEL_DIR", str(tmp_path / "empty-store"))
    config = make_config(
        {
            "tag": {"handler": TAGGER_REF, "params": {"model": "tagger-xl-test"}},
            "loud": {"handler": EXAMPLE_REF},
            "odd": {"handler": "tests.test_handler_api:BrokenModelsHandler", "params": {}},
        }
    )
    workers = deploy_settings(config).workers
    assert (workers["tag"].image, workers["tag"].gpu) == ("torch", "A10G")
    assert (workers["loud"].image, workers["loud"].gpu) == ("ffmpeg", "L4")
    checks = {name: (ok, detail) for name, ok, detail in model_checks(config)}
    ok, detail = checks["model tagger-xl-test"]
    assert not ok and "dropgpu models pull tagger-xl-test" in detail and "(routes tag)" in detail
    ok, detail = checks["models of route odd"]
    assert not ok and "model table not loaded" in detail


def test_builtin_handler_is_one_module_and_one_registry_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = list(builtin_routes())
    monkeypatch.setitem(BUILTIN_HANDLERS, "tagger", TAGGER_REF)  # the one line
    monkeypatch.setenv("DROPGPU_MODEL_DIR", str(tmp_path / "empty-store"))

    assert "tagger" in known_handler_names()
    routes = builtin_routes()
    assert list(routes) == [*before, "tags", "tags-fast"]
    assert routes["tags"] == {"handler": "tagger"}
    assert routes["tags-fast"] == {"handler": "tagger", "params": {"model": "tagger-small-test"}}

    config = build_config({}, source="built-in defaults")
    assert config.routes["tags"].validated_params().model == "tagger-base-test"
    assert config.routes["tags"].accepted_extensions() == frozenset({".wav"})
    workers = deploy_settings(config).workers
    assert (workers["tags"].image, workers["tags"].gpu) == ("torch", "A10G")
    assert (workers["vertical"].image, workers["vertical"].gpu) == ("ffmpeg", "L4")
    checks = {name: detail for name, _, detail in model_checks(config)}
    assert "(routes tags)" in checks["model tagger-base-test"]
    assert "(routes tags-fast)" in checks["model tagger-small-test"]
    assert "(routes stems, karaoke)" in checks["model htdemucs"]

    # A user's dropgpu.toml overrides the new default route like any other.
    config = build_config({"routes": {"tags": {"params": {"model": "mine"}}}}, source="t")
    assert config.routes["tags"].validated_params().model == "mine"


def test_two_built_ins_declaring_one_route_name_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(BUILTIN_HANDLERS, "tagger", TAGGER_REF)
    monkeypatch.setattr(TaggerHandler, "default_routes", {"proxy": {}})
    with pytest.raises(ConfigError, match="'proxy' and 'tagger' both declare the default route"):
        builtin_routes()


# -- what a handler may import ------------------------------------------------------------

# The runner owns every byte that crosses the bucket: no handler reaches for these.
FORBIDDEN = (
    "infra.storage",
    "infra.deploy",
    "handlers.jobs",
    "handlers.contract",
    "handlers.registry",
    "watcher",
)
EXAMPLE_MAY_IMPORT = ("handlers.protocol", "handlers.exceptions", "handlers.media", "gpu")


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("name", sorted(BUILTIN_HANDLERS))
def test_built_in_handlers_import_neither_bucket_nor_engine(name: str) -> None:
    module = BUILTIN_HANDLERS[name].partition(":")[0]
    path = REPO / (module.replace(".", "/") + ".py")
    bad = [n for n in imported_modules(path, module) if _under(n, FORBIDDEN)]
    assert not bad, f"{module} imports {bad}"


def test_the_example_imports_only_the_handler_api_toolkit_and_gpu() -> None:
    names = imported_modules(EXAMPLE, "docs.examples.loudness")
    assert names and all(_under(n, EXAMPLE_MAY_IMPORT) for n in names), sorted(names)
    assert not _under("infra.storage.bucket", EXAMPLE_MAY_IMPORT)  # the check can fail


# -- docs/handlers.md and its example, end to end -----------------------------------------


def test_the_guide_shows_the_example_verbatim() -> None:
    guide = (REPO / "docs/handlers.md").read_text()
    assert f"```python\n{EXAMPLE.read_text()}```\n" in guide
    assert f'handler = "{EXAMPLE_REF}"' in guide
    assert "[handlers.md](handlers.md)" in (REPO / "docs/routes.md").read_text()


def test_the_example_runs_end_to_end_from_a_dropgpu_toml(tmp_path: Path) -> None:
    toml = tmp_path / "dropgpu.toml"
    toml.write_text(
        f"""
[watch]
lease_ttl_seconds = 5
backoff_base_seconds = 0
backoff_max_seconds = 0

[routes.loudness]
handler = "{EXAMPLE_REF}"
params = {{ target_lufs = -16 }}
settle_seconds = 0
max_attempts = 1
"""
    )
    config = load_config(toml)
    assert config.routes["loudness"].accepted_extensions() >= {".wav", ".mp4"}
    media = tmp_path / "media"
    media.mkdir()
    tone = make_audio(media / "ep1.wav", 2)
    silent = make_video(media / "silent.mp4", 1, size=(160, 90), audio=False)
    text = make_text_as_media(media / "notes.mp3")
    root = tmp_path / "bucket"
    (root / "inputs").mkdir(parents=True)

    async def scenario() -> dict[str, dict[str, Any]]:
        bucket = LocalFolderBucket(root)
        for path in (tone, silent, text):
            await put_file(bucket, f"inputs/loudness/show/{path.name}", path)
        _, outcomes = await tick_and_run(bucket, config, tmp_path)
        assert sorted(o.status for _, o in outcomes) == ["failed", "failed", "succeeded"]
        manifests = {
            p.name: await read_manifest(bucket, f"outputs/loudness/show/{p.name}/manifest.json")
            for p in (tone, silent, text)
        }
        (out,) = manifests["ep1.wav"]["outputs"]  # outputs/loudness/show/ep1.wav/<version>/...
        assert out["key"].startswith("outputs/loudness/show/ep1.wav/")
        assert out["key"].endswith("/loudness.json")
        report = await bucket.get_bytes(out["key"])
        manifests["ep1.wav"]["_report"] = json.loads(report)
        return manifests

    manifests = run(scenario())
    ok = manifests["ep1.wav"]
    assert ok["status"] == "succeeded"
    assert ok["handler"] == {"name": "loudness", "version": "1.0.0"}
    assert ok["params"]["target_lufs"] == -16
    assert [(o["role"], o["content_type"]) for o in ok["outputs"]] == [
        ("loudness", "application/json")
    ]
    assert ok["input"]["duration_s"] == pytest.approx(2.0, abs=0.05)
    assert ok["input"]["audio_codec"] == "pcm_s16le"
    result = ok["result"]
    assert result == ok["_report"]
    # ffmpeg's sine source is 1/8 full scale: -18.1 dBFS peak, about -22 LUFS.
    assert result["sample_peak_dbfs"] == pytest.approx(-18.1, abs=0.3)
    assert -24 < result["integrated_lufs"] < -20
    assert result["gain_db"] == pytest.approx(-16 - result["integrated_lufs"], abs=0.01)

    silent_error = manifests["silent.mp4"]["error"]
    assert silent_error == {
        "kind": "input",
        "message": "no audio stream: the loudness route needs a file with audio (got video only)",
    }
    assert manifests["notes.mp3"]["error"]["kind"] == "input"
