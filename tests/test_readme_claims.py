"""README promises, each proven on tiny data through the code path a user hits.

- a model step whose data, code and hyperparameters match a registered version reuses it, and a
  change to the code it runs retrains it;
- the model asset check passes and fails in a real run;
- a failed model step writes its error report, and `train --resume` resumes it through Dagster
  from its newest checkpoint;
- `load_model` and `predict` use `production` while `latest` is not promoted;
- the schedule's cron comes from UNIFIED_RETRAIN_CRON.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

import tiny_data

ROOT = Path(__file__).resolve().parents[1]
VISION = AssetKey(["vision_service"])


@pytest.fixture
def vision_home(home, tmp_path, monkeypatch):
    """Tiny images and a preset with a short vision_service run (a checkpoint every epoch)."""
    tiny_data.vision(tmp_path / "raw")
    preset = json.loads((ROOT / "presets" / "training_preset.json").read_text())
    for scenario in ("collaborative_training", "vision_focus"):
        preset["training_scenarios"][scenario].update(epochs=4, batch_size=8, checkpoint_interval=1)
    preset["model_specific_presets"]["vision_service"] = {"learning_rate": 0.01, "early_stopping_patience": 0}
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    monkeypatch.setenv("UNIFIED_PRESET", str(path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return home


def _assets():
    from unified_pipeline.definitions import build_definitions

    graph = build_definitions().resolve_asset_graph()
    return list({id(graph.get(k).assets_def): graph.get(k).assets_def for k in graph.get_all_asset_keys()}.values())


def _materialize(instance, selection, run_config=None, raise_on_error=True):
    from unified_pipeline.assets.json_io import JsonIOManager

    return materialize(_assets(), selection=selection, instance=instance, run_config=run_config or {},
                       resources={"io_manager": JsonIOManager()}, raise_on_error=raise_on_error)


def _data_lane(instance):
    lane = AssetSelection.assets(AssetKey(["tiny_images", "manifest"]), AssetKey(["tiny_images", "tensors"]))
    assert _materialize(instance, lane).success


def _vision_config(**config) -> dict:
    return {"ops": {"vision_service": {"config": config}}}


# ---------------------------------------------------------------- the model asset check in a real run

def test_model_asset_check_passes_and_fails_in_a_run(vision_home):
    with DagsterInstance.ephemeral() as instance:
        _data_lane(instance)
        passed = _materialize(instance, AssetSelection.assets(VISION), _vision_config(threshold=0.5))
        (check,) = passed.get_asset_check_evaluations()
        accuracy = check.metadata["value"].value
        assert check.check_name == "reaches_threshold" and check.passed and accuracy >= 0.5
        # The same version (reused) against a bar it cannot reach: the check fails and says why.
        failed = _materialize(instance, AssetSelection.assets(VISION), _vision_config(threshold=1.01))
        (check,) = failed.get_asset_check_evaluations()
        assert not check.passed and check.metadata["threshold"].value == 1.01
        assert check.metadata["value"].value == accuracy
        (mat,) = failed.get_asset_materialization_events()
        assert mat.event_specific_data.materialization.metadata["status"].value == "up to date (reused)"


# ---------------------------------------------------------------- a failed step: report, then resume

def test_failed_model_step_writes_its_report_and_train_resume_continues_from_its_checkpoint(
        vision_home, tmp_path, monkeypatch, capsys):
    from unified_pipeline.cli import main
    from unified_pipeline.registry import ModelRegistry
    from unified_pipeline.training import checkpoints

    real_save = checkpoints.save_checkpoint

    def disk_full_at_epoch_3(directory, epoch, step, state):
        if epoch == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(directory, epoch, step, state)

    from unified_pipeline.definitions import build_definitions

    job = build_definitions().resolve_job_def("vision_focus")  # a named job, as `-j vision_focus` runs it
    with DagsterInstance.ephemeral() as instance:
        with monkeypatch.context() as m:
            m.setattr(checkpoints, "save_checkpoint", disk_full_at_epoch_3)
            result = job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
    (record_file,) = (vision_home / "reports").glob("*-vision_service-error.json")
    record = json.loads(record_file.read_text())
    report = Path(record["report"]).read_text()
    assert record["run_id"] == result.run_id and record["model"] == "vision_service"
    assert "OSError: [Errno 28] No space left on device" in report and "Traceback" in report
    assert record["checkpoint"].endswith("ckpt-epoch0002") and record["checkpoint"] in report
    assert f"unified-pipeline train --resume {result.run_id}" in report

    # The README's command, with Dagster really launched: the step continues from epoch 2.
    assert main(["train", "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"resuming run {result.run_id} (vision_focus)" in out
    assert "$ dagster job execute -m unified_pipeline.definitions -j vision_focus" in out
    version = ModelRegistry().get("vision_service", "latest")
    assert version.name == "vision_service/v1" and version.lineage["resumed_from"] == record["checkpoint"]
    history = json.loads((Path(version.path) / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]


# ---------------------------------------------------------------- production, not latest

def test_load_model_and_predict_use_production_while_latest_is_not_promoted(home, tmp_path, capsys):
    from unified_pipeline import load_model
    from unified_pipeline.assets.data_assets import build_manifest, build_tensors
    from unified_pipeline.cli import main
    from unified_pipeline.datasets import discover
    from unified_pipeline.models import vision_cnn
    from unified_pipeline.registry import ModelRegistry
    from unified_pipeline.train_model import train_or_reuse

    tiny_data.vision(tmp_path / "raw")
    (ref,) = discover()
    version, _, manifest = build_manifest(ref)
    folder, _ = build_tensors(ref, manifest, version, {})
    good = train_or_reuse("vision_service", {"tiny_images": folder},
                          {"epochs": 6, "batch_size": 8, "learning_rate": 0.01, "early_stopping_patience": 0})
    worse = train_or_reuse("vision_service", {"tiny_images": folder},
                           {"epochs": 1, "batch_size": 8, "learning_rate": 1e-6, "early_stopping_patience": 0})
    assert (good.version, worse.version) == ("vision_service/v1", "vision_service/v2")
    assert good.promoted and not worse.promoted
    reg = ModelRegistry()
    assert reg.get("vision_service", "latest").number == 2 and reg.get("vision_service", "production").number == 1

    loaded = load_model("vision_service")
    for (k, a), b in zip(loaded.state_dict().items(), load_model("vision_service", "v1").state_dict().values()):
        assert torch.equal(a, b), k
    assert not all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                    load_model("vision_service", "latest").state_dict().values()))

    image = str(tmp_path / "raw" / "tiny_images" / "2" / "0.png")
    assert main(["predict", "vision_service", image]) == 0
    printed = capsys.readouterr().out.strip().split("\t")[1]
    (label, p1), = vision_cnn.predict(Path(good.path), [image])
    (_, p2), = vision_cnn.predict(Path(worse.path), [image])
    assert printed == f"{label} ({p1:.3f})" and f"{p1:.3f}" != f"{p2:.3f}"


# ---------------------------------------------------------------- reuse follows the code

CODE_RUN = """
import json, sys
from pathlib import Path
from unified_pipeline.train_model import train_or_reuse
o = train_or_reuse("vision_service", {"tiny_images": Path(sys.argv[1])},
                   {"epochs": 2, "batch_size": 8, "learning_rate": 0.01, "seed": 0})
print(json.dumps({"version": o.version, "reused": o.reused}))
"""


def test_a_change_to_the_code_a_model_runs_retrains_it_and_other_code_does_not(home, tmp_path):
    """A copy of the package is edited between runs, as a developer would edit the checkout."""
    from unified_pipeline.assets.data_assets import build_manifest, build_tensors
    from unified_pipeline.datasets import discover

    tiny_data.vision(tmp_path / "raw")
    (ref,) = discover()
    version, _, manifest = build_manifest(ref)
    folder, _ = build_tensors(ref, manifest, version, {})
    src = tmp_path / "src"
    shutil.copytree(ROOT / "unified_pipeline", src / "unified_pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(src)}
    probe = subprocess.run([sys.executable, "-c", "import unified_pipeline; print(unified_pipeline.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == str(src / "unified_pipeline" / "__init__.py")

    def run() -> tuple[str, bool]:
        # cwd: `python -c` puts the working directory first on sys.path, ahead of the edited copy.
        proc = subprocess.run([sys.executable, "-c", CODE_RUN, str(folder)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        return out["version"], out["reused"]

    def edit(rel: str) -> None:
        path = src / "unified_pipeline" / rel
        path.write_text(path.read_text() + "\n# edited\n")

    assert run() == ("vision_service/v1", False)
    edit("models/audio_rnn.py")  # code vision_service does not run
    assert run() == ("vision_service/v1", True)
    edit("models/vision_cnn.py")  # its own model file
    assert run() == ("vision_service/v2", False)
    edit("training/trainer.py")  # the training loop every model runs
    assert run() == ("vision_service/v3", False)


# ---------------------------------------------------------------- the schedule

def test_schedule_cron_comes_from_the_environment(vision_home, monkeypatch):
    from unified_pipeline.definitions import MAIN_JOB, build_definitions

    monkeypatch.setenv("UNIFIED_RETRAIN_CRON", "15 4 * * 1")
    (schedule,) = build_definitions().schedules
    assert (schedule.cron_schedule, schedule.job_name) == ("15 4 * * 1", MAIN_JOB)
    monkeypatch.delenv("UNIFIED_RETRAIN_CRON")
    (schedule,) = build_definitions().schedules
    assert schedule.cron_schedule == "0 3 * * *"
