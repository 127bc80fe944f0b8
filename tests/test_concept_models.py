"""Concept models on tiny synthetic data: each beats its baseline, APIs are well formed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unified_pipeline.datasets.base import TensorBundle
from unified_pipeline.errors import ConfigError, DatasetError
from unified_pipeline.models import alpha_deep_model as A
from unified_pipeline.models import causal_reasoning as C
from unified_pipeline.models import environment_simulator as E
from unified_pipeline.models.base import BaseModel
from unified_pipeline.models.notears import structure_metrics, threshold_to_dag, topological_order
from unified_pipeline.training.job import FitJob

torch.set_num_threads(1)


def _job(name, datasets, hparams, tmp_path):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return FitJob(name, datasets, {}, hparams, "cpu", tmp_path / "ckpt", out, seed=0)


# -- environment simulator -------------------------------------------------------------------

def _spring_bundle(episodes=24, steps=40, seed=0) -> TensorBundle:
    """Damped spring pushed by the action: deterministic, smooth dynamics."""
    rng = np.random.default_rng(seed)
    rows = {s: {k: [] for k in E.FIELDS} for s in ("train", "val", "test")}
    for ep in range(episodes):
        split = "test" if ep % 6 == 0 else "val" if ep % 6 == 1 else "train"
        s = rng.normal(size=2)
        for _ in range(steps):
            a = rng.uniform(-1, 1, size=1)
            ns = np.array([s[0] + 0.1 * s[1], 0.95 * s[1] - 0.1 * s[0] + 0.1 * a[0]])
            for k, v in zip(E.FIELDS, (s, a, ns, -float(s @ s), ep)):
                rows[split][k].append(v)
            s = ns
    tensors = {}
    for split, cols in rows.items():
        for k, v in cols.items():
            dtype = torch.int64 if k == "episode" else torch.float32
            tensors[f"{split}/{k}"] = torch.tensor(np.array(v), dtype=dtype)
    tr = rows["train"]
    st, ac, ns = (np.array(tr[k]) for k in ("state", "action", "next_state"))
    meta = {"state_columns": ["state_0", "state_1"], "state_mean": st.mean(0).tolist(), "state_std": st.std(0).tolist(),
            "action_mean": ac.mean(0).tolist(), "action_std": ac.std(0).tolist(),
            "delta_mean": (ns - st).mean(0).tolist(), "delta_std": (ns - st).std(0).tolist(),
            "reward_mean": [float(np.mean(tr["reward"]))], "reward_std": [float(np.std(tr["reward"]))]}
    return TensorBundle(tensors, meta)


def test_environment_simulator_beats_copy_and_simulates(tmp_path):
    bundle = _spring_bundle()
    hp = {"epochs": 8, "members": 3, "hidden": 32, "layers": 2, "batch_size": 64, "horizons": [5, 10]}
    result = E.fit(_job("environment_simulator", {"spring": bundle}, hp, tmp_path))
    test = result.metrics["test"]
    assert test["spring/one_step_mse"] < 0.2 * test["spring/copy_mse"]
    assert test["mse_ratio_vs_copy"] == test["spring/mse_ratio_vs_copy"]
    # 90% intervals cover at least 80% of the held-out next states (a collapsed interval covers ~0).
    assert test["spring/calibration_90"] >= 0.8
    assert test["spring/rollout_windows_h10"] > 0 and "spring/rollout_mse_h10" in test
    assert test["rollout_mse_h10"] == test["spring/rollout_mse_h10"] < result.metrics["baseline"]["rollout_mse_h10"]
    assert 0.8 <= test["reward_calibration_90"] <= 0.99  # neither collapsed nor covering everything
    assert (tmp_path / "out" / "config.json").exists() and result.plots

    model = BaseModel.load(tmp_path / "out")
    rollout = E.simulate(model, bundle.tensors["test/state"][:4], torch.zeros(4, 7, 1))
    states, rewards, unc = rollout
    assert states.shape == (4, 7, 2) and rewards.shape == (4, 7) and unc.shape == (4, 7, 2)
    assert (unc > 0).all() and rollout.reward_std.shape == (4, 7) and (rollout.reward_std > 0).all()
    s1, r1, u1 = one = E.simulate(model, bundle.tensors["test/state"][0], torch.zeros(7, 1), dataset="spring")
    assert s1.shape == (7, 2) and torch.allclose(s1, states[0], atol=1e-5)
    assert one.reward_std.shape == (7,) and torch.allclose(one.reward_std, rollout.reward_std[0], atol=1e-5)
    with pytest.raises(ConfigError, match="state_dim"):
        E.simulate(model, torch.zeros(3), torch.zeros(7, 1))


def test_environment_simulator_rejects_missing_field(tmp_path):
    bundle = _spring_bundle(episodes=6, steps=5)
    del bundle.tensors["val/reward"]
    with pytest.raises(DatasetError, match="val/reward"):
        E.fit(_job("environment_simulator", {"spring": bundle}, {}, tmp_path))
    bundle = _spring_bundle(episodes=6, steps=5)
    del bundle.meta["delta_std"]
    with pytest.raises(DatasetError, match="delta_std"):
        E.fit(_job("environment_simulator", {"spring": bundle}, {}, tmp_path))


# -- causal reasoning engine -----------------------------------------------------------------

def _chain_bundle(n=600, seed=0) -> tuple[TensorBundle, np.ndarray]:
    """x0 -> x1 -> x2 -> x3 with unit-variance noise."""
    rng = np.random.default_rng(seed)
    w = np.zeros((4, 4))
    w[0, 1], w[1, 2], w[2, 3] = 1.5, -1.2, 0.9
    x = np.zeros((n, 4))
    for j in range(4):
        x[:, j] = x @ w[:, j] + rng.normal(size=n)
    x += 5.0  # non-zero means exercise the centring
    parts = np.array_split(x, 3)
    tensors = {f"{s}/x": torch.tensor(p, dtype=torch.float32) for s, p in zip(("train", "val", "test"), parts)}
    tensors["adjacency"] = torch.tensor((w != 0).astype(np.float32))
    meta = {"columns": ["x0", "x1", "x2", "x3"], "has_ground_truth": True, "sem": {"sem": "linear-gaussian"}}
    return TensorBundle(tensors, meta), w


def test_notears_recovers_chain_and_do_calculus(tmp_path):
    bundle, w = _chain_bundle()
    result = C.fit(_job("causal_reasoning_engine", {"chain": bundle}, {}, tmp_path))
    test = result.metrics["test"]
    assert test["chain/shd"] == 0 and test["shd"] == 0 and test["chain/tpr"] == 1.0
    assert test["tpr_linear"] == 1.0 and test["fdr_linear"] == 0.0 and "shd_mlp" not in test
    assert result.metrics["baseline"]["shd_linear"] == result.metrics["baseline"]["chain/shd_empty_graph"] == 3
    model = BaseModel.load(tmp_path / "out")
    assert set(model.extra["datasets"]) == {"chain"}
    effect = C.intervene(model, "chain", {"x1": 7.0}, n=2000)
    assert set(effect) == {"x0", "x1", "x2", "x3"} and effect["x1"] == pytest.approx(7.0)
    mean = bundle.tensors["train/x"].mean(0).numpy()  # do(x1) moves x2 by w12 * (7 - mean), not x0
    assert effect["x2"] - mean[2] == pytest.approx(-1.2 * (7.0 - mean[1]), abs=0.35)
    assert effect["x0"] == pytest.approx(mean[0], abs=0.2)
    obs = dict(zip(["x0", "x1", "x2", "x3"], bundle.tensors["test/x"][0].tolist()))
    same = C.counterfactual(model, "chain", obs, {})
    assert all(same[k] == pytest.approx(v, abs=1e-3) for k, v in obs.items())
    cf = C.counterfactual(model, "chain", obs, {"x2": obs["x2"] + 1.0})
    assert cf["x0"] == pytest.approx(obs["x0"], abs=1e-4) and cf["x3"] - obs["x3"] == pytest.approx(0.9, abs=0.15)
    with pytest.raises(ConfigError, match="unknown variable 'zz'"):
        C.intervene(model, "chain", {"zz": 1.0})
    with pytest.raises(ConfigError, match="no dataset 'other'"):
        C.intervene(model, "other", {"x0": 1.0})


def _nonlinear_chain_bundle(n=200, seed=0) -> TensorBundle:
    """x0 -> x1 -> x2 through saturating and wiggly functions a linear model would misjudge."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=n)
    x1 = 2.0 * np.tanh(2.0 * x0) + 0.3 * rng.normal(size=n)
    x2 = 1.5 * x1 + 1.5 * np.sin(x1) + 0.3 * rng.normal(size=n)
    x = np.stack([x0, x1, x2], 1)
    adj = np.zeros((3, 3), dtype=np.float32)
    adj[0, 1] = adj[1, 2] = 1.0
    parts = np.array_split(x, 3)
    tensors = {f"{s}/x": torch.tensor(p, dtype=torch.float32) for s, p in zip(("train", "val", "test"), parts)}
    tensors["adjacency"] = torch.tensor(adj)
    meta = {"columns": ["x0", "x1", "x2"], "has_ground_truth": True, "sem": {"sem": "mlp-sigmoid"}}
    return TensorBundle(tensors, meta)


def test_notears_mlp_finds_nonlinear_chain(tmp_path):
    # Few, short inner solves: enough for the two strong edges, not for a polished fit.
    hp = {"hidden": 5, "max_outer": 5, "inner_maxiter_mlp": 30, "h_tol": 1e-5}
    result = C.fit(_job("causal_reasoning_engine", {"nl": _nonlinear_chain_bundle()}, hp, tmp_path))
    test, base = result.metrics["test"], result.metrics["baseline"]
    assert result.notes["nl/method"] == "mlp"
    assert test["tpr_mlp"] == 1.0 and test["shd_mlp"] < base["shd_mlp"] == 2  # both edges, right way round
    model = BaseModel.load(tmp_path / "out")
    adj = model.graphs["nl"].adjacency.numpy()
    assert topological_order(adj) is not None and adj[0, 1] == adj[1, 2] == 1 and adj[1, 0] == adj[2, 1] == 0
    high, low = C.intervene(model, "nl", {"x0": 1.5}), C.intervene(model, "nl", {"x0": -1.5})
    assert high["x1"] - low["x1"] == pytest.approx(4 * np.tanh(3.0), abs=1.0)  # through the learned MLP
    up = C.intervene(model, "nl", {"x2": 5.0})
    assert up["x0"] == pytest.approx(float(np.mean(_nonlinear_chain_bundle().tensors["train/x"][:, 0].numpy())),
                                     abs=0.3)  # an effect does not move its cause


def test_threshold_guarantees_acyclic():
    w = np.array([[0.0, 0.9, 0.0], [0.0, 0.0, 0.8], [0.35, 0.0, 0.0]])  # 0 -> 1 -> 2 -> 0
    assert topological_order(w) is None
    dag, dropped = threshold_to_dag(w, 0.3)
    assert dropped == 1 and dag[2, 0] == 0.0 and dag[0, 1] == 0.9
    assert topological_order(dag) == [0, 1, 2]
    both = np.array([[0.0, 0.5], [0.7, 0.0]])
    dag2, _ = threshold_to_dag(both, 0.3)
    assert topological_order(dag2) is not None and dag2[1, 0] == 0.7
    m = structure_metrics(np.array([[0, 0], [1, 0]]), np.array([[0, 1], [0, 0]]))
    assert m["shd"] == 1 and m["tpr"] == 0 and m["fdr"] == 1


def test_causal_rejects_bad_shapes(tmp_path):
    bundle, _ = _chain_bundle(n=30)
    bundle.meta["columns"] = ["x0", "x1", "x2"]
    with pytest.raises(DatasetError, match="'train/x'"):
        C.fit(_job("causal_reasoning_engine", {"chain": bundle}, {}, tmp_path))
    bundle, _ = _chain_bundle(n=30)
    del bundle.tensors["adjacency"]
    with pytest.raises(DatasetError, match="adjacency"):
        C.fit(_job("causal_reasoning_engine", {"chain": bundle}, {}, tmp_path))


# -- alpha deep model ------------------------------------------------------------------------

def _memory_bundle(n=240, seed=0) -> TensorBundle:
    """Records with topic-driven words/keywords/entities; reward says whether the action suits the topic."""
    rng = np.random.default_rng(seed)
    vocab = ["<pad>", "<unk>"] + [f"w{i}" for i in range(60)]
    kw_vocab = [f"k{i}" for i in range(20)]
    ent_vocab = ["<pad>"] + [f"e{i}" for i in range(15)]
    verb_vocab = ["<pad>", "uses", "sees", "makes"]
    action_vocab = ["keep", "drop"]
    topics = rng.integers(0, 4, size=n)
    gist = np.zeros((n, 12), dtype=np.int64)
    keywords = np.zeros((n, 20), dtype=np.float32)
    rel = np.zeros((n, 3, 3), dtype=np.int64)
    for i, t in enumerate(topics):
        length = int(rng.integers(6, 13))
        gist[i, :length] = rng.integers(2 + 15 * t, 17 + 15 * t, size=length)
        keywords[i, rng.choice(20, size=4, replace=False)] = 1.0
        for r in range(rng.integers(1, 4)):
            rel[i, r] = (rng.integers(1, 16), rng.integers(1, 4), rng.integers(1, 16))
    mods = rng.normal(size=(n, 6)).astype(np.float32)
    action = rng.integers(0, 2, size=n)
    right = action == (topics % 2)
    reward = np.where(right, 1.0, -0.5) + 0.05 * rng.normal(size=n)
    feedback = np.stack([reward, right.astype(float)], 1).astype(np.float32)
    idx = {"train": slice(0, 160), "val": slice(160, 200), "test": slice(200, n)}
    tensors = {}
    for s, sl in idx.items():
        for k, v in zip(A.FIELDS, (gist, keywords, rel, mods, feedback, action)):
            tensors[f"{s}/{k}"] = torch.tensor(v[sl])
    meta = {"vocab": vocab, "keyword_vocab": kw_vocab, "entity_vocab": ent_vocab, "verb_vocab": verb_vocab,
            "action_vocab": action_vocab, "modality_dims": {"features": 6}}
    return TensorBundle(tensors, meta)


def test_alpha_retrieves_and_predicts_feedback(tmp_path):
    bundle = _memory_bundle()
    hp = {"epochs": 15, "batch_size": 32, "hidden": 64, "embed_dim": 32}
    result = A.fit(_job("alpha_deep_model", {"memory_records": bundle}, hp, tmp_path))
    test = result.metrics["test"]
    assert test["recall_at_1"] > 10 * test["chance_recall_at_1"]
    assert test["feedback_mse"] < test["feedback_baseline_mse"]
    assert test["bytes_per_code"] == 32 and test["json_zlib_bytes"] > test["bytes_per_code"]
    base = result.metrics["baseline"]
    assert base["recall_at_1"] == test["chance_recall_at_1"] and base["feedback_mse"] == test["feedback_baseline_mse"]
    assert base["bytes_per_code"] == test["json_zlib_bytes"]

    model = BaseModel.load(tmp_path / "out")
    records = bundle.split("test")
    codes = A.encode(model, records)
    assert codes.shape == (40, 32) and codes.abs().max() <= 1.0
    hits = A.retrieve(model, {k: v[:5] for k, v in records.items()}, records, k=3)
    assert hits.shape == (5, 3) and hits[:, 0].tolist() == list(range(5))
    with pytest.raises(ConfigError, match="keywords"):
        A.encode(model, {"gist": records["gist"]})
    every = A.predict_feedback(model, codes)  # two actions: the taken one if it succeeded, else the other
    assert every.shape == (40, 2, 2)
    best = torch.where(records["feedback"][:, 1] > 0.5, records["action"], 1 - records["action"])
    assert (every[:, :, 0].argmax(1) == best).float().mean() > 0.8


def test_alpha_rejects_bad_memory_tensors(tmp_path):
    bundle = _memory_bundle(n=60)
    bundle.tensors["train/relations"] = bundle.tensors["train/relations"][..., :2]
    with pytest.raises(DatasetError, match="train/relations"):
        A.fit(_job("alpha_deep_model", {"memory_records": bundle}, {"epochs": 1}, tmp_path))
    bundle = _memory_bundle(n=60)
    del bundle.meta["verb_vocab"]
    with pytest.raises(DatasetError, match="verb_vocab"):
        A.fit(_job("alpha_deep_model", {"memory_records": bundle}, {"epochs": 1}, tmp_path))
    bundle = _memory_bundle(n=60)
    bundle.tensors["train/action"] = bundle.tensors["train/action"] + 5
    with pytest.raises(DatasetError, match="train/action"):
        A.fit(_job("alpha_deep_model", {"memory_records": bundle}, {"epochs": 1}, tmp_path))
