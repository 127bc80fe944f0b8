import json

import pytest

import tiny_data
from unified_pipeline.cli import main


def test_data_lists_datasets_and_unrecognised_folders(home, tmp_path, capsys):
    tiny_data.text(tmp_path / "raw")
    (tmp_path / "raw" / "mystery").mkdir()
    (tmp_path / "raw" / "mystery" / "notes.xyz").write_text("?")
    assert main(["data", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["dataset"] for d in out["datasets"]] == ["tiny_text"]
    assert "mystery" in out["not_recognised"]


def test_bad_preset_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "p.json"
    bad.write_text('{"preset_name": "x", "training_scenarios": {"a": {"epochs": -3}}}')
    assert main(["presets", "validate", "--file", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "epochs" in err and len(err.splitlines()) == 1


def test_presets_list_and_show(capsys):
    assert main(["presets", "list"]) == 0
    assert "collaborative_training" in capsys.readouterr().out
    assert main(["presets", "show", "vision_focus"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["scenario"]["epochs"] == 40 and "vision_service" in shown["models"]


def test_control_queues_command_for_a_known_model(home, capsys):
    assert main(["control", "vision_service", "--lr", "0.0005"]) == 0
    assert main(["pause", "vision_service"]) == 0
    cmd = json.loads((home / "control" / "vision_service.json").read_text())
    assert cmd["lr"] == 0.0005 and cmd["pause"] is True
    assert main(["control", "no_such_model", "--stop"]) == 2
    assert main(["control", "vision_service"]) == 2


def test_status_and_monitor_show_progress(home, capsys):
    from unified_pipeline.progress import ProgressWriter

    w = ProgressWriter("vision_service", "run1", epochs=10, device="cpu")
    w.on_epoch({"epoch": 4, "train_loss": 0.5, "val_accuracy": 0.9, "samples_per_s": 1000.0})
    assert main(["status", "--json"]) == 0
    (state,) = json.loads(capsys.readouterr().out)
    assert state["epoch"] == 4 and state["status"] == "running" and state["eta_s"] >= 0
    assert main(["monitor", "--once"]) == 0
    frame = capsys.readouterr().out
    assert "vision_service" in frame and "4/10" in frame and "accuracy=0.9000" in frame
    w.finish("finished")
    assert main(["monitor", "--until-idle", "--interval", "0.2"]) == 0


def test_results_without_runs_says_so(home, capsys):
    assert main(["results"]) == 0
    assert "no results" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["predict", "nope", "x"], ["models", "show", "vision_service"]])
def test_errors_are_one_line(home, argv, capsys):
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "Traceback" not in err


def _subcommands() -> list[str]:
    from unified_pipeline.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return sorted(sub.choices)


def test_every_documented_command_exists():
    wanted = {"train", "status", "monitor", "results", "data", "presets", "collaborative", "visualize",
              "pause", "resume", "stop", "sample-data", "predict", "models"}
    assert wanted <= set(_subcommands())


@pytest.mark.parametrize("command", _subcommands())
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: unified-pipeline {command}") and "-h, --help" in out


def _failed_ui_run(home, monkeypatch, tmp_path, run_id="5eed0001-aaaa"):
    from dagster import AssetKey
    from dagster._core.storage.dagster_run import DagsterRun

    from unified_pipeline.error_report import write_error_report

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    run = DagsterRun(job_name="__ASSET_JOB", run_id=run_id, run_config={"ops": {"text_service": {"config": {"epochs": 2}}}},
                     asset_selection=frozenset({AssetKey(["text_service"])}))
    write_error_report("text_service", run_id, run.job_name, RuntimeError("killed"), run=run)
    return home / "reports" / f"{run_id}-run-config.yaml"


def test_train_resume_dry_run_prints_the_failed_runs_command(home, monkeypatch, tmp_path, capsys):
    config = _failed_ui_run(home, monkeypatch, tmp_path)
    assert main(["train", "--resume", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "resuming run 5eed0001-aaaa (__ASSET_JOB)" in out
    assert f"$ dagster asset materialize -m unified_pipeline.definitions --select text_service -c {config}" in out


def test_train_resume_launches_dagster_with_the_same_selection_and_config(home, monkeypatch, tmp_path):
    from unified_pipeline import cli

    config = _failed_ui_run(home, monkeypatch, tmp_path)
    _failed_ui_run(home, monkeypatch, tmp_path, run_id="older-run")  # not the one asked for
    launched = []
    monkeypatch.setattr(cli, "_launch", lambda args: launched.append(args) or 7)
    assert main(["train", "--resume", "5eed0001"]) == 7  # dagster's exit status is passed through
    assert launched == [["asset", "materialize", "-m", "unified_pipeline.definitions", "--select", "text_service",
                         "-c", str(config)]]
    assert main(["train", "--preset", "vision_focus", "--resume"]) == 2


def test_train_resume_without_failures_is_one_line(home, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    assert main(["train", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no failed run recorded") and len(err.splitlines()) == 1


def test_os_error_names_the_path(home, capsys):
    assert main(["visualize", "--out", "/dev/null/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: /dev/null/x: Not a directory (hint: a part of the path is a file, not a folder)"


def test_unexpected_error_is_one_line_and_debug_shows_the_traceback(home, monkeypatch, capsys):
    def broken():
        raise RuntimeError("state file\nis corrupt")

    monkeypatch.setattr("unified_pipeline.progress.read_all", broken)
    assert main(["status"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: RuntimeError: state file is corrupt "
                   "(hint: rerun as `unified-pipeline --debug status ...` to see the traceback)")
    for argv in (["--debug", "status"], ["status", "--debug"]):
        with pytest.raises(RuntimeError, match="corrupt"):
            main(argv)


def test_results_refuses_run_names_that_leave_the_results_folder(home, tmp_path, capsys):
    (home / "results").mkdir(parents=True)
    (home / "results" / "abc123-run.json").write_text('{"run_id": "abc123-run"}')
    (home / "secret.json").write_text('{"secret": 1}')
    for bad in ["../secret", "/etc/passwd", "..", "a/b"]:
        assert main(["results", "--run", bad, "--json"]) == 2
        captured = capsys.readouterr()
        assert "secret" not in captured.out and captured.err.startswith("error: invalid run id")
    assert main(["results", "--run", "abc1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == "abc123-run"


def test_data_shows_the_last_quality_verdict(home, tmp_path, monkeypatch, capsys):
    from dagster import AssetCheckEvaluation, AssetKey, DagsterInstance

    raw = tmp_path / "raw"
    tiny_data.text(raw)
    tiny_data.vision(raw)
    tiny_data.causal(raw)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    assert main(["data", "--json"]) == 0
    assert {d["validation"]["status"] for d in json.loads(capsys.readouterr().out)["datasets"]} == {"not run"}
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        for dataset, passed in (("tiny_text", False), ("tiny_text", True), ("tiny_images", False)):
            instance.report_runless_asset_event(AssetCheckEvaluation(
                asset_key=AssetKey([dataset, "manifest"]), check_name="great_expectations", passed=passed))
    assert main(["data", "--json"]) == 0
    status = {d["dataset"]: d["validation"]["status"] for d in json.loads(capsys.readouterr().out)["datasets"]}
    assert status == {"tiny_text": "passed", "tiny_images": "failed", "tiny_causal": "not run"}
    assert main(["data"]) == 0
    table = capsys.readouterr().out
    assert "validation: failed" in table and "validation: not run" in table


def test_data_says_unknown_when_the_instance_cannot_be_read(home, tmp_path, monkeypatch, capsys):
    tiny_data.text(tmp_path / "raw")
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("run_storage:\n  module: no_such_module\n  class: Nope\n")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    assert main(["data"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("tiny_text") and "validation: unknown (" in line
