"""Markdown tables of issue #7's quality benchmarks from their JSON results (for the READMEs).

python -m benchmarks.softcar_bench.quality_tables benchmarks/results/transfer-chatterbot.json ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from softcar import format_table

TRANSFER = ["labelled", "retriever", "R@1", "vs IP", "MRR@10", "α", "b", "kept", "test questions"]


def render(path: Path) -> str:
    data: dict[str, Any] = json.loads(path.read_text())
    load = data.get("load_average")
    head = f"`{data.get('command', path.name)}` — load average {load}, wall {data.get('wall_s', 0):.0f} s"
    if "summary" in data:
        return head + "\n\n" + format_table(data["summary"])
    if data["rows"] and "labelled" in data["rows"][0]:
        return head + "\n\n" + format_table(data["rows"], TRANSFER)
    return head + "\n\n" + format_table(data["rows"], ["retriever", "p50 ms", "× frozen"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.results:
        print(render(path) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
