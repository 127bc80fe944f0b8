"""text_service's n-gram TF-IDF logistic regression: its features, its L-BFGS fit, how it mixes
with the encoder, saving and loading, and that versions saved without it still load."""
from __future__ import annotations

import torch

from unified_pipeline.models import text_transformer as T
from unified_pipeline.models.base import BaseModel
from unified_pipeline.models.hashed_tfidf import HashedTfidfLinear, case_fold_table

META = {"vocab": ["<pad>", "<unk>", "a", "b", "c", "d", "A"], "classes": ["no", "yes"]}
SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "ngram_buckets": 256, "linear_ngram_buckets": 4096}


def _texts(n=256, seed=0):
    """Class "yes" when the text holds "ab", "no" when it holds "ba" (ids 2, 3), anywhere: both
    classes have the same characters, so only the order of a pair tells them apart."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(4, 6, (n, 10), generator=gen)  # only c and d
    y = torch.arange(n) % 2
    pos = torch.randint(0, 8, (n,), generator=gen)
    for i in range(n):
        x[i, pos[i]], x[i, pos[i] + 1] = (2, 3) if y[i] else (3, 2)
    x[:, 8 + (torch.arange(n) % 2)] = 0  # some trailing padding
    return x, y


def test_features_are_unit_length_case_folded_and_ignore_padding():
    # Case folds; spaces and punctuation are word boundaries, as padding is.
    assert case_fold_table(["<pad>", "<unk>", "a", "A", ".", " ", "("]).tolist() == [0, 1, 2, 2, 0, 0, 0]
    part = HashedTfidfLinear(7, 2, 4096)
    part.fold.copy_(case_fold_table(META["vocab"]))
    x, _ = _texts(16)
    part.set_idf(x)
    ids, w = part.features(x)
    assert ids.shape == w.shape == (16, 44)  # 10 positions and the end boundary x orders 1..4
    # Each text's vector: sum over occurrences per bucket, then its length.
    dense = torch.zeros(16, 4096).scatter_add_(1, ids, w)
    assert torch.allclose(dense.norm(dim=1), torch.ones(16), atol=1e-5)
    assert dense[0, part.ngram_ids(x[:1])[0][0, 0]] > 0
    upper = x.clone()
    upper[upper == 2] = 6  # "A" for "a": the same features after case folding
    assert torch.allclose(part.features(upper)[1], w)
    padded = torch.cat([x, torch.zeros(16, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        part.weight.normal_()
    assert torch.allclose(part(padded), part(x), atol=1e-5)


def test_lbfgs_fit_learns_an_ngram_rule_that_no_bag_of_characters_can():
    part = HashedTfidfLinear(7, 2, 4096)
    chosen = part.fit_lbfgs(_texts(256, seed=0), _texts(64, seed=2))
    test_x, test_y = _texts(128, seed=1)
    accuracy = (part(test_x).argmax(-1) == test_y).float().mean().item()
    assert accuracy >= 0.95  # chance is 1/2, and so is any bag of single characters
    assert chosen["C"] in (1.0, 10.0, 100.0) and chosen["val_accuracy"] >= 0.95


def test_training_mode_answers_with_the_encoder_alone_and_the_mix_is_chosen_on_val(tmp_path):
    torch.manual_seed(0)
    model = T.build(META, {**SMALL, "linear_ngrams": True, "dropout": 0.0}, 12)  # train mode, same output
    assert model.linear.fold[6] == 2 and float(model.mix) == 0.0
    model.linear.fit_lbfgs(_texts(256, seed=0), _texts(64, seed=2))
    x, y = _texts(64, seed=2)
    model.train()
    assert torch.equal(model(x), model.head(model.encode(x)))  # what the optimizer sees
    model.eval()
    chosen = T.choose_mix(model, (x, y))
    assert float(model.mix) == chosen["mix"] > 0  # a random encoder is worth less than the fitted part
    assert chosen["val_accuracy"] >= chosen["val_accuracy_encoder_alone"]
    expected = T.TextTransformer.mixed(model.head(model.encode(x)), model.linear(x), chosen["mix"])
    assert torch.allclose(model(x), expected, atol=1e-5)
    model.save(tmp_path / "v", extra={})
    loaded = BaseModel.load(tmp_path / "v")
    assert torch.equal(loaded(x), model(x)) and float(loaded.mix) == chosen["mix"]


def test_version_saved_without_the_linear_part_loads(tmp_path):
    model = T.build(META, SMALL, 12)  # the dataclass default: no linear part, as in older versions
    assert model.linear is None
    model.save(tmp_path / "old", extra={})
    assert BaseModel.load(tmp_path / "old").linear is None


def _bundle(flip: bool):
    from unified_pipeline.datasets.base import TensorBundle

    tensors, samples = {}, {}
    for split, (n, seed) in {"train": (256, 0), "val": (96, 1), "test": (96, 2)}.items():
        x, y = _texts(n, seed)
        tensors.update({f"{split}/x": x, f"{split}/y": 1 - y if flip else y})
        samples[split] = [f"{split}-{i}" for i in range(n)]
    meta = {**META, "dataset": "pairs", "kind": "text", "max_len": 10}
    return TensorBundle(tensors=tensors, meta=meta, sidecars={"samples": samples})


def test_a_warm_start_refits_the_ngram_part_on_the_current_data(tmp_path):
    # The parent learned the opposite rule; its encoder may be fine-tuned, but its n-gram part,
    # fitted on the old labels, must not survive into the new version.
    from unified_pipeline.training.job import FitJob
    from unified_pipeline.training.warm_start import WarmStart

    hp = {**SMALL, "linear_ngrams": True, "epochs": 2, "batch_size": 32, "early_stopping_patience": 0}
    parent = tmp_path / "parent"
    T.fit(FitJob("text_service", {"pairs": _bundle(flip=True)}, {}, hp, "cpu", tmp_path / "ck0", parent))
    bundle = _bundle(flip=False)
    ws = WarmStart("text_service/v1", parent, "pairs", frozenset(bundle.sidecars["samples"]["train"][:32]))
    T.fit(FitJob("text_service", {"pairs": bundle}, {}, hp, "cpu", tmp_path / "ck1", tmp_path / "child",
                 warm_start=ws))
    child = BaseModel.load(tmp_path / "child").eval()
    x, y = bundle.tensors["test/x"], bundle.tensors["test/y"]
    with torch.no_grad():
        assert (child.linear_logits(x).argmax(-1) == y).float().mean() >= 0.9
