"""Which datasets each model reads, the data lanes, and the asset selections of the jobs."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from dagster import AssetSelection

from unified_pipeline.assets.data_assets import UNRECOGNISED_GROUP, lane_assets, unrecognised_assets
from unified_pipeline.datasets import DatasetRef, scan
from unified_pipeline.models.registry import MODELS, ModelEntry

log = logging.getLogger(__name__)


def data_lanes(preprocess: Callable[[str], dict[str, Any]],
               root: Path | None = None) -> tuple[list[DatasetRef], list[Any]]:
    """The datasets under the raw root and the assets of their lanes, given the preprocessing
    settings per kind (e.g. `preset.preprocess`). A folder that is not a dataset gets one
    asset that fails naming it, so it shows in the UI and fails the data job, while every
    good lane still materialises."""
    refs, problems = scan(root)
    assets = [a for ref in refs for a in lane_assets(ref, preprocess(ref.kind))]
    return refs, assets + unrecognised_assets(problems)


def data_selection(refs: list[DatasetRef]) -> AssetSelection:
    """Everything of the data lanes, including the failing assets of unrecognised folders."""
    return AssetSelection.groups(*sorted({r.kind for r in refs}), UNRECOGNISED_GROUP)


def datasets_for_model(entry: ModelEntry, refs: list[DatasetRef], preferred: list[str] | None = None) -> list[str] | None:
    """Dataset names the model trains on, or None when a kind it needs has no dataset.

    One dataset per kind (the preset's choice, else the registry's default name, else the first
    by name), or every dataset of the kind for models that learn one sub-model per dataset.
    """
    chosen: list[str] = []
    for i, kind in enumerate(entry.dataset_kinds):
        of_kind = [r.name for r in refs if r.kind == kind]
        if not of_kind:
            return None
        if entry.all_datasets:
            chosen += of_kind
            continue
        wanted = [d for d in (preferred or []) if d in of_kind]
        default = entry.default_datasets[i] if i < len(entry.default_datasets) else ""
        if entry.only_named_datasets and not wanted and default not in of_kind:
            return None  # an instance's own dataset is missing: never train it on another one
        chosen.append(wanted[0] if wanted else default if default in of_kind else of_kind[0])
    return chosen


def trainable_models(refs: list[DatasetRef], preferences: dict[str, list[str]]
                     ) -> tuple[dict[str, list[str]], dict[str, ModelEntry]]:
    """Model name -> datasets, for models whose data (and upstream models) are all available, and
    the entry each of them trains as: an instance whose swapped-in upstream model has no data here
    reads the built-in one instead (the registry itself stays as declared)."""
    out: dict[str, list[str]] = {}
    entries: dict[str, ModelEntry] = {}
    for name, entry in MODELS.items():
        ds = datasets_for_model(entry, refs, preferences.get(name))
        if ds is None:
            continue
        entry = _with_fallbacks(entry, out)
        if all(up in out for up in entry.upstream_models):
            out[name], entries[name] = ds, entry
    return out, entries


def _with_fallbacks(entry: ModelEntry, trainable: dict[str, list[str]]) -> ModelEntry:
    missing = [u for u in entry.upstream_models if u not in trainable]
    fallback = dict(entry.upstream_fallbacks)
    ups = tuple(fallback.get(u, u) if u in missing else u for u in entry.upstream_models)
    if not missing or ups == entry.upstream_models or not all(up in trainable for up in ups):
        return entry
    log.warning("%s: upstream %s has no data here; using %s instead", entry.name, missing,
                [u for u in ups if u not in entry.upstream_models])
    return replace(entry, upstream_models=ups)
