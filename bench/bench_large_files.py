"""Large files: one multi-GB object up and down, with each side's peak RSS (issue: reliability).

Same harness as ``tests/test_large_files.py``: a fresh child process per transfer
(baseline = import + open + a 1 MiB object each way; then ``put_file``; then
``get_to_file`` with ``if_match``), against a SeaweedFS of its own on loopback
and against a LocalFolderBucket.

    python bench/bench_large_files.py [--size-mib 2048] [--backends s3 local]
                                      [--out bench/results/large_files.json]

Stated bounds (peak RSS minus baseline): S3 put < part_size x (max_concurrency + 2)
+ 64 MiB = 224 MiB (absolute peak < 400 MB); S3 get < 64 MiB; folder bucket < 32 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from infra.s3_server import SeaweedS3Server  # noqa: E402
from tests.conftest import TEST_AWS_ENV  # noqa: E402
from tests.test_large_files import (  # noqa: E402
    LOCAL_BOUND,
    S3_GET_BOUND,
    S3_PEAK_BOUND,
    S3_PUT_BOUND,
    VOLUME_SIZE_LIMIT_MB,
    LargeFileResult,
    MiB,
    make_big_file,
    run_large_file,
)


def _s3(src: Path, sha: str, work: Path) -> LargeFileResult:
    base = work / "seaweedfs"
    with SeaweedS3Server(base, volume_size_limit_mb=VOLUME_SIZE_LIMIT_MB) as server:
        name = f"large-{uuid.uuid4().hex[:12]}"
        server.create_bucket(name)
        return run_large_file(
            "s3", name, src, sha, work / "s3-work", endpoint_url=server.endpoint_url
        )


def _local(src: Path, sha: str, work: Path) -> LargeFileResult:
    root = work / "local-bucket"
    (root / "inputs").mkdir(parents=True)
    return run_large_file("local", str(root), src, sha, work / "local-work")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--backends", nargs="+", choices=["s3", "local"], default=["s3", "local"])
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/large_files.json")
    ap.add_argument("--tmp", type=Path, default=None, help="work folder (default: system tmp)")
    args = ap.parse_args()

    # Dummy credentials, as in the tests: SeaweedFS without IAM accepts anything.
    os.environ.update(TEST_AWS_ENV)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)

    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="dropgpu-large-", dir=args.tmp))
    results: dict[str, Any] = {}
    try:
        src = work / "big.bin"
        sha, gen_s = make_big_file(src, size)
        print(f"generated {size / MiB:.0f} MiB in {gen_s:.1f} s ({size / MiB / gen_s:.0f} MiB/s)")
        for backend in args.backends:
            t0 = time.perf_counter()
            r = (_s3 if backend == "s3" else _local)(src, sha, work)
            if r.dst_sha256 != r.src_sha256 or r.got_size != r.size:
                raise SystemExit(f"{backend}: the object did not round-trip")
            d = r.as_json()
            d["wall_s"] = round(time.perf_counter() - t0, 1)
            d["put_within_bound"] = r.put_growth < r.put_bound
            d["get_within_bound"] = r.get_growth < r.get_bound
            if r.peak_bound is not None:
                d["peak_within_bound"] = r.peak_rss < r.peak_bound
            results[backend] = d
            print(r.line())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    out = {
        "bench": "large_files",
        "size_bytes": size,
        "size_mib": args.size_mib,
        "generate_s": round(gen_s, 2),
        "bounds": {
            "s3_put_growth_design": S3_PUT_BOUND,
            "s3_get_growth": S3_GET_BOUND,
            "s3_peak": S3_PEAK_BOUND,
            "local_growth": LOCAL_BOUND,
            "formula": "s3 put: part_size x (max_concurrency + 2) + 64 MiB; "
            "s3 get: 64 MiB; local: 32 MiB (peak VmHWM minus baseline child)",
        },
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
