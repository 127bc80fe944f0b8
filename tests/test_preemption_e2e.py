"""Preemption end to end: the real job in a subprocess (multiprocess executor), SIGTERM to the
model step's process mid-epoch, one retry that resumes from the checkpoint, a green run, and
final weights equal to an uninterrupted run; and a second SIGTERM during the save."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import _train_worker as worker
import tiny_data
from unified_pipeline.training import checkpoints as ck

ROOT = Path(__file__).resolve().parents[1]
MODEL, JOB = "text_service", "preemption_check"
EPOCHS = 4
STEP_DELAY_S = 0.1  # a training step sleeps this long (trainer test hook), so an epoch lasts >= 0.7 s


def _preset(tmp_path: Path) -> Path:
    preset = json.loads((ROOT / "presets" / "training_preset.json").read_text())
    preset["training_scenarios"][JOB] = {
        "description": "text model only, for the preemption test", "datasets": ["all_available_datasets"],
        "epochs": EPOCHS, "batch_size": 8, "target_models": [MODEL], "checkpoint_interval": 1, "use_gpu": False}
    preset["model_specific_presets"][MODEL] = {"batch_size": 8, "epochs": EPOCHS, "early_stopping_patience": 0}
    preset["training_configuration"].update(preemption_retries=1, preemption_retry_delay_s=1.5)
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    return path


def _wait(predicate, proc: subprocess.Popen, what: str, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"job ended (rc {proc.returncode}) before {what}:\n{proc.stdout.read()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _progress(home: Path) -> dict:
    try:
        return json.loads((home / "progress" / f"{MODEL}.json").read_text())
    except (OSError, ValueError):
        return {}


def test_sigterm_mid_epoch_retries_resumes_and_matches_uninterrupted_run(tmp_path, monkeypatch):
    from dagster import DagsterEventType, DagsterInstance

    from unified_pipeline.registry import ModelRegistry
    from unified_pipeline.training.replay import compare_weights, reproduce

    raw, home, dhome = tmp_path / "raw", tmp_path / "home", tmp_path / "dagster_home"
    tiny_data.text(raw)
    dhome.mkdir()
    (dhome / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "UNIFIED_HOME": str(home), "UNIFIED_DATA": str(raw),
           "DAGSTER_HOME": str(dhome), "UNIFIED_PRESET": str(_preset(tmp_path)), "UNIFIED_THREADS_PER_STEP": "1",
           "UNIFIED_PROGRESS_BAR": "0", "UNIFIED_STEP_DELAY_S": str(STEP_DELAY_S), "GX_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "dagster", "job", "execute", "-m", "unified_pipeline.definitions",
                             "-j", JOB], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        # Timed from the step's own progress record: the first epoch is done...
        state = _wait(lambda: (lambda s: s if s.get("status") == "running" and s.get("epoch", 0) >= 1 else None)(
            _progress(home)), proc, "the first epoch")
        # ...and two slowed steps of the next one (of 7, STEP_DELAY_S each) later: mid-epoch 2.
        time.sleep(2 * STEP_DELAY_S)
        os.kill(int(state["pid"]), signal.SIGTERM)
        seen_epoch = int(state["epoch"])
        stopped = _wait(lambda: (lambda s: s if s.get("status") == "preempted" else None)(_progress(home)),
                        proc, "the preempted progress record")
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    assert stopped["pid"] == state["pid"] and stopped["signal"] == "SIGTERM"

    with DagsterInstance.from_config(str(dhome)) as instance:
        run = instance.get_runs(limit=1)[0]
        assert run.is_success
        kinds = [e.dagster_event.event_type for e in instance.all_logs(run.run_id) if e.dagster_event
                 and e.dagster_event.step_key == MODEL]
    assert kinds.count(DagsterEventType.STEP_UP_FOR_RETRY) == 1
    assert kinds.count(DagsterEventType.STEP_RESTARTED) == 1 and kinds[-1] == DagsterEventType.STEP_SUCCESS

    monkeypatch.setenv("UNIFIED_HOME", str(home))
    version = ModelRegistry().get(MODEL, "latest")
    lineage = version.lineage
    (pre,) = lineage["preemptions"]
    assert pre["signal"] == "SIGTERM" and pre["run_id"] == run.run_id
    # Saved at the first step boundary after the signal: no completed epoch lost, and it was mid-epoch.
    assert pre["epoch"] >= seen_epoch and pre["step"] >= 1
    assert Path(lineage["resumed_from"]).name == Path(pre["checkpoint"]).name
    assert lineage["cost"]["attempts"] == 2 and lineage["cost"]["cpu_s"] > 0
    assert not (home / "preemptions" / MODEL).exists() or not any((home / "preemptions" / MODEL).iterdir())

    # An uninterrupted run of the same inputs (a replay trains from scratch, without checkpoints).
    report = reproduce(version.name, tmp_path / "uninterrupted")
    assert report.weights_identical and report.match, report.text()
    identical, _ = compare_weights(version.path / "weights.safetensors",
                                   tmp_path / "uninterrupted" / "model" / "weights.safetensors")
    assert identical


def test_second_sigterm_during_the_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from unified_pipeline import atomic
    from unified_pipeline.training.trainer import TrainingInterrupted

    ckdir = tmp_path / "ck"
    real_save, real_loss = atomic.save_safetensors, worker.cross_entropy_loss
    saves: list[str] = []
    steps = {"n": 0}

    def loss_then_first_signal(model, batch):
        steps["n"] += 1
        if steps["n"] == 2 * 12 + 3:  # 12 steps per epoch: the third step of epoch 3
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(model, batch)

    def save_then_second_signal(path, tensors, metadata=None):
        saves.append(str(path))
        if len(saves) == 3:  # the preemption checkpoint after epochs 1 and 2: a second SIGTERM mid-write
            Path(path).write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(path, tensors, metadata=metadata)

    monkeypatch.setattr(worker, "cross_entropy_loss", loss_then_first_signal)
    monkeypatch.setattr(atomic, "save_safetensors", save_then_second_signal)
    with pytest.raises(TrainingInterrupted) as info:
        worker.train(ckdir, epochs=6)
    assert info.value.signum == signal.SIGTERM and info.value.checkpoint is None
    assert [p.name for _k, p in ck.list_checkpoints(ckdir)] == ["ckpt-epoch0001", "ckpt-epoch0002"]
    monkeypatch.setattr(atomic, "save_safetensors", real_save)
    monkeypatch.setattr(worker, "cross_entropy_loss", real_loss)
    assert not [p for p in ckdir.glob(".*") if p.name != ".lock"]  # the half-written folder is gone (.lock: the NFS-safe lock file)
    newest = ck.latest_valid(ckdir)
    assert (newest.epoch, newest.step) == (2, 0)

    resumed, summary = worker.train(ckdir, epochs=6)
    reference, _ = worker.train(None, epochs=6)
    assert summary.resumed_from == str(newest.path)
    for k, v in reference.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_retry_count_and_backoff_come_from_the_preset(tmp_path, monkeypatch):
    from dagster import AssetKey, Backoff

    from unified_pipeline.definitions import build_definitions

    preset = json.loads((ROOT / "presets" / "training_preset.json").read_text())
    preset["training_configuration"].update(preemption_retries=3, preemption_retry_delay_s=5)
    (tmp_path / "preset.json").write_text(json.dumps(preset))
    tiny_data.text(tmp_path / "raw")
    monkeypatch.setenv("UNIFIED_PRESET", str(tmp_path / "preset.json"))
    monkeypatch.setenv("UNIFIED_DATA", str(tmp_path / "raw"))
    monkeypatch.setenv("UNIFIED_HOME", str(tmp_path / "home"))
    policy = build_definitions().resolve_assets_def(AssetKey([MODEL])).op.retry_policy
    assert (policy.max_retries, policy.delay, policy.backoff) == (3, 5, Backoff.EXPONENTIAL)


def test_errors_other_than_preemption_are_not_retried(home, tmp_path, monkeypatch):
    from dagster import AssetKey, DagsterEventType, DagsterInstance, RetryPolicy, asset, materialize

    from unified_pipeline.assets.json_io import JsonIOManager
    from unified_pipeline.assets.model_assets import model_asset
    from unified_pipeline.models.registry import MODELS

    @asset(key=AssetKey(["tiny_text", "tensors"]))
    def tensors():
        return {"path": str(home / "never_read")}

    preset = json.loads((ROOT / "presets" / "training_preset.json").read_text())
    preset["model_specific_presets"][MODEL] = {"no_such_setting": 1}
    (tmp_path / "bad_preset.json").write_text(json.dumps(preset))
    monkeypatch.setenv("UNIFIED_PRESET", str(tmp_path / "bad_preset.json"))
    model = model_asset(MODELS[MODEL], ["tiny_text"], retry_policy=RetryPolicy(max_retries=3))
    with DagsterInstance.ephemeral() as instance:
        result = materialize([tensors, model], instance=instance, resources={"io_manager": JsonIOManager()},
                             raise_on_error=False)
    assert not result.success
    events = [e for e in result.all_events if e.step_key == MODEL]
    assert not [e for e in events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    (failure,) = [e for e in events if e.event_type == DagsterEventType.STEP_FAILURE]
    # One line naming the refused key, as the step reports a refused setting.
    assert f"model_specific_presets.{MODEL}: ['no_such_setting'] are not settings of this model" in \
        failure.step_failure_data.user_failure_data.description
