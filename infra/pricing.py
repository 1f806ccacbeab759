"""GPU prices: turn a job's GPU type and GPU-seconds into ``cost_usd``.

The defaults are Modal's published on-demand list prices per GPU-second (USD)
when this table was written. Prices change: override them in dropgpu.toml

```toml
[pricing.gpu_usd_per_second]
L4 = 0.000222
```

The figure is an estimate of the GPU time a job held, not an invoice: Modal
also bills CPU and memory, cold starts and the idle ``scaledown_window``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# USD per GPU-second, Modal on-demand list prices (checked 2025; they change).
DEFAULT_GPU_USD_PER_SECOND: dict[str, float] = {
    "T4": 0.000164,
    "L4": 0.000222,
    "A10G": 0.000306,
    "A10": 0.000306,
    "L40S": 0.000542,
    "A100-40GB": 0.000583,
    "A100": 0.000583,
    "A100-80GB": 0.000694,
    "H100": 0.001097,
    "H200": 0.001261,
    "B200": 0.001736,
}
_GPU_SPEC = re.compile(r"^(?P<type>[A-Za-z0-9-]+)(?P<bang>!?)(?::(?P<count>\d{1,2}))?$")


# GPUs per container where Modal allows fewer than 8 (Modal's GPU docs).
MAX_GPU_COUNT: dict[str, int] = {"A10G": 4, "A10": 4}


def normalise_gpu_type(name: str) -> str:
    """Modal spells GPU types case-insensitively ("l4" == "L4"); compare upper-case."""
    return name.strip().upper()


def parse_gpu(spec: str) -> tuple[str, int]:
    """Modal GPU string ("L4", "h100:2", "H100!") -> (TYPE, count).

    Raises ValueError with a one-line reason when the string is malformed.
    """
    m = _GPU_SPEC.fullmatch(spec.strip())
    if m is None:
        raise ValueError(f"{spec!r} is not a GPU spec like 'L4', 'A10G' or 'H100:2'")
    count = int(m.group("count") or 1)
    gpu_type = normalise_gpu_type(m.group("type"))
    most = MAX_GPU_COUNT.get(gpu_type, 8)
    if not 1 <= count <= most:
        raise ValueError(f"{spec!r}: Modal allows 1 to {most} {gpu_type} GPUs per container")
    return gpu_type, count


class PriceTable(BaseModel):
    """``[pricing]`` in dropgpu.toml: user prices are merged over the defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu_usd_per_second: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_GPU_USD_PER_SECOND)
    )

    @field_validator("gpu_usd_per_second", mode="before")
    @classmethod
    def _merge_over_defaults(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v  # pydantic reports the type error
        merged = dict(DEFAULT_GPU_USD_PER_SECOND)
        for name, price in v.items():
            if not isinstance(price, int | float) or isinstance(price, bool) or price < 0:
                raise ValueError(f"{name}: price must be a number >= 0 (USD per GPU-second)")
            merged[normalise_gpu_type(str(name))] = float(price)
        return merged

    def usd_per_second(self, gpu_type: str) -> float | None:
        return self.gpu_usd_per_second.get(normalise_gpu_type(gpu_type))

    def cost_usd(self, gpu: str | None, wall_seconds: float) -> float | None:
        """Cost of holding ``gpu`` (a Modal spec, count included) for ``wall_seconds``.

        None when there is no GPU or its price is unknown: an unknown price is
        left out rather than guessed as zero.
        """
        if not gpu:
            return None
        gpu_type, count = parse_gpu(gpu)
        price = self.usd_per_second(gpu_type)
        if price is None:
            return None
        return round(price * count * max(0.0, wall_seconds), 6)


def gpu_runtime(gpu: str | None, wall_seconds: float, prices: PriceTable) -> dict[str, Any]:
    """The manifest ``runtime`` fields for cost: gpu_type, gpu_count, gpu_seconds, cost_usd."""
    if not gpu:
        return {"gpu_type": None, "gpu_seconds": 0.0, "cost_usd": None}
    gpu_type, count = parse_gpu(gpu)
    return {
        "gpu_type": gpu_type,
        "gpu_count": count,
        "gpu_seconds": round(count * max(0.0, wall_seconds), 3),
        "cost_usd": prices.cost_usd(gpu, wall_seconds),
    }
