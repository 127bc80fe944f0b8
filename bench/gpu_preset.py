"""A copy of the shipped preset with every model's epochs capped, for a device session that must
fit in minutes: the collaborative job keeps its shape (every model, its datasets, its upstream
models and slots) and only trains less.

    python -m bench.gpu_preset OUT.json [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import ROOT
from unified_pipeline import atomic

CONTROLLER_STUDY = {"budget_epochs": 2, "study_epochs": 4, "check_seeds": 1}


def short_preset(epochs: int) -> dict:
    preset = json.loads((ROOT / "presets" / "training_preset.json").read_text())
    for scenario in preset["training_scenarios"].values():
        if "epochs" in scenario:
            scenario["epochs"] = min(int(scenario["epochs"]), epochs)
    models = preset.setdefault("model_specific_presets", {})
    for name, hp in models.items():
        if "epochs" in hp:
            hp["epochs"] = min(int(hp["epochs"]), epochs)
    models.setdefault("adaptive_learning_controller", {}).update(CONTROLLER_STUDY)
    preset["preset_name"] = f"{preset.get('preset_name', 'preset')} (epochs <= {epochs})"
    return preset


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args()
    atomic.write_json(Path(a.out), short_preset(a.epochs))
