"""Text queries for the causal reasoning engine's `predict`.

    [dataset:] do(X3=1.0[, X5=-2]) -> X7[, X8]                      interventional query
    [dataset:] do(X3=1.0) -> X7 given X1=0.2, X2=1.3, ..., X10=0.4   counterfactual query

The dataset prefix is needed only when the model learned several graphs. Variable names
match the dataset's columns, ignoring case when that is unambiguous. An interventional query
answers E[Y | do(X=x)] next to the observational mean E[Y] and their difference; a
counterfactual one answers what Y would have been in that observed unit under do(X=x)
(every variable must be observed: abduction recovers each one's noise term).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from unified_pipeline.errors import ConfigError
from unified_pipeline.models import causal_reasoning, query_input
from unified_pipeline.models.base import BaseModel
from unified_pipeline.models.causal_reasoning import CausalReasoningEngine, counterfactual, intervene

QUERY = re.compile(r"^\s*(?:(?P<dataset>[^:()]+?)\s*:\s*)?do\s*\((?P<do>[^)]*)\)\s*->\s*(?P<targets>.+?)"
                   r"(?:\s+given\s+(?P<given>.+?))?\s*$", re.IGNORECASE | re.DOTALL)
FORMS = "'[dataset:] do(X=1.0) -> Y' or '[dataset:] do(X=1.0) -> Y given X=..., Y=..., ...'"
SAMPLES = 4000  # ancestral samples per interventional mean


def _resolve(name: str, cols: list[str], dataset: str, query: str) -> str:
    if name in cols:
        return name
    folded = [c for c in cols if c.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    raise ConfigError(f"{query!r}: unknown variable {name!r} for dataset {dataset!r}; valid: {cols}")


def _assignments(text: str, cols: list[str], dataset: str, query: str, what: str) -> dict[str, float]:
    text = text.strip()
    if text.startswith("{"):
        items = list(query_input.json_object(text, f"{query!r}: {what} (variable: value)").items())
    else:
        items = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, eq, value = part.partition("=")
            if not eq or not name.strip():
                raise ConfigError(f"{query!r}: {what} entry {part!r} is not of the form NAME=VALUE")
            items.append((name.strip(), value.strip()))
    out: dict[str, float] = {}
    for name, value in items:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{query!r}: {what} value {value!r} for {name!r} is not a number") from None
        if number != number or abs(number) == float("inf"):
            raise ConfigError(f"{query!r}: {what} value for {name!r} must be finite")
        out[_resolve(str(name), cols, dataset, query)] = number
    return out


def _dataset(model: CausalReasoningEngine, given: str | None, query: str) -> str:
    known = sorted(model.graphs)
    if given is None:
        if len(known) != 1:
            raise ConfigError(f"{query!r}: the model learned several datasets; start the query with one of "
                              f"{known} and a colon, e.g. '{known[0]}: do(...) -> ...'")
        return known[0]
    if given not in model.graphs:
        raise ConfigError(f"{query!r}: no dataset {given!r}; known: {known}")
    return given


def answer(model: CausalReasoningEngine, query: str) -> list[tuple[str, float]]:
    match = QUERY.match(query)
    if match is None:
        raise ConfigError(f"{query!r} is not a causal query; write {FORMS}")
    dataset = _dataset(model, match["dataset"], query)
    cols = model.columns(dataset)
    do = _assignments(match["do"], cols, dataset, query, "do(...)")
    if not do:
        raise ConfigError(f"{query!r}: do(...) names no variable; write {FORMS}")
    targets = [_resolve(t.strip(), cols, dataset, query) for t in match["targets"].split(",") if t.strip()]
    if not targets:
        raise ConfigError(f"{query!r}: no target variable after '->'")
    shown = "do(" + ", ".join(f"{k}={v:g}" for k, v in do.items()) + ")"
    pairs: list[tuple[str, float]] = []
    if match["given"] is None:
        effect = intervene(model, dataset, do, n=SAMPLES)
        sem = model.sem(dataset)
        for t in targets:
            observed = float(sem.mean[cols.index(t)])
            pairs += [(f"E[{t} | {shown}]", effect[t]), (f"E[{t}]", observed),
                      (f"effect on {t}", effect[t] - observed)]
        return pairs
    observation = _assignments(match["given"], cols, dataset, query, "given")
    missing = [c for c in cols if c not in observation]
    if missing:
        raise ConfigError(f"{query!r}: a counterfactual needs every variable observed; 'given' lacks {missing}")
    cf = counterfactual(model, dataset, observation, do)
    for t in targets:
        pairs += [(f"{t} under {shown}", cf[t]), (f"{t} observed", observation[t]),
                  (f"change in {t}", cf[t] - observation[t])]
    return pairs


def predict(model_dir: str | Path, inputs: list[str], top: int = 1) -> list[list[tuple[str, float]]]:
    model = BaseModel.load(model_dir)
    if not isinstance(model, CausalReasoningEngine):
        raise ConfigError(f"{model_dir} holds a {model.architecture!r} model, not a causal reasoning engine")
    return [answer(model, q) for q in inputs]


SPEC = dataclasses.replace(causal_reasoning.SPEC, predict=predict)
