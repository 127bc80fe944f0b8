"""`make bench` section `step_cost`: the tensors step of an image lane in Dagster against the same
build in-process, and where the difference goes.

One lane of STEP_COST_IMAGES (default 2,000) 96x96 RGB PNGs in class folders. In-process:
`build_manifest` and `build_tensors` each in a fresh process (bench.scale's steps: the clock
starts after the imports). Dagster: the `data_lane` job through `dagster job execute` (as `make
run` does), the project's multiprocess executor (forkserver) and a fresh instance; each step's
phases come from the run's event log. Three states: the lane's first build (the manifest decodes
each image once and caches its pixels for the tensors), nothing changed (the tensors folder is
reused), and one image changed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, save
from bench.scale import LARGE_IMAGE_SIZE, _change_one, _step

TIMEOUT_S = 600
STATES = ("first build", "nothing changed", "one image changed")


def step_phases(dagster_home: Path) -> dict[str, dict[str, float]]:
    """Seconds per phase of each step of the newest run, from its event log."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        run = instance.get_runs(limit=1)[0]
        first: dict[tuple[str, str], float] = {}
        for rec in instance.all_logs(run.run_id):
            if rec.step_key and rec.dagster_event:
                first.setdefault((rec.step_key, rec.dagster_event.event_type_value), rec.timestamp)
    out = {}
    for step in sorted({k for k, _ in first}):
        at = {name: t for (s, name), t in first.items() if s == step}
        body = at.get("STEP_INPUT", at["STEP_START"])  # inputs loaded: the asset's own code starts
        out[step.rsplit("__", 1)[-1]] = {
            "worker_start": at["STEP_WORKER_STARTED"] - at["STEP_WORKER_STARTING"],
            "setup": at["STEP_START"] - at["STEP_WORKER_STARTED"],
            "input": body - at["STEP_START"],
            "compute": at["STEP_OUTPUT"] - body,
            "output": at["STEP_SUCCESS"] - at["STEP_OUTPUT"],
            "total": at["STEP_SUCCESS"] - at["STEP_WORKER_STARTING"],
        }
    return out


def dagster_command() -> list[str]:
    """The `dagster` console script beside this interpreter, as `make run` calls it (its spawned
    processes once ran the script again), else `python -m dagster`."""
    script = Path(sys.executable).with_name("dagster")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dagster"]


def _dagster_run(env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = subprocess.run([*dagster_command(), "job", "execute", "-m", "unified_pipeline.definitions", "-j", "data_lane"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"data_lane run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return wall, step_phases(Path(env["DAGSTER_HOME"]))


def _in_process(root: Path, home: Path) -> tuple[float, float]:
    """(manifest, tensors) seconds of one build, each in a fresh process."""
    env = {"UNIFIED_HOME": str(home)}
    man = _step("manifest", env, str(root), "vision")
    return man["seconds"], _step("tensors", env, str(root), "vision", man["manifest"], man["version"])["seconds"]


def _dagster_env(raw: Path, tmp: Path) -> dict:
    dagster_home = tmp / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    return {**os.environ, "UNIFIED_DATA": str(raw), "UNIFIED_HOME": str(tmp / "home_dagster"),
            "DAGSTER_HOME": str(dagster_home), "UNIFIED_PROGRESS_BAR": "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run() -> list[dict]:
    from bench.scale_data import image_lane

    count = int(os.environ.get("STEP_COST_IMAGES", "2000"))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-step-cost-") as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "raw" / "images"
        n = image_lane(root, 1, size=LARGE_IMAGE_SIZE, count=count)
        env = _dagster_env(tmp / "raw", tmp)
        plain = [_in_process(root, tmp / "home_in_process")]
        plain.append(_in_process(root, tmp / "home_in_process"))  # the tensors folder is reused
        runs = [_dagster_run(env), _dagster_run(env)]
        _change_one(sorted(root.rglob("*.png"))[n // 2])
        plain.append(_in_process(root, tmp / "home_in_process"))
        runs.append(_dagster_run(env))
    rows = []
    for state, (manifest_s, tensors_s), (wall, steps) in zip(STATES, plain, runs):
        t, m = steps["tensors"], steps["manifest"]
        rows.append({
            "state": state, "files": n, "in_process_s": tensors_s, "dagster_step_s": t["total"],
            "dagster_compute_s": t["compute"], "step_overhead_s": t["total"] - t["compute"],
            "worker_start_s": t["worker_start"], "setup_input_output_s": t["setup"] + t["input"] + t["output"],
            "run_wall_s": wall, "first_step_worker_start_s": m["worker_start"],
            "manifest_in_process_s": manifest_s, "manifest_compute_s": m["compute"],
        })
        print(f"{state}: in-process {tensors_s:.2f}s, Dagster step {t['total']:.2f}s ({t['compute']:.2f}s in the asset)",
              flush=True)
    save("step_cost", rows, _notes(load_before))
    return rows


def _notes(load_before: tuple) -> str:
    return (f"{LARGE_IMAGE_SIZE}x{LARGE_IMAGE_SIZE} RGB PNGs; Dagster run as `{' '.join(Path(p).name for p in dagster_command())} job "
            f"execute -j data_lane`. in_process_s: build_tensors in a fresh process, imports excluded. "
            "dagster_step_s: the tensors step from STEP_WORKER_STARTING to STEP_SUCCESS; dagster_compute_s: from its "
            "input loaded to its output (build_tensors and the metadata); step_overhead_s the rest: worker_start_s "
            "(fork from the executor's forkserver, open the instance, load the job) and setup, input and output "
            "handling. run_wall_s: the whole `dagster job execute` (CLI start, instance, code load, both steps); "
            "first_step_worker_start_s: the manifest step's worker start, which includes the forkserver importing "
            "torch, Great Expectations and the definitions once per run. manifest_compute_s includes the Great "
            "Expectations suite (in-process: the manifest without it). Load average before "
            f"{load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")


if __name__ == "__main__":
    run()
