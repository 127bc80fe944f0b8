"""Transitions and causal kinds: manifests, bad cells, splits, tensors, ground truth, generators."""
from __future__ import annotations

import numpy as np
import pytest

from unified_pipeline import hashing
from unified_pipeline.datasets import causal, transitions
from unified_pipeline.datasets.base import PreprocessConfig
from unified_pipeline.datasets.samples.control_rollouts import generate_cartpole, generate_pendulum
from unified_pipeline.datasets.causal import find_cycle
from unified_pipeline.datasets.samples.structural_equations import generate_sem
from unified_pipeline.errors import DatasetError
from unified_pipeline.quality.runner import validate

HEADER = "episode,state_0,state_1,action_0,reward,next_state_0,next_state_1"


def manifest(kind, root):
    return kind.KIND.build_manifest(root, hashing.dataset_version(root)[1])


def rollout_lines(episodes=6, steps=5):
    lines = [HEADER]
    for ep in range(episodes):
        for t in range(steps):
            lines.append(f"{ep},{t},{ep},{t % 2},1.0,{t + 1},{ep}")
    return lines


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_transitions_manifest_tensors_and_episode_split(tmp_path):
    root = tmp_path / "roll"
    write(root / "CartPole-v1.csv", rollout_lines())
    assert transitions.KIND.detect(root) and not causal.KIND.detect(root)
    m = manifest(transitions, root)
    assert len(m) == 30 and m.decodable.all()
    assert m.groupby("episode_key")["split"].nunique().max() == 1  # an episode never straddles splits
    assert validate("transitions", m).success
    b = transitions.KIND.build_tensors(root, m, PreprocessConfig())
    assert b.meta["env"] == "CartPole-v1" and b.meta["state_columns"] == ["state_0", "state_1"]
    assert sum(b.meta["splits"].values()) == 30
    assert b.tensors["train/state"].shape[1] == 2 and b.tensors["train/action"].shape[1] == 1
    assert b.tensors["train/reward"].ndim == 1 and str(b.tensors["train/episode"].dtype) == "torch.int64"
    assert b.meta["delta_mean"] == pytest.approx([1.0, 0.0])
    before = dict(zip(m.sample_id, m.split))
    write(root / "CartPole-v1.csv", rollout_lines(episodes=7))
    after = dict(zip(*manifest(transitions, root)[["sample_id", "split"]].T.values))
    assert all(after[k] == v for k, v in before.items())


def test_transitions_episodes_inferred_without_column(tmp_path):
    root = tmp_path / "roll"
    lines = [",".join(c for c in HEADER.split(",")[1:])] + [
        ",".join(line.split(",")[1:]) for line in rollout_lines(episodes=3)[1:]]
    write(root / "data.csv", lines)
    m = manifest(transitions, root)
    assert m["episode_key"].nunique() == 3


def test_transitions_bad_cells_and_columns(tmp_path):
    root = tmp_path / "roll"
    lines = rollout_lines()
    lines[3] = "0,2,0,1,nan,3,0"
    lines[5] = "0,4,inf,1,1.0,5,0"
    write(root / "a.csv", lines)
    m = manifest(transitions, root)
    bad = m[~m.decodable]
    assert list(bad.row) == [3, 5] and "reward" in bad.error.iloc[0] and "state_1" in bad.error.iloc[1]
    report = validate("transitions", m)
    failed = {r["expectation"] + ":" + str(r["column"]): r for r in report.failures}
    assert failed["expect_column_values_to_be_in_set:decodable"]["offenders"] == [
        {"path": "a.csv", "row": 3}, {"path": "a.csv", "row": 5}]
    with pytest.raises(DatasetError, match="bad transition row"):
        transitions.KIND.build_tensors(root, m, PreprocessConfig())
    write(root / "a.csv", [HEADER.replace(",reward", ",score")] + rollout_lines()[1:])
    with pytest.raises(DatasetError, match=r"a\.csv: missing column.*reward"):
        manifest(transitions, root)


def test_control_generators_deterministic(tmp_path):
    a = generate_cartpole(tmp_path / "a", seed=1, episodes=5, max_steps=20)
    b = generate_cartpole(tmp_path / "b", seed=1, episodes=5, max_steps=20)
    assert (a / "CartPole-v1.csv").read_bytes() == (b / "CartPole-v1.csv").read_bytes()
    p = generate_pendulum(tmp_path / "p", seed=1, episodes=4, steps=10)
    m = manifest(transitions, p)
    assert len(m) == 40 and m.episode_key.nunique() == 4 and m.decodable.all()
    assert validate("transitions", m).success


def causal_data(root, n=80, cyclic=False, extra_row=None):
    rng = np.random.default_rng(0)
    a = rng.normal(size=n)
    b = 2 * a + rng.normal(size=n)
    c = -b + rng.normal(size=n)
    lines = ["A,B,C"] + [f"{x:.4f},{y:.4f},{z:.4f}" for x, y, z in zip(a, b, c)]
    if extra_row:
        lines.append(extra_row)
    write(root / "obs.csv", lines)
    write(root / "adjacency.csv", ["A,B,C", "0,1,0", "0,0,1", "1,0,0" if cyclic else "0,0,0"])


def test_causal_manifest_tensors_and_split_stability(tmp_path):
    root = tmp_path / "c"
    causal_data(root)
    assert causal.KIND.detect(root) and not transitions.KIND.detect(root)
    m = manifest(causal, root)
    assert len(m) == 80 and m.has_ground_truth.all()
    assert validate("causal", m).success
    b = causal.KIND.build_tensors(root, m, PreprocessConfig())
    assert b.meta["columns"] == ["A", "B", "C"] and b.meta["has_ground_truth"]
    assert b.tensors["adjacency"].tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 0]]
    assert b.tensors["train/x"].shape[1] == 3 and sum(b.meta["splits"].values()) == 80
    causal_data(root, extra_row="1,2,3")
    m2 = manifest(causal, root)
    assert list(m2.split[:80]) == list(m.split)


def test_causal_bad_inputs(tmp_path):
    root = tmp_path / "c"
    causal_data(root, extra_row="1,oops,")
    write(root / "adjacency.csv", ["A,B,C", "0,1,0", "0,0,1", "0,0,0"])
    m = manifest(causal, root)
    bad = m[~m.decodable]
    assert list(bad.row) == [81] and "B='oops'" in bad.error.iloc[0] and "C=''" in bad.error.iloc[0]
    report = validate("causal", m)
    assert "obs.csv:81" in report.summary()
    write(root / "adjacency.csv", ["A,B,D", "0,1,0", "0,0,1", "0,0,0"])
    with pytest.raises(DatasetError, match="does not name the data columns"):
        manifest(causal, root)
    write(root / "adjacency.csv", ["A,B,C", "0,2,0", "0,0,1", "0,0,0"])
    with pytest.raises(DatasetError, match="row 1, column B"):
        manifest(causal, root)


def test_sem_generator(tmp_path):
    a = generate_sem(tmp_path / "a", 6, "nonlinear", seed=2, n=50)
    b = generate_sem(tmp_path / "b", 6, "nonlinear", seed=2, n=50)
    for name in ("data.csv", "adjacency.csv", "sem.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    adj = np.loadtxt(a / "adjacency.csv", delimiter=",", skiprows=1)
    assert adj.shape == (6, 6) and find_cycle(adj.astype(int)) is None
    assert causal.KIND.detect(a)
    assert validate("causal", manifest(causal, a)).success
