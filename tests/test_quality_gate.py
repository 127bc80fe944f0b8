"""A failed Great Expectations check stops its lane without failing the run: the manifest carries
the failed check and why nothing ran after it; tensors and the model are skipped, not failed."""
import json

from dagster import AssetCheckKey, AssetKey, AssetSelection, DagsterEventType, DagsterInstance, DagsterRunStatus, materialize

import tiny_data


def _run(defs, instance, selection):
    from unified_pipeline.assets.json_io import JsonIOManager

    graph = defs.resolve_asset_graph()
    assets = list({id(graph.get(k).assets_def): graph.get(k).assets_def for k in graph.get_all_asset_keys()}.values())
    return materialize(assets, selection=selection, instance=instance, resources={"io_manager": JsonIOManager()},
                       raise_on_error=False)


def test_failed_check_skips_downstream_steps_and_says_why(home):
    from unified_pipeline.assets.data_assets import QUALITY_CHECK, manifest_key
    from unified_pipeline.definitions import build_definitions

    ds = tiny_data.vision(home.parent / "raw")
    (ds / "dataset.json").write_text(json.dumps({"kind": "vision", "labels": ["0", "1"]}))  # 2/ is unexpected
    defs = build_definitions()
    wanted = AssetSelection.assets(AssetKey(["vision_service"])).upstream() - AssetSelection.assets(
        AssetKey(["tiny_images", "raw_files"]))
    with DagsterInstance.ephemeral() as instance:
        result = _run(defs, instance, wanted)
        run = instance.get_run_by_id(result.run_id)
        # The run ends; what went wrong is the data, said by the check, not a crashed step.
        assert run.status == DagsterRunStatus.SUCCESS
        steps = {s.step_key: s.status.value for s in instance.get_run_step_stats(result.run_id)}
        assert steps == {"tiny_images__manifest": "SUCCESS", "tiny_images__tensors": "SKIPPED",
                         "vision_service": "SKIPPED"}
        failures = instance.get_records_for_run(result.run_id, of_type=DagsterEventType.STEP_FAILURE).records
        assert not failures
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [AssetCheckKey(manifest_key("tiny_images"), QUALITY_CHECK)])[AssetCheckKey(manifest_key("tiny_images"), QUALITY_CHECK)]
        evaluation = record.event.dagster_event.event_specific_data
        assert record.run_id == result.run_id and not evaluation.passed
        assert evaluation.severity.value == "ERROR"
        assert "expect_column_values_to_be_in_set `label`: 12 unexpected; offenders: 2/0.png" in evaluation.description
        assert "tiny_images/tensors and the models reading it were skipped" in evaluation.description
        # The failed check belongs to this run's manifest materialisation, with its data version.
        (manifest,) = instance.fetch_materializations(manifest_key("tiny_images"), limit=1).records
        assert manifest.run_id == result.run_id
        assert evaluation.target_materialization_data.storage_id == manifest.storage_id
        assert manifest.asset_materialization.tags["dagster/data_version"] == _raw_version(ds)
        assert manifest.asset_materialization.metadata["passed_on"].value is False
        assert instance.get_latest_materialization_event(AssetKey(["tiny_images", "tensors"])) is None
    assert not (home / "tensors").exists()


def _raw_version(ds) -> str:
    from unified_pipeline.assets.data_assets import hash_cache
    from unified_pipeline.hashing import dataset_version

    return dataset_version(ds, hash_cache())[0]
