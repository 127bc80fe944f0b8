"""`rollback_model`: move a model's production alias back from the Dagster UI."""
from dagster import AssetKey, AssetMaterialization, Config, MetadataValue, OpExecutionContext, job, op

# Set by the Dagster UI (and Dagster+) on runs a signed-in person launched.
USER_TAG = "dagster/user"


class RollbackConfig(Config):
    """model: registry name; version: "vN" to roll back to, empty for the previous production;
    who: the person responsible, default the run's dagster/user tag, else the OS user."""

    model: str
    version: str = ""
    reason: str = ""
    who: str = ""


def responsible(context: OpExecutionContext, who: str) -> str:
    """Who the append-only log names: a person, plus the run that acted for them."""
    from unified_pipeline.registry.store import resolve_who

    person = who.strip() or context.run.tags.get(USER_TAG, "").strip() or resolve_who(None)
    return f"{person} (dagster run {context.run_id})"


@op(description="Moves production back (append-only log) and records the restored version on the model asset.")
def rollback_production(context: OpExecutionContext, config: RollbackConfig) -> dict:
    from unified_pipeline.registry import ModelRegistry

    registry = ModelRegistry()
    before = registry.get(config.model, "production")
    who = responsible(context, config.who)
    restored = registry.rollback(config.model, to=config.version or None, reason=config.reason or "rollback from Dagster",
                                 who=who)
    context.log.info(f"{config.model}: production {before.name} -> {restored.name} by {who} "
                     f"({config.reason or 'no reason given'})")
    from unified_pipeline.registry.downstream import describe

    for line in describe(registry.last_stale):
        context.log.warning(line)
    context.log_event(
        AssetMaterialization(
            asset_key=AssetKey([config.model]),
            description=f"rolled back to {restored.name}",
            metadata={
                "version": restored.name,
                "status": "rolled back",
                "previous_production": before.name,
                "reason": config.reason,
                "who": who,
                "location": MetadataValue.path(str(restored.path)),
                "metrics": MetadataValue.json(restored.metrics),
                "stale_downstream": MetadataValue.json(registry.last_stale),
            },
        )
    )
    return {"model": config.model, "from": before.name, "to": restored.name, "who": who}


@job(name="rollback_model", description="Roll a model's production version back (config: model, version, reason, who).")
def rollback_model():
    rollback_production()
