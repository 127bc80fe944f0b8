"""Run a kind's Great Expectations suite on its manifest and report offenders by file and row.

Each kind has a module `unified_pipeline.quality.<kind>` exposing
`prepare(manifest) -> DataFrame` (derived columns on a copy) and
`expectations(manifest, cfg) -> list[gx expectation]`. This module only wires them into GX:
an in-memory (ephemeral) context, a pandas data source over the prepared frame, a suite and a
ValidationDefinition. GX evaluates every expectation; nothing here re-checks the data.
"""
from __future__ import annotations

import importlib
import math
import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from unified_pipeline.errors import ConfigError

# Must be set before great_expectations is imported anywhere in the process.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

MAX_OFFENDERS = 20
INDEX_COLUMNS = ("path", "row")

_lock = threading.Lock()
_cache: dict[str, Any] = {}


@dataclass
class QualityReport:
    kind: str
    success: bool
    results: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["success"]]

    def summary(self) -> str:
        """Markdown: one line when everything passes, else one bullet per failing expectation."""
        passed = len(self.results) - len(self.failures)
        head = f"{self.kind} suite: {passed}/{len(self.results)} expectations passed on {self.rows} rows"
        if self.success:
            return head
        lines = [head + "; failing:"]
        for r in self.failures:
            where = f" `{r['column']}`" if r["column"] else ""
            detail = []
            if r["unexpected_count"]:
                detail.append(f"{r['unexpected_count']} unexpected")
            if r["observed_value"] is not None and not r["offenders"]:
                detail.append(f"observed {_short(r['observed_value'])}")
            if r.get("missing"):
                detail.append("missing " + ", ".join(str(v) for v in r["missing"]))
            if r.get("details") and not r["offenders"]:
                detail.append(f"details {_short(r['details'])}")
            if r.get("exception"):
                detail.append(f"error: {r['exception']}")
            if r["offenders"]:
                detail.append("offenders: " + ", ".join(_offender_text(o) for o in r["offenders"]))
            lines.append(f"- {r['expectation']}{where}: " + "; ".join(detail))
        return "\n".join(lines)

    def to_metadata(self) -> dict[str, Any]:
        return _jsonable(
            {"kind": self.kind, "success": self.success, "rows": self.rows, "results": self.results}
        )


def validate(kind: str, manifest: pd.DataFrame, cfg: Any = None) -> QualityReport:
    """Run the suite of `kind` on `manifest` (never mutated) and return a QualityReport.

    `cfg` is a dict or a PreprocessConfig; each suite documents the keys it reads.
    """
    try:
        suite_module = importlib.import_module(f"unified_pipeline.quality.{kind}")
    except ModuleNotFoundError as exc:
        raise ConfigError(f"no quality suite for dataset kind {kind!r}") from exc
    df = suite_module.prepare(manifest.copy())
    expectations = suite_module.expectations(df, cfg if cfg is not None else {})
    index_cols = [c for c in INDEX_COLUMNS if c in df.columns]
    raw = _run(df.reset_index(drop=True), expectations, index_cols)
    results = [_result_row(r, index_cols) for r in raw]
    return QualityReport(kind=kind, success=all(r["success"] for r in results), results=results, rows=len(df))


def _context():
    """One ephemeral GX context per process (each Dagster step is its own process)."""
    pid = os.getpid()
    if _cache.get("pid") != pid:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        asset = ctx.data_sources.add_pandas("manifest").add_dataframe_asset("frame")
        _cache.update(pid=pid, gx=gx, ctx=ctx, batch=asset.add_batch_definition_whole_dataframe("whole"))
    return _cache["gx"], _cache["ctx"], _cache["batch"]


def _run(df: pd.DataFrame, expectations: list, index_cols: list[str]) -> list[dict[str, Any]]:
    if not expectations:
        return []
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_OFFENDERS}
    if index_cols:
        result_format["unexpected_index_column_names"] = index_cols
    with _lock:
        gx, ctx, batch = _context()
        name = f"suite_{uuid.uuid4().hex}"
        suite = ctx.suites.add(gx.ExpectationSuite(name=name))
        for exp in expectations:
            suite.add_expectation(exp)
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(data=batch, suite=suite, name=name))
        try:
            outcome = vd.run(batch_parameters={"dataframe": df}, result_format=result_format)
        finally:
            # The ephemeral stores would otherwise grow by one suite per call.
            ctx.validation_definitions.delete(name)
            ctx.suites.delete(name)
    return [r.to_json_dict() for r in outcome.results]


def _result_row(raw: dict[str, Any], index_cols: list[str]) -> dict[str, Any]:
    config = raw.get("expectation_config") or {}
    kwargs = {k: v for k, v in (config.get("kwargs") or {}).items() if k != "batch_id"}
    result = raw.get("result") or {}
    message = _exception_message(raw.get("exception_info") or {})
    offenders = []
    for item in result.get("partial_unexpected_index_list") or []:
        if isinstance(item, dict):
            offenders.append({c: item.get(c) for c in index_cols})
    return {
        "expectation": config.get("type", "?"),
        "column": kwargs.get("column"),
        "kwargs": kwargs,
        "success": bool(raw.get("success")) and message is None,
        "observed_value": result.get("observed_value"),
        "unexpected_count": int(result.get("unexpected_count") or 0),
        "offenders": offenders[:MAX_OFFENDERS],
        "missing": (result.get("partial_missing_list") or [])[:MAX_OFFENDERS],  # set expectations: absent values
        "details": result.get("details"),
        "exception": message,
    }


def _exception_message(info: dict[str, Any]) -> str | None:
    # GX reports either one {raised_exception, exception_message} or one such dict per metric.
    if "raised_exception" in info:
        return info.get("exception_message") if info.get("raised_exception") else None
    messages = sorted({v.get("exception_message") for v in info.values() if isinstance(v, dict) and v.get("raised_exception")})
    return "; ".join(m for m in messages if m) or None


def _offender_text(o: dict[str, Any]) -> str:
    if "row" in o and o.get("row") is not None:
        return f"{o.get('path')}:{o['row']}"
    return str(o.get("path"))


def _short(value: Any, limit: int = 120) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)
