"""Per version, end to end on tiny image data through the Dagster assets: promotion gated by
evidence (GX verdict per data version, the model's asset check, the rule) with a logged forced
override; cost in lineage, compare and summary; replay with identical weights on CPU, and a
clear refusal when the recorded data version is gone. Rollback marking downstream models stale."""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

import tiny_data
from unified_pipeline.registry.cli import add_models_parser, run_models_command

ROOT = Path(__file__).resolve().parents[1]
M, DS = "vision_service", "tiny_images"
HP = {"epochs": 6, "batch_size": 8, "seed": 0, "use_gpu": False, "early_stopping_patience": 0, "promotion_gate": True}


def cli(capsys, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_models_parser(parser.add_subparsers(dest="command"))
    code = run_models_command(parser.parse_args(["models", *argv]))
    return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """vision_service/v1 trained by the real assets: data lane with its GX check, then the model
    (its asset check at a threshold tiny data reaches)."""
    tmp = tmp_path_factory.mktemp("evidence")
    preset = json.loads((ROOT / "presets" / "training_preset.json").read_text())
    preset["training_scenarios"]["collaborative_training"].update(epochs=6, batch_size=8, use_gpu=False)
    preset["model_specific_presets"][M] = {"batch_size": 8, "epochs": 6, "early_stopping_patience": 0}
    (tmp / "preset.json").write_text(json.dumps(preset))
    tiny_data.vision(tmp / "raw")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNIFIED_HOME", str(tmp / "home"))
        mp.setenv("UNIFIED_DATA", str(tmp / "raw"))
        mp.setenv("UNIFIED_PRESET", str(tmp / "preset.json"))
        from unified_pipeline.assets.json_io import JsonIOManager
        from unified_pipeline.definitions import build_definitions

        defs = build_definitions()
        graph = defs.resolve_asset_graph()
        assets = list({id(graph.get(k).assets_def): graph.get(k).assets_def for k in graph.get_all_asset_keys()}.values())
        wanted = AssetSelection.assets(AssetKey([M])).upstream() - AssetSelection.assets(AssetKey([DS, "raw_files"]))
        with DagsterInstance.ephemeral() as instance:
            result = materialize(assets, selection=wanted, instance=instance, resources={"io_manager": JsonIOManager()},
                                 run_config={"ops": {M: {"config": {"threshold": 0.5}}}})
        assert result.success
        mats = {e.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
                for e in result.get_asset_materialization_events()}
        (folder,) = (tmp / "home" / "tensors" / DS).iterdir()
        yield {"tmp": tmp, "home": tmp / "home", "metadata": mats[M], "env": dict(os.environ), "tensors": {DS: folder}}


@pytest.fixture
def env(trained, monkeypatch):
    for key in ("UNIFIED_HOME", "UNIFIED_DATA", "UNIFIED_PRESET"):
        monkeypatch.setenv(key, trained["env"][key])
    return trained


def test_promotion_needs_evidence_and_a_forced_override_is_logged(env, capsys):
    from unified_pipeline.registry import ModelRegistry
    from unified_pipeline.train_model import train_or_reuse

    reg = ModelRegistry()
    v1 = reg.get(M, "production")
    evidence = v1.lineage["evidence"]
    ((ds, quality),) = evidence["data_quality"].items()
    assert ds == DS and quality["status"] == "passed" and quality["run_id"]
    assert evidence["asset_check"]["passed"] and evidence["rule"]["holds"]
    code, out = cli(capsys, "show", M, "v1")
    assert "Evidence for production" in out and f"data {DS}" in out and "Great Expectations passed" in out
    assert "asset check reaches_threshold: passed" in out and "verdict: may be production" in out

    # Same data, an asset check it cannot pass: registered, not promoted, and the reason says why.
    v2 = train_or_reuse(M, env["tensors"], {**HP, "promotion_rule": "always"}, force=True, threshold=1.5)
    ref = v2.version.split("/")[1]
    assert not v2.promoted
    assert "evidence falls short: asset check reaches_threshold failed" in v2.promotion_note
    assert reg.get(M, "production").name == v1.name

    with pytest.raises(Exception, match=rf"{v2.version} may not be production: asset check reaches_threshold failed"):
        cli(capsys, "promote", M, ref)
    with pytest.raises(Exception, match="needs --reason"):
        cli(capsys, "promote", M, ref, "--force")
    code, out = cli(capsys, "promote", M, ref, "--force", "--reason", "hotfix approved by on-call")
    assert code == 0 and "forced; override logged" in out
    forced = [e for e in reg.events(M) if e["event"] == "promote"][-1]
    assert forced["forced"] and forced["reason"] == "hotfix approved by on-call"
    assert forced["overridden"] == ["asset check reaches_threshold failed (accuracy "
                                    f"{v2.metrics['test']['accuracy']} vs threshold 1.5)"]
    reg.rollback(M, to="v1", reason="back to the evidenced version")


def test_data_without_a_passing_verdict_blocks_production(env, tmp_path, monkeypatch):
    from unified_pipeline.assets.data_assets import build_manifest, build_tensors
    from unified_pipeline.datasets import scan
    from unified_pipeline.registry import ModelRegistry
    from unified_pipeline.train_model import train_or_reuse

    raw = tmp_path / "raw"
    shutil.copytree(Path(env["env"]["UNIFIED_DATA"]) / DS, raw / DS)
    shutil.copy(raw / DS / "0" / "0.png", raw / DS / "0" / "copy.png")
    monkeypatch.setenv("UNIFIED_DATA", str(raw))
    (ref,) = [r for r in scan()[0] if r.name == DS]
    version, _df, manifest = build_manifest(ref)
    folder, _ = build_tensors(ref, manifest, version, {})  # outside the data lane: no GX verdict
    out = train_or_reuse(M, {DS: folder}, {**HP, "epochs": 1, "promotion_rule": "always"}, threshold=0.0)
    assert not out.promoted
    assert f"data {DS} version {version[:16]}: Great Expectations not validated" in out.promotion_note
    assert ModelRegistry().get(M, "production").name == f"{M}/v1"


def test_cost_is_recorded_compared_and_summarised(env, capsys):
    from unified_pipeline.assets.summary_asset import summary_rows
    from unified_pipeline.registry import ModelRegistry

    v1 = ModelRegistry().get(M, "v1")
    cost = v1.lineage["cost"]
    train_rows = json.loads((env["tensors"][DS] / "meta.json").read_text())["splits"]["train"]
    assert cost["samples"] == 6 * train_rows and cost["attempts"] == 1
    assert cost["cpu_s"] > 0 and cost["wall_s"] > 0 and cost["peak_rss_mb"] > 50
    assert cost["gpu_s"] == 0 and cost["peak_gpu_mem_mb"] == 0  # trained on CPU
    meta = env["metadata"]
    assert meta["cost_cpu_s"].value == cost["cpu_s"] and meta["samples_seen"].value == cost["samples"]

    code, out = cli(capsys, "compare", f"{M}/v1", "latest")
    assert "cost (CPU s, GPU s, peak memory MB" in out
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("samples"))
    assert row[1] == str(cost["samples"])
    (summary,) = summary_rows({M: {"version": v1.name, "metrics": v1.metrics, "cost": cost}})
    assert summary["cpu_s"] == cost["cpu_s"] and summary["samples_seen"] == cost["samples"]

    # `make bench` (bench/cost.py): cost per percentage point of the headline metric, newest version.
    from bench.cost import cost_rows

    (row,) = cost_rows(ModelRegistry())
    newest = ModelRegistry().get(M, "latest")
    points = 100 * newest.metrics["test"]["accuracy"]
    assert row["version"] == newest.name and row["cpu_s"] == newest.lineage["cost"]["cpu_s"]
    if points > 0:
        assert row["cpu_s_per_point"] == pytest.approx(row["cpu_s"] / points, rel=1e-3)
    else:
        assert row["cpu_s_per_point"] is None


def test_reproduce_matches_on_cpu_and_refuses_when_the_data_is_gone(env, capsys, tmp_path):
    from unified_pipeline.registry import ModelRegistry

    lineage = ModelRegistry().get(M, "v1").lineage
    assert len(lineage["lock_sha256"]) == 64 and lineage["seeds"] == {"train": 0} and lineage["device"] == "cpu"
    code, out = cli(capsys, "reproduce", f"{M}/v1", "--scratch", str(tmp_path / "replay"))
    assert code == 0, out
    assert "criterion: identical weights (CPU)" in out and "weights: identical" in out and out.rstrip().endswith("MATCH")
    assert (tmp_path / "replay" / "model" / "weights.safetensors").is_file()

    folder = env["tensors"][DS]
    moved = tmp_path / "moved"
    shutil.move(folder, moved)
    try:
        with pytest.raises(Exception, match=rf"{M}/v1: recorded data version {DS}={folder.name} is no longer "
                                            r"on disk \(.*\); cannot reproduce"):
            cli(capsys, "reproduce", f"{M}/v1")
    finally:
        shutil.move(moved, folder)


def test_rollback_of_an_upstream_model_marks_downstream_stale(home, tmp_path, capsys):
    from unified_pipeline.registry import ModelRegistry

    reg = ModelRegistry()

    def add(model, n, upstream=None):
        src = tmp_path / f"{model}{n}"
        src.mkdir()
        (src / "weights.safetensors").write_bytes(f"{model}{n}".encode())
        return reg.register(model, src, metrics={"test": {"accuracy": 0.5 + n / 10}}, promote_rule="always",
                            lineage={"data_versions": {}, "code_version": "c", "hparams": {},
                                     "upstream": upstream or {}}).version

    add("audio_service", 1)
    teacher = add("audio_service", 2)
    student = add("audio_student", 1, {"audio_service": teacher.name})
    code, out = cli(capsys, "rollback", "audio_service", "--reason", "regression")
    assert out.splitlines() == ["production: audio_service/v2 -> audio_service/v1",
                                f"{student.name} is now stale: trained on audio_service/v2, audio_service production "
                                "is audio_service/v1; its next run retrains it"]
    (event,) = [e for e in reg.events("audio_student") if e["event"] == "stale"]
    assert event["version"] == student.name and event["trained_on"] == teacher.name and "regression" in event["reason"]
    code, out = cli(capsys, "show", "audio_student")
    assert out.rstrip().endswith(f"{student.name} is now stale: trained on audio_service/v2, audio_service production "
                                 "is audio_service/v1; its next run retrains it")

    # The same from the Dagster UI's rollback job: logged, and on the materialisation.
    from dagster import DagsterInstance

    from unified_pipeline.assets.rollback_job import rollback_model

    reg.promote("audio_service", "v2", reason="fixed")
    with DagsterInstance.ephemeral() as instance:
        result = rollback_model.execute_in_process(
            run_config={"ops": {"rollback_production": {"config": {"model": "audio_service", "reason": "again"}}}},
            instance=instance)
    (mat,) = [e.event_specific_data.materialization for e in result.all_events
              if e.event_type_value == "ASSET_MATERIALIZATION"]
    assert [s["version"] for s in mat.metadata["stale_downstream"].value] == [student.name]


def test_recorded_live_commands_replay_at_the_same_step(tmp_path):
    import torch

    import _train_worker as worker
    from unified_pipeline.training.control import RecordedCommands, write_command

    control = tmp_path / "control.json"

    def live(record):  # a person lowers the learning rate after epoch 1 and stops after epoch 3
        if record["epoch"] == 1:
            write_command(control, lr=0.002)
        if record["epoch"] == 3:
            write_command(control, stop=True, pause=True)

    steered, summary = worker.train(None, epochs=6, control_file=control, on_epoch_hook=live)
    applied = [n for n in summary.notes if n.get("command")]
    assert [(n["epoch"], n["step"]) for n in applied] == [(2, 1), (4, 1)] and summary.epochs_run == 4
    replayed, again = worker.train(None, epochs=6, control_file=RecordedCommands(applied))
    plain, _ = worker.train(None, epochs=6)
    assert again.epochs_run == 4
    for k, v in steered.state_dict().items():
        assert torch.equal(v, replayed.state_dict()[k]), k
    assert any(not torch.equal(v, plain.state_dict()[k]) for k, v in steered.state_dict().items())
