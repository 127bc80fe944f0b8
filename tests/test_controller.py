"""adaptive_learning_controller: a tiny real study, warm-started from a registered history."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from unified_pipeline.datasets.base import TensorBundle
from unified_pipeline.models import adaptive_learning_controller as alc
from unified_pipeline.models import vision_cnn
from unified_pipeline.training.job import FitJob


def _vision_bundle() -> TensorBundle:
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for split, n in (("train", 120), ("val", 60), ("test", 60)):
        y = torch.randint(0, 3, (n,), generator=g)
        x = 0.5 * torch.randn(n, 1, 8, 8, generator=g)
        for i, k in enumerate(y.tolist()):
            x[i, 0, :, 2 * k:2 * k + 3] += 1.0  # class = position of a bright bar
        tensors.update({f"{split}/x": x, f"{split}/y": y})
    meta = {"dataset": "tiny", "kind": "vision", "classes": ["0", "1", "2"], "channels": 1, "image_size": [8, 8],
            "data_version": "t", "splits": {"train": 120, "val": 60, "test": 60}}
    return TensorBundle(tensors=tensors, meta=meta)


def _register_history(tmp_path, bundle) -> None:
    """A real short vision_service run, registered like the pipeline does: history.json + lineage hparams."""
    from unified_pipeline.registry import ModelRegistry

    hp = {"epochs": 3, "batch_size": 64, "learning_rate": 4e-3, "widths": [8], "blocks_per_stage": 1}
    out = tmp_path / "prior"
    vision_cnn.fit(FitJob("vision_service", {"tiny": bundle}, {}, hp, "cpu", tmp_path / "pc", out)).write(out)
    ModelRegistry().register("vision_service", out, lineage={"data_versions": {"tiny": "t"}, "code_version": "x",
                                                             "hparams": hp}, metric="accuracy")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One real study over vision_service, warm-started from a registered run."""
    tmp_path = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNIFIED_HOME", str(tmp_path / "home"))
        torch.set_num_threads(1)
        bundle = _vision_bundle()
        _register_history(tmp_path, bundle)
        hp = {"learning_rate": 1e-3, "batch_size": 32, "budget_epochs": 2, "study_epochs": 8,
              "max_train_samples": 96, "max_val_samples": 40, "warm_start_trials": 2}
        job = FitJob("adaptive_learning_controller", {"tiny": bundle}, {}, hp, "cpu", tmp_path / "ck",
                     tmp_path / "out", log=logging.getLogger("test"))
        result = alc.fit(job)
    return result, json.loads((tmp_path / "out" / "strategy.json").read_text())


def test_the_study_trials_learn_the_task(study):
    # Chance is 1/3; a trial whose network never steps stays there whatever its hyperparameters.
    result, _ = study
    values = [t["value"] for t in result.history if t.get("value") is not None]
    assert len(values) >= 2 and max(values) >= 0.6, values


def test_controller_study_is_warm_started_and_reports_preset_vs_strategy(study):
    result, strategy = study
    assert strategy["schema"] == 1 and list(strategy["models"]) == ["vision_service"]
    m = strategy["models"]["vision_service"]
    assert m["strategy"] in ("current", "exploration", "conservative")
    assert m["batch_size"] in (16, 32, 64, 128) and m["early_stopping_patience"] in (0, 1, 2, 3)
    assert m["learning_rate"] == m["preset"]["learning_rate"] * m["lr_multiplier"]
    assert m["preset"]["learning_rate"] == 1e-3 and m["epochs"] == 2
    # The registered run (lr 4e-3 = 4x the preset, batch 64) became an enqueued trial and was trained.
    warm = m["study"]["warm_start"]
    assert warm and warm[0]["source"] == "vision_service/v1"
    assert warm[0]["lr_multiplier"] == 4.0 and warm[0]["batch_size"] == 64
    trials = result.history
    assert trials[0]["lr_multiplier"] == 1.0 and trials[0]["batch_size"] == 32  # the preset comes first
    assert trials[1]["lr_multiplier"] == 4.0 and trials[1]["batch_size"] == 64
    assert sum(t["epochs"] for t in trials) == m["study"]["epochs_spent"] >= 8
    assert strategy["check_seeds"] == [1, 2]  # seeds the study (seed 0) never used
    # Both sides trained for real: chance is 1/3 (what a network that never steps scores on every seed).
    assert max(m["val_per_seed"]["preset"] + m["val_per_seed"]["controller"]) >= 0.5
    assert m["val"]["preset"] > 0.4 and m["val"]["controller"] > 0.4
    for side in ("preset", "controller"):
        assert 1 <= m["epochs_run"][side] <= 2
        per_seed = m["val_per_seed"][side]
        assert len(per_seed) == 2 and abs(m["val"][side] - sum(per_seed) / 2) < 1e-12
    assert result.metrics["val"]["vision_service.controller"] == m["val"]["controller"]
    win = float(m["val"]["controller"] > m["val"]["preset"])
    assert result.metrics["test"]["wins_fraction"] == win
    assert result.param_count == 0
