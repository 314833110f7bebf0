import sys

from benchmarks.softcar_bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
