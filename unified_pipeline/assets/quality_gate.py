"""How a failed data-quality check stops its lane while the UI tells the truth about it.

Dagster's own `blocking=True` fails the step, hence the run, and the UI then paints every asset
planned in that run red "Failed", although tensors and models never ran. Instead the manifest is
recorded (materialisation plus the failed check, severity ERROR) without producing its output:
Dagster then skips every step that reads it (`<dataset>/tensors`, then the models), the run ends,
and the UI shows the failed check on the manifest and the downstream assets as not materialised.
"""
from __future__ import annotations

from typing import Any, Iterator

from dagster import AssetCheckResult, AssetMaterialization, DataVersion

STOPPED = "Not passed on: {tensors} and the models reading it were skipped in this run (bad data is never trained on)."


def stop_lane(context, dataset: str, version: str | None, metadata: dict[str, Any],
              check: AssetCheckResult) -> Iterator[AssetMaterialization | AssetCheckResult]:
    """Yield the manifest's materialisation and its failed `check`, and no output."""
    key = context.asset_key
    tensors = f"{dataset}/tensors"
    context.log.error(f"{key.to_user_string()} failed its quality check; {tensors} and the models reading it are skipped")
    yield AssetMaterialization(asset_key=key, metadata={**metadata, "passed_on": False},
                               tags=_provenance_tags(context, key, version))
    yield check._replace(description=f"{check.description}\n\n{STOPPED.format(tensors=tensors)}")


def _provenance_tags(context, key, version: str | None) -> dict[str, str]:
    """The data-version tags Dagster puts on an Output's materialisation (code version, input
    versions), so staleness and the new-data sensor read this one like any other."""
    from dagster._core.definitions.data_version import compute_logical_data_version
    from dagster._core.execution.plan.execute_step import (
        _build_data_version_tags, _get_code_version, _get_input_provenance_data,
    )

    step = context.op_execution_context._step_execution_context
    code = _get_code_version(key, step)
    inputs = _get_input_provenance_data(key, step)
    data_version = DataVersion(version) if version else compute_logical_data_version(
        code, {k: meta["data_version"] for k, meta in inputs.items()})
    return _build_data_version_tags(data_version, code, inputs, version is not None)
