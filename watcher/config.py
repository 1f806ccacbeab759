"""Routes and watcher settings: built-in defaults, overridden by dropgpu.toml.

```toml
[watch]
lease_ttl_seconds = 120

[routes.vertical]            # override a built-in route
params = { fps = 25 }

[routes.shorts]              # add a route: inputs/shorts/ -> vertical handler
handler = "vertical"
params = { width = 720, height = 1280 }
```
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from handlers.exceptions import HandlerConfigError
from handlers.protocol import HandlerParams, ModalImage
from handlers.registry import BUILTIN_HANDLERS, get_handler, handler_info
from infra.pricing import PriceTable, parse_gpu
from watcher.exceptions import ConfigError

ROUTE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_CONFIG_FILE = "dropgpu.toml"


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    handler: str
    params: dict[str, Any] = Field(default_factory=dict)
    # None means "the handler's own default extensions".
    extensions: tuple[str, ...] | None = None
    settle_seconds: float = Field(default=10.0, ge=0, le=86_400)
    max_attempts: int = Field(default=3, ge=1, le=100)
    timeout_seconds: float = Field(default=3_600.0, gt=0, le=86_400)
    enabled: bool = True
    # Job files (DESIGN §10): how long a job waits for a source not uploaded yet, and
    # the key prefixes its sources may come from (never _dropgpu/).
    sources_wait_seconds: float = Field(default=900.0, ge=0, le=7 * 86_400)
    source_prefixes: tuple[str, ...] = ("inputs/", "sources/", "outputs/")
    # Optional webhook: POST the manifest here when a job of this route commits.
    notify_url: str | None = None
    # Distributed mode (Modal) only; None means what the handler declares (its
    # modal_image, and the [modal] GPU for its gpu_kind).
    # gpu is a Modal GPU spec ("L4", "A10G", "H100:2") or "none" for a CPU container.
    gpu: str | None = None
    max_containers: int | None = Field(default=None, ge=1, le=1_000)
    scaledown_window_seconds: int | None = Field(default=None, ge=2, le=3_600)
    modal_image: ModalImage | None = None
    # What happens to an input once its job succeeded and its manifest is written
    # (handlers/jobs/after_success.py): kept (default), deleted, or moved (server-side
    # copy, then delete) to <archive_prefix><route>/<rel>. Failed inputs always stay.
    after_success: Literal["keep", "delete", "archive"] = "keep"
    archive_prefix: str = "archive/"

    @field_validator("gpu")
    @classmethod
    def _gpu_is_a_modal_spec(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if v.strip().lower() == "none":
            return "none"
        parse_gpu(v)  # ValueError -> one-line config error naming routes.X.gpu
        return v.strip()

    @field_validator("notify_url")
    @classmethod
    def _notify_url_is_deliverable(cls, v: str | None) -> str | None:
        # Checked here, not at the first delivery: a URL no request can be made to
        # would otherwise lose every webhook with no record (the message never shows
        # the URL, whose query may hold a token).
        return None if v is None else checked_notify_url(v)

    @field_validator("name")
    @classmethod
    def _route_name_is_a_safe_prefix(cls, v: str) -> str:
        # Route names become key prefixes: no '/', '..', '\\' or control chars.
        if not ROUTE_NAME.fullmatch(v):
            raise ValueError("must match [a-z0-9][a-z0-9_-]* (max 63 chars)")
        return v

    @field_validator("archive_prefix")
    @classmethod
    def _archive_prefix_is_a_folder(cls, v: str) -> str:
        # Never inside inputs/ (an archived file would be a new job), outputs/ or _dropgpu/.
        if not v.endswith("/") or v.startswith(("/", "_dropgpu", "inputs/", "outputs/")):
            raise ValueError(
                f"{v!r}: a folder like 'archive/' outside inputs/, outputs/, _dropgpu/"
            )
        if ".." in v.split("/") or any(not c.isprintable() for c in v) or "//" in v:
            raise ValueError(f"{v!r}: no '..' or empty segments, no control characters")
        return v

    @field_validator("source_prefixes")
    @classmethod
    def _source_prefixes_are_folders(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in v:
            if not prefix.endswith("/") or prefix.startswith(("/", "_dropgpu")):
                raise ValueError(f"{prefix!r}: a folder like 'sources/' (never '_dropgpu/')")
            if ".." in prefix.split("/") or any(not c.isprintable() for c in prefix):
                raise ValueError(f"{prefix!r}: no '..' segments or control characters")
        return v

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return None
        out = []
        for ext in v:
            ext = ext.lower().strip()
            if not ext:
                raise ValueError("empty extension")
            out.append(ext if ext.startswith(".") else f".{ext}")
        return tuple(out)

    @property
    def prefix(self) -> str:
        return f"inputs/{self.name}/"

    def accepted_extensions(self) -> frozenset[str]:
        if self.extensions is not None:
            return frozenset(self.extensions)
        return get_handler(self.handler).extensions

    def validated_params(self) -> HandlerParams:
        return get_handler(self.handler).Params(**self.params)


def checked_notify_url(url: str) -> str:
    """``url`` when a webhook can be POSTed to it; else ValueError saying what is wrong."""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise ValueError("is not a valid URL (check the host)") from None
    try:
        port = parts.port
    except ValueError as exc:  # not a number, or above 65535
        why = "is out of range (1-65535)" if "range" in str(exc) else "is not a number"
        raise ValueError(f"its port {why}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("has no host (e.g. https://hooks.example.com/dropgpu)")
    if port is not None and not 1 <= port <= 65_535:
        raise ValueError("its port is out of range (1-65535)")
    return url


class WatchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_seconds: float = Field(default=10.0, gt=0, le=3_600)
    # A claim whose heartbeat is older than this is a crashed attempt.
    lease_ttl_seconds: float = Field(default=120.0, ge=2, le=86_400)
    max_claims_per_tick: int = Field(default=64, ge=1, le=10_000)
    # Capped exponential backoff with equal jitter (handlers/jobs/retry.py backoff_delay)
    # between transient failures.
    backoff_base_seconds: float = Field(default=30.0, ge=0, le=86_400)
    backoff_max_seconds: float = Field(default=900.0, ge=0, le=86_400)
    scratch_dir: Path | None = None
    # The done index (watcher/done_index.py): a tick reads one compact index per route
    # plus the feed since it, instead of listing every done marker ever written.
    # false: list _dropgpu/done/ every tick (the behaviour before the index).
    done_index: bool = True
    # A new index generation is written once this many jobs finished since the last
    # one, or once it is this old and anything changed.
    index_compact_records: int = Field(default=500, ge=1, le=100_000)
    index_compact_seconds: float = Field(default=300.0, ge=0, le=86_400)
    # State (done markers, failure records, claim leftovers) of an input version gone
    # from inputs/ this long is collected on after_success="keep" routes.
    state_grace_seconds: float = Field(default=86_400.0, ge=60, le=365 * 86_400)
    # Feed records older than this are deleted; None keeps them forever.
    feed_retention_days: float | None = Field(default=30.0, ge=1, le=3_650)
    # Sub-prefixes of one route listed at once (S3; a folder bucket walks its tree).
    list_concurrency: int = Field(default=16, ge=1, le=256)

    @model_validator(mode="after")
    def _heartbeat_fits_in_lease(self) -> WatchSettings:
        if self.backoff_max_seconds < self.backoff_base_seconds:
            raise ValueError("backoff_max_seconds must be >= backoff_base_seconds")
        return self

    @property
    def heartbeat_seconds(self) -> float:
        # Several heartbeats per lease so one slow PUT does not expire a live job.
        return max(0.5, self.lease_ttl_seconds / 4)


class ModalSettings(BaseModel):
    """``[modal]``: the distributed deployment (infra/deploy/modal_app.py).

    Only `dropgpu deploy` / `modal deploy` read it; the local watcher ignores it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    app_name: str = Field(default="dropgpu", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    # Modal Secret holding the bucket credentials (see docs/deploy.md).
    secret_name: str = Field(default="dropgpu-bucket", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    # Modal Volume mounted as the model store; filled by `pull_models`.
    volume_name: str = Field(default="dropgpu-models", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    # Watcher schedule: a cron string, or period_seconds for lower latency.
    # A Period restarts counting at every deploy; a Cron does not.
    cron: str = "* * * * *"
    period_seconds: int | None = Field(default=None, ge=5, le=86_400)
    # Default GPU per the handler's declared gpu_kind: "video" routes (ffmpeg) want
    # NVENC (L4), "audio" ones (demucs) want more memory.
    video_gpu: str = "L4"
    audio_gpu: str = "A10G"
    # Per route. Small on purpose: a new Modal workspace's GPU limit is a handful, and
    # the built-in routes are six; raise it to what your workspace allows.
    max_containers: int = Field(default=2, ge=1, le=1_000)
    scaledown_window_seconds: int = Field(default=120, ge=2, le=3_600)
    # The watcher function's Modal timeout (and how long its tick lock is held at most).
    watcher_timeout_seconds: int = Field(default=300, ge=60, le=3_600)
    # Download + upload + model load on top of the route's handler timeout.
    timeout_margin_seconds: int = Field(default=600, ge=60, le=7_200)
    # On Modal a claim can wait for a cold start or a free container before the
    # worker's first heartbeat, so the deployment uses a longer lease than the
    # local default. A local `dropgpu watch` on the same bucket should match it.
    lease_ttl_seconds: float = Field(default=600.0, ge=120, le=86_400)
    # A claim the watcher wrote and spawned, but no worker heartbeated yet, is queued
    # (a GPU limit, scarcity), not dead: it is retried only after this deadline.
    start_deadline_seconds: float = Field(default=3_600.0, ge=120, le=86_400)
    # demucs models pull_models puts into the Volume.
    models: tuple[str, ...] = ("htdemucs",)

    @field_validator("video_gpu", "audio_gpu")
    @classmethod
    def _gpu_is_a_modal_spec(cls, v: str) -> str:
        parse_gpu(v)
        return v.strip()

    @field_validator("cron")
    @classmethod
    def _cron_has_five_fields(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError(f"{v!r} is not a 5-field cron string like '* * * * *'")
        return v.strip()


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    watch: WatchSettings = Field(default_factory=WatchSettings)
    routes: dict[str, RouteConfig]
    modal: ModalSettings = Field(default_factory=ModalSettings)
    pricing: PriceTable = Field(default_factory=PriceTable)
    source: str = "built-in defaults"

    def enabled_routes(self) -> list[RouteConfig]:
        return [r for r in self.routes.values() if r.enabled]


def builtin_routes() -> dict[str, dict[str, Any]]:
    """DESIGN §2 defaults: each built-in handler's declared default routes, in registry order."""
    routes: dict[str, dict[str, Any]] = {}
    for handler in BUILTIN_HANDLERS:
        try:
            declared = handler_info(handler).default_routes
        except HandlerConfigError as exc:
            raise ConfigError(f"built-in handler {handler!r}: {exc}") from exc
        for name, params in declared.items():
            if name in routes:
                raise ConfigError(
                    f"built-in handlers {routes[name]['handler']!r} and {handler!r} "
                    f"both declare the default route {name!r}"
                )
            routes[name] = {"handler": handler, **({"params": dict(params)} if params else {})}
    return routes


def _format_validation_error(exc: ValidationError, where: str) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"{where}: {field}: {err['msg']}"


def build_config(data: dict[str, Any], *, source: str) -> Config:
    """Merge user TOML data over the defaults and validate everything."""
    data = dict(data)
    unknown = set(data) - {"watch", "routes", "modal", "pricing"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown section {sorted(unknown)[0]!r} "
            "(expected [watch], [routes.NAME], [modal], [pricing])"
        )
    routes_data: dict[str, dict[str, Any]] = builtin_routes()
    user_routes = data.get("routes", {})
    if not isinstance(user_routes, dict):
        raise ConfigError(f"{source}: routes must be a table of [routes.NAME] sections")
    for name, spec in user_routes.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{source}: routes.{name} must be a table")
        merged = {**routes_data.get(name, {}), **spec}
        if "params" in spec and name in routes_data:
            # A user override of one param keeps the route's other defaults.
            merged["params"] = {**routes_data[name].get("params", {}), **spec["params"]}
        routes_data[name] = merged

    routes: dict[str, RouteConfig] = {}
    for name, spec in routes_data.items():
        where = f"{source}: routes.{name}"
        if "handler" not in spec:
            raise ConfigError(f'{where}: handler: missing (e.g. handler = "vertical")')
        try:
            route = RouteConfig(name=name, **spec)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc, f"{source}: routes.{name}")) from exc
        try:
            route.validated_params()
        except HandlerConfigError as exc:
            raise ConfigError(f"{where}: handler: {exc}") from exc
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc, f"{where}.params")) from exc
        routes[name] = route
    try:
        watch = WatchSettings(**data.get("watch", {}))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, f"{source}: watch")) from exc
    except TypeError as exc:
        raise ConfigError(f"{source}: watch must be a table") from exc
    modal = _section(ModalSettings, data, "modal", source)
    pricing = _section(PriceTable, data, "pricing", source)
    if not any(r.enabled for r in routes.values()):
        raise ConfigError(f"{source}: no enabled routes")
    return Config(watch=watch, routes=routes, modal=modal, pricing=pricing, source=source)


def _section(model: type[BaseModel], data: dict[str, Any], name: str, source: str) -> Any:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: {name} must be a table ([{name}])")
    try:
        return model(**section)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, f"{source}: {name}")) from exc


def config_file(path: Path | str | None = None) -> Path | None:
    """Which routes file dropgpu reads: the one rule for the CLI, `dropgpu deploy` and the
    Modal app (which passes ``$DROPGPU_CONFIG`` as ``path``).

    ``path`` when given (``~`` expanded), else ./dropgpu.toml when it is a file, else
    None: the built-in defaults. Absolute, so it can be handed to another process.
    """
    if path:
        return Path(path).expanduser().absolute()
    default = Path(DEFAULT_CONFIG_FILE)
    return default.absolute() if default.is_file() else None


def load_config(path: Path | str | None = None) -> Config:
    """Load the file ``config_file(path)`` picks; with none, the built-in defaults."""
    file = config_file(path)
    if file is None:
        return build_config({}, source="built-in defaults")
    # Messages name the file as the user wrote it (or "dropgpu.toml"), not its absolute path.
    shown = Path(path) if path else Path(DEFAULT_CONFIG_FILE)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {shown} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {shown}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{shown}: invalid TOML: {exc}") from exc
    return build_config(data, source=str(shown))
