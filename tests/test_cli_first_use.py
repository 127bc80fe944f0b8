"""The CLI as a new user meets it: progress of every model kind, plots, predict --top, version
names, unknown names refused, run config files checked, resume after a killed run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_data
from unified_pipeline.cli import main

VISION_HP = {"epochs": 2, "batch_size": 16, "learning_rate": 2e-3, "early_stopping_patience": 0,
             "widths": [8], "blocks_per_stage": 1, "warm_start": False, "seed": 0}


@pytest.fixture
def vision_version(home, tmp_path):
    """A real (tiny) vision_service/v1 trained on three classes of 8x8 images."""
    from unified_pipeline.assets.data_assets import build_manifest, build_tensors
    from unified_pipeline.datasets import DatasetRef
    from unified_pipeline.train_model import train_or_reuse

    ds = tiny_data.vision(tmp_path / "raw")
    ref = DatasetRef(ds.name, "vision", ds)
    version, _, manifest = build_manifest(ref)
    tensors = {ds.name: build_tensors(ref, manifest, version, {})[0]}
    out = train_or_reuse("vision_service", tensors, dict(VISION_HP))
    assert out.version == "vision_service/v1"
    return ds


# ------------------------------------------------------------------ status and monitor


def test_status_and_monitor_show_models_whose_progress_has_no_loss(home, capsys):
    from unified_pipeline.progress import ProgressWriter

    causal = ProgressWriter("causal_reasoning_engine", "run1", epochs=0, device="cpu")
    causal.on_epoch({"epoch": 3, "dataset": "d10", "h": 0.01, "rho": 10.0, "elapsed_s": 0.5})
    ctl = ProgressWriter("adaptive_learning_controller", "run1", epochs=30, device="cpu")
    ctl.finish("finished", test={"wins_fraction": 1.0})
    assert main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    causal_line = next(line for line in lines if line.startswith("causal_reasoning_engine"))
    assert "running" in causal_line and " 3/1 " in causal_line and causal_line.split()[4] == "-"
    assert main(["monitor", "--once"]) == 0
    assert "adaptive_learning_controller" in capsys.readouterr().out


# ------------------------------------------------------------------ visualize


def test_history_plots_keep_datasets_apart_and_draw_histories_without_epochs(tmp_path):
    from unified_pipeline.training import plots

    simulator = [{"epoch": e, "dataset": env, "train_loss": 1.0 / e + off, "val_loss": 1.2 / e + off, "val_mse": 0.1 / e}
                 for env, off in (("cartpole", 0.0), ("pendulum", 0.5)) for e in range(1, 5)]
    written = plots.history_plots(simulator, tmp_path / "sim", "environment_simulator")
    assert sorted(p.name for p in written) == ["loss.png", "val_mse.png"]
    fig_lines = _line_counts(simulator)
    assert fig_lines == {"cartpole": 4, "pendulum": 4}  # two lines per curve, never one zig-zag

    controller = [{"model": m, "trial": t, "state": "COMPLETE", "value": 0.5 + t / 10, "epochs": 2, "lr_multiplier": 1.0}
                  for m in ("vision_service", "text_service") for t in range(3)]
    names = {p.name for p in plots.history_plots(controller, tmp_path / "ctl", "adaptive_learning_controller")}
    assert names == {"value.png", "lr_multiplier.png"}

    causal = [{"epoch": i, "dataset": "d10", "h": 1.0 / i, "rho": 10.0 * i, "elapsed_s": 0.1 * i} for i in range(1, 4)]
    assert {p.name for p in plots.history_plots(causal, tmp_path / "causal", "causal")} == {"h.png", "rho.png"}
    for p in (tmp_path / "sim").iterdir():
        assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 5000  # drawn, not an empty frame


def _line_counts(history):
    from unified_pipeline.training.plots import history_groups

    return {g: len(recs) for g, recs in history_groups(history).items()}


def test_visualize_writes_under_the_run_root_and_lists_what_it_wrote(vision_version, home, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["visualize", "vision_service"]) == 0
    out = capsys.readouterr().out
    folder = home / "plots" / "vision_service"
    assert sorted(p.name for p in folder.iterdir()) == ["loss.png", "val_accuracy.png", "val_macro_f1.png"]
    assert str(folder / "loss.png") in out and "3 plot(s) written" in out
    assert not (tmp_path / "plots").exists()


def test_visualize_unknown_model_fails(home, capsys):
    assert main(["visualize", "nosuch"]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err


# ------------------------------------------------------------------ predict and version names


def test_predict_top_gives_that_many_labels_and_refuses_zero(vision_version, capsys):
    image = next((vision_version / "1").glob("*.png"))
    assert main(["predict", "vision_service", str(image), "--top", "3"]) == 0
    item, shown = capsys.readouterr().out.strip().split("\t")
    labels = [part.split(" (")[0] for part in shown.split(", ")]
    assert item == str(image) and sorted(labels) == ["0", "1", "2"]
    probs = [float(part.split("(")[1].rstrip(")")) for part in shown.split(", ")]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=2e-3)
    assert main(["predict", "vision_service", str(image)]) == 0
    assert len(capsys.readouterr().out.strip().split("\t")[1].split(", ")) == 1
    with pytest.raises(SystemExit) as stop:
        main(["predict", "vision_service", str(image), "--top", "0"])
    assert stop.value.code == 2 and "must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["models", "show", "vision_service/v1", "--json"],
    ["models", "show", "vision_service", "v1", "--json"],
    ["models", "show", "vision_service/production", "--json"],
    ["models", "show", "vision_service", "latest", "--json"],
])
def test_models_show_takes_every_spelling(vision_version, argv, capsys):
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "vision_service/v1"


def test_compare_and_predict_take_every_spelling(vision_version, capsys):
    image = str(next((vision_version / "0").glob("*.png")))
    for argv in (["models", "compare", "vision_service/v1", "vision_service/production", "--json"],
                 ["models", "compare", "vision_service/v1", "latest", "--json"],
                 ["models", "compare", "vision_service", "v1", "production", "--json"]):
        assert main(argv) == 0, argv
        json.loads(capsys.readouterr().out)
    for argv in (["predict", "vision_service/v1", image], ["predict", "vision_service", image, "--version", "vision_service/v1"],
                 ["predict", "vision_service/production", image]):
        assert main(argv) == 0, argv
        assert capsys.readouterr().out.startswith(image)
    assert main(["models", "show", "vision_service/v1", "v2"]) == 2
    assert "name two versions" in capsys.readouterr().err
    assert main(["models", "compare", "vision_service/v1"]) == 2
    assert "compare needs two versions" in capsys.readouterr().err


# ------------------------------------------------------------------ unknown names and run config files


def test_unknown_scenario_fails_even_on_a_dry_run(home, capsys):
    assert main(["train", "--preset", "nosuch", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown scenario 'nosuch'; valid: quick_start") and len(err.splitlines()) == 1
    assert main(["train", "--preset", "quick_start", "--dry-run"]) == 0
    assert "-j quick_start" in capsys.readouterr().out


@pytest.fixture
def lanes(home, tmp_path):
    tiny_data.vision(tmp_path / "raw")
    tiny_data.text(tmp_path / "raw")


@pytest.mark.parametrize("text, expected", [
    ("ops:\n  vision_service:\n    config:\n      epochs: 5\n      epoch: 3\n",
     "line 5: unknown key 'epoch' under ops.vision_service.config; valid: batch_size, "),
    ("ops:\n  vision_service:\n    config:\n      hparams: {dropout: 0.2, dropoot: 1}\n",
     "line 4: vision_service: run config hparams ['dropoot'] are not settings of this model; valid: "),
    ("ops:\n  vision_service:\n   config: {epochs: [}\n", "line 3 column 22: invalid YAML: "),
    ("- just\n- a list\n", "line 1: a run config is a mapping"),
])
def test_bad_run_config_file_is_one_line_with_file_and_line(lanes, tmp_path, capsys, text, expected):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert main(["train", "--preset", "vision_focus", "-c", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"error: {path}: {expected}")


def test_good_run_config_file_passes(lanes, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("ops:\n  vision_service:\n    config: {epochs: 5, learning_rate: 0.003, hparams: {dropout: 0.2}}\n")
    assert main(["train", "--preset", "vision_focus", "-c", str(path), "--dry-run"]) == 0
    assert f"-j vision_focus -c {path}" in capsys.readouterr().out


# ------------------------------------------------------------------ resume after a kill


def _instance_home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _started_run(home, run_id, pid):
    """A run as Dagster leaves it when its process is SIGKILLed: STARTED, with events from `pid`."""
    from dagster import DagsterEvent, DagsterEventType, DagsterInstance
    from dagster._core.events.log import EventLogEntry
    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_run(DagsterRun(job_name="vision_focus", run_id=run_id, status=DagsterRunStatus.STARTED,
                                    run_config={"ops": {"vision_service": {"config": {"epochs": 3}}}}))
        event = DagsterEvent(DagsterEventType.RUN_START.value, job_name="vision_focus", pid=pid)
        instance.store_event(EventLogEntry(error_info=None, level=20, user_message="", run_id=run_id,
                                           timestamp=1.0, dagster_event=event, job_name="vision_focus"))


def test_resume_finds_a_killed_run_in_dagsters_run_storage(home, tmp_path, monkeypatch, capsys):
    dagster_home = _instance_home(tmp_path, monkeypatch)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _started_run(dagster_home, "deadbeef-0001", dead.pid)
    _started_run(dagster_home, "a11ve000-0002", os.getpid())  # still running: not a candidate
    assert main(["train", "--resume", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "resuming run deadbeef-0001 (vision_focus)" in out
    config = home / "reports" / "deadbeef-0001-run-config.yaml"
    assert f"$ dagster job execute -m unified_pipeline.definitions -j vision_focus -c {config}" in out
    assert "epochs: 3" in config.read_text()
    assert main(["train", "--resume", "deadb", "--dry-run"]) == 0  # an id prefix, as `results --run` takes
    assert "resuming run deadbeef-0001" in capsys.readouterr().out


def test_resume_with_a_failed_run_in_run_storage_only(home, tmp_path, monkeypatch, capsys):
    from dagster import DagsterInstance
    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

    dagster_home = _instance_home(tmp_path, monkeypatch)
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_run(DagsterRun(job_name="quick_start", run_id="f00dcafe-0003", status=DagsterRunStatus.FAILURE))
    assert main(["train", "--resume", "f00d", "--dry-run"]) == 0
    assert "$ dagster job execute -m unified_pipeline.definitions -j quick_start" in capsys.readouterr().out


def test_staging_left_by_a_killed_step_is_removed_by_the_next_training(vision_version, home):
    from unified_pipeline.assets.data_assets import build_manifest, build_tensors
    from unified_pipeline.datasets import DatasetRef
    from unified_pipeline.train_model import train_or_reuse

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = home / "staging" / "vision_service" / f"0a1b2c3d-run-{dead.pid}-abcdef"
    left.mkdir(parents=True)
    ours = home / "staging" / "vision_service" / f"other-run-{os.getpid()}-123456"
    ours.mkdir()
    ref = DatasetRef(vision_version.name, "vision", vision_version)
    version, _, manifest = build_manifest(ref)
    tensors = {vision_version.name: build_tensors(ref, manifest, version, {})[0]}
    train_or_reuse("vision_service", tensors, dict(VISION_HP), force=True)
    assert not left.exists() and ours.exists()


def test_every_scenario_job_writes_the_run_summary_that_results_shows(lanes):
    from unified_pipeline.definitions import build_definitions

    defs = build_definitions()
    for job in ("quick_start", "vision_focus", "collaborative_training"):
        nodes = {n.name for n in defs.resolve_job_def(job).nodes_in_topological_order}
        assert "training_summary" in nodes, job


def test_status_says_why_the_newest_version_was_trained(vision_version, capsys):
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "vision_service/v1 [latest, production]: trained: first version of this model" in out
    assert main(["status", "--json"]) == 0
    (state,) = json.loads(capsys.readouterr().out)
    assert state["newest_version"] == "vision_service/v1" and state["why"].startswith("trained: first version")


def test_a_misnamed_label_column_says_what_a_text_dataset_needs(home, tmp_path, capsys):
    ds = tiny_data.text(tmp_path / "raw")
    csv = ds / "data.csv"
    csv.write_text(csv.read_text().replace("text,label", "text,labels", 1))
    assert main(["data"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("tiny_text") and "not recognised" in line
    assert "data.csv has columns text, labels" in line
    assert "a text dataset needs columns `text` and `label`" in line


# ------------------------------------------------------------------ instance and preset notices


def _import_definitions(env_changes, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "UNIFIED_TEMP_INSTANCE_NOTICE")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", "import unified_pipeline.definitions"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_a_throwaway_dagster_instance_is_announced_and_the_project_one_is_not(home, tmp_path):
    tiny_data.text(tmp_path / "raw")
    without = _import_definitions({}, tmp_path)
    assert without.returncode == 0, without.stderr
    assert "WARNING: DAGSTER_HOME is not set" in without.stderr and "export DAGSTER_HOME=" in without.stderr
    with_home = _import_definitions({"DAGSTER_HOME": str(tmp_path)}, tmp_path)
    assert with_home.returncode == 0 and "DAGSTER_HOME is not set" not in with_home.stderr


def test_preset_roots_that_are_not_in_use_are_named(home, tmp_path, capsys):
    preset = json.loads(open("presets/training_preset.json").read())
    preset["data_configuration"].update(data_root="/srv/my_data", output_root=str(home))
    path = tmp_path / "p.json"
    path.write_text(json.dumps(preset))
    assert main(["presets", "validate", "--file", str(path)]) == 0
    err = capsys.readouterr().err
    assert "data_configuration.data_root '/srv/my_data' is ignored: this run uses" in err
    assert "set UNIFIED_DATA=/srv/my_data to use that folder" in err
    assert "output_root" not in err  # the folder in use: nothing to say


def test_misspelt_preset_setting_fails_before_dagster_starts(lanes, tmp_path, monkeypatch, capsys):
    preset = json.loads((Path(__file__).resolve().parents[1] / "presets" / "training_preset.json").read_text())
    preset["model_specific_presets"]["vision_service"] = {"learnig_rate": 0.01}
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    monkeypatch.setenv("UNIFIED_PRESET", str(path))
    assert main(["train", "--preset", "vision_focus", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "model_specific_presets.vision_service: ['learnig_rate']" in err and "'learning_rate'" in err
