"""dropgpu on Modal: the same watcher, claims, runner and handlers; only the executor differs.

Deploy with `dropgpu deploy` (or `modal deploy -m infra.deploy.modal_app`); fill the model
store with `modal run -m infra.deploy.modal_app::pull_models`. docs/deploy.md walks through it.

What gets deployed (settings from dropgpu.toml via infra/deploy/settings.py):
- ``watch_tick``: a scheduled function (Cron every minute by default) on a slim
  image without torch. It lists the bucket, claims new inputs and ``.spawn``s one
  call per claim on the route's worker class, passing the JobSpec as plain data
  (keys and settings, never file bytes).
- ``Worker_<route>``: one class per route, with the route's GPU, max_containers,
  scaledown window and timeout. ``@modal.enter`` picks the device and warms the
  handler once per container; ``run_job`` runs the shared JobRunner.
- ``pull_models``: downloads demucs weights into the model Volume.

Routes are read at import time, from ``DROPGPU_CONFIG`` or ./dropgpu.toml (else
the built-in defaults). The file is shipped to the containers, so the classes
defined there match the ones deployed. Importing this module needs no network
and no Modal token: Secrets and Volumes are lazy references.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import modal
import structlog
from structlog.typing import FilteringBoundLogger

from infra.deploy.settings import (
    CONFIG_ENV,
    LOCAL_PACKAGES,
    MODEL_DIR,
    PYTHON_VERSION,
    REMOTE_CONFIG_PATH,
    SCRATCH_DIR,
    DeploySettings,
    ImageRecipe,
    WorkerSettings,
    deploy_settings,
    effective_config,
)
from infra.deploy.settings import IMAGES as IMAGE_RECIPES
from infra.pricing import gpu_runtime
from infra.version import VERSION_ENV, dropgpu_version
from watcher.config import Config, config_file, load_config

# `modal deploy infra/deploy/modal_app.py` imports this file as `modal_app`; with
# include_source=False no container could import that name, so every worker would die
# after a "successful" deploy. Refuse at once instead (the -m form names the package).
MODULE_NAME = "infra.deploy.modal_app"
if __name__ != MODULE_NAME:
    sys.exit(
        f"dropgpu: deploy with `modal deploy -m {MODULE_NAME}` (or `dropgpu deploy`) "
        f"from the repository root, not by file path (imported as {__name__!r})"
    )

if TYPE_CHECKING:  # imported lazily below: importing this module stays light
    from handlers.jobs.spec import JobSpec
    from infra.storage.bucket import Bucket
    from watcher.state import Snapshot

log: FilteringBoundLogger = structlog.get_logger(__name__)
# spawn(class_name, job_spec_dict): start one job without waiting for it.
Spawn = Callable[[str, dict[str, Any]], Any]


def config_path() -> Path | None:
    """The routes file this deployment uses: $DROPGPU_CONFIG, else ./dropgpu.toml, else none."""
    return config_file(os.environ.get(CONFIG_ENV))


CONFIG_PATH = config_path()
CONFIG = load_config(CONFIG_PATH)
SETTINGS = deploy_settings(CONFIG)
# What the watcher and workers run with: the lease TTL comes from [modal].
RUN_CONFIG = effective_config(CONFIG)


def _extra_packages() -> list[str]:
    """Top-level packages of custom "package.module:Attr" handlers, shipped with the code."""
    extra = []
    for route in CONFIG.enabled_routes():
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)[A-Za-z0-9_.]*:.+", route.handler)
        if m and m.group(1) not in LOCAL_PACKAGES and m.group(1) not in extra:
            extra.append(m.group(1))
    return extra


def _image(recipe: ImageRecipe) -> modal.Image:
    env = dict(recipe.env)
    # The deploying machine's installed version; containers have no dropgpu metadata.
    env[VERSION_ENV] = dropgpu_version()
    if CONFIG_PATH is not None:
        env[CONFIG_ENV] = REMOTE_CONFIG_PATH
    image = (
        modal.Image.debian_slim(python_version=PYTHON_VERSION)
        .pip_install(*recipe.pip)
        .env(env)
        # Source and config are added at container start (not baked into a layer),
        # so a code or config change does not rebuild the torch image. Data files
        # (the manifest schema, assets) ship too; caches do not.
        .add_local_python_source(
            *LOCAL_PACKAGES, *_extra_packages(), ignore=["**/__pycache__", "**/*.pyc"]
        )
    )
    if CONFIG_PATH is not None:
        image = image.add_local_file(CONFIG_PATH, REMOTE_CONFIG_PATH)
    return image


IMAGES: dict[str, modal.Image] = {name: _image(r) for name, r in IMAGE_RECIPES.items()}
# Bucket credentials; Modal refuses to deploy when a required key is missing.
BUCKET_SECRET = modal.Secret.from_name(
    SETTINGS.secret_name, required_keys=list(SETTINGS.required_secret_keys)
)
MODEL_VOLUME = modal.Volume.from_name(SETTINGS.volume_name, create_if_missing=True)
# Workers only read models: a read-only mount (pull_models alone writes, and commits).
MODEL_VOLUME_RO = MODEL_VOLUME.read_only()
SCHEDULE: modal.Cron | modal.Period = (
    modal.Period(seconds=SETTINGS.schedule.period_seconds)
    if SETTINGS.schedule.kind == "period"
    else modal.Cron(SETTINGS.schedule.cron or "* * * * *")
)

app = modal.App(SETTINGS.app_name, include_source=False)


# -- the bucket, from the Secret's environment -------------------------------------------


def open_bucket_from_env() -> Bucket:
    from infra.storage.errors import BucketConfigError
    from infra.storage.url import open_bucket

    url = os.environ.get("DROPGPU_BUCKET", "").strip()
    if not url:
        raise BucketConfigError(
            f"DROPGPU_BUCKET is not set: add it (s3://<bucket>) to the Modal Secret "
            f"'{SETTINGS.secret_name}' (see docs/deploy.md)"
        )
    return open_bucket(url, endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or None)


# -- the watcher ----------------------------------------------------------------------------


# cancel(call_id): cancel one queued or running call of this app.
Cancel = Callable[[str], Any]


@dataclass(slots=True)
class TickPlan:
    """What one tick decides from its one snapshot, for every route."""

    snapshot: Snapshot
    dispatched: frozenset[str]  # jobs spawned but not yet started (see watcher/state.py)
    free: dict[str, int]  # route -> free worker slots; -1: nothing to do there


async def plan_tick(bucket: Bucket, config: Config, settings: DeploySettings) -> TickPlan:
    """One LIST snapshot for all routes, and each route's free slots from its live claims.

    A claim is live while its worker heartbeats (the lease) or, spawned and never
    heartbeaten, while it waits in Modal's queue (the start deadline). Claiming only
    into free slots keeps a claim from waiting behind max_containers at all.
    """
    from watcher.state import DecisionState, classify, dispatched_jobs, take_snapshot

    snapshot = await take_snapshot(bucket, config)
    ttl = config.watch.lease_ttl_seconds
    deadline = settings.start_deadline_seconds
    dispatched = await dispatched_jobs(
        bucket, snapshot, lease_ttl_seconds=ttl, start_deadline_seconds=deadline
    )
    free: dict[str, int] = {}
    for route in config.enabled_routes():
        states = [
            classify(
                snapshot,
                route,
                obj,
                lease_ttl_seconds=ttl,
                dispatched=dispatched,
                start_deadline_seconds=deadline,
            ).state
            for obj in snapshot.inputs.get(route.name, [])
        ]
        actionable = (DecisionState.CLAIMABLE, DecisionState.GIVE_UP, DecisionState.REPAIR)
        if not any(s in actionable for s in states):
            free[route.name] = -1
            continue
        running = sum(1 for s in states if s == DecisionState.RUNNING)
        free[route.name] = max(0, settings.workers[route.name].max_containers - running)
    return TickPlan(snapshot, dispatched, free)


async def route_capacity(
    bucket: Bucket, config: Config, settings: DeploySettings
) -> dict[str, int]:
    """Free worker slots per route (see ``plan_tick``)."""
    return (await plan_tick(bucket, config, settings)).free


async def cancel_superseded(bucket: Bucket, spec: JobSpec, cancel: Cancel) -> bool:
    """Cancel the queued call of the attempt ``spec`` supersedes; True when one was.

    The previous attempt's claim expired (its call waited past the start deadline, or
    its worker died); a call still in Modal's queue would otherwise start late and
    refuse (handlers/jobs/claim_check.py) at the price of a container start.
    """
    from handlers.jobs.claims import read_spawned_call

    if spec.attempt <= 1:
        return False
    call_id = await read_spawned_call(bucket, spec.ref, spec.attempt - 1)
    if call_id is None:
        return False
    try:
        await asyncio.to_thread(cancel, call_id)
    except Exception as exc:  # a finished call cannot be cancelled; nothing is lost
        log.warning("superseded_call_cancel_failed", call_id=call_id, error=str(exc))
        return False
    log.info("superseded_call_cancelled", call_id=call_id, attempt=spec.attempt - 1)
    return True


async def run_watcher_tick(
    bucket: Bucket,
    config: Config,
    settings: DeploySettings,
    spawn: Spawn,
    cancel: Cancel | None = None,
) -> dict[str, Any]:
    """Tick each route that has work, claiming at most its free capacity, and spawn."""
    from handlers.jobs.claims import record_spawned_call, release_claim
    from watcher.tick import run_tick

    plan = await plan_tick(bucket, config, settings)
    summary: dict[str, Any] = {"spawned": 0, "spawn_failed": 0, "cancelled": 0, "routes": {}}

    # Routes with the fewest live claims first: when a tick is cut short (its timeout),
    # the routes it did not reach are the busiest, not always the last in the file.
    order = sorted(
        (r for r in config.enabled_routes() if plan.free.get(r.name, -1) >= 0),
        key=lambda r: -plan.free[r.name],
    )
    for route in order:
        capacity = plan.free[route.name]
        class_name = settings.workers[route.name].class_name

        async def dispatch(spec: JobSpec, class_name: str = class_name) -> None:
            if cancel is not None and await cancel_superseded(bucket, spec, cancel):
                summary["cancelled"] += 1
            try:
                # Modal's spawn blocks on an RPC: keep it off the event loop.
                call_id = await asyncio.to_thread(spawn, class_name, spec.to_dict())
                summary["spawned"] += 1
            except Exception as exc:
                summary["spawn_failed"] += 1
                # The tick's job context names the job. Released, the next tick
                # retries it at once, and it uses up no attempt.
                log.error("spawn_failed_releasing_claim", error=str(exc))
                await release_claim(bucket, spec.ref, spec.attempt)
                return
            if isinstance(call_id, str) and call_id:
                try:
                    await record_spawned_call(bucket, spec.ref, spec.attempt, call_id)
                except Exception as exc:  # only the cancel of a superseded call needs it
                    log.warning("spawned_call_not_recorded", call_id=call_id, error=str(exc))

        only_route = config.model_copy(update={"routes": {route.name: route}})
        report = await run_tick(
            bucket,
            only_route,
            dispatch,
            capacity=capacity,
            snapshot=plan.snapshot,
            dispatched=plan.dispatched,
            start_deadline_seconds=settings.start_deadline_seconds,
        )
        summary["routes"][route.name] = {"capacity": capacity, **report.summary()}
    log.info(
        "modal_tick",
        spawned=summary["spawned"],
        spawn_failed=summary["spawn_failed"],
        cancelled=summary["cancelled"],
    )
    return summary


async def locked_watcher_tick(
    bucket: Bucket,
    config: Config,
    settings: DeploySettings,
    spawn: Spawn,
    cancel: Cancel | None = None,
) -> dict[str, Any]:
    """``run_watcher_tick`` under the bucket's tick lock; skipped while another tick runs."""
    from infra.deploy.tick_lock import acquire_tick_lock

    lock = await acquire_tick_lock(bucket, hold_seconds=settings.watcher_timeout + 30)
    if lock is None:
        log.info("modal_tick_skipped_another_running")
        return {"spawned": 0, "spawn_failed": 0, "cancelled": 0, "routes": {}, "skipped": True}
    try:
        return await run_watcher_tick(bucket, config, settings, spawn, cancel)
    finally:
        await lock.release()


def spawn_on_modal(class_name: str, spec: dict[str, Any]) -> str:
    """Start one job on a route's worker class without waiting; the call's id."""
    call = globals()[class_name]().run_job.spawn(spec)
    return str(call.object_id)


def cancel_on_modal(call_id: str) -> None:
    """Cancel a call of this app (a queued call whose claim was superseded)."""
    modal.FunctionCall.from_id(call_id).cancel()


@app.function(
    image=IMAGES["watcher"],
    schedule=SCHEDULE,
    secrets=[BUCKET_SECRET],
    timeout=SETTINGS.watcher_timeout,
    cpu=1.0,
    memory=1_024,
    retries=SETTINGS.watcher_retries,
    # One tick at a time: a tick that outlives the schedule's period is not joined by
    # a second one counting the same free slots.
    max_containers=1,
)
def watch_tick() -> dict[str, Any]:
    """One tick: claim what is new and spawn workers (spawn_on_modal / cancel_on_modal).

    No parameters, so `modal run` and `Function.from_name(...).remote()` can call it.
    """
    from infra.log import configure_logging

    configure_logging(json=True)

    async def tick() -> dict[str, Any]:
        from handlers.jobs.webhooks import drain_notifications

        async with open_bucket_from_env() as bucket:
            # Looked up at call time: tests swap them for in-process stand-ins.
            result = await locked_watcher_tick(
                bucket, RUN_CONFIG, SETTINGS, spawn_on_modal, cancel_on_modal
            )
            await drain_notifications(timeout=30)  # webhooks of give-ups committed by the tick
            return result

    return asyncio.run(tick())


# -- the workers --------------------------------------------------------------------------


class RouteWorker:
    """Base of every ``Worker_<route>`` class: warm state lives for the container's life."""

    route_name: ClassVar[str]

    @modal.enter()
    def start(self) -> None:
        from gpu.device import select_device
        from infra.log import configure_logging

        configure_logging(json=True)
        self.settings: WorkerSettings = SETTINGS.workers[self.route_name]
        self.device = select_device()
        self.cache: dict[str, Any] = {}
        self._warm_up()

    def _warm_up(self) -> None:
        # Optional handler hook: load models once per container, before the first job.
        from handlers.registry import get_handler

        route = RUN_CONFIG.routes[self.route_name]
        try:
            handler = get_handler(route.handler)
            warm_up: Callable[..., None] | None = getattr(handler, "warm_up", None)
            if callable(warm_up):
                warm_up(self.cache, self.device.name, route.validated_params())
        except Exception as exc:  # the job itself reports a missing model as a config error
            log.warning("handler_warm_up_failed", route=self.route_name, error=str(exc))

    def _reload_models(self) -> None:
        # A warm container sees models pulled after it started (pull_models commits).
        if modal.is_local():
            return
        try:
            MODEL_VOLUME_RO.reload()
        except Exception as exc:  # e.g. a model file still open: the mounted view is kept
            log.info("model_volume_reload_skipped", error=str(exc))

    def runtime_extra(self, wall_seconds: float) -> dict[str, Any]:
        """Manifest runtime facts: executor, GPU type, GPU-seconds and estimated cost."""
        return {
            "executor": "modal",
            "modal_class": self.settings.class_name,
            **gpu_runtime(self.settings.gpu, wall_seconds, CONFIG.pricing),
        }

    @modal.method()
    def run_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Run one claimed job; the result is in the bucket (manifest), this is a summary."""
        from handlers.jobs.spec import JobSpec

        job = JobSpec.from_dict(spec)
        if job.route != self.route_name:
            # A spawn on the wrong class would run with the wrong GPU/timeout: refuse.
            raise ValueError(f"job of route {job.route!r} sent to {self.settings.class_name}")
        self._reload_models()
        return asyncio.run(self._run(job))

    async def _run(self, job: JobSpec) -> dict[str, Any]:
        from handlers.jobs.claim_check import refusal_reason
        from handlers.jobs.runner import JobRunner
        from handlers.jobs.spec import job_log_context
        from handlers.jobs.webhooks import drain_notifications

        scratch = Path(RUN_CONFIG.watch.scratch_dir or SCRATCH_DIR)
        async with open_bucket_from_env() as bucket:
            why = await refusal_reason(
                bucket, job, start_deadline_seconds=SETTINGS.start_deadline_seconds
            )
            if why:
                # Started too late (queued past its lease) or superseded: the claim's
                # newer owner, or the next tick, runs the job; running here would be twice.
                with structlog.contextvars.bound_contextvars(**job_log_context(job.ref)):
                    log.warning("job_refused_claim_not_ours", reason=why, attempt=job.attempt)
                return {"status": "refused", "message": why, "manifest_key": None}
            runner = JobRunner(
                bucket,
                scratch_root=scratch,
                device=self.device,
                worker_name=f"modal:{self.settings.class_name}:{os.getpid()}",
                cache=self.cache,
                runtime_extra=self.runtime_extra,
            )
            outcome = await runner.run(job)
            # The webhook runs after the commit; the bucket must stay open until it ends.
            await drain_notifications(timeout=30)
        return {
            "status": str(outcome.status),  # plain data across Modal's pickling
            "message": outcome.message,
            "manifest_key": outcome.manifest_key,
        }


def _define_worker(ws: WorkerSettings) -> Any:
    # Modal finds a class in the container by its global name, so each route's
    # class is created here under a fixed name and bound in this module's globals.
    user_cls = type(
        ws.class_name,
        (RouteWorker,),
        {"__module__": __name__, "__qualname__": ws.class_name, "route_name": ws.route},
    )
    modal_cls = app.cls(
        image=IMAGES[ws.image],
        gpu=ws.gpu,
        cpu=ws.cpu,
        memory=ws.memory,
        secrets=[BUCKET_SECRET],
        volumes={MODEL_DIR: MODEL_VOLUME_RO},
        max_containers=ws.max_containers,
        scaledown_window=ws.scaledown_window,
        timeout=ws.timeout,
        startup_timeout=ws.startup_timeout,
        retries=ws.retries,
    )(user_cls)
    globals()[ws.class_name] = modal_cls
    return modal_cls


WORKERS: dict[str, Any] = {route: _define_worker(ws) for route, ws in SETTINGS.workers.items()}


# -- the model store ------------------------------------------------------------------------


@app.function(image=IMAGES["torch"], volumes={MODEL_DIR: MODEL_VOLUME}, timeout=1_800, retries=0)
def pull_models(names: str = "") -> list[str]:
    """Download demucs models (comma-separated names; default [modal] models) into the Volume."""
    from gpu.models import pull_model
    from infra.log import configure_logging

    configure_logging(json=True)
    wanted = [n.strip() for n in names.split(",") if n.strip()] or list(SETTINGS.models)
    written: list[str] = []
    for name in wanted:
        written += [str(p) for p in pull_model(name)]
    if not modal.is_local():
        MODEL_VOLUME.commit()  # make the files visible to containers that start later
    log.info("models_pulled", models=wanted, files=len(written))
    return written
