"""A reused model's page in a real headless Chromium shows its curves and numeric metrics."""
from __future__ import annotations

import json

import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

import tiny_data
from _ui_support import dagster_env, require_browser, running_ui, ui_page

pytestmark = pytest.mark.timeout(600)  # backstop only; every wait below has its own bound
UI_TIMEOUT_MS = 30_000
MODEL = "vision_service"


@pytest.fixture
def reused_model(tmp_path, monkeypatch):
    """vision_service trained, then reused, in the instance the UI will read."""
    require_browser("browser model-page test")
    raw = tmp_path / "raw"
    tiny_data.vision(raw)
    preset = json.loads(open("presets/training_preset.json").read())
    preset["model_specific_presets"][MODEL] = {"batch_size": 8, "epochs": 2, "widths": [8], "blocks_per_stage": 1}
    preset_path = tmp_path / "preset.json"
    preset_path.write_text(json.dumps(preset))
    env = dagster_env(raw, tmp_path / "home", tmp_path / "dagster_home")
    env["UNIFIED_PRESET"] = str(preset_path)
    for key in ("UNIFIED_DATA", "UNIFIED_HOME", "DAGSTER_HOME", "UNIFIED_PRESET"):
        monkeypatch.setenv(key, env[key])

    from unified_pipeline.assets.json_io import JsonIOManager
    from unified_pipeline.definitions import build_definitions

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    assets = list({id(graph.get(k).assets_def): graph.get(k).assets_def for k in graph.get_all_asset_keys()}.values())
    wanted = AssetSelection.assets(AssetKey([MODEL])).upstream() - AssetSelection.assets(AssetKey(["tiny_images", "raw_files"]))
    statuses = []
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        for _ in range(2):
            result = materialize(assets, selection=wanted, instance=instance, resources={"io_manager": JsonIOManager()})
            event = [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey([MODEL])][0]
            statuses.append(event.event_specific_data.materialization.metadata["status"].value)
    assert statuses == ["trained", "up to date (reused)"]
    with running_ui(env, tmp_path) as server:
        yield server


def test_reused_model_page_shows_plots_and_numeric_metrics(reused_model, tmp_path):
    from playwright.sync_api import expect

    from test_ui_browser import dismiss_onboarding

    base = reused_model.base_url
    with ui_page(tmp_path, UI_TIMEOUT_MS) as (page, shots):
        page.goto(f"{base}/assets/{MODEL}")
        dismiss_onboarding(page)
        # The newest materialisation is the reused one; its metadata carries the version's numbers and curves.
        expect(page.get_by_text("up to date (reused)").first).to_be_visible()
        dismiss_onboarding(page)
        for key in ("test_accuracy", "parameters", "epochs", "plot_loss", "plot_confusion_matrix"):
            expect(page.get_by_role("cell", name=key, exact=True).first).to_be_visible()
        shots.take("reused_materialisation")
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="plot_loss", exact=True)).first
        row.get_by_text("[Show Markdown]").click()
        image = page.locator('img[src^="data:image/png;base64,"]').first
        expect(image).to_be_visible()
        assert image.evaluate("img => img.naturalWidth") > 100  # a drawn curve, not a broken image
        shots.take("loss_curve")
        page.keyboard.press("Escape")
        # Numeric metadata is plotted across materialisations (the trained one and the reused one).
        page.get_by_role("button", name="Plots").or_(page.get_by_text("Plots", exact=True)).first.click()
        expect(page.get_by_text("test_accuracy").first).to_be_visible()
        expect(page.locator("canvas").first).to_be_visible()
        shots.take("metadata_plots")
