"""Hyperparameters a model takes from its advisor: the adaptive_learning_controller's strategy.

The controller's production version holds strategy.json with, per controlled model, a
learning-rate multiplier, a batch size and an early-stopping patience chosen by its study.
A model that lists the controller among its advisors applies them on top of its preset when
`adaptive_strategy` is on (the preset's `enable_collaborative_training`); values the run
config set explicitly always win. The multiplier scales the model's own preset rate, so a
strategy stays meaningful when the preset moves. Epochs stay the preset's: the strategy is
chosen at the study's short budget, and the preset decides how long the real run may go
(early stopping ends it sooner).

Advice never causes a retrain by itself: the step fingerprint covers the preset's values, so
a model whose data, code and preset are unchanged is reused even when the controller has a new
strategy (otherwise a change in one modality's data would retrain every advised model through
the controller). The strategy applies the next time the model trains for its own reasons, or
with `force_retrain`; the lineage records what was applied.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unified_pipeline.training.trainer_config import as_flag

STRATEGY_KEYS = ("learning_rate", "batch_size", "early_stopping_patience")


def apply_advice(
    model: str, hparams: dict[str, Any], advisors: dict[str, tuple[str, Path]], fixed: set[str] = frozenset()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`hparams` with the first usable advisor's strategy for `model` applied, and a lineage record.

    advisors: advisor model name -> (version name, version folder) of its production version.
    fixed: keys the run config set explicitly; they are never changed.
    """
    if not advisors:
        return hparams, {}
    if not as_flag(hparams.get("adaptive_strategy", False)):
        return hparams, {"used": False, "reason": "adaptive_strategy is off for this scenario"}
    for advisor, (version, folder) in advisors.items():
        path = Path(folder) / "strategy.json"
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))["models"][model]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # this advisor has no strategy for the model
        preset = {k: hparams.get(k) for k in STRATEGY_KEYS}
        proposed = {
            "learning_rate": float(hparams["learning_rate"]) * float(entry["lr_multiplier"]),
            "batch_size": int(entry["batch_size"]),
            "early_stopping_patience": int(entry["early_stopping_patience"]),
        }
        applied = {k: v for k, v in proposed.items() if k not in fixed}
        record = {
            "used": True, "source": version, "strategy": entry.get("strategy", ""),
            "lr_multiplier": float(entry["lr_multiplier"]), "preset": preset, "applied": applied,
            "kept_from_run_config": sorted(set(proposed) & set(fixed)),
            "study_val": entry.get("val", {}),
        }
        return {**hparams, **applied}, record
    return hparams, {"used": False, "reason": f"no strategy for {model} in {sorted(v for v, _ in advisors.values())}"}
