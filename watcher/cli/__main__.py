"""`python -m watcher.cli` runs the `dropgpu` command."""

import sys

from watcher.cli.main import main

sys.exit(main())
