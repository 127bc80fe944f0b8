"""Rerun cost: collaborative_training twice in a fresh run root, nothing changed in between.

The second run trains nothing (every model step finds its fingerprint in the registry), so its
wall time is the executor's start-up, the data steps' hashing and validation, and one process
per step; the per-step figure is the mean step duration of the second run.
"""
from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

from bench.common import save
from bench.parallel import run_job


def step_durations(dagster_home: Path) -> list[float]:
    from dagster import DagsterInstance

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    with DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        stats = instance.get_run_step_stats(run.run_id)
    return [s.end_time - s.start_time for s in stats if s.end_time and s.start_time]


def run(job: str = "collaborative_training") -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        first, _ = run_job(home, job, {})
        second, summary = run_job(home, job, {})
        steps = step_durations(home / "dagster")
    reused = sum(1 for r in summary.get("summary", []) if r.get("status") == "reused")
    rows = [
        {"measure": "first run (train everything)", "value": first, "unit": "s"},
        {"measure": "second run, nothing changed", "value": second, "unit": "s"},
        {"measure": "second / first", "value": second / first, "unit": "ratio (target <= 0.10)"},
        {"measure": "models reused in second run", "value": reused, "unit": "count"},
        {"measure": "mean step duration, second run", "value": statistics.mean(steps) if steps else None, "unit": "s"},
        {"measure": "steps in second run", "value": len(steps), "unit": "count"},
    ]
    save("incremental", rows, "Both runs from the command line (`dagster job execute`), fresh run root, sample data.")
    return rows


if __name__ == "__main__":
    run()
