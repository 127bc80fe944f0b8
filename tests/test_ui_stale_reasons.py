"""In a real headless Chromium: a trained model whose preset hyperparameters and files changed
shows as unsynced in the Dagster UI, with the causes `unified-pipeline status` words."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import AssetKey, AssetObservation, AssetSelection, DagsterInstance, materialize

import tiny_data
from _ui_support import dagster_env, graphql, require_browser, running_ui, ui_page
from unified_pipeline.cli import main

pytestmark = pytest.mark.timeout(600)  # backstop only; every wait below has its own bound
UI_TIMEOUT_MS = 30_000
MODEL = "text_service"
ROOT = Path(__file__).resolve().parents[1]
STALE_QUERY = """
query Stale($keys: [AssetKeyInput!]!) { assetNodes(assetKeys: $keys) { assetKey { path } staleStatus
  staleCauses { key { path } reason category dependency { path } } } }
"""


def _observe(instance, ds: Path) -> None:
    """What the new-data sensor records for a dataset whose files it hashed."""
    from unified_pipeline.assets.automation import DATA_VERSION_TAG
    from unified_pipeline.assets.data_assets import hash_cache, raw_key
    from unified_pipeline.hashing import dataset_version

    version = dataset_version(ds, hash_cache())[0]
    instance.report_runless_asset_event(AssetObservation(asset_key=raw_key(ds.name), tags={DATA_VERSION_TAG: version}))


@pytest.fixture
def changed_model(tmp_path, monkeypatch):
    """text_service trained; then its preset hyperparameters and its files change."""
    require_browser("browser stale-reasons test")
    ds = tiny_data.text(tmp_path / "raw")
    env = dagster_env(tmp_path / "raw", tmp_path / "home", tmp_path / "dagster_home")
    for key in ("UNIFIED_DATA", "UNIFIED_HOME", "DAGSTER_HOME"):
        monkeypatch.setenv(key, env[key])

    from unified_pipeline.assets.json_io import JsonIOManager
    from unified_pipeline.definitions import build_definitions

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    assets = list({id(graph.get(k).assets_def): graph.get(k).assets_def for k in graph.get_all_asset_keys()}.values())
    wanted = AssetSelection.assets(AssetKey([MODEL])).upstream() - AssetSelection.assets(AssetKey([ds.name, "raw_files"]))
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        _observe(instance, ds)
        assert materialize(assets, selection=wanted, instance=instance, resources={"io_manager": JsonIOManager()},
                           run_config={"ops": {MODEL: {"config": {"epochs": 1}}}}).success
        csv = ds / "data.csv"
        csv.write_text(csv.read_text() + "zzzzy99,omega\n")
        _observe(instance, ds)
    preset = json.loads((ROOT / "presets" / "training_preset.json").read_text())
    preset["model_specific_presets"][MODEL]["dropout"] = 0.3
    (tmp_path / "preset.json").write_text(json.dumps(preset))
    env["UNIFIED_PRESET"] = str(tmp_path / "preset.json")
    monkeypatch.setenv("UNIFIED_PRESET", env["UNIFIED_PRESET"])
    with running_ui(env, tmp_path) as server:
        yield server


def test_ui_and_status_name_the_inputs_that_changed(changed_model, tmp_path, capsys):
    from playwright.sync_api import expect

    from test_ui_browser import dismiss_onboarding

    base = changed_model.base_url
    (node,) = graphql(base, STALE_QUERY, {"keys": [{"path": [MODEL]}]})["assetNodes"]
    assert node["staleStatus"] == "STALE", node
    # The UI lists root causes: the asset or dependency whose version moved.
    causes = {(c["category"], "/".join(c["key"]["path"]), c["reason"]) for c in node["staleCauses"]}
    assert causes == {("CODE", MODEL, "has a new code version"),
                      ("DATA", "tiny_text/raw_files", "has a new data version")}, node
    # The CLI words the same causes, and says which part of the code version moved.
    assert main(["status", "--json"]) == 0
    (state,) = [s for s in json.loads(capsys.readouterr().out) if s["model"] == MODEL]
    assert state["next_run"]["state"] == "stale"
    hparams, data = state["next_run"]["reasons"]
    assert hparams.startswith("preset hyperparameters changed (") and "code changed" not in hparams
    assert data == "data changed: the files of tiny_text have a new data version"
    with ui_page(tmp_path, UI_TIMEOUT_MS) as (page, shots):
        page.goto(f"{base}/assets/{MODEL}")
        dismiss_onboarding(page)
        tag = page.get_by_text("Unsynced").first
        expect(tag).to_be_visible()
        tag.hover()
        expect(page.get_by_text("has a new code version").first).to_be_visible()
        expect(page.get_by_text("has a new data version").first).to_be_visible()
        shots.take("model_unsynced_causes")
