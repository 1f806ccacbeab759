"""`dropgpu models list|pull`. (The model checks `dropgpu doctor` runs are in watcher/doctor.py.)

Wired into watcher/cli/main.py (``add_models_parser`` / ``run_models``).
Errors are one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import structlog

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_FAILED = 2


def add_models_parser(subparsers: Any) -> None:
    """Add `models list` and `models pull NAME [--dir DIR]` to the dropgpu parser."""
    m = subparsers.add_parser("models", help="list or download separation models")
    msub = m.add_subparsers(dest="models_command", required=True)
    ls = msub.add_parser("list", help="models loadable offline (store folder and caches)")
    ls.add_argument("--dir", default=None, help="store folder (default $DROPGPU_MODEL_DIR)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    pull = msub.add_parser("pull", help="download a demucs model into the store folder")
    pull.add_argument("name", help="e.g. htdemucs, htdemucs_ft, htdemucs_6s, mdx_extra")
    pull.add_argument("--dir", default=None, help="store folder (default $DROPGPU_MODEL_DIR)")


def run_models(args: argparse.Namespace) -> int:
    from gpu.exceptions import ModelStoreError

    try:
        if args.models_command == "list":
            return _list(args)
        return _pull(args)
    except ModelStoreError as exc:
        print(f"dropgpu models: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _list(args: argparse.Namespace) -> int:
    from gpu.models import list_models, model_dir

    entries = list_models(args.dir)
    if args.json:
        rows = [
            {
                "name": e.name,
                "kind": e.kind,
                "location": e.location,
                "path": str(e.path),
                "signatures": list(e.signatures),
            }
            for e in entries
        ]
        print(json.dumps({"store": str(model_dir(args.dir)), "models": rows}, indent=2))
        return EXIT_OK
    print(f"model store: {model_dir(args.dir)}")
    if not entries:
        print("  (no models; run `dropgpu models pull htdemucs`)")
    for e in entries:
        sigs = f" [{', '.join(e.signatures)}]" if e.kind == "bag" else ""
        print(f"  {e.name:<16} {e.kind:<6} {e.location:<15} {e.path}{sigs}")
    return EXIT_OK


def _pull(args: argparse.Namespace) -> int:
    from gpu.models import model_dir, pull_model

    written = pull_model(args.name, args.dir)
    where = model_dir(args.dir) if written else "the HuggingFace cache"
    print(f"pulled {args.name} into {where}")
    for path in written:
        print(f"  {path.name}")
    return EXIT_OK
