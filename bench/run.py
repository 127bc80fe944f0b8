"""`make bench`: run the benchmark sections, print tables, write JSON and docs/benchmarks.md."""
from __future__ import annotations

import argparse
import importlib

SECTIONS = {
    "data": "bench.data_throughput",
    "parallel": "bench.parallel",
    "overhead": "bench.overhead",
    "incremental": "bench.incremental",
    "gpu_busy": "bench.gpu_busy",
    "warm_start": "bench.warm_start",
    "controller": "bench.controller",
    "cost": "bench.cost",
    "scale": "bench.scale",
    "step_cost": "bench.step_cost",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", help="comma-separated sections: " + ",".join(SECTIONS))
    args = p.parse_args()
    wanted = args.only.split(",") if args.only else list(SECTIONS)
    for name in wanted:
        print(f"== {name}")
        importlib.import_module(SECTIONS[name]).run()


if __name__ == "__main__":
    main()
