"""The model store: tiny demucs models saved like a release, loaded by the real code."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gpu.exceptions import ModelHubUnreachableError, ModelLoadError, ModelNotFoundError
from gpu.models import find_model, list_models, load_model, pull_model, warm_model
from tests.models_for_tests import make_tiny_store
from tests.pipeline_helpers import make_config
from watcher.cli.models import add_models_parser, run_models
from watcher.doctor import model_checks


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_store(tmp_path_factory.mktemp("models"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dropgpu")
    add_models_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_store_lists_and_loads_bags_and_single_models(store: Path) -> None:
    from demucs.apply import BagOfModels
    from demucs.htdemucs import HTDemucs

    names = {e.name: e for e in list_models(store)}
    assert {"htdemucs", "tiny_bag", "tiny_6s"} <= set(names)
    assert names["tiny_bag"].kind == "bag" and names["tiny_bag"].signatures == (
        "bbbb0002",
        "cccc0003",
    )
    bag = load_model("tiny_bag", store=store)
    assert isinstance(bag.model, BagOfModels) and len(bag.model.models) == 2
    assert bag.model.weights[0] == [1.0, 0.0, 0.5, 1.0]
    assert bag.sources == ["drums", "bass", "other", "vocals"] and bag.samplerate == 44100
    single = load_model("aaaa0001", store=store)  # a bare signature loads too
    assert isinstance(single.model, HTDemucs)
    assert load_model("tiny_6s", store=store).sources[-2:] == ["guitar", "piano"]


def test_env_var_names_the_store(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPGPU_MODEL_DIR", str(store))
    entry = find_model("htdemucs")
    assert entry is not None and entry.location == "store" and entry.path.parent == store


def test_missing_model_says_which_command_fixes_it(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        load_model("htdemucs_ft", store=tmp_path / "empty")
    message = str(err.value)
    assert "htdemucs_ft" in message and "dropgpu models pull htdemucs_ft" in message
    assert "\n" not in message


def test_corrupt_model_file_is_a_load_error(store: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (th,) = store.glob("aaaa0001-*.th")
    data = th.read_bytes()
    (broken / th.name).write_bytes(data[: len(data) // 2])  # checksum no longer matches
    (broken / "htdemucs.yaml").write_text("models: ['aaaa0001']\n")
    with pytest.raises(ModelLoadError, match="checksum"):
        load_model("htdemucs", store=broken)


def test_warm_model_loads_once_per_name_and_device(store: Path) -> None:
    cache: dict = {}
    first = warm_model(cache, "htdemucs", "cpu", store)
    assert warm_model(cache, "htdemucs", "cpu", store) is first
    assert warm_model(cache, "tiny_6s", "cpu", store) is not first
    assert len(cache) == 2


def test_pull_fails_in_one_line_when_the_hub_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DROPGPU_MODEL_HUB_URL", (tmp_path / "no-mirror").as_uri())
    with pytest.raises(ModelHubUnreachableError) as err:
        pull_model("htdemucs", tmp_path / "store")
    assert "cannot reach the model hub" in str(err.value) and "\n" not in str(err.value)
    assert not any((tmp_path / "store").iterdir())  # nothing half-written
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        pull_model("nope", tmp_path / "store")


def test_pull_refuses_a_file_that_fails_its_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mirror laid out like demucs' download root, serving the wrong bytes.
    mirror = tmp_path / "mirror" / "hybrid_transformer"
    mirror.mkdir(parents=True)
    (mirror / "955717e8-8726e21a.th").write_bytes(b"not the released model")
    monkeypatch.setenv("DROPGPU_MODEL_HUB_URL", (tmp_path / "mirror").as_uri())
    with pytest.raises(ModelLoadError, match="checksum"):
        pull_model("htdemucs", tmp_path / "store")
    assert list((tmp_path / "store").iterdir()) == []


def test_models_cli_list_and_pull(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert run_models(_parser().parse_args(["models", "list", "--dir", str(store)])) == 0
    out = capsys.readouterr().out
    assert "tiny_bag" in out and "htdemucs" in out and str(store) in out
    monkeypatch.setenv("DROPGPU_MODEL_HUB_URL", (tmp_path / "none").as_uri())
    args = _parser().parse_args(["models", "pull", "htdemucs", "--dir", str(tmp_path / "s")])
    assert run_models(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dropgpu models: cannot reach the model hub") and err.count("\n") == 1


def test_doctor_model_checks(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(
        {
            "stems": {"handler": "handlers.stems:StemsHandler"},
            "karaoke": {
                "handler": "handlers.stems:StemsHandler",
                "params": {"model": "tiny_bag", "two_stems": "vocals"},
            },
            "six": {"handler": "handlers.stems:StemsHandler", "params": {"model": "mdx_extra"}},
        }
    )
    monkeypatch.setenv("DROPGPU_MODEL_DIR", str(store))
    checks = {name: (ok, detail) for name, ok, detail in model_checks(config)}
    assert checks["model htdemucs"][0] and checks["model tiny_bag"][0]
    ok, detail = checks["model mdx_extra"]
    assert not ok and "dropgpu models pull mdx_extra" in detail and "six" in detail
