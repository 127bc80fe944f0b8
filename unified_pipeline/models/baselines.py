"""Classical baselines that a neural model must beat on the same split.

Text: character n-grams (1-4, word-boundary aware) weighted by TF-IDF feeding a multinomial
logistic regression, the standard strong baseline for short-string language identification.
The regularisation strength is picked on the validation split, never on test.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from unified_pipeline.errors import DatasetError

TEXT_BASELINE_NAME = "char 1-4-gram TF-IDF + logistic regression"


def _check(texts: Sequence[str], labels: Sequence[int], split: str) -> None:
    if len(texts) != len(labels):
        raise DatasetError(f"texts.json split {split!r}: {len(texts)} texts but {len(labels)} labels")


def char_ngram_baseline(
    texts: dict[str, Sequence[str]],
    labels: dict[str, Sequence[int]],
    *,
    c_grid: Sequence[float] = (1.0, 10.0, 100.0),
    seed: int = 0,
) -> dict[str, float]:
    """Fit on texts["train"], choose C on "val", report accuracy on "val" and "test"."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    for split in ("train", "val", "test"):
        _check(texts[split], labels[split], split)
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, min_df=1)
    x_train = vec.fit_transform(texts["train"])
    x_val, x_test = vec.transform(texts["val"]), vec.transform(texts["test"])
    y_train, y_val, y_test = (np.asarray(labels[s]) for s in ("train", "val", "test"))
    best: tuple[float, float, LogisticRegression] | None = None
    for c in c_grid:
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        clf.fit(x_train, y_train)
        acc = float((clf.predict(x_val) == y_val).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    val_acc, c, clf = best
    test_acc = float((clf.predict(x_test) == y_test).mean())
    return {"accuracy": test_acc, "val_accuracy": val_acc, "C": float(c), "features": float(x_train.shape[1])}
