"""In a real headless Chromium: a lane whose data fail the Great Expectations check shows the
failed check on its manifest, with why nothing ran after it, and its tensors as not run, not Failed."""
from __future__ import annotations

import json

import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

import tiny_data
from _ui_support import dagster_env, graphql, require_browser, running_ui, ui_page

pytestmark = pytest.mark.timeout(600)  # backstop only; every wait below has its own bound
UI_TIMEOUT_MS = 30_000
LANE = "tiny_images"
LATEST_QUERY = """
query Latest($keys: [AssetKeyInput!]!) { assetsLatestInfo(assetKeys: $keys) { assetKey { path }
  latestMaterialization { runId } latestRun { id status } } }
"""


@pytest.fixture
def failed_lane(tmp_path, monkeypatch):
    """The vision lane run once on data its suite refuses (a class the dataset does not declare)."""
    require_browser("browser quality-gate test")
    raw = tmp_path / "raw"
    ds = tiny_data.vision(raw)
    (ds / "dataset.json").write_text(json.dumps({"kind": "vision", "labels": ["0", "1"]}))
    env = dagster_env(raw, tmp_path / "home", tmp_path / "dagster_home")
    for key in ("UNIFIED_DATA", "UNIFIED_HOME", "DAGSTER_HOME"):
        monkeypatch.setenv(key, env[key])

    from unified_pipeline.assets.json_io import JsonIOManager
    from unified_pipeline.definitions import build_definitions

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    assets = list({id(graph.get(k).assets_def): graph.get(k).assets_def for k in graph.get_all_asset_keys()}.values())
    wanted = AssetSelection.assets(AssetKey(["vision_service"])).upstream() - AssetSelection.assets(
        AssetKey([LANE, "raw_files"]))
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        result = materialize(assets, selection=wanted, instance=instance, resources={"io_manager": JsonIOManager()},
                             raise_on_error=False)
    with running_ui(env, tmp_path) as server:
        yield server, result.run_id


def test_failed_check_on_the_manifest_and_tensors_not_run(failed_lane, tmp_path):
    from playwright.sync_api import expect

    from test_ui_browser import dismiss_onboarding

    server, run_id = failed_lane
    base = server.base_url
    # What the UI's asset status is drawn from: the latest run that planned tensors succeeded and
    # did not materialise it, so the UI has no "run which failed to materialize" to paint red.
    keys = [{"path": [LANE, "tensors"]}, {"path": ["vision_service"]}]
    for info in graphql(base, LATEST_QUERY, {"keys": keys})["assetsLatestInfo"]:
        assert info["latestRun"] == {"id": run_id, "status": "SUCCESS"}, info
        assert info["latestMaterialization"] is None, info
    with ui_page(tmp_path, UI_TIMEOUT_MS) as (page, shots):
        page.goto(f"{base}/assets/{LANE}/manifest?view=checks")
        dismiss_onboarding(page)
        expect(page.get_by_text("great_expectations").first).to_be_visible()
        expect(page.get_by_text("Failed", exact=True).first).to_be_visible()
        expect(page.get_by_text("tensors and the models reading it were skipped").first).to_be_visible()
        shots.take("manifest_check_failed")

        page.goto(f"{base}/runs/{run_id}")
        dismiss_onboarding(page)
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()
        expect(page.get_by_text("Skipped", exact=False).first).to_be_visible()
        shots.take("run_steps_skipped")

        page.goto(f"{base}/assets/{LANE}/tensors")
        dismiss_onboarding(page)
        expect(page.get_by_text("Never materialized").first).to_be_visible()
        expect(page.get_by_text(run_id[:8])).to_have_count(0)  # no "Failed in <run>" link
        expect(page.get_by_text("Failed", exact=True)).to_have_count(0)
        shots.take("tensors_not_run")
