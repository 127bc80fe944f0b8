"""Promotion rules and the production alias history.

`latest` follows the newest version by itself; `production` moves only by promotion or rollback.
The production history is a stack: promotion pushes, rollback pops back to an earlier entry,
so repeated rollbacks walk further back instead of flip-flopping between two versions.
"""
from __future__ import annotations

import math
from typing import Any

from unified_pipeline.errors import ConfigError

RULES = ("always", "never", "better_or_equal", "strictly_better")
DEFAULT_RULE = "better_or_equal"


def check_rule(rule: str, metric: str | None) -> None:
    if rule not in RULES:
        raise ConfigError(f"unknown promote_rule {rule!r}; valid: {list(RULES)}")
    if rule in ("better_or_equal", "strictly_better") and not metric:
        raise ConfigError(f"promote_rule {rule!r} needs metric= (name of a test metric, e.g. 'accuracy')")


def metric_value(metrics: dict[str, Any], metric: str) -> float | None:
    """'accuracy' reads metrics['test']['accuracy']; 'val.loss' reads metrics['val']['loss']."""
    split, _, name = metric.rpartition(".")
    node = metrics.get(split or "test")
    value = node.get(name) if isinstance(node, dict) else None
    if value is None and not split:
        value = metrics.get(name)  # flat metrics dicts
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def metric_label(metric: str) -> str:
    split, _, name = metric.rpartition(".")
    return f"{split or 'test'} {name}"


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def decide(rule: str, new: int, new_metrics: dict, prod: int | None, prod_metrics: dict | None,
           metric: str | None, higher_is_better: bool = True) -> tuple[bool, str]:
    """Whether version `new` becomes production, and a sentence saying why (or why not)."""
    if rule == "never":
        return False, "promote_rule 'never': " + ("no production version yet" if prod is None else f"production stays v{prod}")
    if prod is None:
        return True, f"v{new} is the first production version"
    if rule == "always":
        return True, f"promote_rule 'always': v{new} replaces production v{prod}"
    label = metric_label(metric)
    mine = metric_value(new_metrics, metric)
    if mine is None:
        return False, f"v{new} has no {label}; production stays v{prod}"
    theirs = metric_value(prod_metrics or {}, metric)
    if theirs is None:
        return True, f"production v{prod} has no {label}; v{new} ({_fmt(mine)}) replaces it"
    better = mine > theirs if higher_is_better else mine < theirs
    ok = better or (rule == "better_or_equal" and mine == theirs)
    if ok:
        op = "=" if mine == theirs else (">" if mine > theirs else "<")
        return True, f"{label} {_fmt(mine)} {op} production v{prod} {_fmt(theirs)}"
    op = "=" if mine == theirs else ("<" if mine < theirs else ">")
    suffix = "" if higher_is_better else " (lower is better)"
    return False, f"{label} {_fmt(mine)} {op} production v{prod} {_fmt(theirs)}{suffix}"


def production_stack(history: list[dict[str, Any]]) -> list[int]:
    stack: list[int] = []
    for entry in history:
        if entry.get("alias") != "production":
            continue
        target = int(entry["version"])
        if entry.get("event") == "rollback" and target in stack:
            last = len(stack) - 1 - stack[::-1].index(target)
            del stack[last + 1:]
        else:
            stack.append(target)
    return stack


def ever_held(history: list[dict[str, Any]], alias: str = "production") -> set[int]:
    return {int(e["version"]) for e in history if e.get("alias") == alias}
