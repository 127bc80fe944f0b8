"""causal_reasoning_engine: a structural causal model learned with NOTEARS, one per dataset.

Each causal dataset gets its own SEM inside one model (`graphs` keyed by dataset name):
linear NOTEARS (least squares + L1) for linear data, NOTEARS-MLP otherwise. The learned
weights are thresholded and then forced acyclic (weakest edge of each remaining cycle
dropped), so interventions and counterfactuals can always be propagated in topological order.

Data convention follows the NOTEARS papers: columns are centred, and scaled only when their
spreads differ by orders of magnitude (hparam `standardize`: "auto", true or false). With equal
noise variances the raw scale is what makes the linear model identifiable, and standardising
costs a large SHD increase on the linear samples; columns measured in different units, on the
other hand, make the least-squares score chase the widest column.

Headline metric `shd` is the WORST (max) structural Hamming distance over the datasets that
ship a ground-truth adjacency; per-dataset numbers are flat keys like "causal_linear_d10/shd".
Structure learning on such a dataset uses every row (hparam `fit_splits`): the test is against
the true graph, not held-out rows. A dataset without ground truth is fitted without its test
rows, which then score the learned graph against the empty graph (held-out log-likelihood, see
causal_scores), and bootstrap refits give each learned edge a stability. A ground truth with a
cycle (real systems have feedback loops) is scored as given, with a warning that names the cycle.

Devices: everything runs on the CPU even when the step leased a GPU (`engine_device`). The
work is float64 (slow on GPUs), its kernels are tiny (d x d matrices, small MLPs), and L-BFGS-B
reads the loss and gradient back to the host at every evaluation, so on CUDA it is bound by
kernel launches and synchronisations. `UNIFIED_CAUSAL_DEVICE=job` runs the NOTEARS-MLP
objective, the SEMs and interventions on the leased device instead, for measuring that choice
(bench/gpu_session.sh); the linear solve is numpy on the CPU in any case.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from unified_pipeline import atomic
from unified_pipeline.errors import ConfigError, DatasetError
from unified_pipeline.models.base import BaseModel, register_architecture
from unified_pipeline.models.spec import ModelSpec
from unified_pipeline.models.causal_scores import check_without_headline, choose_standardize, edge_stability, no_truth_scores
from unified_pipeline.models.notears import (
    LagrangianSettings, NotearsMLP, notears_linear, notears_mlp, refit_in_order, structure_metrics,
    threshold_to_dag, topological_order)
from unified_pipeline.training.job import FitJob, FitResult


@dataclass
class CausalSettings:
    method: str = "auto"  # "linear", "mlp", or "auto": from the generator's recorded SEM, else linear
    standardize: Any = "auto"  # true, false, or "auto": when column spreads differ widely (causal_scores)
    bootstrap_rounds: int = 8  # refits on resampled rows for edge stability, on datasets without ground truth
    lambda1_linear: float = 0.1
    lambda1_mlp: float = 0.003  # 0.01 (the paper's) zeroes weak sigmoid edges: d=20 sample SHD 12 -> 7
    lambda2_mlp: float = 0.01
    hidden: int = 10
    w_threshold: float = 0.3
    h_tol: float = 1e-8
    rho_max: float = 1e16
    max_outer: int = 100
    inner_maxiter_linear: int = 3000
    inner_maxiter_mlp: int = 200  # caps each L-BFGS-B solve; more (1000) did not change the sample SHD
    refit_order: bool = True  # linear: OLS on all predecessors in the learned causal order, then threshold
    fit_splits: list[str] = field(default_factory=lambda: ["train", "val", "test"])
    n_residuals: int = 1000  # residual rows kept for noise resampling in interventions


@dataclass
class CausalConfig:
    graphs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {d, method, hidden, columns, n_residuals}


class CausalSEM(nn.Module):
    """x = f(x) + e in standardised-or-centred units; f is linear (weight) or NotearsMLP."""

    def __init__(self, d: int, method: str, hidden: int, n_residuals: int):
        super().__init__()
        self.method = method
        self.weight = nn.Parameter(torch.zeros(d, d), requires_grad=False)  # fitted, not trained by autograd
        self.register_buffer("adjacency", torch.zeros(d, d))
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))
        self.register_buffer("residuals", torch.zeros(n_residuals, d))
        self.register_buffer("order", torch.arange(d))
        self.mlp = NotearsMLP(d, hidden) if method == "mlp" else None

    def mechanism(self, z: torch.Tensor) -> torch.Tensor:
        """Each variable's predicted value from its parents (columns of the result)."""
        if self.mlp is not None:
            return self.mlp(z)
        return z @ self.weight

    def propagate(self, noise: torch.Tensor, fixed: dict[int, float]) -> torch.Tensor:
        """Ancestral pass in topological order; `fixed` variables ignore their mechanism (do-operator)."""
        z = torch.zeros_like(noise)
        for j in self.order.tolist():
            if j in fixed:
                z[:, j] = fixed[j]
            else:
                z[:, j] = self.mechanism(z)[:, j] + noise[:, j]
        return z


@register_architecture("causal_reasoning_engine")
class CausalReasoningEngine(BaseModel):
    config_cls = CausalConfig

    def __init__(self, config: CausalConfig):
        super().__init__(config)
        # One structural model per dataset, rebuilt from the config alone (BaseModel.load).
        self.graphs = nn.ModuleDict({
            name: CausalSEM(g["d"], g["method"], g.get("hidden", 10), g["n_residuals"])
            for name, g in config.graphs.items()
        })

    def sem(self, dataset: str) -> CausalSEM:
        if dataset not in self.graphs:
            raise ConfigError(f"causal model has no dataset {dataset!r}; known: {sorted(self.graphs)}")
        return self.graphs[dataset]

    def columns(self, dataset: str) -> list[str]:
        self.sem(dataset)
        return list(self.config.graphs[dataset]["columns"])


def _column_index(model: CausalReasoningEngine, dataset: str, values: dict[str, float], what: str) -> dict[int, float]:
    cols = model.columns(dataset)
    out = {}
    for name, value in values.items():
        if name not in cols:
            raise ConfigError(f"{what}: unknown variable {name!r} for dataset {dataset!r}; columns: {cols}")
        out[cols.index(name)] = float(value)
    return out


@torch.no_grad()
def intervene(model: CausalReasoningEngine, dataset: str, do: dict[str, float], n: int = 1000,
              seed: int = 0) -> dict[str, float]:
    """E[X | do(X_k = x_k)] for every variable, by ancestral sampling with resampled residuals."""
    sem = model.sem(dataset)
    fixed = _column_index(model, dataset, do, "do")
    fixed = {j: (v - float(sem.mean[j])) / float(sem.scale[j]) for j, v in fixed.items()}
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, sem.residuals.shape[0], (n,), generator=gen).to(sem.residuals.device)
    z = sem.propagate(sem.residuals[rows], fixed)
    x = z * sem.scale + sem.mean
    return dict(zip(model.columns(dataset), x.mean(0).tolist()))


@torch.no_grad()
def counterfactual(model: CausalReasoningEngine, dataset: str, observation: dict[str, float],
                   do: dict[str, float]) -> dict[str, float]:
    """Abduction (noise = observed - mechanism), action (do), prediction (ancestral pass)."""
    sem = model.sem(dataset)
    cols = model.columns(dataset)
    missing = [c for c in cols if c not in observation]
    if missing:
        raise ConfigError(f"counterfactual observation for {dataset!r} lacks variable(s) {missing}")
    obs = _column_index(model, dataset, observation, "observation")
    x = torch.tensor([[obs[j] for j in range(len(cols))]], dtype=sem.mean.dtype, device=sem.mean.device)
    z = (x - sem.mean) / sem.scale
    noise = z - sem.mechanism(z)
    fixed = {j: (v - float(sem.mean[j])) / float(sem.scale[j])
             for j, v in _column_index(model, dataset, do, "do").items()}
    out = sem.propagate(noise, fixed) * sem.scale + sem.mean
    return dict(zip(cols, out[0].tolist()))


def _rows(name: str, bundle, splits: list[str], cols: list[str]) -> torch.Tensor:
    parts = [torch.zeros(0, len(cols), dtype=torch.float64)]
    for split in splits:
        key = f"{split}/x"
        if key not in bundle.tensors:
            raise DatasetError(f"{name}: tensor {key!r} missing; have {sorted(bundle.tensors)}")
        x = bundle.tensors[key]
        if x.ndim != 2 or x.shape[1] != len(cols):
            raise DatasetError(f"{name}: tensor {key!r} has shape {tuple(x.shape)}, expected [N, {len(cols)}] (meta 'columns')")
        parts.append(x.to(torch.float64))
    x = torch.cat(parts)
    if not torch.isfinite(x).all():
        raise DatasetError(f"{name}: tensor 'x' holds NaN or infinite values")
    return x


def _check_bundle(name: str, bundle, splits: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[str], np.ndarray | None]:
    """Fit rows, held-out rows (test, for datasets without ground truth), columns, true graph."""
    cols = bundle.meta.get("columns")
    if not isinstance(cols, list) or not cols:
        raise DatasetError(f"{name}: meta field 'columns' must be a non-empty list of variable names")
    held_out = [] if bundle.meta.get("has_ground_truth") else [s for s in splits if s == "test"]
    x = _rows(name, bundle, [s for s in splits if s not in held_out], cols)
    x_test = _rows(name, bundle, held_out, cols)
    truth = None
    if bundle.meta.get("has_ground_truth"):
        if "adjacency" not in bundle.tensors:
            raise DatasetError(f"{name}: meta says has_ground_truth but tensor 'adjacency' is missing")
        truth = bundle.tensors["adjacency"].cpu().numpy()
        if truth.shape != (len(cols), len(cols)):
            raise DatasetError(f"{name}: tensor 'adjacency' has shape {truth.shape}, expected {(len(cols),) * 2}")
    return x, x_test, cols, truth


def _method_for(meta: dict, choice: str) -> str:
    if choice in ("linear", "mlp"):
        return choice
    if choice != "auto":
        raise ConfigError(f"hparam 'method' must be 'auto', 'linear' or 'mlp', got {choice!r}")
    sem = meta.get("sem") or {}
    text = " ".join(str(v) for v in (sem.values() if isinstance(sem, dict) else [sem])).lower()
    return "mlp" if ("nonlinear" in text or "mlp" in text or "gp" in text.split()) else "linear"


def _refit_linear(z: torch.Tensor, adj: np.ndarray) -> torch.Tensor:
    """Ordinary least squares of each node on its selected parents (removes the L1 shrinkage)."""
    d = z.shape[1]
    w = torch.zeros(d, d, dtype=z.dtype, device=z.device)
    for j in range(d):
        parents = np.flatnonzero(adj[:, j])
        if len(parents):
            sol = torch.linalg.lstsq(z[:, parents], z[:, j:j + 1]).solution
            w[parents, j] = sol[:, 0]
    return w


def _plot_graph(path, name: str, learned: np.ndarray, truth: np.ndarray | None, cols: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("learned weights (thresholded, acyclic)", learned)]
    if truth is not None:
        panels.insert(0, ("true adjacency", truth))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (title, mat) in zip(axes[0], panels):
        lim = max(float(np.abs(mat).max()), 1e-6)
        im = ax.imshow(mat, cmap="coolwarm", vmin=-lim, vmax=lim)
        ax.set_title(f"{name}: {title}", fontsize=9)
        ax.set_xlabel("to (child)")
        ax.set_ylabel("from (parent)")
        if len(cols) <= 20:
            ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=6)
            ax.set_yticks(range(len(cols)), cols, fontsize=6)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def engine_device(job_device: str) -> tuple[str, str]:
    """(device to run on, why), given the device the step leased."""
    import os

    if os.environ.get("UNIFIED_CAUSAL_DEVICE", "cpu").strip().lower() == "job":
        return job_device, "UNIFIED_CAUSAL_DEVICE=job"
    if job_device == "cpu":
        return "cpu", "the step has no accelerator"
    return "cpu", (f"kept on the CPU instead of {job_device}: float64 NOTEARS with tiny kernels and a host "
                   "read-back per L-BFGS-B evaluation is launch-bound on a GPU")


def fit(job: FitJob) -> FitResult:
    hp = SPEC.resolve(job.hparams)
    device, why = engine_device(job.device)
    job.log.info("causal_reasoning_engine on %s: %s", device, why)
    if not job.datasets:
        raise ConfigError("causal_reasoning_engine needs at least one causal dataset")
    torch.manual_seed(job.seed)
    start = time.monotonic()
    graphs, fitted, metrics, history, notes = {}, {}, {}, [], {}
    for name, bundle in sorted(job.datasets.items()):
        x, x_test, cols, truth = _check_bundle(name, bundle, list(hp["fit_splits"]))
        x, x_test = x.to(device), x_test.to(device)
        method = _method_for(bundle.meta, hp["method"])
        mean = x.mean(0)
        standardize, why_scaled = choose_standardize(hp["standardize"], x)
        scale = x.std(0).clamp_min(1e-8) if standardize else torch.ones_like(mean)
        z = (x - mean) / scale
        if bundle.meta.get("ground_truth_cycle"):
            job.log.warning("causal %s: the ground-truth graph has a cycle (%s); SHD is scored against it as given",
                            name, bundle.meta["ground_truth_cycle"])
            notes[f"{name}/ground_truth_cycle"] = bundle.meta["ground_truth_cycle"]
        settings = LagrangianSettings(max_outer=int(hp["max_outer"]), h_tol=float(hp["h_tol"]),
                                      rho_max=float(hp["rho_max"]),
                                      inner_maxiter=int(hp[f"inner_maxiter_{method}"]))
        t0 = time.monotonic()

        def log(outer, rho, h, _name=name, _t0=t0):
            rec = {"epoch": outer, "dataset": _name, "h": float(h), "rho": float(rho), "elapsed_s": time.monotonic() - _t0}
            history.append(rec)
            if job.on_epoch:
                job.on_epoch(rec)

        def learn(rows, on_outer=None):
            if method == "linear":
                w_raw, info = notears_linear(rows, float(hp["lambda1_linear"]), settings, on_outer)
                mlp = None
            else:
                mlp, info = notears_mlp(rows, int(hp["hidden"]), float(hp["lambda1_mlp"]), float(hp["lambda2_mlp"]),
                                        settings, job.seed, on_outer)
                w_raw = mlp.adjacency().detach().cpu().numpy()
            w_dag, dropped = threshold_to_dag(w_raw, float(hp["w_threshold"]))
            if method == "linear" and hp["refit_order"]:
                cov = (rows.T @ rows / rows.shape[0]).cpu().numpy()
                w_dag = refit_in_order(cov, topological_order(w_dag), float(hp["w_threshold"]))
            return w_raw, w_dag, dropped, mlp, info

        w_raw, w_dag, dropped, mlp, info = learn(z, log)
        adj = (w_dag != 0).astype(np.float32)
        n_res = min(int(hp["n_residuals"]), z.shape[0])
        sem = CausalSEM(len(cols), method, int(hp["hidden"]), n_res).to(device=device, dtype=torch.float64)
        if mlp is not None:
            sem.mlp.load_state_dict(mlp.state_dict())
            sem.mlp.mask.copy_(torch.as_tensor(adj, dtype=torch.float64))
        else:
            sem.weight.copy_(_refit_linear(z, adj))
        sem.adjacency.copy_(torch.as_tensor(adj))
        sem.mean.copy_(mean)
        sem.scale.copy_(scale)
        sem.order.copy_(torch.as_tensor(topological_order(adj)))
        with torch.no_grad():
            resid = z - sem.mechanism(z)
        sem.residuals.copy_(resid[torch.randperm(z.shape[0], device=z.device)[:n_res]])
        fitted[name] = sem.float()
        graphs[name] = {"d": len(cols), "method": method, "hidden": int(hp["hidden"]), "columns": cols,
                        "n_residuals": n_res}
        m = {"fit_mse": float((resid ** 2).mean()), "baseline_mse": float((z ** 2).mean()),
             "cycle_edges_dropped": float(dropped), "h_final": info["h"],
             "outer_iterations": float(info["outer_iterations"]), "evaluations": float(info["evaluations"]),
             "wall_s": time.monotonic() - t0,
             "edges": float(adj.sum())}
        m["standardized"] = float(standardize)
        notes[f"{name}/scaling"] = why_scaled
        shown = w_dag if method == "linear" else w_raw * (w_dag != 0)
        if truth is not None:
            m.update(structure_metrics(adj, truth))
            m["shd_empty_graph"] = structure_metrics(np.zeros_like(truth), truth)["shd"]
        else:
            m.update(no_truth_scores(sem.mechanism, z.float(), ((x_test - mean) / scale).float(), int(adj.sum())))
            rounds = int(hp["bootstrap_rounds"])
            if rounds > 0 and adj.any():
                freq, m["edge_stability"] = edge_stability(lambda rows: learn(rows)[1], z, adj, rounds, job.seed)
                notes[f"{name}/edge_stability"] = {f"{cols[i]} -> {cols[j]}": round(float(freq[i, j]), 3)
                                                   for i, j in zip(*np.nonzero(adj))}
        for k, v in m.items():
            metrics[f"{name}/{k}"] = v
        notes[f"{name}/method"] = method
        job.log.info("causal %s (%s): %s", name, method, {k: round(v, 3) for k, v in m.items()})
        _plot_path = job.out_dir / "plots" / f"{name}_graph.png"
        _plot_graph(_plot_path, name, shown, truth, cols)
        notes.setdefault("_plots", {})[f"{name} graph"] = _plot_path

    model = CausalReasoningEngine(CausalConfig(graphs=graphs)).to(device)
    for name, sem in fitted.items():
        model.graphs[name].load_state_dict(sem.state_dict())
    with_any_truth = [n for n in graphs if f"{n}/shd" in metrics]
    baseline = {k: v for k, v in metrics.items() if k.endswith("baseline_mse") or k.endswith("shd_empty_graph")}
    if with_any_truth:
        worst = max(with_any_truth, key=lambda n: metrics[f"{n}/shd"])
        metrics["shd"] = metrics[f"{worst}/shd"]
        metrics["shd_mean"] = float(np.mean([metrics[f"{n}/shd"] for n in with_any_truth]))
        baseline["shd"] = metrics[f"{worst}/shd_empty_graph"]
    without_truth = [n for n in graphs if f"{n}/heldout_loglik_gain" in metrics]
    if without_truth:  # worst dataset; 0 is the empty graph by definition
        metrics["heldout_loglik_gain"] = min(metrics[f"{n}/heldout_loglik_gain"] for n in without_truth)
        baseline["heldout_loglik_gain"] = 0.0
    for method in ("linear", "mlp"):
        with_truth = [n for n, g in graphs.items() if g["method"] == method and f"{n}/shd" in metrics]
        if with_truth:  # worst dataset fitted with this variant
            metrics[f"shd_{method}"] = max(metrics[f"{n}/shd"] for n in with_truth)
            metrics[f"tpr_{method}"] = min(metrics[f"{n}/tpr"] for n in with_truth)
            metrics[f"fdr_{method}"] = max(metrics[f"{n}/fdr"] for n in with_truth)
            baseline[f"shd_{method}"] = max(metrics[f"{n}/shd_empty_graph"] for n in with_truth)
    model.save(job.out_dir, extra={"datasets": sorted(graphs)})
    plots = notes.pop("_plots")
    all_metrics = {"test": metrics, "baseline": baseline}
    rule = check_without_headline(metrics, bool(with_any_truth))
    if rule:
        all_metrics["check"] = rule
        job.log.info("causal: %s", rule["why"])
    wall = time.monotonic() - start
    rows = sum(int(g["n_residuals"]) for g in graphs.values())
    notes["headline"] = "shd = worst structural Hamming distance over datasets with a ground-truth graph"
    return FitResult(metrics=all_metrics, history=history, param_count=model.num_parameters(),
                     epochs_run=max((r["epoch"] for r in history), default=0), samples_per_s=rows / max(wall, 1e-9),
                     wall_time_s=wall, device=str(device), plots=plots, notes={**notes, "device_choice": why})


# causal_queries.SPEC adds predict (the registry names that module).
SPEC = ModelSpec(settings=CausalSettings, fit=fit)
