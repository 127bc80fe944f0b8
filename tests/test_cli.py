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
