"""`dropgpu doctor`: config, ffmpeg, devices, and create-if-absent safety of the store."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from handlers.exceptions import HandlerConfigError
from handlers.registry import handler_info
from infra.storage.bucket import Bucket
from infra.storage.errors import BucketError
from watcher.config import Config
from watcher.store_check import check_create_only


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


def local_checks(config: Config) -> list[Check]:
    checks = [
        Check(
            "config",
            True,
            f"{config.source}: routes "
            + ", ".join(f"{r.name}->{r.handler}" for r in config.enabled_routes()),
        )
    ]
    try:
        from gpu.encoders import choose_video_encoder
        from gpu.ffmpeg_binary import ffmpeg_exe, ffmpeg_version

        checks.append(Check("ffmpeg", True, f"{ffmpeg_exe()} ({ffmpeg_version()})"))
        choice = choose_video_encoder()
        checks.append(Check("video encoder", True, f"{choice.codec} ({choice.reason})"))
    except Exception as exc:
        checks.append(
            Check("ffmpeg", False, f"{exc}; pip install imageio-ffmpeg or install ffmpeg")
        )
    from gpu.device import select_device

    device = select_device()
    detail = device.name + (f" ({device.gpu_name})" if device.gpu_name else f" ({device.reason})")
    checks.append(Check("device", True, detail))
    checks += [Check(name, ok, info) for name, ok, info in model_checks(config)]
    return checks


async def bucket_checks(bucket: Bucket) -> list[Check]:
    checks: list[Check] = []
    try:
        listing = await bucket.list("inputs/")
        checks.append(
            Check("bucket", True, f"{bucket.url}: {len(listing.objects)} objects under inputs/")
        )
    except BucketError as exc:
        return [Check("bucket", False, str(exc))]
    try:
        result = await check_create_only(bucket)
        checks.append(
            Check(
                "create-if-absent",
                result.safe,
                result.detail if result.safe else f"UNSAFE STORE: {result.detail}",
            )
        )
    except BucketError as exc:
        checks.append(Check("create-if-absent", False, f"could not test: {exc}"))
    return checks


def model_checks(config: Config) -> list[tuple[str, bool, str]]:
    """One (name, ok, detail) per model the enabled routes' handlers say they need."""
    from gpu.models import find_model, missing_message

    needed: dict[str, list[str]] = {}
    checks: list[tuple[str, bool, str]] = []
    for route in config.enabled_routes():
        try:
            info = handler_info(route.handler)
            params = route.validated_params()
        except (HandlerConfigError, ValidationError):  # config validation already reported it
            continue
        try:
            models = info.required_models(params)
        except Exception as exc:  # a custom handler's bug: say so, check the other routes
            checks.append((f"models of route {route.name}", False, f"required_models: {exc}"))
            continue
        for model in models:
            needed.setdefault(model, []).append(route.name)
    for model, routes in sorted(needed.items()):
        entry = find_model(model)
        name = f"model {model}"
        used = f"(routes {', '.join(routes)})"
        if entry is None:
            checks.append((name, False, f"{missing_message(model)} {used}"))
        else:
            checks.append((name, True, f"{entry.location}: {entry.path} {used}"))
    return checks
