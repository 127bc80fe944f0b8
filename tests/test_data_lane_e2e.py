"""Every data asset and check of every kind, materialised on tiny data in a temporary root."""
import json
import shutil
from pathlib import Path

import pytest
from dagster import AssetSelection, DagsterInstance, materialize

import tiny_data


def lane_assets(defs):
    graph = defs.resolve_asset_graph()
    return [graph.get(k).assets_def for k in graph.get_all_asset_keys() if len(k.path) == 2]


def run_data(defs, instance, raise_on_error=True):
    from unified_pipeline.assets.json_io import JsonIOManager

    assets = {id(a): a for a in lane_assets(defs)}.values()
    return materialize(
        list(assets),
        selection=AssetSelection.all(),  # lane_assets holds data assets only
        instance=instance,
        resources={"io_manager": JsonIOManager()},
        raise_on_error=raise_on_error,
    )


@pytest.fixture
def all_kinds(home, tmp_path):
    for make in tiny_data.ALL.values():
        make(tmp_path / "raw")
    return tmp_path / "raw"


def test_all_lanes_materialise_with_passing_checks(all_kinds, home):
    from unified_pipeline.definitions import build_definitions

    defs = build_definitions()
    with DagsterInstance.ephemeral() as instance:
        result = run_data(defs, instance)
        assert result.success
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 6 and all(c.passed for c in checks), [c.description for c in checks if not c.passed]
    for kind_dir in (home / "tensors").iterdir():
        (version_dir,) = list(kind_dir.iterdir())
        meta = json.loads((version_dir / "meta.json").read_text())
        assert meta["dataset"] == kind_dir.name and sum(meta["splits"].values()) > 0


def test_bad_lane_fails_alone_and_names_the_file(all_kinds, home):
    from unified_pipeline.definitions import build_definitions

    bad = all_kinds / "tiny_images" / "1" / "0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    defs = build_definitions()
    with DagsterInstance.ephemeral() as instance:
        result = run_data(defs, instance, raise_on_error=False)
        failed = [c for c in result.get_asset_check_evaluations() if not c.passed]
        assert len(failed) == 1 and failed[0].asset_key.path[0] == "tiny_images"
        assert "1/0.png" in (failed[0].description or "") + json.dumps(failed[0].metadata.get("expectations").value)
        materialised = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "tiny_images/tensors" not in materialised
    assert "tiny_audio/tensors" in materialised and "tiny_text/tensors" in materialised
    assert not (home / "tensors" / "tiny_images").exists()


def test_unreadable_dataset_is_a_failed_quality_check_naming_the_file(all_kinds, home):
    from unified_pipeline.definitions import build_definitions

    shutil.rmtree(all_kinds / "tiny_text")
    (all_kinds / "tiny_text").mkdir()
    (all_kinds / "tiny_text" / "dataset.json").write_text('{"kind": "text"}')
    (all_kinds / "tiny_causal" / "data.csv").write_bytes(
        (all_kinds / "tiny_causal" / "data.csv").read_bytes() + b"1.0,2.0,\xe93.0\n")
    defs = build_definitions()
    with DagsterInstance.ephemeral() as instance:
        result = run_data(defs, instance, raise_on_error=False)
    failed = {c.asset_key.path[0]: c for c in result.get_asset_check_evaluations() if not c.passed}
    assert sorted(failed) == ["tiny_causal", "tiny_text"]
    assert "text suite not run: the data could not be read" in failed["tiny_text"].description
    assert "tiny_text: no .csv/.jsonl files found" in failed["tiny_text"].description
    assert "data.csv: line 302 (CSV data row 301): not UTF-8 (invalid byte 0xe9 at column 9)" in (
        failed["tiny_causal"].description)
    materialised = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "tiny_text/tensors" not in materialised and "tiny_causal/tensors" not in materialised
    assert "tiny_audio/tensors" in materialised


SPLIT_SETTINGS = {"seed": 11, "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}


def materialise_lanes(refs, settings):
    from unified_pipeline.assets.data_assets import lane_assets
    from unified_pipeline.assets.json_io import JsonIOManager

    assets = [a for ref in refs for a in lane_assets(ref, settings)]
    with DagsterInstance.ephemeral() as instance:
        return materialize(assets, selection=AssetSelection.all(), instance=instance,
                           resources={"io_manager": JsonIOManager()}, raise_on_error=False)


def test_manifest_splits_follow_the_lane_seed_and_fractions(home):
    from unified_pipeline.assets.data_assets import read_manifest
    from unified_pipeline.datasets import discover
    from unified_pipeline.datasets.splits import split_of

    for kind in ("vision", "text", "transitions", "memory"):
        tiny_data.ALL[kind](home.parent / "raw")
    result = materialise_lanes(discover(), SPLIT_SETTINGS)
    assert result.success
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    for ref in discover():
        manifest_meta, tensors_meta = meta[f"{ref.name}/manifest"], meta[f"{ref.name}/tensors"]
        assert manifest_meta["splits"].value == tensors_meta["splits"].value, ref.name
        manifest = read_manifest(manifest_meta["manifest"].value)
        if ref.kind in ("vision", "text"):
            samples = json.loads((Path(tensors_meta["path"].value) / "samples.json").read_text())
            by_id = dict(zip(manifest["sample_id"], manifest["split"]))
            assert all(by_id[i] == split for split, ids in samples.items() for i in ids), ref.name
        if ref.kind == "memory":
            # unlabelled kinds use the per-sample rule under the lane's seed, not the default one
            assert list(manifest["split"]) == [split_of(h, 11, SPLIT_SETTINGS["fractions"]) for h in manifest["sha256"]]
            assert list(manifest["split"]) != [split_of(h) for h in manifest["sha256"]]


def test_dataset_json_label_set_fails_the_check_naming_the_files(home):
    from unified_pipeline.datasets import discover

    ds = tiny_data.vision(home.parent / "raw")
    (ds / "dataset.json").write_text(json.dumps({"kind": "vision", "labels": ["0", "1"]}))
    (ref,) = discover()
    result = materialise_lanes([ref], {})
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    assert "expect_column_values_to_be_in_set `label`: 12 unexpected; offenders: 2/0.png" in check.description
    materialised = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialised == {"tiny_images/manifest"}
