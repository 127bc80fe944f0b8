"""What every model module reads from a FitJob and writes for a prediction."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from unified_pipeline.errors import DatasetError


def one_bundle(job, kind: str):
    """The job's only dataset of `kind` (a TensorBundle)."""
    matches = [b for b in job.datasets.values() if b.meta.get("kind") == kind]
    if len(matches) != 1:
        raise DatasetError(f"{job.model}: needs exactly one {kind} dataset, got {sorted(job.datasets)}")
    return matches[0]


def split_tensors(bundle, split: str, fields: Sequence[str]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """((inputs...), y) of one split, naming the dataset and the tensors it lacks."""
    part = bundle.split(split)
    missing = [f for f in (*fields, "y") if f not in part]
    if missing:
        raise DatasetError(f"dataset {bundle.meta.get('dataset')!r}: split {split!r} lacks tensor(s) {missing}")
    return tuple(part[f] for f in fields), part["y"]


def classifier_job(job, spec, kind: str, fields: Sequence[str]):
    """(job with the model's defaults filled in, its one dataset of `kind`, {split: ((inputs...), y)})."""
    job = dataclasses.replace(job, hparams=spec.resolve(job.hparams))
    bundle = one_bundle(job, kind)
    return job, bundle, {s: split_tensors(bundle, s, fields) for s in ("train", "val", "test")}


def probabilities_to_labels(logits: torch.Tensor, classes: list[str], top: int = 1) -> list:
    """(label, probability) per input; with top > 1, the `top` most likely, best first."""
    probs = torch.softmax(logits.float(), dim=-1)
    if top <= 1:
        p, i = probs.max(dim=-1)
        return [(classes[int(k)], float(v)) for k, v in zip(i, p)]
    p, i = probs.topk(min(int(top), probs.shape[-1]), dim=-1)
    return [[(classes[int(k)], float(v)) for k, v in zip(row_i, row_p)] for row_i, row_p in zip(i, p)]
