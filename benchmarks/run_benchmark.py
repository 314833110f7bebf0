#!/usr/bin/env python
"""Entry point kept for the documented command; the benchmark is the ``softcar_bench`` package
beside this file (``python -m benchmarks.softcar_bench`` from the repository root)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from benchmarks.softcar_bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
