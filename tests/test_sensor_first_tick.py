"""The new-data sensor's first tick compares the files with each lane's last materialisation."""
from dagster import AssetSelection, DagsterInstance, build_sensor_context, materialize

import tiny_data


def test_first_tick_requests_only_lanes_whose_data_differ_from_their_last_materialisation(home, tmp_path):
    from unified_pipeline.assets.json_io import JsonIOManager
    from unified_pipeline.definitions import build_definitions

    raw = tmp_path / "raw"
    tiny_data.text(raw)
    tiny_data.vision(raw)
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    lanes = list({id(graph.get(k).assets_def): graph.get(k).assets_def
                  for k in graph.get_all_asset_keys() if len(k.path) == 2}.values())
    sensor = defs.resolve_sensor_def("new_data_sensor")
    with DagsterInstance.ephemeral() as instance:
        assert materialize(lanes, selection=AssetSelection.all(), instance=instance,
                           resources={"io_manager": JsonIOManager()}).success
        first = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
        assert not first.run_requests and "no dataset changed" in first.skip_message
        assert first.cursor  # the versions seen are recorded
        assert not first.asset_events  # nothing observed as new, so no manifest turns stale
        assert _stale(instance, defs) == set()
        csv = raw / "tiny_text" / "data.csv"
        csv.write_text(csv.read_text() + "zzzzy99,omega\n")
        fresh = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))  # no cursor
        after = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=first.cursor, definitions=defs))
        for event in after.asset_events:  # what the daemon stores from the tick
            instance.report_runless_asset_event(event)
        # Dagster's own stale status (the UI's): the edited lane only.
        assert _stale(instance, defs) == {"tiny_text/manifest"}
    for result in (fresh, after):
        (request,) = result.run_requests
        selected = {k.to_user_string() for k in request.asset_selection}
        assert {"tiny_text/manifest", "tiny_text/tensors", "text_service"} <= selected
        assert not any(s.startswith("tiny_images") or s == "vision_service" for s in selected)
        assert [e.asset_key.to_user_string() for e in result.asset_events] == ["tiny_text/raw_files"]


def _stale(instance, defs) -> set[str]:
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    graph = defs.resolve_asset_graph()
    assets = list({id(graph.get(k).assets_def): graph.get(k).assets_def for k in graph.get_all_asset_keys()}.values())
    resolver = get_stale_status_resolver(instance, assets)
    return {k.to_user_string() for k in graph.get_all_asset_keys()
            if k.path[-1] in ("manifest", "tensors") and resolver.get_status(k) == StaleStatus.STALE}
