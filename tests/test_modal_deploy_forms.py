"""Both `modal deploy` forms, imported the way Modal's CLI imports them (no token needed).

`-m infra.deploy.modal_app` loads the app; the file-path form would record the module as
`modal_app`, a name no container can import, so it must stop at once with one line.
Each form runs in a fresh interpreter: the CLI's import mutates sys.path and sys.modules.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import sys
from modal.cli.import_refs import ImportRef, import_file_or_module
ref = ImportRef(sys.argv[1], use_module_mode=sys.argv[2] == "module", object_path="")
module = import_file_or_module(ref)
print("APP", module.app.name, module.__name__)
"""


def _deploy_import(target: str, mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DROPGPU_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, target, mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_module_form_imports_the_app() -> None:
    done = _deploy_import("infra.deploy.modal_app", "module")
    assert done.returncode == 0, done.stderr
    assert "APP dropgpu infra.deploy.modal_app" in done.stdout


def test_file_path_form_fails_at_once_with_one_line() -> None:
    done = _deploy_import("infra/deploy/modal_app.py", "file")
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        "dropgpu: deploy with `modal deploy -m infra.deploy.modal_app` (or `dropgpu deploy`) "
        "from the repository root, not by file path (imported as 'modal_app')"
    ]
