"""The rollback_model job moves production back and records it on the model asset."""
import json

from dagster import AssetKey, DagsterInstance


def register(registry, tmp_path, n, acc):
    src = tmp_path / f"src{n}"
    src.mkdir()
    (src / "weights.safetensors").write_bytes(b"w" * n)
    (src / "metrics.json").write_text(json.dumps({"test": {"accuracy": acc}}))
    return registry.register("vision_service", src, lineage={"data_versions": {}, "code_version": "c", "hparams": {}},
                             metrics={"test": {"accuracy": acc}}, fingerprint=f"fp{n}", metric="accuracy")


def test_rollback_job_restores_previous_production(home, tmp_path):
    from unified_pipeline.assets.rollback_job import rollback_model
    from unified_pipeline.registry import ModelRegistry

    reg = ModelRegistry()
    register(reg, tmp_path, 1, 0.90)
    register(reg, tmp_path, 2, 0.95)
    assert reg.get("vision_service", "production").name == "vision_service/v2"
    with DagsterInstance.ephemeral() as instance:
        result = rollback_model.execute_in_process(
            run_config={"ops": {"rollback_production": {"config": {"model": "vision_service", "reason": "bad in prod"}}}},
            instance=instance,
        )
        assert result.success
        (mat,) = [e.event_specific_data.materialization for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
    assert mat.asset_key == AssetKey(["vision_service"])
    assert mat.metadata["version"].value == "vision_service/v1"
    assert ModelRegistry().get("vision_service", "production").name == "vision_service/v1"
    log = [e for e in ModelRegistry().events("vision_service") if e.get("event") == "rollback" or e.get("action") == "rollback"]
    assert log and "bad in prod" in json.dumps(log[-1])


def _rollback(instance, tags=None, **config):
    from unified_pipeline.assets.rollback_job import rollback_model

    return rollback_model.execute_in_process(
        run_config={"ops": {"rollback_production": {"config": {"model": "vision_service", **config}}}},
        instance=instance, tags=tags,
    )


def _last_rollback_who():
    from unified_pipeline.registry import ModelRegistry

    return [e for e in ModelRegistry().events("vision_service") if e["event"] == "rollback"][-1]["who"]


def test_rollback_job_records_the_person_and_the_run(home, tmp_path, monkeypatch):
    import getpass

    from unified_pipeline.registry import ModelRegistry

    reg = ModelRegistry()
    for n, acc in ((1, 0.90), (2, 0.91), (3, 0.92), (4, 0.93)):
        register(reg, tmp_path, n, acc)
    monkeypatch.setattr(getpass, "getuser", lambda: "os-user")
    with DagsterInstance.ephemeral() as instance:
        explicit = _rollback(instance, tags={"dagster/user": "alice@example.com"}, who="bob", reason="on call")
        assert _last_rollback_who() == f"bob (dagster run {explicit.run_id})"
        assert explicit.output_for_node("rollback_production")["who"].startswith("bob ")
        tagged = _rollback(instance, tags={"dagster/user": "alice@example.com"})
        assert _last_rollback_who() == f"alice@example.com (dagster run {tagged.run_id})"
        (mat,) = [e.event_specific_data.materialization for e in tagged.all_events
                  if e.event_type_value == "ASSET_MATERIALIZATION"]
        assert mat.metadata["who"].value == _last_rollback_who()
        plain = _rollback(instance, version="v4")
        assert _last_rollback_who() == f"os-user (dagster run {plain.run_id})"
    assert reg.get("vision_service", "production").name == "vision_service/v4"
