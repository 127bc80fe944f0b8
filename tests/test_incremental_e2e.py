"""Model assets end to end on tiny data: train, reuse when nothing changed, retrain only what changed."""
import json

import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

import tiny_data

MODELS = ["vision_service", "audio_service", "text_service"]


@pytest.fixture
def setup(home, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    tiny_data.vision(raw)
    tiny_data.audio(raw)
    tiny_data.text(raw)
    preset = json.loads(open("presets/training_preset.json").read())
    preset["training_scenarios"]["collaborative_training"].update(epochs=2, batch_size=8)
    # Two epochs on tiny data rarely pass the models' asset checks; this test is about reuse, and
    # the controller's advice needs a production controller, so promotion is not gated here.
    preset["training_configuration"]["promotion_gate"] = False
    for m in MODELS:
        preset["model_specific_presets"][m] = {"batch_size": 8}
    # The controller advises these models, so it runs first; a one-trial study keeps the test fast.
    preset["model_specific_presets"]["adaptive_learning_controller"] = {
        "budget_epochs": 1, "study_epochs": 1, "max_train_samples": 16, "max_val_samples": 8}
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    monkeypatch.setenv("UNIFIED_PRESET", str(path))
    return raw


def run(instance, selection=None, summary=False):
    from unified_pipeline.assets.json_io import JsonIOManager
    from unified_pipeline.definitions import build_definitions

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    assets = list({id(graph.get(k).assets_def): graph.get(k).assets_def for k in graph.get_all_asset_keys()}.values())
    wanted = AssetSelection.assets(*[AssetKey([m]) for m in MODELS]).upstream() - AssetSelection.assets(
        *[AssetKey([d, "raw_files"]) for d in ("tiny_images", "tiny_audio", "tiny_text")])
    if summary:
        wanted = wanted | AssetSelection.assets(AssetKey(["training_summary"]))
    result = materialize(assets, selection=selection or wanted, instance=instance,
                         resources={"io_manager": JsonIOManager()})
    assert result.success
    return {e.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
            for e in result.get_asset_materialization_events()}


def status(mats, model):
    return mats[model]["status"].value


def test_second_run_reuses_and_one_file_change_retrains_only_its_lane(setup):
    with DagsterInstance.ephemeral() as instance:
        first = run(instance)
        assert all(status(first, m) == "trained" for m in MODELS)
        assert all(first[m]["version"].value == f"{m}/v1" for m in MODELS)
        # The controller ran first and its strategy reached every model it advises.
        assert status(first, "adaptive_learning_controller") == "trained"
        assert all(first[m]["strategy"].value["source"] == "adaptive_learning_controller/v1" for m in MODELS)

        second = run(instance)
        assert all(status(second, m) == "up to date (reused)" for m in MODELS)
        assert all(second[m]["version"].value == f"{m}/v1" for m in MODELS)

        wav = next((setup / "tiny_audio" / "high").glob("*.wav"))
        data = bytearray(wav.read_bytes())
        data[-4:] = b"\x10\x00\x20\x00"
        wav.write_bytes(bytes(data))
        third = run(instance, summary=True)
        assert status(third, "audio_service") == "trained" and third["audio_service"]["version"].value == "audio_service/v2"
        assert status(third, "vision_service") == "up to date (reused)"
        assert status(third, "text_service") == "up to date (reused)"
        # The controller reads audio too, so it retrains; its new advice alone retrains nothing.
        assert status(third, "adaptive_learning_controller") == "trained"

        # The summary reports every model of the graph, including those this run did not select.
        summary = third["training_summary"]
        rows = {r.data["model"]: r.data for r in summary["summary"].value.records}
        assert rows["audio_service"]["status"] == "trained" and rows["audio_service"]["version"] == "audio_service/v2"
        assert rows["vision_service"]["status"] == "reused"
        assert rows["audio_student"]["status"] == "not materialised yet"
        assert summary["trained"].value == 2 and summary["reused"].value == 2
        results = json.loads(open(summary["report_path"].value.replace(".md", ".json")).read())
        assert results["models"]["audio_service"]["metrics"]["test"]["accuracy"] == float(
            third["audio_service"]["test_accuracy"].value)

        # A later run of only the vision lane lists the others as not part of it.
        vision_only = AssetSelection.assets(AssetKey(["vision_service"]), AssetKey(["training_summary"]))
        fourth = run(instance, selection=vision_only)
        rows = {r.data["model"]: r.data for r in fourth["training_summary"]["summary"].value.records}
        assert rows["vision_service"]["status"] == "reused"
        assert rows["audio_service"]["status"].startswith("not in this run (from run ")


def test_changed_learning_rate_retrains_only_that_model(setup, tmp_path, monkeypatch):
    with DagsterInstance.ephemeral() as instance:
        run(instance)
        path = tmp_path / "preset.json"
        preset = json.loads(path.read_text())
        preset["model_specific_presets"]["text_service"]["learning_rate"] = 0.003
        path.write_text(json.dumps(preset))
        again = run(instance)
    assert status(again, "text_service") == "trained"
    assert status(again, "vision_service") == "up to date (reused)"
    assert status(again, "audio_service") == "up to date (reused)"
