"""The Celery execution mode and the local cluster's process handling, without a broker or a database."""
from __future__ import annotations

import socket
import time
from dataclasses import replace

import pytest
from dagster import AssetKey

import tiny_data
from unified_pipeline import celery_mode, cluster
from unified_pipeline.cluster import components, processes
from unified_pipeline.cluster.processes import ClusterError


def test_celery_executor_selected_by_environment(home, tmp_path, monkeypatch):
    from unified_pipeline.definitions import build_definitions

    tiny_data.vision(tmp_path / "raw")
    monkeypatch.setenv("UNIFIED_EXECUTOR", "celery")
    monkeypatch.setenv("UNIFIED_CELERY_BROKER", "redis://broker.example:6380/3")
    defs = build_definitions()
    job = defs.resolve_job_def("collaborative_training")
    assert job.executor_def.name == "celery"
    graph = defs.resolve_asset_graph()
    model_op = graph.get(AssetKey(["vision_service"])).assets_def.op
    data_op = graph.get(AssetKey(["tiny_images", "tensors"])).assets_def.op
    assert model_op.tags[celery_mode.QUEUE_TAG] == "gpu"
    assert celery_mode.QUEUE_TAG not in data_op.tags  # data steps take the default queue
    config = celery_mode.executor_config()
    assert config["config_source"]["task_default_queue"] == "cpu"
    assert config["broker"] == "redis://broker.example:6380/3"
    assert config["backend"] == "redis://broker.example:6380/1"
    assert config["config_source"]["task_acks_late"] and config["config_source"]["task_reject_on_worker_lost"]


def test_local_executor_unchanged_without_the_variable(home, tmp_path, monkeypatch):
    from unified_pipeline.definitions import build_definitions

    tiny_data.vision(tmp_path / "raw")
    monkeypatch.delenv("UNIFIED_EXECUTOR", raising=False)
    assert build_definitions().resolve_job_def("collaborative_training").executor_def.name == "multiprocess"


def test_worker_identity_outside_celery_names_this_host():
    ident = celery_mode.worker_identity()
    assert ident["executor"] == "local" and ident["hostname"] == socket.gethostname()


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setattr(components.shutil, "which", lambda _name: None)
    monkeypatch.setattr(components.glob, "glob", lambda _pattern: [])
    with pytest.raises(ClusterError, match="redis-server is not installed; install .*apt-get install redis-server postgresql"):
        components.redis_binary()
    with pytest.raises(ClusterError, match="PostgreSQL server .* is not installed"):
        components.postgres_bindir()


def test_taken_port_is_refused_before_anything_starts(home, tmp_path, monkeypatch):
    monkeypatch.setattr(components, "redis_binary", lambda: "/bin/false")
    monkeypatch.setattr(components, "postgres_bindir", lambda: tmp_path)
    started = []
    monkeypatch.setattr(components, "start_redis", lambda *a: started.append(a))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        monkeypatch.setenv("UNIFIED_REDIS_PORT", str(busy.getsockname()[1]))
        with pytest.raises(ClusterError, match=rf"redis: port {busy.getsockname()[1]} .* already taken .*UNIFIED_REDIS_PORT"):
            cluster.up(log=lambda _m: None)
    assert not started


def test_component_that_exits_is_reported_with_its_log(tmp_path):
    proc = processes.spawn("demo", ["sh", "-c", "echo listening failed: address in use; exit 3"], tmp_path / "demo.log")
    start = time.monotonic()
    with pytest.raises(ClusterError, match="demo: exited before ready; .*address in use"):
        processes.wait_until(proc, lambda: False, "ready", timeout_s=60)
    assert time.monotonic() - start < 30


def test_component_that_never_gets_ready_times_out(tmp_path):
    proc = processes.spawn("slow", ["sleep", "60"], tmp_path / "slow.log")
    try:
        with pytest.raises(ClusterError, match="slow: not ready after 1 s"):
            processes.wait_until(proc, lambda: False, "ready", timeout_s=1)
    finally:
        assert processes.stop(proc, grace_s=5) == "slow: stopped"
    assert not processes.is_ours(proc)


def test_stop_kills_the_whole_group_and_spares_a_reused_pid(tmp_path):
    # A child that ignores SIGTERM: stop must fall back to SIGKILL for the whole group.
    proc = processes.spawn("stubborn", ["sh", "-c", "trap '' TERM; sleep 60 & wait"], tmp_path / "s.log")
    time.sleep(0.3)
    stranger = replace(proc, start_time="1")  # same pid, another process as far as the record goes
    assert processes.stop(stranger) == "stubborn: not running"
    assert processes.is_ours(proc)
    assert processes.stop(proc, grace_s=0.5).startswith("stubborn: killed")
    assert not processes.is_ours(proc)


def test_down_without_a_cluster_does_nothing(home):
    assert cluster.down(log=lambda _m: None) == []


def test_make_cluster_targets_call_the_cluster_command():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    planned = subprocess.run(["make", "-n", "cluster-up", "cluster-down"], cwd=root, capture_output=True, text=True,
                             timeout=120).stdout
    assert "-m unified_pipeline.cluster up" in planned and "-m unified_pipeline.cluster down" in planned
