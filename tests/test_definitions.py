"""The Definitions object on tiny data: lanes, model assets, jobs, tags, sensor and schedule."""
import pytest
from dagster import AssetKey, DagsterInstance, RunRequest, build_schedule_context, build_sensor_context

import tiny_data


@pytest.fixture
def raw(home, tmp_path):
    root = tmp_path / "raw"
    for make in tiny_data.ALL.values():
        make(root)
    return root


def build():
    from unified_pipeline.definitions import build_definitions

    return build_definitions()


def test_every_dataset_gets_a_lane_and_models_get_device_tags(raw):
    defs = build()
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    for ds in ["tiny_images", "tiny_audio", "tiny_text", "tiny_transitions", "tiny_causal", "tiny_memory"]:
        assert {f"{ds}/raw_files", f"{ds}/manifest", f"{ds}/tensors"} <= keys
    for model in ["vision_service", "audio_service", "text_service", "multimodal_service"]:
        assert model in keys
        node = graph.get(AssetKey([model]))
        assert node.assets_def.op.tags.get("unified/device") == "accelerator"
    mm_deps = {k.to_user_string() for k in graph.get(AssetKey(["multimodal_service"])).parent_keys}
    assert {"vision_service", "audio_service", "tiny_images/tensors", "tiny_audio/tensors"} <= mm_deps


def test_jobs_per_scenario_and_executor_limits(raw):
    defs = build()
    names = {j.name for j in defs.resolve_all_job_defs()}
    assert {"data_lane", "collaborative_training", "quick_start", "vision_focus", "audio_focus"} <= names
    job = defs.resolve_job_def("collaborative_training")
    assert job.tags["unified/scenario"] == "collaborative_training"
    assert job.executor_def.name == "multiprocess"
    from unified_pipeline import devices
    from unified_pipeline.definitions import executor_config

    cfg = executor_config()
    assert "unified_pipeline.step_preload" in cfg["start_method"]["forkserver"]["preload_modules"]
    assert cfg["tag_concurrency_limits"] == [
        {"key": "unified/device", "value": "accelerator", "limit": devices.total_slots()}
    ]


def test_sensor_requests_only_changed_lanes(raw):
    defs = build()
    sensor = defs.resolve_sensor_def("new_data_sensor")
    with DagsterInstance.ephemeral() as instance:
        first = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
        assert len(first.run_requests) == 1
        cursor = first.cursor
        quiet = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
        assert not quiet.run_requests
        wav = next((raw / "tiny_audio" / "low").glob("*.wav"))
        wav.write_bytes(wav.read_bytes()[:-2] + b"\x01\x02")
        changed = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
    assert len(changed.run_requests) == 1
    selected = {k.to_user_string() for k in changed.run_requests[0].asset_selection}
    assert {"tiny_audio/manifest", "tiny_audio/tensors", "audio_service", "multimodal_service",
            "training_summary"} <= selected
    assert not any(s.startswith("tiny_images") or s in ("vision_service", "text_service") for s in selected)


def test_schedule_runs_main_job(raw):
    defs = build()
    schedule = defs.resolve_schedule_def("collaborative_training_schedule")
    with DagsterInstance.ephemeral() as instance:
        data = schedule.evaluate_tick(build_schedule_context(instance=instance))
    assert data.run_requests and isinstance(data.run_requests[0], RunRequest)
    assert schedule.job_name == "collaborative_training"


def test_scenario_naming_an_unknown_dataset_fails_listing_the_valid_ones(raw, tmp_path, monkeypatch):
    import json

    from unified_pipeline.errors import ConfigError

    preset = json.loads(open("presets/training_preset.json").read())
    preset["training_scenarios"]["vision_focus"]["datasets"] = ["tiny_imgs"]
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    monkeypatch.setenv("UNIFIED_PRESET", str(path))
    with pytest.raises(ConfigError, match=r"vision_focus.*tiny_imgs.*tiny_images"):
        build()


def test_scenario_jobs_hold_their_models_and_what_they_need_but_not_advisors(raw):
    defs = build()

    def models_in(job):
        nodes = defs.resolve_job_def(job).nodes_in_topological_order
        return {n.name for n in nodes if "__" not in n.name and n.name != "training_summary"}

    assert models_in("vision_focus") == {"vision_service"}
    assert {"multimodal_service", "vision_service", "audio_service"} <= models_in("concept_models_training")
    assert "adaptive_learning_controller" in models_in("collaborative_training")
    advisors = {k.to_user_string() for k in defs.resolve_asset_graph().get(AssetKey(["vision_service"])).parent_keys}
    assert "adaptive_learning_controller" in advisors
