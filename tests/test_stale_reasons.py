"""Before a run, each model says whether Dagster sees it stale and which input changed: the
files (data version), the code, the preset's hyperparameters or an upstream model; the same
verdict in Dagster's resolver (what the UI shows) and in `unified-pipeline status`."""
import json
from types import SimpleNamespace

from dagster import AssetKey, AssetObservation, AssetSelection, DagsterInstance, materialize

import tiny_data
from unified_pipeline.cli import main

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _observe(instance, ds):
    """What the new-data sensor records for a dataset whose files it hashed."""
    from unified_pipeline.assets.automation import DATA_VERSION_TAG
    from unified_pipeline.assets.data_assets import hash_cache, raw_key
    from unified_pipeline.hashing import dataset_version

    version = dataset_version(ds, hash_cache())[0]
    instance.report_runless_asset_event(AssetObservation(asset_key=raw_key(ds.name), tags={DATA_VERSION_TAG: version}))


def _status(capsys) -> dict:
    assert main(["status", "--json"]) == 0
    return {s["model"]: s["next_run"] for s in json.loads(capsys.readouterr().out)}


def test_code_version_change_names_the_part_that_changed():
    from unified_pipeline.version_reasons import code_version_change

    assert code_version_change("code:aa hparams:bb", "code:aa hparams:cc") == "preset hyperparameters changed (bb -> cc)"
    assert code_version_change("code:aa hparams:bb", "code:dd hparams:bb") == "code changed (aa -> dd)"
    assert code_version_change(None, "code:aa hparams:bb") == "code version None -> code:aa hparams:bb"


def test_status_says_why_a_model_is_stale_or_up_to_date_before_it_runs(home, tmp_path, monkeypatch, capsys):
    from unified_pipeline.assets.json_io import JsonIOManager
    from unified_pipeline.dagster_home import dagster_home
    from unified_pipeline.definitions import build_definitions
    from unified_pipeline.stale_reasons import model_staleness

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    ds = tiny_data.text(tmp_path / "raw")
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    assets = list({id(graph.get(k).assets_def): graph.get(k).assets_def for k in graph.get_all_asset_keys()}.values())
    wanted = AssetSelection.assets(AssetKey(["text_service"])).upstream() - AssetSelection.assets(
        AssetKey(["tiny_text", "raw_files"]))
    with DagsterInstance.from_config(str(dagster_home())) as instance:
        assert model_staleness(instance, defs)["text_service"]["state"] == "never materialised"
        _observe(instance, ds)
        assert materialize(assets, selection=wanted, instance=instance, resources={"io_manager": JsonIOManager()},
                           run_config={"ops": {"text_service": {"config": {"epochs": 1}}}}).success
        assert model_staleness(instance, defs)["text_service"]["state"] == "up to date"
    assert _status(capsys)["text_service"]["state"] == "up to date"

    # An edited file, once observed (the sensor does it), makes the model stale and says why.
    csv = ds / "data.csv"
    csv.write_text(csv.read_text() + "zzzzy99,omega\n")
    with DagsterInstance.from_config(str(dagster_home())) as instance:
        _observe(instance, ds)
    assert _status(capsys)["text_service"] == {
        "state": "stale", "reasons": ["data changed: the files of tiny_text have a new data version"]}
    assert main(["status"]) == 0
    assert "text_service: stale: data changed: the files of tiny_text have a new data version" in capsys.readouterr().out

    # A preset with other hyperparameters for the model: a new code version, named as such.
    preset = json.loads((ROOT / "presets" / "training_preset.json").read_text())
    preset["model_specific_presets"]["text_service"]["dropout"] = 0.3
    (tmp_path / "preset.json").write_text(json.dumps(preset))
    monkeypatch.setenv("UNIFIED_PRESET", str(tmp_path / "preset.json"))
    (reason, data) = _status(capsys)["text_service"]["reasons"]
    assert reason.startswith("preset hyperparameters changed (") and data.startswith("data changed")
