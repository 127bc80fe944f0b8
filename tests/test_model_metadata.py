"""What a model's materialisation shows in the UI, trained or reused: numbers, tables, curves, why."""
import json

import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

import tiny_data


@pytest.fixture
def setup(home, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    tiny_data.vision(raw)
    preset = json.loads(open("presets/training_preset.json").read())
    preset["training_scenarios"]["collaborative_training"].update(epochs=2, batch_size=8)
    preset["model_specific_presets"]["vision_service"] = {"batch_size": 8, "epochs": 3, "widths": [8],
                                                          "blocks_per_stage": 1}
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    monkeypatch.setenv("UNIFIED_PRESET", str(path))
    return raw


def _run(instance, run_config=None):
    from unified_pipeline.assets.json_io import JsonIOManager
    from unified_pipeline.definitions import build_definitions

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    assets = list({id(graph.get(k).assets_def): graph.get(k).assets_def for k in graph.get_all_asset_keys()}.values())
    wanted = (AssetSelection.assets(AssetKey(["vision_service"])).upstream()
              - AssetSelection.assets(AssetKey(["tiny_images", "raw_files"])))
    result = materialize(assets, selection=wanted, instance=instance, resources={"io_manager": JsonIOManager()},
                         run_config=run_config, raise_on_error=False)
    mats = {e.asset_key.to_user_string(): e.event_specific_data.materialization
            for e in result.get_asset_materialization_events()}
    return result, mats


def test_reused_materialisation_carries_the_versions_numbers_curves_and_reason(setup, caplog):
    with DagsterInstance.ephemeral() as instance:
        first, mats = _run(instance)
        assert first.success
        trained = mats["vision_service"].metadata
        second, mats = _run(instance)
        reused = mats["vision_service"].metadata
    assert trained["status"].value == "trained" and reused["status"].value == "up to date (reused)"
    assert trained["why"].value == "trained: first version of this model"
    assert reused["why"].value.startswith("up to date: data versions, code, hyperparameters and upstream models "
                                          "match vision_service/v1")
    for meta in (trained, reused):
        # top-level numbers (the Plots tab draws these across materialisations)
        assert isinstance(meta["test_accuracy"].value, float) and isinstance(meta["parameters"].value, int)
        assert meta["epochs"].value == 3  # the per-model preset beats the scenario's 2 epochs
        assert {"plot_loss", "plot_val_accuracy", "plot_confusion_matrix"} <= set(meta)
        assert meta["plot_loss"].value.startswith("![loss](data:image/png;base64,")
        table = meta["metrics"]
        assert [c.name for c in table.schema.columns][:2] == ["metric", "test"]
        assert any(r.data["metric"] == "accuracy" for r in table.records)
        assert "| metric | test |" in meta["report"].value
        assert meta["location"].value.endswith("vision_service/v1")
    assert trained["test_accuracy"].value == reused["test_accuracy"].value
    assert trained["hyperparameter_sources"].value["epochs"] == "model_specific_presets.vision_service"
    assert trained["hyperparameter_sources"].value["batch_size"] == "model_specific_presets.vision_service"


def test_step_logs_resolved_values_and_refuses_a_bad_hparam_in_one_line(setup):
    from dagster import DagsterInvalidConfigError

    bad = {"ops": {"vision_service": {"config": {"hparams": {"dropoot": 1}}}}}
    with DagsterInstance.ephemeral() as instance:
        # The model's settings are its run config schema: refused at launch, before any step runs.
        with pytest.raises(DagsterInvalidConfigError, match='unexpected config entry "dropoot"'):
            _run(instance, bad)
        assert not instance.get_run_records()
        result, _ = _run(instance, {"ops": {"vision_service": {"config": {"learning_rate": 0.004}}}})
        assert result.success
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
    line = next(m for m in logs if "preset" in m and "scenario collaborative_training" in m)
    assert "epochs=3 (model_specific_presets.vision_service)" in line
    assert "learning_rate=0.004 (run config)" in line and "seed=0 (training_configuration)" in line


def test_run_report_shows_concept_model_metrics_as_a_table():
    from unified_pipeline.assets.summary_asset import markdown_report, summary_rows

    outcomes = {"causal_reasoning_engine": {
        "version": "causal_reasoning_engine/v2", "reused": True,
        "metrics": {"test": {"shd": 1.0, "d10/shd": 0.0, "d10/tpr": 1.0},
                    "baseline": {"shd": 29.0}}}}
    text = markdown_report("r1", summary_rows(outcomes), outcomes)
    assert "| metric | test | baseline |" in text
    assert "| shd | 1 | 29 |" in text and "| d10/tpr | 1 |  |" in text
    assert "shd=1" not in text  # no walls of k=v


def test_why_names_the_inputs_that_changed():
    from types import SimpleNamespace

    from unified_pipeline.version_reasons import change_reasons

    def version(n, **lineage):
        base = {"data_versions": {"text": "aaa"}, "code_version": "c1", "hparams": {"epochs": 5, "use_gpu": True},
                "upstream": {"vision_service": "vision_service/v1"}}
        return SimpleNamespace(name=f"m/v{n}", lineage={**base, **lineage})

    v1 = version(1)
    assert change_reasons(None, v1) == ["first version of this model"]
    v2 = version(2, data_versions={"text": "bbb"}, hparams={"epochs": 6, "use_gpu": False},
                 upstream={"vision_service": "vision_service/v2"})
    assert change_reasons(v1, v2) == ["data changed: text aaa -> bbb", "hyperparameters changed: epochs 5 -> 6",
                                      "upstream model changed: vision_service vision_service/v1 -> vision_service/v2"]
    assert change_reasons(v1, version(3, code_version="c2")) == ["code changed (c1 -> c2)"]


def test_an_edited_raw_file_shows_every_model_that_reads_it_as_stale(home, tmp_path, monkeypatch):
    """Dagster compares direct dependencies only, so the models depend on the raw files too."""
    from dagster import AssetObservation
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus

    from unified_pipeline.assets.data_assets import raw_key
    from unified_pipeline.definitions import build_definitions

    raw = tmp_path / "raw"
    for make in (tiny_data.vision, tiny_data.audio, tiny_data.text):
        make(raw)
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    for model, lanes in (("multimodal_service", {"tiny_images", "tiny_audio", "tiny_text"}),
                         ("text_service", {"tiny_text"}), ("vision_service", {"tiny_images"})):
        parents = {k.to_user_string() for k in graph.get(AssetKey([model])).parent_keys}
        assert {f"{d}/raw_files" for d in lanes} <= parents, model
        assert not {f"{d}/raw_files" for d in {"tiny_images", "tiny_audio", "tiny_text"} - lanes} & parents

    from dagster import AssetMaterialization
    from dagster._core.definitions.data_version import (
        CODE_VERSION_TAG, DATA_VERSION_TAG, NULL_DATA_VERSION, NULL_EVENT_POINTER, get_input_data_version_tag, get_input_event_pointer_tag,
    )
    from dagster._utils.test.data_versions import get_stale_status_resolver

    assets = list({id(graph.get(k).assets_def): graph.get(k).assets_def for k in graph.get_all_asset_keys()}.values())
    with DagsterInstance.ephemeral() as instance:
        for ds in ("tiny_images", "tiny_audio", "tiny_text"):
            instance.report_runless_asset_event(AssetObservation(asset_key=raw_key(ds), tags={DATA_VERSION_TAG: f"{ds}-1"}))
        done: set[str] = set()
        for model in ("vision_service", "text_service", "multimodal_service"):  # upstream models first
            # What a run records: the data version each dependency had when the model materialised.
            tags = {DATA_VERSION_TAG: "m1", CODE_VERSION_TAG: graph.get(AssetKey([model])).code_version}
            for dep in graph.get(AssetKey([model])).parent_keys:
                tags[get_input_data_version_tag(dep)] = (f"{dep.path[0]}-1" if dep.path[-1] == "raw_files"
                                                         else "m1" if dep.path[0] in done else NULL_DATA_VERSION.value)
                tags[get_input_event_pointer_tag(dep)] = NULL_EVENT_POINTER
            instance.report_runless_asset_event(AssetMaterialization(asset_key=AssetKey([model]), tags=tags))
            done.add(model)
        instance.report_runless_asset_event(AssetObservation(asset_key=raw_key("tiny_text"), tags={DATA_VERSION_TAG: "tiny_text-2"}))
        resolver = get_stale_status_resolver(instance, assets)
        status = {m: resolver.get_status(AssetKey([m])) for m in ("multimodal_service", "text_service", "vision_service")}
        causes = resolver.get_stale_causes(AssetKey(["multimodal_service"]))
    assert status == {"multimodal_service": StaleStatus.STALE, "text_service": StaleStatus.STALE,
                      "vision_service": StaleStatus.FRESH}
    assert [(c.dependency.asset_key.to_user_string(), c.reason) for c in causes] == [
        ("tiny_text/raw_files", "has a new dependency data version")]
