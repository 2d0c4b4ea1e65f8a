"""End-to-end demo benchmark: accuracy and latency of fp32 vs hwq int8 on Fashion-MNIST.

Runs ``hwq.demo.run_demo`` with its defaults, prints the table and writes
``benchmarks/results/demo_e2e.json`` (machine, versions and date included).

    .venv/bin/python benchmarks/demo_e2e.py
"""

import json
import sys
from pathlib import Path

from hwq.demo import DemoConfig, format_table, run_demo

OUT = Path(__file__).resolve().parent / "results" / "demo_e2e.json"


def main() -> int:
    results = run_demo(DemoConfig())
    print(format_table(results))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(OUT)
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
