"""Every command README.md shows is run here, or by the test named for it below."""
from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

import tiny_data
from test_cli_first_use import VISION_HP, vision_version  # noqa: F401 - fixture
from unified_pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PREFIXES = ("make ", "unified-pipeline ", "dagster ", "dg ", "from unified_pipeline", "UNIFIED_PRESET=", "export ")

# Examples run elsewhere (Dagster launches, model-specific predict, make targets), by prefix.
ELSEWHERE = {
    "make run": ["test_readme_commands.py::test_the_run_is_kept_in_the_projects_dagster_instance"],
    "make test": ["test_readme_examples.py::test_first_screen_is_make_run_and_make_test"],
    "make dev": ["test_ui_browser.py"],
    "dg dev": ["test_launch_by_name.py::test_dg_finds_the_project_from_its_root"],
    "make bench": ["test_bench_replay.py"],
    "dg launch": ["test_launch_by_name.py::test_dg_launch_runs_into_the_project_instance"],
    "dagster job execute": ["test_readme_commands.py::test_the_run_is_kept_in_the_projects_dagster_instance"],
    "UNIFIED_PRESET=": ["test_definitions.py::test_scenario_naming_an_unknown_dataset_fails_listing_the_valid_ones",
                        "test_model_metadata.py::test_reused_materialisation_carries_the_versions_numbers_curves_and_reason"],
    "export DAGSTER_HOME": ["test_cli_first_use.py::test_a_throwaway_dagster_instance_is_announced_and_the_project_one_is_not"],
    "unified-pipeline sample-data": ["test_readme_examples.py::test_sample_data_command"],
    "unified-pipeline predict text_service": ["test_models.py::test_text_fit_beats_chance_and_reports_baseline"],
    "unified-pipeline predict multimodal_service": ["test_models.py::test_multimodal_fit_reuses_frozen_encoders"],
    "unified-pipeline predict causal_reasoning_engine": ["test_concept_predict.py::test_causal_predict_intervention_and_counterfactual"],
    "unified-pipeline predict environment_simulator": ["test_concept_predict.py::test_simulator_predict_matches_simulate"],
    "unified-pipeline predict alpha_deep_model": ["test_concept_predict.py::test_alpha_predict_finds_record_and_feedback"],
    "unified-pipeline train --resume": ["test_cli_first_use.py::test_resume_finds_a_killed_run_in_dagsters_run_storage"],
    "unified-pipeline monitor": ["test_cli.py::test_status_and_monitor_show_progress"],
    "make install": ["test_install_lock.py::test_make_check_lock_finds_the_venv_equal_to_the_lock"],
    "make check-lock": ["test_install_lock.py::test_make_check_lock_finds_the_venv_equal_to_the_lock"],
    "make lock": ["test_install_lock.py::test_make_lock_targets_keep_or_move_pins_on_purpose"],
    "make cluster-up": ["test_celery_mode.py::test_make_cluster_targets_call_the_cluster_command"],
    "make cluster-down": ["test_celery_mode.py::test_make_cluster_targets_call_the_cluster_command"],
}
# Examples this file runs itself (test_cli_examples_run_on_tiny_data), as README writes them.
RUN_HERE = {
    "unified-pipeline collaborative", "unified-pipeline train --preset vision_focus",
    "unified-pipeline train --preset vision_focus -c run.yaml", "unified-pipeline data",
    "unified-pipeline presets list", "unified-pipeline presets show quick_start",
    "unified-pipeline presets validate --file my_preset.json", "unified-pipeline status",
    "unified-pipeline control vision_service --lr 1e-4", "unified-pipeline pause vision_service",
    "unified-pipeline results [--run ID]", "unified-pipeline visualize [MODEL]",
    "unified-pipeline models list\\|show\\|compare\\|promote\\|rollback\\|prune\\|tag [--json]",
    "unified-pipeline models show vision_service/v1", "unified-pipeline models compare vision_service v1 v2",
    "unified-pipeline predict vision_service img.png", "unified-pipeline predict audio_service clip.wav --top 3",
    "unified-pipeline predict vision_service/v1 img.png",
    'from unified_pipeline import load_model; model = load_model("vision_service")',
}


def readme_examples() -> list[str]:
    spans = re.findall(r"`([^`\n]+)`", README)
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    return list(dict.fromkeys(commands + [s for s in spans if s.startswith(PREFIXES)]))


def test_first_screen_is_make_run_and_make_test():
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert README.index("```bash") < 400  # the first thing after the title and one sentence
    assert [line.split("#")[0].strip() for line in block.group(1).splitlines()] == ["make run", "make test"]


def _test_exists(node: str) -> bool:
    file, _, name = node.partition("::")
    path = ROOT / "tests" / file
    if not path.is_file():
        return False
    if not name:
        return True
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body)


def test_every_readme_example_is_exercised():
    missing = []
    for example in readme_examples():
        if example in RUN_HERE:
            continue
        nodes = next((v for k, v in ELSEWHERE.items() if example.startswith(k)), None)
        if not nodes or not all(_test_exists(n) for n in nodes):
            missing.append(example)
    assert not missing, f"README examples no test runs: {missing}"


def test_sample_data_command(home, tmp_path):
    assert main(["sample-data", "--kind", "text", "--no-progress"]) == 0
    assert {p.name for p in (tmp_path / "raw").iterdir()} >= {"langid", "number_words"}


def _run(example: str, capsys, *extra: str, replace: dict | None = None) -> str:
    assert example in RUN_HERE and example in readme_examples(), example
    argv = shlex.split(example)[1:]
    for old, new in (replace or {}).items():
        argv = [new if a == old else a for a in argv]
    argv = [a for a in argv if a] + list(extra)
    assert main(argv) == 0, (argv, capsys.readouterr().err)
    return capsys.readouterr().out


def test_cli_examples_run_on_tiny_data(vision_version, home, tmp_path, monkeypatch, capsys):  # noqa: F811
    from unified_pipeline.assets.data_assets import build_manifest, build_tensors
    from unified_pipeline.datasets import DatasetRef
    from unified_pipeline.train_model import train_or_reuse

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    shutil.copy(next((vision_version / "2").glob("*.png")), tmp_path / "img.png")
    audio = tiny_data.audio(tmp_path / "raw")
    shutil.copy(next((audio / "high").glob("*.wav")), tmp_path / "clip.wav")
    ref = DatasetRef(audio.name, "audio", audio)
    version, _, manifest = build_manifest(ref)
    train_or_reuse("audio_service", {audio.name: build_tensors(ref, manifest, version, {})[0]},
                   {"epochs": 2, "batch_size": 8, "warm_start": False})
    vref = DatasetRef(vision_version.name, "vision", vision_version)
    version, _, manifest = build_manifest(vref)
    train_or_reuse("vision_service", {vision_version.name: build_tensors(vref, manifest, version, {})[0]},
                   dict(VISION_HP), force=True)  # vision_service/v2, for compare

    assert "quick_start" in _run("unified-pipeline presets list", capsys)
    assert json.loads(_run("unified-pipeline presets show quick_start", capsys))["scenario"]["epochs"] == 5
    shutil.copy(ROOT / "presets" / "training_preset.json", tmp_path / "my_preset.json")
    assert "valid" in _run("unified-pipeline presets validate --file my_preset.json", capsys)
    assert "tiny_images" in _run("unified-pipeline data", capsys)
    assert "-j collaborative_training" in _run("unified-pipeline collaborative", capsys, "--dry-run")
    assert "-j vision_focus" in _run("unified-pipeline train --preset vision_focus", capsys, "--dry-run")
    yaml_example = re.search(r"`-c run\.yaml` with `(ops: .*?)`", README).group(1)
    (tmp_path / "run.yaml").write_text(yaml_example + "\n")
    assert "-c run.yaml" in _run("unified-pipeline train --preset vision_focus -c run.yaml", capsys, "--dry-run")
    assert "vision_service/v2" in _run("unified-pipeline status", capsys)
    assert "queued" in _run("unified-pipeline control vision_service --lr 1e-4", capsys)
    assert "queued" in _run("unified-pipeline pause vision_service", capsys)
    assert "no results yet" in _run("unified-pipeline results [--run ID]", capsys, replace={"[--run": "", "ID]": ""})
    assert "plot(s) written" in _run("unified-pipeline visualize [MODEL]", capsys, replace={"[MODEL]": "vision_service"})
    for sub in ("list", "show vision_service", "compare vision_service/v1 vision_service/v2", "promote vision_service v1",
                "rollback vision_service", "prune vision_service --keep 5", "tag vision_service v1 stable"):
        example = "unified-pipeline models list\\|show\\|compare\\|promote\\|rollback\\|prune\\|tag [--json]"
        assert example in readme_examples()
        assert main(["models", *sub.split(), "--json"]) == 0, sub
        json.loads(capsys.readouterr().out)
    assert "vision_service/v1" in _run("unified-pipeline models show vision_service/v1", capsys)
    assert "vision_service/v2" in _run("unified-pipeline models compare vision_service v1 v2", capsys)
    assert _run("unified-pipeline predict vision_service img.png", capsys).startswith("img.png\t")
    assert _run("unified-pipeline predict vision_service/v1 img.png", capsys).startswith("img.png\t")
    top = _run("unified-pipeline predict audio_service clip.wav --top 3", capsys).strip().split("\t")[1]
    assert sorted(part.split(" (")[0] for part in top.split(", ")) == ["high", "low"]  # both of the 2 classes
    namespace: dict = {}
    exec('from unified_pipeline import load_model; model = load_model("vision_service")', namespace)
    assert namespace["model"].__class__.__name__ == "VisionCNN"
