"""text_service against the character n-gram TF-IDF + logistic regression baseline it reports,
on the sample number words (every written form of 0-9 in the sample languages), same split:
the full model must score strictly higher on test, not merely tie."""
from __future__ import annotations

import csv
import importlib
import logging

from unified_pipeline.datasets.base import PreprocessConfig
from unified_pipeline.hashing import dataset_version
from unified_pipeline.models import text_transformer
from unified_pipeline.training.job import FitJob

SMALL = {"linear_ngrams": True, "d_model": 32, "n_heads": 2, "n_layers": 1, "ngram_buckets": 4096, "linear_ngram_buckets": 65536,
         "epochs": 6, "batch_size": 32, "learning_rate": 3e-3, "checkpoint_interval": 0}


def test_text_service_beats_the_ngram_baseline_on_number_words(tmp_path):
    from unified_pipeline.datasets.samples.number_words import number_word_rows

    root = tmp_path / "raw" / "number_words"
    root.mkdir(parents=True)
    with open(root / "data.csv", "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([("text", "label"), *number_word_rows()])
    lane = importlib.import_module("unified_pipeline.datasets.text").KIND
    bundle = lane.build_tensors(root, lane.build_manifest(root, dataset_version(root)[1]),
                                PreprocessConfig(max_text_len="auto"))
    job = FitJob(model="text_service", datasets={"number_words": bundle}, upstream={}, hparams=SMALL, device="cpu",
                 checkpoint_dir=tmp_path / "ckpt", out_dir=tmp_path / "out", seed=0, log=logging.getLogger("test"))
    result = text_transformer.fit(job)
    ours, baseline = result.metrics["test"]["accuracy"], result.metrics["baseline"]["accuracy"]
    assert baseline > 0.9  # the baseline is a strong one here, not a straw man
    assert ours > baseline, f"text_service {ours:.4f} does not beat the n-gram baseline {baseline:.4f}"
    assert result.notes["calibrated_on_val"]["mix"] in text_transformer.MIX_GRID
