"""End-to-end demo benchmark: accuracy and latency of fp32 vs hwq int8 on Fashion-MNIST.

Runs ``hwq.demo.run_demo`` with its defaults, prints the table and writes
``benchmarks/results/demo_e2e.json`` (machine, versions and date included, and the peak resident
memory of calibration and of compile).

    .venv/bin/python benchmarks/demo_e2e.py
"""

import sys
from pathlib import Path

from hwq.demo import DemoConfig, format_table, run_demo
from hwq.fileio import atomic_write_json

OUT = Path(__file__).resolve().parent / "results" / "demo_e2e.json"


def main() -> int:
    results = run_demo(DemoConfig())
    print(format_table(results))
    atomic_write_json(OUT, results, indent=2)
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
