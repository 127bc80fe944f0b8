"""collaborative_training wall time: model steps in parallel vs one after another.

Both runs start from a fresh run root holding only the already-built tensors (so data steps
are cheap and equal in both), and train every model from scratch. "Sequential" allows one
device slot, "parallel" the default slots (GPUs x slots per GPU, or CPU slots).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, save
from unified_pipeline.paths import unified_home


def run_job(home: Path, job: str, env_extra: dict[str, str]) -> tuple[float, dict]:
    env = {**os.environ, "UNIFIED_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), **env_extra}
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster" / "dagster.yaml")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dagster", "job", "execute", "-m", "unified_pipeline.definitions",
                           "-j", job], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:] + proc.stderr.splitlines()[-40:])
        raise RuntimeError(f"{job} failed:\n{tail}")
    results = sorted((home / "results").glob("*.json"), key=lambda p: p.stat().st_mtime)
    summary = json.loads(results[-1].read_text()) if results else {}
    return wall, summary


def fresh_home(base: Path, name: str) -> Path:
    home = base / name
    src = unified_home()
    for sub in ("tensors", "manifests", "cache"):
        if (src / sub).exists():
            shutil.copytree(src / sub, home / sub)
    return home


def run(job: str = "collaborative_training", modes: str = "sequential,parallel", section: str = "parallel") -> list[dict]:
    settings = {
        "sequential (1 slot)": {"UNIFIED_SLOTS_PER_GPU": "1", "UNIFIED_GPUS": "1" if _gpus() else "0",
                                "UNIFIED_THREADS_PER_STEP": str(os.cpu_count() or 1)},
        "parallel (default slots)": {},
    }
    wanted = [label for label in settings if label.split()[0] in modes.split(",")]
    rows, walls = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in wanted:
            wall, summary = run_job(fresh_home(Path(tmp), label.split()[0]), job, settings[label])
            walls[label] = wall
            trained = [r for r in summary.get("summary", []) if r.get("status") == "trained"]
            rows.append({"mode": label, "wall_s": wall, "models_trained": len(trained),
                         "sum_of_model_s": sum(r.get("wall_time_s") or 0 for r in trained)})
            print(rows[-1], flush=True)
    if len(walls) == 2:
        seq, par = walls.values()
        rows.append({"mode": "speed-up", "wall_s": seq / par, "models_trained": None, "sum_of_model_s": None})
    preset = os.environ.get("UNIFIED_PRESET")
    save(section if len(walls) == 2 else f"{section}_{wanted[0].split()[0]}", rows,
         "Whole job wall time including step start-up; tensors were prebuilt for both runs."
         + (f" Preset: {Path(preset).name} (epochs capped for a short device session)." if preset else ""))
    return rows


def _gpus() -> int:
    from unified_pipeline.devices import gpu_count

    return gpu_count()


if __name__ == "__main__":
    run(*sys.argv[1:4])
