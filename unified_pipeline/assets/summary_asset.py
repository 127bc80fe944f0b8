"""Run summary: one table of every model in the run, a results JSON and a Markdown report."""

import time
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, AssetIn, AssetKey, MetadataValue, Output, TableColumn, TableRecord, TableSchema, asset

from unified_pipeline import atomic
from unified_pipeline.models.registry import MODELS
from unified_pipeline.paths import unified_home

SUMMARY_KEY = AssetKey(["training_summary"])
COLUMNS = ["model", "version", "status", "metric", "value", "promoted", "wall_time_s", "device"]


def summary_rows(outcomes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, o in outcomes.items():
        metric = MODELS[name].metric
        value = o.get("metrics", {}).get("test", {}).get(metric)
        rows.append({
            "model": name,
            "version": o.get("version", ""),
            "status": "reused" if o.get("reused") else "trained",
            "metric": metric,
            "value": round(float(value), 4) if isinstance(value, (int, float)) else None,
            "promoted": bool(o.get("promoted")),
            "wall_time_s": round(float(o.get("wall_time_s") or 0.0), 1),
            "device": o.get("device", ""),
        })
    return rows


def markdown_report(run_id: str, rows: list[dict[str, Any]], outcomes: dict[str, dict[str, Any]]) -> str:
    lines = [f"# Training run {run_id}", "", f"Finished {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join("" if r[c] is None else str(r[c]) for c in COLUMNS) + " |")
    for name, o in outcomes.items():
        lines += ["", f"## {name} ({o.get('version', '')})", "", f"- status: {'reused' if o.get('reused') else 'trained'}; {o.get('promotion_note', '')}",
                  f"- data versions: {', '.join(f'{k}={v}' for k, v in o.get('data_versions', {}).items())}",
                  f"- location: `{o.get('path', '')}`"]
        for split, metrics in o.get("metrics", {}).items():
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
            if shown:
                lines.append(f"- {split}: {shown}")
        for title, png in o.get("plots", {}).items():
            lines.append(f"- plot {title}: `{png}`")
    return "\n".join(lines) + "\n"


def summary_asset(model_names: list[str]):
    @asset(
        key=SUMMARY_KEY,
        ins={f"m_{m}": AssetIn(AssetKey([m])) for m in model_names},
        group_name="models",
        kinds={"json"},
        description="Every model of the run: version, headline metric, trained or reused, wall time, device. "
                    "Also writes results/<run_id>.json and a Markdown report.",
    )
    def training_summary(context: AssetExecutionContext, **inputs: dict) -> Output:
        outcomes = {k[2:]: v for k, v in inputs.items()}
        rows = summary_rows(outcomes)
        results_dir = unified_home() / "results"
        atomic.write_json(results_dir / f"{context.run_id}.json", {"run_id": context.run_id, "models": outcomes, "summary": rows})
        report = markdown_report(context.run_id, rows, outcomes)
        report_path = atomic.write_text(results_dir / f"{context.run_id}.md", report)
        schema = TableSchema(columns=[TableColumn(c, "string") for c in COLUMNS])
        return Output(
            {"run_id": context.run_id, "summary": rows, "report": str(report_path)},
            metadata={
                "summary": MetadataValue.table([TableRecord({c: str(r[c]) for c in COLUMNS}) for r in rows], schema=schema),
                "report": MetadataValue.md(report),
                "report_path": MetadataValue.path(str(report_path)),
                "trained": sum(r["status"] == "trained" for r in rows),
                "reused": sum(r["status"] == "reused" for r in rows),
            },
        )

    return training_summary
