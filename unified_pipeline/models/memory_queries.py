"""Memory-record queries for the alpha deep model's `predict`.

A query is a DeepParameter record (docs/architecture.md), inline JSON or a .json/.jsonl file
(see query_input). It may be partial, as a recollection is: only `base_gist.summary` is
required; missing keywords or relations count as none, a missing modality as the training
mean. The record is tokenised with the training vocabularies stored in the model, encoded,
quantised to int8 like every stored code, and compared by cosine similarity with the codes of
all records the model was trained on (`memory_bank.*` beside the weights).

Answer per record: the `top` nearest stored records (id, similarity) followed by the
predicted feedback: "reward if ACTION" and "success if ACTION" for the record's own
`action_feedback.action`, or for every known action when the record names none.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from unified_pipeline.datasets.memory import field, words
from unified_pipeline.errors import ConfigError, IntegrityError
from unified_pipeline.models import alpha_deep_model
from unified_pipeline.models.alpha_deep_model import (
    BANK_IDS, BANK_TENSORS, ENCODING_META, AlphaDeepModel, encode, nearest, predict_feedback, quantise)
from unified_pipeline.models.base import BaseModel
from unified_pipeline.models.query_input import json_items, short

UNKNOWN_ID = 1  # vocabularies start with <pad>, <unk>


def _index(vocab: list[str]) -> dict[str, int]:
    return {t: i for i, t in enumerate(vocab) if i >= 2}


def _strings(value, where: str, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: field {name} must be a list of strings")
    return value


def _modalities(rec: dict, layout: list[list], mean: torch.Tensor, where: str) -> torch.Tensor:
    given = rec.get("modalities", {})
    if not isinstance(given, dict):
        raise ConfigError(f"{where}: field modalities must be an object of {[name for name, _ in layout]}")
    out, start = mean.clone().cpu(), 0
    for name, size in layout:
        value = given.get(name)
        if value is not None:
            values = [value] if size == 1 and not isinstance(value, list) else value
            ok = isinstance(values, list) and len(values) == size and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
                for v in values)
            if not ok:
                raise ConfigError(f"{where}: field modalities.{name} must be "
                                  f"{'a number' if size == 1 else f'a list of {size} numbers'}")
            out[start:start + size] = torch.tensor(values, dtype=out.dtype)
        start += size
    return out


def record_tensors(rec: dict, extra: dict, model: AlphaDeepModel, where: str) -> tuple[torch.Tensor, ...]:
    """(gist, keywords, relations, modalities), each with a batch dimension of 1."""
    summary = field(rec, "base_gist.summary")
    if not isinstance(summary, str):
        raise ConfigError(f"{where}: field base_gist.summary missing or not a string")
    w_ix, e_ix, v_ix = (_index(extra[k]) for k in ("vocab", "entity_vocab", "verb_vocab"))
    gist = [w_ix.get(w, UNKNOWN_ID) for w in words(summary)] or [0]
    keywords = torch.zeros(1, model.config.keyword_size)
    k_ix = {k: i for i, k in enumerate(extra["keyword_vocab"])}
    for k in _strings(field(rec, "base_gist.keywords"), where, "base_gist.keywords"):
        if k in k_ix:
            keywords[0, k_ix[k]] = 1.0
    triples = field(rec, "relational_context.relations") or []
    if not isinstance(triples, list) or not all(
            isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("subject", "verb", "object"))
            for r in triples):
        raise ConfigError(f"{where}: field relational_context.relations must be a list of "
                          "{subject, verb, object} strings")
    relations = [(e_ix.get(r["subject"], UNKNOWN_ID), v_ix.get(r["verb"], UNKNOWN_ID),
                  e_ix.get(r["object"], UNKNOWN_ID)) for r in triples] or [(0, 0, 0)]
    mods = _modalities(rec, extra["modality_layout"], model.modality_mean, where)
    return (torch.tensor([gist]), keywords, torch.tensor([relations]), mods.unsqueeze(0))


def _actions(rec: dict, vocab: list[str], where: str) -> list[int]:
    action = field(rec, "action_feedback.action")
    if action is None:
        return list(range(len(vocab)))
    if action not in vocab:
        raise ConfigError(f"{where}: field action_feedback.action {action!r} is not a known action; valid: {vocab}")
    return [vocab.index(action)]


def load(model_dir: str | Path) -> tuple[AlphaDeepModel, torch.Tensor, list[str]]:
    """The model, the int8 codes of its stored records and their ids."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    model = BaseModel.load(model_dir)
    if not isinstance(model, AlphaDeepModel):
        raise ConfigError(f"{model_dir} holds a {model.architecture!r} model, not an alpha deep model")
    missing = [k for k in (*ENCODING_META, "modality_layout") if not model.extra.get(k)]
    if missing or not (model_dir / BANK_TENSORS).exists():
        raise ConfigError(f"{model_dir}: the model was saved without its memory bank or vocabularies "
                          f"({missing or BANK_TENSORS}); retrain it to use predict")
    width = sum(size for _, size in model.extra["modality_layout"])
    if width != model.config.modality_size:
        raise IntegrityError(f"{model_dir}: modality layout {model.extra['modality_layout']} covers {width} "
                             f"features, the model takes {model.config.modality_size}")
    codes = load_file(str(model_dir / BANK_TENSORS))["codes"]
    ids = json.loads((model_dir / BANK_IDS).read_text(encoding="utf-8"))
    if codes.dtype != torch.int8 or codes.ndim != 2 or len(ids) != len(codes):
        raise IntegrityError(f"{model_dir}: {BANK_TENSORS} and {BANK_IDS} disagree ({tuple(codes.shape)} codes, "
                             f"{len(ids)} ids)")
    return model, codes, ids


def predict(model_dir: str | Path, inputs: list[str], top: int = 1) -> dict[str, list[tuple[str, float]]]:
    if top < 1:
        raise ConfigError(f"alpha_deep_model: --top must be at least 1, got {top}")
    model, bank, ids = load(model_dir)
    actions = model.extra["action_vocab"]
    out = {}
    for item, rec in json_items(inputs, "alpha_deep_model"):
        where = f"alpha_deep_model: {short(item)}"
        code = quantise(encode(model, record_tensors(rec, model.extra, model, where)))
        sims, idx = nearest(model, code, bank, k=top)
        pairs = [(str(ids[int(i)]), float(s)) for s, i in zip(sims[0], idx[0])]
        chosen = _actions(rec, actions, where)
        fb = predict_feedback(model, code.repeat(len(chosen), 1), torch.tensor(chosen))
        for a, (reward, success) in zip(chosen, fb.tolist()):
            pairs += [(f"reward if {actions[a]}", reward), (f"success if {actions[a]}", success)]
        out[item] = pairs
    return out


SPEC = dataclasses.replace(alpha_deep_model.SPEC, predict=predict)
