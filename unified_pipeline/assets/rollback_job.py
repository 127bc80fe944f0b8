"""`rollback_model`: move a model's production alias back from the Dagster UI."""
from dagster import AssetKey, AssetMaterialization, Config, MetadataValue, OpExecutionContext, job, op


class RollbackConfig(Config):
    """model: registry name; version: "vN" to roll back to, empty for the previous production."""

    model: str
    version: str = ""
    reason: str = ""


@op(description="Moves production back (append-only log) and records the restored version on the model asset.")
def rollback_production(context: OpExecutionContext, config: RollbackConfig) -> dict:
    from unified_pipeline.registry import ModelRegistry

    registry = ModelRegistry()
    before = registry.get(config.model, "production")
    restored = registry.rollback(config.model, to=config.version or None, reason=config.reason or "rollback from Dagster",
                                 who=f"dagster run {context.run_id}")
    context.log.info(f"{config.model}: production {before.name} -> {restored.name} ({config.reason or 'no reason given'})")
    context.log_event(
        AssetMaterialization(
            asset_key=AssetKey([config.model]),
            description=f"rolled back to {restored.name}",
            metadata={
                "version": restored.name,
                "status": "rolled back",
                "previous_production": before.name,
                "reason": config.reason,
                "location": MetadataValue.path(str(restored.path)),
                "metrics": MetadataValue.json(restored.metrics),
            },
        )
    )
    return {"model": config.model, "from": before.name, "to": restored.name}


@job(name="rollback_model", description="Roll a model's production version back (config: model, version, reason).")
def rollback_model():
    rollback_production()
