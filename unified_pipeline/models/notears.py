"""NOTEARS structure learning: linear and MLP variants, augmented Lagrangian, acyclicity repair.

Zheng et al. 2018 (linear) and 2020 (MLP). The smooth acyclicity measure
h(W) = tr(exp(W∘W)) - d is zero exactly when W is a DAG. The linear objective is closed-form
numpy on the CPU (it only needs the d x d covariance); the MLP objective runs in torch on the
device of its data (CUDA when the job has one) with autograd plus a closed-form gradient of h.
The inner solver is scipy's L-BFGS-B, as in the reference code, because the L1 term is
handled exactly by splitting W = W+ - W- with non-negative bounds (a plain gradient step on
|W| never reaches exact zeros).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg as slin
import scipy.optimize as sopt
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from unified_pipeline.datasets.causal import find_cycle
from unified_pipeline.datasets.samples.structural_equations import topological_order as kahn_order


@dataclass
class LagrangianSettings:
    max_outer: int = 100
    h_tol: float = 1e-8
    rho_max: float = 1e16
    inner_maxiter: int = 15000  # L-BFGS-B iterations per inner solve


class _TraceExpm(torch.autograd.Function):
    """tr(exp(A)) with the closed-form gradient exp(A)^T (autograd's matrix_exp backward
    builds a 2d x 2d block exponential instead)."""

    @staticmethod
    def forward(ctx, a):
        e = torch.linalg.matrix_exp(a)
        ctx.save_for_backward(e)
        return torch.trace(e)

    @staticmethod
    def backward(ctx, grad):
        (e,) = ctx.saved_tensors
        return grad * e.t()


def acyclicity(adj_sq: torch.Tensor) -> torch.Tensor:
    """h for a non-negative matrix (already squared): tr(exp(A)) - d."""
    return _TraceExpm.apply(adj_sq) - adj_sq.shape[0]


def _augmented_lagrangian(objective, h_of, x0: np.ndarray, bounds, s: LagrangianSettings, log=None):
    """Generic outer loop: raise rho until h shrinks by 4x, then update the multiplier.

    BLAS is held to one thread: every product here is at most a few hundred wide, and a
    threaded OpenBLAS inside L-BFGS-B's update spends most of its time waiting for the
    other core (4x slower measured on a shared 2-core machine)."""
    with threadpool_limits(limits=1, user_api="blas"):
        return _lagrangian_loop(objective, h_of, x0, bounds, s, log)


def _lagrangian_loop(objective, h_of, x0, bounds, s: LagrangianSettings, log):
    rho, alpha, h = 1.0, 0.0, math.inf
    x = x0
    outer = evaluations = 0
    for outer in range(1, s.max_outer + 1):
        x_new, h_new = x, h
        while rho < s.rho_max:
            sol = sopt.minimize(lambda v: objective(v, rho, alpha), x, method="L-BFGS-B", jac=True,
                                bounds=bounds, options={"maxiter": s.inner_maxiter})
            x_new, evaluations = sol.x, evaluations + sol.nfev
            h_new = h_of(x_new)
            if h_new > 0.25 * h:
                rho *= 10
            else:
                break
        x, h = x_new, h_new
        alpha += rho * h
        if log is not None:
            log(outer, rho, h)
        if h <= s.h_tol or rho >= s.rho_max:
            break
    return x, {"outer_iterations": outer, "h": float(h), "rho": float(rho), "evaluations": evaluations}


def notears_linear(x, lambda1: float = 0.1, settings: LagrangianSettings | None = None,
                   log=None) -> tuple[np.ndarray, dict]:
    """Weighted adjacency W [d, d] (W[i, j]: i -> j) for centred data x [n, d] under least squares + L1.

    Runs in float64 numpy on the CPU whatever device `x` lives on: the loss only needs the
    d x d covariance, and for d in the tens a closed-form gradient with scipy's expm costs tens
    of microseconds per evaluation, where a torch call (and a device round trip) costs far more.
    """
    s = settings or LagrangianSettings()
    x = x.detach().to("cpu", torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
    n, d = x.shape
    cov = x.T @ x / n  # the loss and its gradient only need the covariance
    eye = np.eye(d)

    def unpack(v: np.ndarray) -> np.ndarray:
        return (v[: d * d] - v[d * d:]).reshape(d, d)

    def objective(v: np.ndarray, rho: float, alpha: float):
        w = unpack(v)
        e = slin.expm(w * w)
        h = np.trace(e) - d
        iw = eye - w
        c_iw = cov @ iw
        loss = 0.5 * np.sum(iw * c_iw)  # trace(iw' cov iw)
        g_w = (-c_iw + (rho * h + alpha) * e.T * 2 * w).ravel()
        total = loss + 0.5 * rho * h * h + alpha * h + lambda1 * v.sum()
        return total, np.concatenate([g_w + lambda1, -g_w + lambda1])

    def h_of(v: np.ndarray) -> float:
        w = unpack(v)
        return float(np.trace(slin.expm(w * w)) - d)

    bounds = [(0, 0) if i == j else (0, None) for _ in range(2) for i in range(d) for j in range(d)]
    v, info = _augmented_lagrangian(objective, h_of, np.zeros(2 * d * d), bounds, s, log)
    return unpack(v), info


class NotearsMLP(nn.Module):
    """One MLP per variable, x_j ≈ f_j(x); the first layer's input weights define the graph.

    First-layer weights are kept as two non-negative halves (pos - neg) so L-BFGS-B can apply
    the L1 penalty exactly; `mask` (1 = allowed edge i -> j) prunes inputs after thresholding.
    """

    def __init__(self, d: int, hidden: int = 10):
        super().__init__()
        self.d, self.hidden = d, hidden
        self.fc1_pos = nn.Parameter(torch.zeros(d, hidden, d))  # [out j, unit, in i]
        self.fc1_neg = nn.Parameter(torch.zeros(d, hidden, d))
        self.fc1_bias = nn.Parameter(torch.zeros(d, hidden))
        self.fc2_weight = nn.Parameter(torch.empty(d, hidden))
        self.fc2_bias = nn.Parameter(torch.zeros(d))
        self.register_buffer("mask", torch.ones(d, d))
        bound = 1.0 / math.sqrt(hidden)
        nn.init.uniform_(self.fc2_weight, -bound, bound)

    def first_layer(self) -> torch.Tensor:
        return (self.fc1_pos - self.fc1_neg) * self.mask.t().unsqueeze(1)  # mask[i, j] -> [j, :, i]

    def forward(self, x: torch.Tensor, first: torch.Tensor | None = None) -> torch.Tensor:
        first = self.first_layer() if first is None else first
        # One GEMM over all d*hidden units; einsum's permutes cost more than the product here.
        pre = x @ first.reshape(-1, self.d).t() + self.fc1_bias.reshape(-1)
        hid = torch.sigmoid(pre).view(x.shape[0], self.d, self.hidden)
        return (hid * self.fc2_weight).sum(-1) + self.fc2_bias

    def adjacency_sq(self, first: torch.Tensor | None = None) -> torch.Tensor:
        # Squared norms: the sqrt has no gradient at the zero diagonal.
        first = self.first_layer() if first is None else first
        return (first ** 2).sum(1).t()

    def adjacency(self) -> torch.Tensor:
        """A[i, j] = L2 norm of the weights from input i into f_j."""
        return torch.sqrt(self.adjacency_sq())


def notears_mlp(x: torch.Tensor, hidden: int = 10, lambda1: float = 0.01, lambda2: float = 0.01,
                settings: LagrangianSettings | None = None, seed: int = 0, log=None) -> tuple[NotearsMLP, dict]:
    s = settings or LagrangianSettings()
    x = x.to(torch.float64)
    n, d = x.shape
    torch.manual_seed(seed)
    model = NotearsMLP(d, hidden).to(device=x.device, dtype=torch.float64)
    # Small random start for the first layer (zero would be a saddle point for the sigmoid units).
    with torch.no_grad():
        model.fc1_pos.uniform_(0, 0.1 / math.sqrt(d))
        model.fc1_neg.uniform_(0, 0.1 / math.sqrt(d))
    params = [model.fc1_pos, model.fc1_neg, model.fc1_bias, model.fc2_weight, model.fc2_bias]
    sizes = [p.numel() for p in params]

    def load(v: np.ndarray) -> None:
        flat = torch.as_tensor(v, dtype=torch.float64, device=x.device)
        with torch.no_grad():
            for p, chunk in zip(params, torch.split(flat, sizes)):
                p.copy_(chunk.view_as(p))

    def objective(v: np.ndarray, rho: float, alpha: float):
        load(v)
        model.zero_grad()
        first = model.first_layer()
        loss = 0.5 / n * ((model(x, first) - x) ** 2).sum()
        h = acyclicity(model.adjacency_sq(first))
        l2 = 0.5 * lambda2 * ((first ** 2).sum() + (model.fc2_weight ** 2).sum())
        total = loss + 0.5 * rho * h * h + alpha * h + l2 + lambda1 * (model.fc1_pos.sum() + model.fc1_neg.sum())
        total.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in params])
        return float(total.detach()), grad.detach().cpu().numpy()

    def h_of(v: np.ndarray) -> float:
        load(v)
        with torch.no_grad():
            return float(acyclicity(model.adjacency_sq()))

    diag = torch.eye(d, dtype=torch.bool).unsqueeze(1).expand(d, hidden, d).reshape(-1).tolist()
    fc1_bounds = [(0, 0) if on_diag else (0, None) for on_diag in diag]
    bounds = fc1_bounds + fc1_bounds + [(None, None)] * (sizes[2] + sizes[3] + sizes[4])
    x0 = torch.cat([p.detach().reshape(-1) for p in params]).cpu().numpy()
    x0[: 2 * sizes[0]] *= np.array([b[1] is None for b in fc1_bounds * 2], dtype=float)  # diagonal starts at 0
    v, info = _augmented_lagrangian(objective, h_of, x0, bounds, s, log)
    load(v)
    return model, info


def refit_in_order(cov: np.ndarray, order: list[int], threshold: float) -> np.ndarray:
    """Least squares of each node on ALL its predecessors in `order`, then |w| < threshold dropped.

    NOTEARS' L1 penalty can zero a true but weak-looking edge; with the causal order fixed the
    unpenalised regression is consistent, and the result is a DAG by construction."""
    d = cov.shape[0]
    w = np.zeros((d, d))
    for pos, j in enumerate(order):
        pre = order[:pos]
        if pre:
            coef = np.linalg.solve(cov[np.ix_(pre, pre)], cov[pre, j])
            w[pre, j] = np.where(np.abs(coef) >= threshold, coef, 0.0)
    return w


def topological_order(adj: np.ndarray) -> list[int] | None:
    """Nodes with every edge (adj != 0) pointing forward; None when a cycle remains."""
    order = kahn_order((adj != 0).astype(int))
    return order if len(order) == adj.shape[0] else None


def threshold_to_dag(weights: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """Zero |w| < threshold, then drop the weakest edge of any remaining cycle until acyclic.

    Returns the pruned weights and how many edges the cycle repair removed.
    """
    w = np.where(np.abs(weights) >= threshold, weights, 0.0)
    np.fill_diagonal(w, 0.0)
    dropped = 0
    while topological_order(w) is None:
        cycle = find_cycle(w)  # a closed path: its first node again at the end
        edges = list(zip(cycle, cycle[1:]))
        i, j = min(edges, key=lambda e: abs(w[e]))
        w[i, j] = 0.0
        dropped += 1
    return w, dropped


def structure_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """SHD (a reversed edge counts once), TPR and FDR over directed edges, as in the NOTEARS code."""
    p, t = pred != 0, truth != 0
    tp = int((p & t).sum())
    reversed_ = int((p & t.T & ~t).sum())
    fp = int((p & ~t & ~t.T).sum())
    pred_und = np.triu(p | p.T, 1)
    true_und = np.triu(t | t.T, 1)
    shd = int((pred_und & ~true_und).sum() + (~pred_und & true_und).sum()) + reversed_
    n_pred, n_true = int(p.sum()), int(t.sum())
    return {
        "shd": float(shd),
        "tpr": tp / max(n_true, 1),
        "fdr": (reversed_ + fp) / max(n_pred, 1),
        "edges": float(n_pred),
        "true_edges": float(n_true),
    }
