"""`dropgpu models list|pull`. (The model checks `dropgpu doctor` runs are in watcher/doctor.py.)

Errors are one line on stderr, ``dropgpu models: ...``, exit 2.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from watcher.cli.errors import ExitCode, one_line_errors
from watcher.cli.options import add_command


def add_models_parser(subparsers: Any) -> None:
    """Add `models list` and `models pull NAME [--dir DIR]` to the dropgpu parser."""
    m = add_command(subparsers, "models", help="list or download separation models")
    m.set_defaults(func=run_models)
    msub = m.add_subparsers(dest="models_command", required=True)
    ls = add_command(msub, "list", help="models loadable offline (store folder and caches)")
    ls.add_argument("--dir", default=None, help="store folder (default $DROPGPU_MODEL_DIR)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(models_func=_list)
    pull = add_command(msub, "pull", help="download a demucs model into the store folder")
    pull.add_argument("name", help="e.g. htdemucs, htdemucs_ft, htdemucs_6s, mdx_extra")
    pull.add_argument("--dir", default=None, help="store folder (default $DROPGPU_MODEL_DIR)")
    pull.set_defaults(models_func=_pull)


@one_line_errors(prog="dropgpu models")
def run_models(args: argparse.Namespace) -> int:
    return args.models_func(args)


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
        return ExitCode.OK
    print(f"model store: {model_dir(args.dir)}")
    if not entries:
        print("  (no models; run `dropgpu models pull htdemucs`)")
    for e in entries:
        sigs = f" [{', '.join(e.signatures)}]" if e.kind == "bag" else ""
        print(f"  {e.name:<16} {e.kind:<6} {e.location:<15} {e.path}{sigs}")
    return ExitCode.OK


def _pull(args: argparse.Namespace) -> int:
    from gpu.models import model_dir, pull_model

    written = pull_model(args.name, args.dir)
    where = model_dir(args.dir) if written else "the HuggingFace cache"
    print(f"pulled {args.name} into {where}")
    for path in written:
        print(f"  {path.name}")
    return ExitCode.OK
