"""collaborative_training through a real local Celery cluster: redis-server, PostgreSQL, a cpu and a gpu worker.

Needs the Debian packages redis-server and postgresql (.ci/run installs them). Without them the
test skips on a developer machine and fails in CI (CI=true), so a broken install cannot pass.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import tiny_data
from unified_pipeline.cluster.processes import ClusterError

ROOT = Path(__file__).resolve().parents[1]
# One lane and its model keep the cluster run short; every step still goes through a queue.
MODELS = ("text_service",)
KILLED = "text_service"
# The killed model trains long enough to be caught mid-way; the others take two epochs.
RUN_CONFIG = {"ops": {KILLED: {"config": {"epochs": 6, "checkpoint_interval": 1, "early_stopping_patience": 100}}}}


def _missing_packages() -> str | None:
    from unified_pipeline.cluster import components

    try:
        components.redis_binary()
        components.postgres_bindir()
    except ClusterError as exc:
        return str(exc)
    return None


if _missing_packages() and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
    pytest.skip(f"not in CI and {_missing_packages()}", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(monkeypatch):
    # PostgreSQL runs as user postgres when the tests run as root: the folder must let it through.
    base = Path(tempfile.mkdtemp(prefix="unified-cluster-test-"))
    os.chmod(base, 0o711)
    raw = base / "raw"
    tiny_data.text(raw)
    preset = json.loads((ROOT / "presets" / "training_preset.json").read_text())
    preset["training_scenarios"]["collaborative_training"].update(epochs=2, batch_size=8)
    # Two epochs on tiny data do not pass the asset checks; promotion is not what this test is about.
    preset["training_configuration"]["promotion_gate"] = False
    (base / "preset.json").write_text(json.dumps(preset))
    env = {
        "UNIFIED_HOME": str(base / "home"), "UNIFIED_DATA": str(raw), "UNIFIED_PRESET": str(base / "preset.json"),
        "UNIFIED_CLUSTER_DIR": str(base / "cluster"), "UNIFIED_REDIS_PORT": str(_free_port()),
        "DAGSTER_PG_PORT": str(_free_port()), "UNIFIED_THREADS_PER_STEP": "1", "UNIFIED_GPUS": "0",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cli = [sys.executable, "-m", "unified_pipeline.cluster"]
    started = subprocess.run([*cli, "up"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        from unified_pipeline.cluster import read_env

        for k, v in read_env(base / "cluster").items():
            monkeypatch.setenv(k, v)
        yield base
    finally:
        state = json.loads((base / "cluster" / "cluster.json").read_text()) if (base / "cluster" / "cluster.json").exists() else {"processes": []}
        stopped = subprocess.run([*cli, "down"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        alive = [p["name"] for p in state["processes"] if _group_alive(p["pid"])]
        shutil.rmtree(base, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not alive, f"still running after down: {alive}"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _launch(base: Path) -> subprocess.Popen:
    import yaml

    config = base / "run.yaml"
    config.write_text(yaml.safe_dump(RUN_CONFIG))
    log = open(base / f"run-{time.time_ns()}.log", "w")
    return subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m",
                             "unified_pipeline.definitions", "-j", "collaborative_training", "-c", str(config)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)


def _wait_mid_training(base: Path, proc: subprocess.Popen, timeout: float = 900) -> dict:
    """The killed model's progress once two epochs (and their checkpoints) are done."""
    progress = base / "home" / "progress" / f"{KILLED}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before the training could be killed"
        try:
            state = json.loads(progress.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("status") == "running" and state.get("epoch", 0) >= 2:
            return state
        time.sleep(0.1)
    raise AssertionError(f"{KILLED} never reached epoch 2")


def _step_workers(instance, run_id: str) -> dict[str, list[str]]:
    """Step key -> the Celery worker of every execution, from dagster-celery's engine events."""
    out: dict[str, list[str]] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.event_type_value != "ENGINE_EVENT" or not event.step_key:
            continue
        worker = (event.engine_event_data.metadata or {}).get("Celery worker")
        if worker is not None:
            out.setdefault(event.step_key, []).append(worker.value)
    return out


def test_cluster_runs_models_on_gpu_queue_and_resumes_a_killed_training(cluster):
    from dagster import AssetKey, DagsterInstance

    from unified_pipeline.registry import ModelRegistry
    from unified_pipeline.training import checkpoints as ck
    from unified_pipeline.training.control import write_command
    from unified_pipeline.train_model import control_path

    base = cluster
    gpu_leader = next(p["pid"] for p in json.loads((base / "cluster" / "cluster.json").read_text())["processes"]
                      if p["name"] == "worker-gpu")
    run = _launch(base)
    state = _wait_mid_training(base, run)
    victim = int(state["pid"])
    # The training runs in a pool process of the gpu worker: same process group as its leader.
    assert os.getpgid(victim) == gpu_leader
    # Paused at its next batch, so the kill lands mid-training however fast the machine is.
    command = write_command(control_path(KILLED), pause=True)
    deadline = time.monotonic() + 300
    while command.exists():  # the trainer claims a command by renaming it away
        assert time.monotonic() < deadline and run.poll() is None, "the pause was never picked up"
        time.sleep(0.05)
    ckdirs = list((base / "home" / "checkpoints" / KILLED).iterdir())
    assert len(ckdirs) == 1 and ck.latest_valid(ckdirs[0]) is not None
    os.kill(victim, signal.SIGKILL)
    assert run.wait(timeout=900) == 0, "the run through the cluster failed"

    registry = ModelRegistry()
    for model in MODELS:
        versions = registry.list(model)
        assert [v.number for v in versions] == [1]
        worker = versions[0].lineage["worker"]
        assert worker["executor"] == "celery" and worker["queue"] == "gpu" and worker["worker"].startswith("gpu@")
    killed = registry.list(KILLED)[0].lineage
    assert killed["worker"]["pid"] != victim and killed["worker"]["redelivered"]
    assert killed["resumed_from"] and Path(killed["resumed_from"]).parent == ckdirs[0]

    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        run_id = instance.get_runs(limit=1)[0].run_id
        workers = _step_workers(instance, run_id)
        steps = {s.key for s in instance.get_execution_plan_snapshot(
            instance.get_run_by_id(run_id).execution_plan_snapshot_id).steps}
        assert set(workers) == steps
        for step, names in workers.items():
            queue = "gpu" if step in MODELS else "cpu"
            assert all(n.startswith(f"{queue}@") for n in names), (step, names)
        assert len(workers[KILLED]) == 2  # the killed execution and its retry, both on the gpu queue
        assert all(len(names) == 1 for step, names in workers.items() if step != KILLED)

    rerun = _launch(base)
    assert rerun.wait(timeout=900) == 0, "the rerun through the cluster failed"
    with DagsterInstance.get() as instance:
        for model in MODELS:
            event = instance.get_latest_materialization_event(AssetKey([model]))
            meta = event.asset_materialization.metadata
            assert meta["status"].value == "up to date (reused)" and meta["version"].value == f"{model}/v1"
    for model in MODELS:
        assert [v.number for v in registry.list(model)] == [1]
        registry.verify(model, 1)
        assert registry.get(model, "production").number == 1
    assert not list((base / "home" / "checkpoints" / KILLED).glob("*/*"))  # the version holds the result
