"""A logistic regression over hashed character n-gram TF-IDF features, as a PyTorch module.

The features are those of the classical text baseline (models/baselines.py): case-folded
character 1..4-grams with the string edges as boundaries, sublinear term frequency, smoothed
inverse document frequency from the training texts, rows scaled to unit length. They are hashed
into buckets instead of kept in a vocabulary, so the module needs no preprocessing step and reads
the same token ids as the encoder. `fit_lbfgs` solves the regularised problem with full-batch
L-BFGS, choosing the regularisation on the validation split as the baseline does.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PAD = 0


def case_fold_table(vocab: Sequence[str]) -> torch.Tensor:
    """Token id -> id of its lower-case form (itself when that form is not in the vocabulary);
    spaces, punctuation and symbols -> the boundary (padding id). Features are then those of the
    words, as the baseline's word-bounded n-grams, and "(drei)", "drei." and "Drei" share them."""
    index = {tok: i for i, tok in enumerate(vocab)}

    def folded(i: int, tok: str) -> int:
        if len(tok) != 1:
            return i  # <pad>, <unk>
        return index.get(tok.lower(), i) if tok.isalnum() else PAD

    return torch.tensor([folded(i, tok) for i, tok in enumerate(vocab)], dtype=torch.long)


class HashedTfidfLinear(nn.Module):
    """logits = W . tfidf(x) + b over hashed char n-grams; every tensor is a buffer (fitted, not trained
    by the optimizer), so it is saved with the model and left out of gradient steps and DDP."""

    def __init__(self, vocab_size: int, num_classes: int, buckets: int, orders: Sequence[int] = (1, 2, 3, 4)):
        super().__init__()
        self.buckets, self.orders = int(buckets), tuple(int(n) for n in orders)
        self.register_buffer("fold", torch.arange(vocab_size))
        self.register_buffer("idf", torch.ones(self.buckets))
        self.register_buffer("weight", torch.zeros(self.buckets, num_classes))
        self.register_buffer("bias", torch.zeros(num_classes))

    def ngram_ids(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bucket of every n-gram ending at each position: ids [N, (L + 1) * orders], and a mask of
        those that end on a character or on the boundary right after the text. Padding stands for
        the boundary, as the baseline pads each word with spaces: prefixes and suffixes are features."""
        x = F.pad(self.fold[x], (0, 1))  # room for the end boundary even in a trimmed batch
        real = x != PAD
        after = ~real & torch.roll(real, shifts=1, dims=1)
        after[:, 0] = False
        ends = real | after
        ids, keep = [], []
        for n in self.orders:
            h = torch.full_like(x, n)
            for j in range(n - 1, -1, -1):
                shifted = torch.roll(x, shifts=j, dims=1)
                if j:
                    shifted[:, :j] = PAD
                h = (h * 1000003 + shifted + 1) % 2_147_483_647
            ids.append(h % self.buckets)
            keep.append(ends if n > 1 else real)  # the boundary alone is no feature
        return torch.cat(ids, dim=1), torch.cat(keep, dim=1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bucket ids, per-occurrence weights) such that summing weight * row over a text's
        occurrences gives its L2-normalised sublinear TF-IDF vector times W."""
        ids, keep = self.ngram_ids(x)
        same = (ids.unsqueeze(2) == ids.unsqueeze(1)) & keep.unsqueeze(1)
        count = same.sum(2).clamp(min=1).to(torch.float32)  # occurrences of this bucket in the text
        tfidf = (1.0 + torch.log(count)) * self.idf[ids]  # one bucket's value, shared by its occurrences
        occ = keep.to(torch.float32) / count  # each occurrence carries 1/count of its bucket's value
        norm = torch.sqrt((occ * tfidf.square()).sum(1, keepdim=True)).clamp(min=1e-12)
        return ids, occ * tfidf / norm

    def logits_from(self, ids: torch.Tensor, weights: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(ids, weight, per_sample_weights=weights, mode="sum") + bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, weights = self.features(x)
        return self.logits_from(ids, weights, self.weight, self.bias)

    @torch.no_grad()
    def set_idf(self, x: torch.Tensor) -> None:
        """Smoothed IDF from the training texts: ln((1 + n) / (1 + df)) + 1."""
        ids, keep = self.ngram_ids(x)
        rows = torch.arange(len(ids)).unsqueeze(1).expand_as(ids)
        pairs = torch.unique(rows[keep] * self.buckets + ids[keep])  # each (text, bucket) once
        df = torch.bincount(pairs % self.buckets, minlength=self.buckets).to(torch.float32)
        self.idf.copy_(torch.log((1.0 + len(ids)) / (1.0 + df)) + 1.0)

    @torch.no_grad()
    def batched_features(self, x: torch.Tensor, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [self.features(x[i:i + batch]) for i in range(0, len(x), batch)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def fit_lbfgs(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                  c_grid: Sequence[float] = (1.0, 10.0, 100.0), max_iter: int = 500) -> dict[str, float]:
        """Minimise mean cross-entropy + |W|^2 / (2 C n) (scikit-learn's objective divided by C n) for each
        C, keep the one with the best validation accuracy (then loss). Host tensors; returns the choice."""
        self.set_idf(train[0])
        f_train, f_val = self.batched_features(train[0]), self.batched_features(val[0])
        # Only the buckets seen in training can get weight: solve over those, as compact columns.
        used, compact = torch.unique(f_train[0][f_train[1] != 0], return_inverse=True)
        ids = torch.zeros_like(f_train[0])
        ids[f_train[1] != 0] = compact
        x, xt = _csr_pair(ids, f_train[1], len(used))
        n, k = len(train[1]), self.weight.shape[1]
        best: tuple | None = None
        for c in c_grid:
            wu = torch.zeros(len(used), k, requires_grad=True)
            b = torch.zeros(k, requires_grad=True)
            opt = torch.optim.LBFGS([wu, b], lr=1.0, max_iter=max_iter, history_size=20,
                                    tolerance_grad=1e-6, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                logits = _SparseRows.apply(wu, x, xt) + b
                loss = F.cross_entropy(logits, train[1]) + wu.square().sum() / (2 * c * n)
                loss.backward()
                return loss

            opt.step(closure)
            w = torch.zeros(self.buckets, k).index_copy_(0, used, wu.detach())
            with torch.no_grad():
                logits = self.logits_from(*f_val, w, b)
                score = (float((logits.argmax(1) == val[1]).float().mean()), -float(F.cross_entropy(logits, val[1])))
            if best is None or score > best[0]:
                best = (score, c, w.detach(), b.detach())
        (acc, neg_loss), c, w, b = best
        self.weight.copy_(w)
        self.bias.copy_(b)
        return {"C": float(c), "val_accuracy": acc, "val_loss": -neg_loss}



def _csr_pair(ids: torch.Tensor, weights: torch.Tensor, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The texts' TF-IDF vectors as a CSR matrix [N, columns] (a bucket's occurrences summed) and its
    transpose, also CSR: both products of the fit's gradient step are then fast sparse-dense ones."""
    rows = torch.arange(len(ids)).unsqueeze(1).expand_as(ids)
    keep = weights != 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse", category=UserWarning)  # CSR is marked beta
        coo = torch.sparse_coo_tensor(torch.stack([rows[keep], ids[keep]]), weights[keep], (len(ids), columns),
                                      check_invariants=False).coalesce()
        return coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr()


class _SparseRows(torch.autograd.Function):
    """x @ w with the gradient xt @ grad, xt kept ready as CSR."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, x: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        ctx.xt = xt
        return x @ w

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.xt @ grad, None, None
