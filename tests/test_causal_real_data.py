"""Causal discovery on data like real measurements: feedback loops in the true graph, no true
graph at all, and columns in very different units."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from test_tabular_data import causal_data, manifest
from unified_pipeline.assets.model_assets import quality_verdict
from unified_pipeline.datasets import causal
from unified_pipeline.datasets.base import PreprocessConfig, TensorBundle
from unified_pipeline.models import causal_reasoning as C
from unified_pipeline.models.causal_scores import STANDARDIZE_STD_RATIO, choose_standardize
from unified_pipeline.models.registry import MODELS
from unified_pipeline.training.job import FitJob

ENTRY = MODELS["causal_reasoning_engine"]


def _job(datasets, tmp_path, **hp):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return FitJob("causal_reasoning_engine", datasets, {}, hp, "cpu", tmp_path / "ckpt", out, seed=0)


def _bundle(x: np.ndarray, truth: np.ndarray | None = None) -> TensorBundle:
    parts = np.array_split(x, 3)
    tensors = {f"{s}/x": torch.tensor(p, dtype=torch.float32) for s, p in zip(("train", "val", "test"), parts)}
    meta = {"columns": [f"x{i}" for i in range(x.shape[1])], "has_ground_truth": truth is not None,
            "sem": {"sem": "linear-gaussian"}}
    if truth is not None:
        tensors["adjacency"] = torch.tensor(truth, dtype=torch.float32)
    return TensorBundle(tensors, meta)


def _chain(n=600, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 4))
    x[:, 0] = rng.normal(size=n)
    for j, w in ((1, 1.5), (2, -1.2), (3, 0.9)):
        x[:, j] = w * x[:, j - 1] + rng.normal(size=n)
    return x


def test_cyclic_ground_truth_is_accepted_and_named(tmp_path, caplog):
    root = tmp_path / "c"
    causal_data(root, cyclic=True)
    with caplog.at_level(logging.WARNING):
        m = manifest(causal, root)
    assert "cycle (A -> B -> C -> A)" in caplog.text
    bundle = causal.KIND.build_tensors(root, m, PreprocessConfig())
    assert bundle.meta["ground_truth_cycle"] == "A -> B -> C -> A"
    assert bundle.tensors["adjacency"].tolist() == [[0, 1, 0], [0, 0, 1], [1, 0, 0]]
    result = C.fit(_job({"loop": bundle}, tmp_path))
    test = result.metrics["test"]
    assert result.notes["loop/ground_truth_cycle"] == "A -> B -> C -> A"
    # The learned graph is a DAG, so it misses at least the loop's closing edge, and beats the empty graph.
    assert 1 <= test["loop/shd"] < test["loop/shd_empty_graph"] == 3


def test_no_ground_truth_scores_held_out_rows_against_the_empty_graph(tmp_path):
    result = C.fit(_job({"chain": _bundle(_chain())}, tmp_path, bootstrap_rounds=4))
    test, rule = result.metrics["test"], result.metrics["check"]
    assert "shd" not in test and "shd_linear" not in test
    # Three strong edges with unit noise: the SEM explains most of the variance of x1..x3.
    assert test["chain/heldout_loglik_gain"] > 0.5 and test["heldout_loglik_gain"] == test["chain/heldout_loglik_gain"]
    assert test["chain/heldout_rows"] == 200 and test["chain/bic"] < test["chain/bic_empty_graph"]
    assert test["chain/edge_stability"] == 1.0
    assert result.notes["chain/edge_stability"] == {"x0 -> x1": 1.0, "x1 -> x2": 1.0, "x2 -> x3": 1.0}
    passed, meta = quality_verdict(ENTRY, result.metrics, ENTRY.threshold)
    assert passed and meta["metric"] == "heldout_loglik_gain" and meta["baseline"] == 0.0
    assert "no dataset has a ground-truth adjacency.csv" in meta["why_this_metric"]


def test_no_ground_truth_check_fails_when_the_graph_explains_nothing(tmp_path):
    noise = np.random.default_rng(1).normal(size=(600, 4))
    result = C.fit(_job({"noise": _bundle(noise)}, tmp_path))
    test = result.metrics["test"]
    assert test["noise/edges"] == 0 and test["heldout_loglik_gain"] == 0.0
    passed, meta = quality_verdict(ENTRY, result.metrics, ENTRY.threshold)
    assert not passed and meta["value"] == 0.0


def test_columns_in_different_units_are_standardised(tmp_path):
    x = _chain()
    assert choose_standardize("auto", torch.tensor(x)) [0] is False
    x[:, 2] *= 1000.0  # x2 in milli-units
    chosen, why = choose_standardize("auto", torch.tensor(x))
    assert chosen and f"> {STANDARDIZE_STD_RATIO:g}" in why
    assert choose_standardize(False, torch.tensor(x)) == (False, "set in the preset")
    truth = np.zeros((4, 4))
    truth[0, 1] = truth[1, 2] = truth[2, 3] = 1
    result = C.fit(_job({"units": _bundle(x, truth)}, tmp_path))
    assert result.metrics["test"]["units/standardized"] == 1.0
    assert result.metrics["test"]["units/shd"] < result.metrics["test"]["units/shd_empty_graph"]


def test_ground_truth_on_nonlinear_data_only_checks_shd_against_the_empty_graph(tmp_path):
    truth = np.zeros((4, 4))
    truth[0, 1] = truth[1, 2] = truth[2, 3] = 1
    bundle = _bundle(_chain(), truth)
    bundle.meta["sem"] = {"sem": "nonlinear"}
    hp = {"hidden": 4, "max_outer": 4, "inner_maxiter_mlp": 30, "h_tol": 1e-5}
    result = C.fit(_job({"nl": bundle}, tmp_path, **hp))
    passed, meta = quality_verdict(ENTRY, result.metrics, ENTRY.threshold)
    assert meta["metric"] == "shd" and meta["baseline"] == 3.0 and "threshold" not in meta
    assert passed and meta["value"] == 0.0
    result.metrics["test"]["shd"] = 3.0  # no better than the empty graph
    assert not quality_verdict(ENTRY, result.metrics, ENTRY.threshold)[0]
