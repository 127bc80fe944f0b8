"""Celery mode against the local executor: collaborative_training on the sample data, twice each.

Each mode gets a fresh run root with the built-in sample data. The first run builds every tensor
and trains every model (epochs capped by `--epochs` so the run fits a CPU machine); the second
changes nothing, so it trains nothing and its wall time is almost all per-step orchestration:
for the local executor a process per step, for Celery a broker round trip, a pool process and
event storage in PostgreSQL. The cluster's start-up is timed apart and not counted in the runs.

    python -m bench.celery_overhead [--epochs N]     (needs redis-server and postgresql)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, machine, table
from unified_pipeline import atomic

JOB = "collaborative_training"


def _preset(path: Path, epochs: int) -> None:
    preset = json.loads((ROOT / "presets" / "training_preset.json").read_text())
    preset["training_scenarios"][JOB]["epochs"] = epochs
    for spec in preset["model_specific_presets"].values():
        for key in ("epochs", "budget_epochs", "study_epochs"):
            if key in spec:
                spec[key] = min(int(spec[key]), epochs)
    path.write_text(json.dumps(preset))


def _run(env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m",
                           "unified_pipeline.definitions", "-j", JOB], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{JOB} failed:\n" + "\n".join((proc.stdout + proc.stderr).splitlines()[-40:]))
    return wall


def _steps(env: dict[str, str]) -> int:
    out = subprocess.run([sys.executable, "-c", "from dagster import DagsterInstance\n"
                          "with DagsterInstance.get() as i:\n"
                          "    r = i.get_runs(limit=1)[0]\n"
                          "    print(len(i.get_run_step_stats(r.run_id)))"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def run(epochs: int = 1) -> list[dict]:
    base = Path(tempfile.mkdtemp(prefix="unified-celery-bench-"))
    os.chmod(base, 0o711)  # PostgreSQL, started by root, runs as user postgres and must get in
    rows = []
    try:
        raw = base / "raw"
        subprocess.run([sys.executable, "-m", "unified_pipeline.cli", "sample-data"], cwd=ROOT, check=True,
                       env={**os.environ, "UNIFIED_DATA": str(raw), "UNIFIED_HOME": str(base / "samples")},
                       capture_output=True)
        _preset(base / "preset.json", epochs)
        common = {**os.environ, "UNIFIED_DATA": str(raw), "UNIFIED_PRESET": str(base / "preset.json")}
        common.pop("UNIFIED_EXECUTOR", None)

        local = {**common, "UNIFIED_HOME": str(base / "local"), "DAGSTER_HOME": str(base / "local" / "dagster")}
        Path(local["DAGSTER_HOME"]).mkdir(parents=True)
        shutil.copy(ROOT / "dagster.yaml", Path(local["DAGSTER_HOME"]) / "dagster.yaml")
        walls = {"local": [_run(local), _run(local)]}
        steps = _steps(local)

        celery = {**common, "UNIFIED_HOME": str(base / "celery"), "UNIFIED_CLUSTER_DIR": str(base / "cluster")}
        t0 = time.perf_counter()
        up = subprocess.run([sys.executable, "-m", "unified_pipeline.cluster", "up"], cwd=ROOT, env=celery,
                            capture_output=True, text=True)
        startup = time.perf_counter() - t0
        try:
            if up.returncode != 0:
                raise RuntimeError(up.stderr)
            from unified_pipeline.cluster import read_env

            celery.update(read_env(base / "cluster"))
            walls["celery"] = [_run(celery), _run(celery)]
        finally:
            subprocess.run([sys.executable, "-m", "unified_pipeline.cluster", "down"], cwd=ROOT, env=celery,
                           capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for label, (first, second) in (("first run (builds and trains)", (walls["local"][0], walls["celery"][0])),
                                   ("rerun, nothing changed", (walls["local"][1], walls["celery"][1]))):
        rows.append({"run": label, "local_s": first, "celery_s": second, "celery_over_local": second / first,
                     "extra_s_per_step": (second - first) / steps})
    rows.append({"run": "cluster start-up (not in the runs)", "local_s": None, "celery_s": startup,
                 "celery_over_local": None, "extra_s_per_step": None})
    record = {"section": "celery_overhead", "machine": machine(), "load_average": os.getloadavg(),
              "when": time.strftime("%Y-%m-%dT%H%M%S"), "steps": steps, "epochs_cap": epochs, "rows": rows}
    atomic.write_json(RESULTS / f"celery_overhead-{record['when']}.json", record)
    print(f"{machine()}; {steps} steps; epochs capped at {epochs}; load average {os.getloadavg()}")
    print(table(rows))
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1, help="cap on every model's epochs (default 1)")
    run(p.parse_args().epochs)
