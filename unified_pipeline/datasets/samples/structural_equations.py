"""Observational data from random structural equation models with a known DAG.

Graphs follow the NOTEARS benchmarks' "ER2" setting: Erdos-Renyi DAGs with 2d expected
edges on d nodes (each pair in a random topological order is joined with probability
4/(d-1)). Linear SEMs use edge weights drawn uniformly from +-[0.5, 2.0]; nonlinear SEMs
give every node with parents a random one-hidden-layer MLP (10 sigmoid units, weights
+-[0.5, 2.0]) of its parents. Noise is standard Gaussian (unit variance) in both.
Each dataset folder holds data.csv (columns X1..Xd), adjacency.csv (A[i,j]=1: Xi -> Xj)
and sem.json describing the generator.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from unified_pipeline.atomic import atomic_dir

WEIGHT_RANGE = (0.5, 2.0)
HIDDEN = 10


def er_dag(d: int, expected_edges: float, rng: np.random.Generator) -> np.ndarray:
    p = min(1.0, 2.0 * expected_edges / (d * (d - 1))) if d > 1 else 0.0
    lower = np.tril((rng.random((d, d)) < p).astype(np.int64), k=-1)  # edges from later to earlier index
    perm = rng.permutation(d)
    return lower.T[np.ix_(perm, perm)]  # upper-triangular in a hidden random order: acyclic


def _weights(shape, rng: np.random.Generator) -> np.ndarray:
    low, high = WEIGHT_RANGE
    return rng.uniform(low, high, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def topological_order(adj: np.ndarray) -> list[int]:
    indeg = adj.sum(axis=0).astype(int)
    ready = sorted(np.flatnonzero(indeg == 0).tolist())
    order = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in np.flatnonzero(adj[i]):
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(int(j))
    return order


def simulate(adj: np.ndarray, n: int, sem: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    d = adj.shape[0]
    x = np.zeros((n, d))
    facts: dict = {}
    weights = adj * _weights((d, d), rng)
    if sem == "linear":
        facts["weights"] = np.round(weights, 6).tolist()
    for j in topological_order(adj):
        parents = np.flatnonzero(adj[:, j])
        noise = rng.normal(0.0, 1.0, size=n)
        if len(parents) == 0:
            x[:, j] = noise
        elif sem == "linear":
            x[:, j] = x[:, parents] @ weights[parents, j] + noise
        else:
            w1 = _weights((len(parents), HIDDEN), rng)
            w2 = _weights((HIDDEN,), rng)
            hidden = 1.0 / (1.0 + np.exp(-(x[:, parents] @ w1)))
            x[:, j] = hidden @ w2 + noise
    return x, facts


def generate_sem(dest: Path, d: int, sem: str, seed: int = 0, n: int = 1000) -> Path:
    """Write one SEM dataset under `dest` (kept as is when it already exists)."""
    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    rng = np.random.default_rng([seed, d, 0 if sem == "linear" else 1])
    adj = er_dag(d, 2 * d, rng)
    x, facts = simulate(adj, n, sem, rng)
    names = [f"X{i + 1}" for i in range(d)]
    info = {"graph": "ER2", "nodes": d, "edges": int(adj.sum()), "sem": "linear-gaussian" if sem == "linear" else
            "mlp-sigmoid", "noise": "gaussian", "noise_std": 1.0, "weight_range": list(WEIGHT_RANGE),
            "hidden_units": HIDDEN if sem != "linear" else None, "rows": n, "seed": seed, **facts}
    with atomic_dir(dest) as tmp:
        with open(tmp / "data.csv", "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(names)
            w.writerows([format(float(v), ".6g") for v in r] for r in x)
        with open(tmp / "adjacency.csv", "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(names)
            w.writerows(adj.tolist())
        (tmp / "sem.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return dest
