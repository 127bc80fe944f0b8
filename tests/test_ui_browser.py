"""The Dagster UI in a real headless Chromium: our assets are listed, and a run launched from the UI succeeds."""
from __future__ import annotations

import os
import re
import time

import pytest

import tiny_data
from _ui_support import dagster_env, graphql, require_browser, running_ui, ui_page

LOAD_TIMEOUT_S = 120
RUN_TIMEOUT_S = 90
UI_TIMEOUT_MS = 30_000
MANIFEST = "tiny_text/manifest"
CATALOG_KEYS = ["tiny_text/raw_files", MANIFEST, "tiny_text/tensors", "text_service",
                "tiny_images/manifest", "tiny_images/tensors", "vision_service"]

pytestmark = pytest.mark.timeout(300)  # backstop only; every wait below has its own bound

RUNS_QUERY = """
query Runs($after: Float) { runsOrError(filter: {createdAfter: $after}) { __typename
  ... on Runs { results { runId status tags { key value } assetSelection { path } } } } }
"""
CHECK_QUERY = """
query Check($path: [String!]!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: "great_expectations", limit: 1) { runId status }
  assetOrError(assetKey: {path: $path}) { ... on Asset { assetMaterializations(limit: 1) { runId } } } }
"""


@pytest.fixture
def browser_ready():
    require_browser("browser UI test")


@pytest.fixture
def dagster_dev(browser_ready, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    tiny_data.text(raw)
    tiny_data.vision(raw)
    env = dagster_env(raw, tmp_path / "home", tmp_path / "dagster_home")
    with running_ui(env, tmp_path, LOAD_TIMEOUT_S) as server:
        yield server


def dismiss_onboarding(page) -> None:
    """A fresh profile gets the 'Join the Dagster community' dialog over every page until skipped."""
    skip = page.get_by_role("button", name="Skip", exact=True)
    try:
        skip.wait_for(state="visible", timeout=5_000)
    except Exception:  # noqa: BLE001 - the dialog is optional; absent means nothing to dismiss
        return
    skip.click()
    skip.wait_for(state="hidden", timeout=5_000)


def ui_runs(base_url: str, since: float) -> list[dict]:
    """Runs created since `since`, minus those the new-data sensor requested (held in the queue)."""
    data = graphql(base_url, RUNS_QUERY, {"after": since})["runsOrError"]
    assert data["__typename"] == "Runs", data
    return [r for r in data["results"] if not any(t["key"] == "unified/trigger" for t in r["tags"])]


def test_ui_lists_assets_and_materialises_from_the_browser(dagster_dev, tmp_path):
    from playwright.sync_api import expect

    base = dagster_dev.base_url
    with ui_page(tmp_path, UI_TIMEOUT_MS) as (page, shots):
        # Asset catalog: one row (a link to the asset page) per asset.
        page.goto(f"{base}/assets")
        dismiss_onboarding(page)
        for key in CATALOG_KEYS:
            expect(page.locator(f'a[href="/assets/{key}"]').first).to_be_visible()
        shots.take("asset_catalog")

        # Lineage of the text group: the lane's nodes are drawn in the graph.
        page.goto(f"{base}/locations/{dagster_dev.locations[0]}/asset-groups/text")
        dismiss_onboarding(page)
        for name in ["raw_files", "manifest", "tensors"]:
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
        shots.take("text_group_lineage")

        # The manifest's asset page: Materialize launches a run of this one asset.
        page.goto(f"{base}/assets/{MANIFEST}")
        dismiss_onboarding(page)
        # The accessible name carries the icon's ligature ("materialization Materialize").
        button = page.get_by_role("button", name=re.compile(r"(^|\s)Materialize$"))
        expect(button).to_be_enabled()
        clicked_at = time.time() - 1
        button.click()
        # No config is required, so the UI launches at once and says so in a toast; a launchpad
        # ("Launch run") would only appear for config-requiring assets, then confirm it.
        toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
        launchpad = page.get_by_role("button", name=re.compile(r"Launch run$"))
        expect(toast.or_(launchpad).first).to_be_visible()
        if launchpad.count() and launchpad.first.is_visible():
            launchpad.first.click()
        expect(toast.first).to_be_visible()
        shots.take("after_materialize_click")
        runs = ui_runs(base, clicked_at)
        assert len(runs) == 1, f"expected one run launched from the UI, got {runs}"
        run = runs[0]
        assert run["runId"][:8] in toast.first.inner_text()
        assert [a["path"] for a in run["assetSelection"]] == [MANIFEST.split("/")], run

        # The run's page shows it through to success.
        page.goto(f"{base}/runs/{run['runId']}")
        dismiss_onboarding(page)
        expect(page.get_by_text(run["runId"][:8]).first).to_be_visible()
        deadline = time.monotonic() + RUN_TIMEOUT_S
        status = run["status"]
        while status not in {"SUCCESS", "FAILURE", "CANCELED"} and time.monotonic() < deadline:
            page.wait_for_timeout(1000)
            status = next(r["status"] for r in ui_runs(base, clicked_at) if r["runId"] == run["runId"])
        assert status == "SUCCESS", f"run {run['runId']} ended {status}:\n{dagster_dev.log_tail()}"
        expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)
        shots.take("run_succeeded")

        # Back on the asset page, the materialisation and its passed quality check are shown.
        check = graphql(base, CHECK_QUERY, {"path": MANIFEST.split("/")})
        assert check["assetOrError"]["assetMaterializations"][0]["runId"] == run["runId"]
        assert check["assetCheckExecutions"][0]["status"] == "SUCCEEDED", check
        page.goto(f"{base}/assets/{MANIFEST}?view=checks")
        dismiss_onboarding(page)
        expect(page.get_by_text("great_expectations").first).to_be_visible()
        expect(page.get_by_text("Passed").first).to_be_visible()
        shots.take("manifest_check_passed")

        # Sensor/schedule runs were held in the queue, so nothing else competed for the cores.
        held = [r for r in graphql(base, RUNS_QUERY, {"after": 0})["runsOrError"]["results"]
                if r["runId"] != run["runId"]]
        assert all(r["status"] == "QUEUED" for r in held), held
