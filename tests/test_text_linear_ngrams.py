"""text_service's linear n-gram part: starts at zero, sees only real characters, saves and loads,
and versions saved without it still load; on its own it learns an n-gram rule."""
from __future__ import annotations

import torch

from unified_pipeline.models import text_transformer as T
from unified_pipeline.models.base import BaseModel

META = {"vocab": ["<pad>", "<unk>", "a", "b", "c", "d"], "classes": ["no", "yes"]}
SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "ngram_buckets": 256}


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


def test_linear_part_starts_at_zero_ignores_padding_and_round_trips(tmp_path):
    model = T.build(META, {**SMALL, "linear_ngram_scale": 10.0}, 12)
    x, _ = _texts(8)
    assert torch.count_nonzero(model.linear_logits(x)) == 0  # training starts from the encoder alone
    with torch.no_grad():
        model.linear_ngrams.weight.normal_()
        model.linear_chars.weight.normal_()
    model.eval()
    padded = torch.cat([x, torch.zeros(8, 2, dtype=torch.long)], dim=1)
    assert torch.allclose(model(x), model(padded), atol=1e-5)
    model.save(tmp_path / "v", extra={})
    loaded = BaseModel.load(tmp_path / "v")
    assert torch.equal(loaded(x), model(x))


def test_version_saved_without_the_linear_part_loads(tmp_path):
    model = T.build(META, SMALL, 12)  # the dataclass default: no linear part, as in older versions
    assert model.linear_chars is None and model.linear_ngrams is None
    model.save(tmp_path / "old", extra={})
    assert BaseModel.load(tmp_path / "old").linear_ngrams is None


def test_linear_part_alone_learns_an_ngram_rule():
    torch.manual_seed(0)
    model = T.build(META, {**SMALL, "linear_ngram_scale": 10.0}, 12)
    train_x, train_y = _texts(256, seed=0)
    test_x, test_y = _texts(128, seed=1)
    linear = [model.linear_chars.weight, model.linear_ngrams.weight]
    opt = torch.optim.Adam(linear, lr=2e-3)  # the encoder stays at its random start
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model.linear_logits(train_x), train_y).backward()
        opt.step()
    accuracy = (model.linear_logits(test_x).argmax(-1) == test_y).float().mean().item()
    assert accuracy >= 0.95  # chance is 1/2, and so is any bag of single characters
