"""What a model materialisation shows in the UI, the same whether the step trained or reused.

Everything comes from the registered version (its metrics, history, plots, weights and
lineage), so the newest materialisation after a rerun that reused a version carries the same
numbers, curves and links as the one that trained it. Numbers are top-level floats, which the
UI's Plots tab draws across materialisations; tables carry a schema.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from unified_pipeline.assets.plots import image_metadata
from unified_pipeline.version_reasons import why

# Splits of metrics.json whose numbers become top-level metadata (`test_accuracy`, `baseline_accuracy`).
NUMERIC_SPLITS = ("test", "baseline")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def flat_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{metric: {split: value}} for every numeric value; nested dicts become dotted names."""
    rows: dict[str, dict[str, float]] = {}

    def walk(split: str, prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(split, f"{prefix}.{k}" if prefix else str(k), v)
        elif _number(value):
            rows.setdefault(prefix, {})[split] = float(value)

    for split, values in (metrics or {}).items():
        walk(str(split), "", values)
    return rows


def metrics_table(metrics: dict[str, Any]) -> MetadataValue:
    rows = flat_metrics(metrics)
    splits = list(dict.fromkeys(s for r in rows.values() for s in r))
    schema = TableSchema(columns=[TableColumn("metric", "string")] + [TableColumn(s, "float") for s in splits])
    records = [TableRecord({"metric": name, **{s: r.get(s) for s in splits}}) for name, r in rows.items()]
    return MetadataValue.table(records, schema=schema)


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """A Markdown table (metric x split), readable where a list of `k=v` is not."""
    rows = flat_metrics(metrics)
    splits = list(dict.fromkeys(s for r in rows.values() for s in r))
    if not rows:
        return "(no numeric metrics)"
    lines = ["| metric | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[s]:.4g}" if s in r else "" for s in splits) + " |")
    return "\n".join(lines)


def parameter_count(folder: Path) -> int | None:
    """Weights counted from the safetensors header (no tensor is read)."""
    path = folder / "weights.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():
            n = 1
            for d in fh.get_slice(key).get_shape():
                n *= int(d)
            total += n
    return total


def epochs_recorded(folder: Path) -> int | None:
    try:
        history = json.loads((folder / "history.json").read_text())
    except (OSError, ValueError):
        return None
    epochs = [r.get("epoch") for r in history if isinstance(r, dict) and _number(r.get("epoch"))]
    return int(max(epochs)) if epochs else (len(history) if isinstance(history, list) else None)


def version_metadata(version: Any, registry: Any, reused: bool) -> dict[str, Any]:
    """Numbers, tables, curves, the model card and the reason, read from the registered version."""
    folder = Path(version.path)
    meta: dict[str, Any] = {
        "why": why(registry, version, reused),
        "metrics": metrics_table(version.metrics),
        "model_card": MetadataValue.md("```\n" + registry.card(version.model, version.number) + "\n```"),
        "location": MetadataValue.path(str(folder)),
    }
    for split in NUMERIC_SPLITS:
        for k, v in (version.metrics.get(split) or {}).items():
            if _number(v) and "/" not in str(k):
                meta[f"{split}_{k}"] = float(v)
    params, epochs = parameter_count(folder), epochs_recorded(folder)
    if params is not None:
        meta["parameters"] = params
    if epochs is not None:
        meta["epochs"] = epochs
    trained_in = version.lineage.get("wall_time_s")
    if _number(trained_in):
        meta["training_wall_time_s"] = round(float(trained_in), 2)
    for png in sorted((folder / "plots").glob("*.png")):
        meta[f"plot_{png.stem}"] = image_metadata(png.stem.replace("_", " "), png)
    return meta


def report_markdown(version: Any, reason: str) -> str:
    """The version's reason and its metrics as a Markdown table."""
    return "\n".join([f"### {version.name}", "", reason, "", metrics_markdown(version.metrics)])
