from __future__ import annotations

import pytest

from infra.pricing import DEFAULT_GPU_USD_PER_SECOND, PriceTable, gpu_runtime, parse_gpu
from watcher.config import build_config
from watcher.exceptions import ConfigError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("L4", ("L4", 1)), ("a10g", ("A10G", 1)), ("H100:2", ("H100", 2)), ("H100!", ("H100", 1))],
)
def test_parse_gpu(spec: str, expected: tuple[str, int]) -> None:
    assert parse_gpu(spec) == expected


@pytest.mark.parametrize("spec", ["", "L4:0", "L4:9", "L 4", "L4:x"])
def test_parse_gpu_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_gpu(spec)


def test_cost_is_price_times_count_times_seconds() -> None:
    table = PriceTable()
    assert table.cost_usd("L4", 100) == pytest.approx(DEFAULT_GPU_USD_PER_SECOND["L4"] * 100)
    assert table.cost_usd("h100:2", 10) == pytest.approx(DEFAULT_GPU_USD_PER_SECOND["H100"] * 20)
    assert table.cost_usd(None, 10) is None
    assert table.cost_usd("NEWGPU", 10) is None  # unknown price: left out, not zero


def test_gpu_runtime_fields() -> None:
    rt = gpu_runtime("A10G:2", 1.5, PriceTable())
    assert rt == {
        "gpu_type": "A10G",
        "gpu_count": 2,
        "gpu_seconds": 3.0,
        "cost_usd": pytest.approx(DEFAULT_GPU_USD_PER_SECOND["A10G"] * 3.0),
    }
    assert gpu_runtime(None, 5, PriceTable())["cost_usd"] is None


def test_config_prices_merge_over_defaults() -> None:
    config = build_config(
        {"pricing": {"gpu_usd_per_second": {"l4": 0.001, "MI300X": 0.002}}}, source="t.toml"
    )
    prices = config.pricing
    assert prices.usd_per_second("L4") == 0.001
    assert prices.usd_per_second("mi300x") == 0.002
    assert prices.usd_per_second("A10G") == DEFAULT_GPU_USD_PER_SECOND["A10G"]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"pricing": {"gpu_usd_per_second": {"L4": -1}}}, "t.toml: pricing: gpu_usd_per_second"),
        ({"pricing": {"gpu_usd_per_second": {"L4": "cheap"}}}, "pricing: gpu_usd_per_second"),
        ({"pricing": {"bogus": 1}}, "t.toml: pricing: bogus"),
        ({"pricing": 3}, "pricing must be a table"),
    ],
)
def test_bad_prices_are_one_line_config_errors(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(data, source="t.toml")
    assert needle in str(err.value)
    assert "\n" not in str(err.value)
