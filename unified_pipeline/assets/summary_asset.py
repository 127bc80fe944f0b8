"""Run summary: one table of every model in the run, a results JSON and a Markdown report."""

import base64
import re
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from dagster import AssetExecutionContext, AssetKey, MetadataValue, Output, TableColumn, TableRecord, TableSchema, asset

from unified_pipeline import atomic
from unified_pipeline.assets.model_metadata import metrics_markdown
from unified_pipeline.models.registry import MODELS
from unified_pipeline.paths import unified_home

SUMMARY_KEY = AssetKey(["training_summary"])
COLUMNS = ["model", "version", "status", "metric", "value", "promoted", "wall_time_s", "device",
           "cpu_s", "gpu_s", "peak_rss_mb", "peak_gpu_mem_mb", "samples_seen", "attempts"]
# Cost of the version (training/cost.py), summed over its attempts; a version registered before
# costs were recorded shows none.
COST_COLUMNS = {"cpu_s": "cpu_s", "gpu_s": "gpu_s", "peak_rss_mb": "peak_rss_mb", "peak_gpu_mem_mb": "peak_gpu_mem_mb",
                "samples_seen": "samples", "attempts": "attempts"}
# Column types of the UI's table: numbers sort and align as numbers, nothing is cut into "traine d".
COLUMN_TYPES = {"value": "float", "promoted": "bool", "wall_time_s": "float", "cpu_s": "float", "gpu_s": "float",
                "peak_rss_mb": "float", "peak_gpu_mem_mb": "float", "samples_seen": "int", "attempts": "int"}
_INLINE_BUDGET = 400_000  # PNG bytes inlined into the UI's copy of the report; run storage keeps every event


NOT_MATERIALISED = "not materialised yet"


def outcome_status(o: dict[str, Any]) -> str:
    """trained / reused in this run; for a model the run did not include, where its version came from."""
    if not o:
        return NOT_MATERIALISED
    if o.get("from_run"):
        return f"not in this run (from run {o['from_run'][:8]})"
    return "reused" if o.get("reused") else "trained"


def summary_rows(outcomes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, o in outcomes.items():
        metric = MODELS[name].metric
        value = o.get("metrics", {}).get("test", {}).get(metric)
        rows.append({
            "model": name,
            "version": o.get("version", ""),
            "status": outcome_status(o),
            "metric": metric,
            "value": round(float(value), 4) if isinstance(value, (int, float)) else None,
            "promoted": bool(o.get("promoted")),
            "wall_time_s": round(float(o.get("wall_time_s") or 0.0), 1),
            "device": o.get("device", ""),
            **{col: (o.get("cost") or {}).get(key) for col, key in COST_COLUMNS.items()},
        })
    return rows


ImageSource = Callable[[str, str, Path], "str | None"]


def markdown_report(run_id: str, rows: list[dict[str, Any]], outcomes: dict[str, dict[str, Any]],
                    image_src: ImageSource | None = None) -> str:
    """The run's report; `image_src(model, title, png)` gives each curve's image link (None: list the path)."""
    lines = [f"# Training run {run_id}", "", f"Finished {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join("" if r[c] is None else str(r[c]) for c in COLUMNS) + " |")
    for name, o in outcomes.items():
        lines += ["", f"## {name} ({o.get('version', '')})", "", f"- status: {outcome_status(o)}; {o.get('promotion_note', '')}",
                  f"- data versions: {', '.join(f'{k}={v}' for k, v in o.get('data_versions', {}).items())}",
                  f"- location: `{o.get('path', '')}`"]
        if o.get("metrics"):
            lines += ["", metrics_markdown(o["metrics"])]
        images = []
        for title, png in o.get("plots", {}).items():
            src = image_src(name, title, Path(png)) if image_src else None
            if src:
                images += ["", f"![{name} {title}]({src})"]
            else:
                lines.append(f"- plot {title}: `{png}`")
        lines += images
    return "\n".join(lines) + "\n"


def copied_plots(report: Path) -> ImageSource:
    """Copy each curve into `<report stem>-plots/` beside the report and link it relatively."""
    folder = report.parent / f"{report.stem}-plots"

    def src(model: str, title: str, png: Path) -> str | None:
        if not png.is_file():
            return None
        target = atomic.write_bytes(folder / f"{model}-{_slug(title)}.png", png.read_bytes())
        return quote(f"{folder.name}/{target.name}")

    return src


def inline_plots(budget_bytes: int = _INLINE_BUDGET) -> ImageSource:
    """Curves as data URIs (the UI renders them), until `budget_bytes` of PNG are used; then paths."""
    left = [budget_bytes]

    def src(model: str, title: str, png: Path) -> str | None:
        if not png.is_file() or png.stat().st_size > left[0]:
            return None
        data = png.read_bytes()
        left[0] -= len(data)
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")

    return src


def _slug(title: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", title).strip("_") or "plot"


def summary_asset(model_names: list[str]):
    """Reads every model's stored output rather than taking them as inputs, so a run that trains
    only some models (the new-data sensor's) still reports all of them, and says which were not
    part of the run, and a model never materialised is listed instead of failing the summary."""

    @asset(
        key=SUMMARY_KEY,
        deps=[AssetKey([m]) for m in model_names],
        required_resource_keys={"io_manager"},
        group_name="reports",
        kinds={"json"},
        description="Every model: version, headline metric, trained or reused in this run (or not part of "
                    "it), wall time, device. Also writes results/<run_id>.json and a Markdown report.",
    )
    def training_summary(context: AssetExecutionContext) -> Output:
        outcomes = {m: _outcome(context, m) for m in model_names}
        rows = summary_rows(outcomes)
        results_dir = unified_home() / "results"
        atomic.write_json(results_dir / f"{context.run_id}.json", {"run_id": context.run_id, "models": outcomes, "summary": rows})
        report_path = results_dir / f"{context.run_id}.md"
        atomic.write_text(report_path, markdown_report(context.run_id, rows, outcomes, copied_plots(report_path)))
        report = markdown_report(context.run_id, rows, outcomes, inline_plots())
        schema = TableSchema(columns=[TableColumn(c, COLUMN_TYPES.get(c, "string")) for c in COLUMNS])
        return Output(
            {"run_id": context.run_id, "summary": rows, "report": str(report_path)},
            metadata={
                "summary": MetadataValue.table([TableRecord({c: _cell(r[c], c) for c in COLUMNS}) for r in rows],
                                               schema=schema),
                "report": MetadataValue.md(report),
                "report_path": MetadataValue.path(str(report_path)),
                "trained": sum(r["status"] == "trained" for r in rows),
                "reused": sum(r["status"] == "reused" for r in rows),
                "not_in_run": sum(r["status"] not in ("trained", "reused") for r in rows),
            },
        )

    return training_summary


def _cell(value: Any, column: str) -> Any:
    if column in COLUMN_TYPES:
        return value
    return "" if value is None else str(value)


def _outcome(context: AssetExecutionContext, model: str) -> dict[str, Any]:
    stored = context.resources.io_manager.stored([model]) or {}
    event = context.instance.get_latest_materialization_event(AssetKey([model]))
    if stored and (event is None or event.run_id != context.run_id):
        stored = {**stored, "from_run": event.run_id if event is not None else "unknown"}
    return stored
