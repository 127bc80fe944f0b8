"""Rollout queries for the environment simulator's `predict`.

A query is a JSON object (inline, or a .json/.jsonl file; see query_input):

    {"state": [s_1, ..., s_S], "actions": [[a_1, ..., a_A], ...], "dataset": "cartpole"}

`dataset` may be left out when the model learned one environment. For one-dimensional
actions a plain list of numbers is accepted too. The answer lists, after each action t, the
predicted state variables, their std, the reward and its std (labels like "t3 cart_pos").
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from unified_pipeline.errors import ConfigError
from unified_pipeline.models import environment_simulator
from unified_pipeline.models.base import BaseModel
from unified_pipeline.models.environment_simulator import EnvironmentSimulator, simulate
from unified_pipeline.models.query_input import json_items, number_list, short

FIELDS = {"state", "actions", "dataset"}
MAX_HORIZON = 10_000


def parse_query(model: EnvironmentSimulator, obj: dict, where: str) -> tuple[str | None, torch.Tensor, torch.Tensor]:
    """(dataset, state [S], actions [H, A]) after checking every field against the named world."""
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; a query has {sorted(FIELDS)}")
    for key in ("state", "actions"):
        if key not in obj:
            raise ConfigError(f"{where}: field {key!r} missing; a query has {sorted(FIELDS)}")
    dataset = obj.get("dataset")
    if dataset is not None and not isinstance(dataset, str):
        raise ConfigError(f"{where}: field 'dataset' must be a string")
    world = model.world(dataset)
    action_dim = int(world.action_mean.numel())
    state = number_list(obj, "state", where, world.state_dim)
    raw = obj["actions"]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: field 'actions' must be a non-empty list (one entry per step)")
    if len(raw) > MAX_HORIZON:
        raise ConfigError(f"{where}: field 'actions' has {len(raw)} steps; at most {MAX_HORIZON}")
    actions = []
    for t, a in enumerate(raw):
        step = {"a": [a] if action_dim == 1 and not isinstance(a, list) else a}
        actions.append(number_list(step, "a", f"{where}: actions[{t}]", action_dim))
    return dataset, torch.tensor(state), torch.tensor(actions)


def _columns(model: EnvironmentSimulator, dataset: str | None, dims: int) -> list[str]:
    name = dataset if dataset is not None else next(iter(model.worlds))
    cols = (getattr(model, "extra", {}).get("columns") or {}).get(name, {}).get("state") or []
    return cols if len(cols) == dims else [f"state_{k}" for k in range(dims)]


def answer(model: EnvironmentSimulator, obj: dict, where: str) -> list[tuple[str, float]]:
    dataset, state, actions = parse_query(model, obj, where)
    out = simulate(model, state, actions, dataset=dataset)
    cols = _columns(model, dataset, state.numel())
    pairs: list[tuple[str, float]] = []
    for t in range(actions.shape[0]):
        for k, col in enumerate(cols):
            pairs += [(f"t{t + 1} {col}", float(out.states[t, k])), (f"t{t + 1} {col} std", float(out.uncertainty[t, k]))]
        pairs += [(f"t{t + 1} reward", float(out.rewards[t])), (f"t{t + 1} reward std", float(out.reward_std[t]))]
    return pairs


def predict(model_dir: str | Path, inputs: list[str], top: int = 1) -> dict[str, list[tuple[str, float]]]:
    model = BaseModel.load(model_dir)
    if not isinstance(model, EnvironmentSimulator):
        raise ConfigError(f"{model_dir} holds a {model.architecture!r} model, not an environment simulator")
    return {item: answer(model, obj, f"environment_simulator: {short(item)}")
            for item, obj in json_items(inputs, "environment_simulator")}


SPEC = dataclasses.replace(environment_simulator.SPEC, predict=predict)
