"""Which datasets each model reads, and the asset selections of the jobs."""
from __future__ import annotations

from unified_pipeline.datasets import DatasetRef
from unified_pipeline.models.registry import MODELS, ModelEntry


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
        chosen.append(wanted[0] if wanted else default if default in of_kind else of_kind[0])
    return chosen


def trainable_models(refs: list[DatasetRef], preferences: dict[str, list[str]]) -> dict[str, list[str]]:
    """Model name -> datasets, for models whose data (and upstream models) are all available."""
    out: dict[str, list[str]] = {}
    for name, entry in MODELS.items():
        ds = datasets_for_model(entry, refs, preferences.get(name))
        if ds is None or any(up not in out for up in entry.upstream_models):
            continue
        out[name] = ds
    return out
