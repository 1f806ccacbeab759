"""The demucs model store: find, load, list and pull separation models.

A model is looked up, in order, in:

1. the store folder (env ``DROPGPU_MODEL_DIR``, default ``~/.cache/dropgpu/models``),
   laid out exactly as demucs' ``--repo`` folders: ``<sig>[-<sha256 prefix>].th``
   files (one serialized model each) and ``<name>.yaml`` bag files listing
   signatures. It is read with demucs' own ``LocalRepo``/``BagOnlyRepo``;
2. the HuggingFace cache (``HF_HOME``), as demucs' ``hf.get_hf_model`` fills it,
   read from the cache only (never the network);
3. the torch hub cache (``TORCH_HOME``), as demucs' legacy remote loader fills it.

Loading never touches the network, so a worker is offline once a model is cached.
``pull_model`` is the one function that downloads: it fetches the ``.th`` files
of a named model from demucs' download root into the store folder (checksums
verified), falling back to the HuggingFace hub.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from gpu.exceptions import ModelHubUnreachableError, ModelLoadError, ModelNotFoundError

log = structlog.get_logger(__name__)

ENV_MODEL_DIR = "DROPGPU_MODEL_DIR"
# Override demucs' download root (a mirror, or a file:// folder in tests).
ENV_HUB_URL = "DROPGPU_MODEL_HUB_URL"
DEFAULT_MODEL_DIR = Path("~/.cache/dropgpu/models")
DEFAULT_MODEL = "htdemucs"
_HUB_TIMEOUT_S = 20.0

Location = Literal["store", "hf-cache", "torch-hub-cache"]


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    location: Location
    path: Path  # the yaml bag file or the .th file
    kind: Literal["bag", "single"]
    signatures: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model ready on its device, with the facts a manifest reports."""

    name: str
    model: Any  # demucs BagOfModels or single model, eval mode, on ``device``
    device: str
    entry: ModelEntry

    @property
    def sources(self) -> list[str]:
        return list(self.model.sources)

    @property
    def samplerate(self) -> int:
        return int(self.model.samplerate)

    @property
    def audio_channels(self) -> int:
        return int(self.model.audio_channels)


def model_dir(override: Path | str | None = None) -> Path:
    """The store folder: ``override``, else env ``DROPGPU_MODEL_DIR``, else the default."""
    raw = override or os.environ.get(ENV_MODEL_DIR) or DEFAULT_MODEL_DIR
    return Path(raw).expanduser()


def pull_command(name: str) -> str:
    return f"dropgpu models pull {name}"


# -- finding -------------------------------------------------------------------------


def _store_entries(root: Path) -> dict[str, ModelEntry]:
    if not root.is_dir():
        return {}
    import yaml

    entries: dict[str, ModelEntry] = {}
    for file in sorted(root.iterdir()):
        if file.suffix == ".th":
            sig = file.stem.rsplit("-", 1)[0] if "-" in file.stem else file.stem
            entries[sig] = ModelEntry(sig, "store", file, "single", (sig,))
    for file in sorted(root.iterdir()):
        if file.suffix == ".yaml":
            try:
                sigs = tuple(str(s) for s in yaml.safe_load(file.read_text())["models"])
            except Exception:  # listed, but load_model will say what is wrong
                sigs = ()
            entries[file.stem] = ModelEntry(file.stem, "store", file, "bag", sigs)
    return entries


def _remote_bag(name: str) -> tuple[str, list[str]] | None:
    """(hf repo id, signatures) for a model demucs knows by name."""
    import yaml
    from demucs.pretrained import REMOTE_ROOT

    yaml_file = REMOTE_ROOT / f"{name}.yaml"
    if not yaml_file.is_file():
        return None
    from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name

    sigs = [str(s) for s in yaml.safe_load(yaml_file.read_text())["models"]]
    return f"{DEFAULT_NAMESPACE}/{hf_repo_name(name)}", sigs


def _hf_cached(name: str) -> ModelEntry | None:
    remote = _remote_bag(name)
    if remote is None:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo_id, _ = remote
    bag = try_to_load_from_cache(repo_id, f"{name}.yaml")
    if not isinstance(bag, str):
        return None
    import yaml

    sigs = tuple(str(s) for s in yaml.safe_load(Path(bag).read_text())["models"])
    for sig in sigs:
        if not isinstance(try_to_load_from_cache(repo_id, f"{sig}.safetensors"), str):
            return None
    return ModelEntry(name, "hf-cache", Path(bag), "bag", sigs)


def _remote_urls() -> dict[str, str]:
    from demucs.pretrained import REMOTE_ROOT, ROOT_URL, _parse_remote_files

    urls = _parse_remote_files(REMOTE_ROOT / "files.txt")
    base = os.environ.get(ENV_HUB_URL)
    if base:
        base = base.rstrip("/") + "/"
        urls = {sig: base + url[len(ROOT_URL) :] for sig, url in urls.items()}
    return urls


def _torch_hub_cached(name: str) -> ModelEntry | None:
    remote = _remote_bag(name)
    if remote is None:
        return None
    import torch

    urls = _remote_urls()
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    _, sigs = remote
    paths = [checkpoints / urls[s].rsplit("/", 1)[-1] for s in sigs if s in urls]
    if len(paths) != len(sigs) or not all(p.is_file() for p in paths):
        return None
    from demucs.pretrained import REMOTE_ROOT

    return ModelEntry(name, "torch-hub-cache", REMOTE_ROOT / f"{name}.yaml", "bag", tuple(sigs))


def find_model(name: str, store: Path | str | None = None) -> ModelEntry | None:
    """Where ``name`` can be loaded from without the network, or None."""
    entry = _store_entries(model_dir(store)).get(name)
    return entry or _hf_cached(name) or _torch_hub_cached(name)


def list_models(store: Path | str | None = None) -> list[ModelEntry]:
    """Every model loadable offline: the store folder's, then cached known names."""
    from demucs.pretrained import REMOTE_ROOT

    entries = dict(_store_entries(model_dir(store)))
    for yaml_file in sorted(REMOTE_ROOT.glob("*.yaml")):
        name = yaml_file.stem
        if name not in entries and (found := _hf_cached(name) or _torch_hub_cached(name)):
            entries[name] = found
    return list(entries.values())


def known_remote_names() -> list[str]:
    from demucs.pretrained import REMOTE_ROOT

    return sorted(p.stem for p in REMOTE_ROOT.glob("*.yaml"))


def missing_message(name: str, store: Path | str | None = None) -> str:
    return (
        f"model '{name}' is not in the model store ({model_dir(store)}); run `{pull_command(name)}`"
    )


# -- loading ---------------------------------------------------------------------------


def _load_entry(entry: ModelEntry) -> Any:
    from demucs.apply import BagOfModels
    from demucs.repo import AnyModelRepo, BagOnlyRepo, LocalRepo, ModelLoadingError

    if entry.location == "store":
        root = entry.path.parent
        try:
            model_repo = LocalRepo(root)
            return AnyModelRepo(model_repo, BagOnlyRepo(root, model_repo)).get_model(entry.name)
        except ModelLoadingError as exc:
            raise ModelLoadError(f"model '{entry.name}' in {root}: {exc}") from exc

    import yaml

    bag = yaml.safe_load(entry.path.read_text())
    if entry.location == "hf-cache":
        from demucs.hf import load_safetensors_model
        from huggingface_hub import try_to_load_from_cache

        remote = _remote_bag(entry.name)
        assert remote is not None
        models = [
            load_safetensors_model(str(try_to_load_from_cache(remote[0], f"{sig}.safetensors")))
            for sig in entry.signatures
        ]
    else:
        import torch
        from demucs.repo import check_checksum
        from demucs.states import load_model

        urls = _remote_urls()
        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        models = []
        for sig in entry.signatures:
            path = checkpoints / urls[sig].rsplit("/", 1)[-1]
            try:
                check_checksum(path, path.stem.rsplit("-", 1)[1])
            except ModelLoadingError as exc:
                raise ModelLoadError(str(exc)) from exc
            models.append(load_model(path))
    return BagOfModels(models, bag.get("weights"), bag.get("segment"))


def load_model(name: str, device: str = "cpu", store: Path | str | None = None) -> LoadedModel:
    """Load ``name`` onto ``device``; ModelNotFoundError says which command fetches it."""
    entry = find_model(name, store)
    if entry is None:
        raise ModelNotFoundError(missing_message(name, store))
    try:
        model = _load_entry(entry)
    except (ModelLoadError, ModelNotFoundError):
        raise
    except Exception as exc:  # truncated/corrupt files: say which model and where
        raise ModelLoadError(
            f"model '{name}' ({entry.path}) could not be loaded: {type(exc).__name__}: {exc}; "
            f"delete it and run `{pull_command(name)}`"
        ) from exc
    model.to(device)
    model.eval()
    log.info("model_loaded", model=name, location=entry.location, device=device)
    return LoadedModel(name=name, model=model, device=device, entry=entry)


_LOAD_LOCK = threading.Lock()


def model_cache_key(name: str, device: str, store: Path | str | None = None) -> str:
    return f"demucs-model:{name}:{device}:{model_dir(store)}"


def warm_model(
    cache: dict[str, Any], name: str, device: str, store: Path | str | None = None
) -> LoadedModel:
    """The loaded model from the per-worker ``cache``, loading it on first use."""
    key = model_cache_key(name, device, store)
    with _LOAD_LOCK:  # two jobs in one worker must not load the same model twice
        loaded = cache.get(key)
        if loaded is None:
            loaded = load_model(name, device, store)
            cache[key] = loaded
        else:
            log.debug("model_warm", model=name, device=device)
        return loaded


# -- pulling -------------------------------------------------------------------------------


def pull_model(name: str, dest: Path | str | None = None) -> list[Path]:
    """Download ``name`` into the store folder (demucs' layout); returns the files written.

    Uses demucs' own list of released files and torch.hub's checksummed download.
    When that fails, tries the HuggingFace hub (which fills the HF cache the store
    also reads). Raises ModelHubUnreachableError with one readable line.
    """
    target = model_dir(dest)
    remote = _remote_bag(name)
    urls = _remote_urls()
    if remote is None and name not in urls:
        known = ", ".join(known_remote_names())
        raise ModelNotFoundError(f"unknown model '{name}': demucs releases {known}")
    sigs = remote[1] if remote else [name]
    try:
        written = _pull_th_files(name, sigs, urls, target)
    except ModelHubUnreachableError as exc:
        # Only an HTTP refusal (moved/removed file) is worth trying the HF hub for;
        # no network at all would just make huggingface_hub retry for half a minute.
        if remote is None or os.environ.get(ENV_HUB_URL) or not _is_http_error(exc.__cause__):
            raise
        try:
            _pull_hf(name, remote[0], remote[1])
        except Exception as hf_exc:
            raise ModelHubUnreachableError(
                f"{exc}; HuggingFace hub: {_first_line(hf_exc)}"
            ) from hf_exc
        return []
    log.info("model_pulled", model=name, dir=str(target), files=[p.name for p in written])
    return written


def _pull_th_files(name: str, sigs: list[str], urls: dict[str, str], target: Path) -> list[Path]:
    from torch.hub import download_url_to_file

    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_HUB_TIMEOUT_S)  # an offline machine must not hang here
    try:
        for sig in sigs:
            url = urls[sig]
            file_name = url.rsplit("/", 1)[-1]
            dest = target / file_name
            if not dest.is_file():
                checksum = Path(file_name).stem.rsplit("-", 1)[-1]
                part = target / f".{file_name}.part"
                try:
                    download_url_to_file(url, str(part), hash_prefix=checksum, progress=False)
                except Exception as exc:
                    part.unlink(missing_ok=True)
                    if "hash" in str(exc):  # torch.hub's checksum check
                        raise ModelLoadError(
                            f"{file_name} from {url} does not match its checksum; "
                            "nothing was written"
                        ) from exc
                    host = url.split("/")[2] if "://" in url else url
                    raise ModelHubUnreachableError(
                        f"cannot reach the model hub for '{name}' ({host or url}): "
                        f"{_first_line(exc)}"
                    ) from exc
                part.replace(dest)  # only whole, verified files get the real name
            written.append(dest)
    finally:
        socket.setdefaulttimeout(old_timeout)
    from demucs.pretrained import REMOTE_ROOT

    bag = REMOTE_ROOT / f"{name}.yaml"
    if bag.is_file():
        shutil.copyfile(bag, target / bag.name)
        written.append(target / bag.name)
    return written


def _pull_hf(name: str, repo_id: str, sigs: list[str]) -> None:
    from huggingface_hub import hf_hub_download

    hf_hub_download(repo_id, f"{name}.yaml", etag_timeout=_HUB_TIMEOUT_S)
    for sig in sigs:
        hf_hub_download(repo_id, f"{sig}.safetensors", etag_timeout=_HUB_TIMEOUT_S)


def _is_http_error(exc: BaseException | None) -> bool:
    from urllib.error import HTTPError

    return isinstance(exc, HTTPError)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
