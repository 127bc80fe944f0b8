"""text_service: character-level Transformer encoder classifier beside a hashed n-gram TF-IDF
logistic regression.

Token + learned position + hashed character n-gram embeddings, pre-norm encoder layers with a
key padding mask, and mean pooling over non-pad tokens (beside the pooled input embeddings).
With `linear_ngrams` (on in the default preset), a logistic regression over hashed, case-folded character
n-gram TF-IDF features (models/hashed_tfidf.py) is fitted first, by L-BFGS, and frozen; the
encoder and its head then train on their own loss, so the encoder learns what it would alone
(the multimodal model reuses it without the head). Prediction mixes the two parts'
log-probabilities with a weight chosen on the validation split. fit() also scores a TF-IDF char
n-gram logistic regression on the same split (models/baselines.py) so both are reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unified_pipeline.errors import ConfigError, DatasetError
from unified_pipeline.models.base import BaseModel, register_architecture
from unified_pipeline.models.inputs import classifier_job, probabilities_to_labels
from unified_pipeline.models.spec import ModelSpec, config_from
from unified_pipeline.training.job import FitJob, FitResult

PAD, UNK = 0, 1

MIX_GRID = tuple(i / 10 for i in range(11))  # weight of the linear part's log-probabilities


@dataclass
class TextTransformerConfig:
    vocab_size: int = 64  # from the data, with max_len and num_classes (SPEC.derived)
    max_len: int = 64
    num_classes: int = 2
    # Encoder: width, heads, depth, feed-forward width as a multiple of d_model.
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    ff_mult: int = 2
    conv_kernel: int = 0  # >0 adds a depthwise convolution over neighbouring characters
    ngram_orders: list[int] = field(default_factory=lambda: [2, 3, 4])  # hashed char n-grams, both directions
    ngram_buckets: int = 32768  # 0 disables the hashed n-gram embeddings
    dropout: float = 0.1
    wide: bool = True  # also pool the input embeddings (bag of n-grams) beside the encoder output
    # The hashed n-gram TF-IDF logistic regression beside the encoder: on a few thousand texts it
    # is the strong part, and the encoder adds what word order and context give. Off here so
    # versions saved without it load; the default preset turns it on.
    linear_ngrams: bool = False
    linear_ngram_buckets: int = 262144


def trim_padding(x: torch.Tensor) -> torch.Tensor:
    """Drop columns that are padding in every row: short strings cost short sequences.

    Only for host tensors. On an accelerator the width would be read back every step (a sync,
    and a new shape per batch), so there the padding stays and the key padding mask hides it;
    the logits are the same either way."""
    used = (x != PAD).any(0).nonzero()
    return x[:, : int(used.max()) + 1 if len(used) else 1]


@register_architecture("text_transformer")
class TextTransformer(BaseModel):
    config_cls = TextTransformerConfig

    def __init__(self, config: TextTransformerConfig):
        super().__init__(config)
        if config.d_model % config.n_heads:
            raise ConfigError(f"text_service: d_model {config.d_model} must be divisible by n_heads {config.n_heads}")
        d = config.d_model
        self.tok = nn.Embedding(config.vocab_size, d, padding_idx=PAD)
        self.pos = nn.Embedding(config.max_len, d)
        self.ngrams = nn.Embedding(config.ngram_buckets, d) if config.ngram_buckets > 0 else None
        k = config.conv_kernel
        self.ngram = nn.Conv1d(d, d, k, padding=k // 2, groups=d) if k > 0 else None
        layer = nn.TransformerEncoderLayer(d, config.n_heads, config.ff_mult * d, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(config.dropout)  # on the summed embeddings: n-gram features overfit first
        self.embedding_dim = 2 * d if config.wide else d
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(self.embedding_dim, config.num_classes))
        self.linear = None
        if config.linear_ngrams:
            from unified_pipeline.models.hashed_tfidf import HashedTfidfLinear

            self.linear = HashedTfidfLinear(config.vocab_size, config.num_classes, config.linear_ngram_buckets)
            # 0 until choose_mix sets it after training: the validation scores that pick the best
            # epoch and stop early are then the encoder's own, so the encoder trains as it would alone.
            self.register_buffer("mix", torch.tensor(0.0))

    def _ngram_ids(self, x: torch.Tensor) -> torch.Tensor:
        """Hash the n-grams ending (and starting) at each position into buckets: [N, L, 2 * orders].

        Padding (id 0) outside the string acts as the word-boundary marker, like char_wb n-grams.
        Hashing token ids keeps it vocabulary-agnostic and adds no preprocessing step.
        """
        ids = []
        for direction in (1, -1):
            for n in self.config.ngram_orders:
                # Read each n-gram in text order whichever end it is anchored at, so both anchors share a bucket.
                offsets = range(n - 1, -1, -1) if direction > 0 else range(n)
                h = torch.full_like(x, n)
                for j in offsets:
                    shifted = torch.roll(x, shifts=direction * j, dims=1)
                    if j:
                        edge = slice(0, j) if direction > 0 else slice(x.shape[1] - j, None)
                        shifted[:, edge] = 0
                    h = (h * 1000003 + shifted + 1) % 2_147_483_647
                ids.append(h % self.config.ngram_buckets)
        return torch.stack(ids, dim=-1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids [N,L] (0 = pad) -> embedding [N, d_model]."""
        x = x[:, : self.config.max_len]
        if x.device.type == "cpu":
            x = trim_padding(x)
        pad = x == PAD
        pad[:, 0] &= ~pad.all(1)  # an all-pad row keeps one attendable slot instead of NaNs
        h = self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device))
        if self.ngrams is not None:
            h = h + self.ngrams(self._ngram_ids(x)).mean(dim=2)
        if self.ngram is not None:
            h = h + self.ngram(h.masked_fill(pad.unsqueeze(-1), 0.0).transpose(1, 2)).transpose(1, 2)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        count = keep.sum(1).clamp(min=1.0)
        deep = self.norm(self.encoder(self.drop(h), src_key_padding_mask=pad))
        pooled = (deep * keep).sum(1) / count
        if self.config.wide:
            # Skip path: the averaged n-gram embeddings are a linear bag-of-n-grams signal the head can use directly.
            pooled = torch.cat([pooled, (h * keep).sum(1) / count], dim=1)
        return pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; with the linear part, log-probabilities of both parts mixed. In training mode
        only the encoder's head answers: the linear part is fitted beforehand, and an encoder
        trained to correct it would learn less of its own (worse features for reuse)."""
        logits = self.head(self.encode(x))
        if self.linear is None or self.training:
            return logits
        return self.mixed(logits, self.linear_logits(x), self.mix)

    def linear_logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, : self.config.max_len]
        if x.device.type == "cpu":
            x = trim_padding(x)
        return self.linear(x)

    @staticmethod
    def mixed(encoder_logits: torch.Tensor, linear_logits: torch.Tensor, mix: torch.Tensor | float) -> torch.Tensor:
        return ((1 - mix) * torch.log_softmax(encoder_logits.float(), -1)
                + mix * torch.log_softmax(linear_logits.float(), -1))


def build(meta: dict[str, Any], hp: dict[str, Any], max_len: int | None = None) -> TextTransformer:
    """`max_len` defaults to the data lane's `meta["max_len"]`."""
    cfg = config_from(TextTransformerConfig, hp, vocab_size=len(meta["vocab"]), num_classes=len(meta["classes"]),
                      max_len=int(max_len or meta.get("max_len") or 0))
    if cfg.max_len < 1:
        raise ConfigError(f"text_service: dataset {meta.get('dataset')!r} meta has no max_len")
    model = TextTransformer(cfg)
    if model.linear is not None:
        from unified_pipeline.models.hashed_tfidf import case_fold_table

        model.linear.fold.copy_(case_fold_table(list(meta["vocab"])))
    return model


@torch.no_grad()
def choose_mix(model: TextTransformer, val: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Set the linear part's weight that scores best on the validation split (accuracy, then loss)."""
    from unified_pipeline.training.classification import batched_logits

    was_training = model.training
    model.eval()
    x, y = val[0], val[-1].cpu().long()
    enc = batched_logits(model.head, (batched_logits(_Encoder(model), (x,)),))
    lin = batched_logits(_Linear(model), (x,))
    scores = []
    for mix in MIX_GRID:
        logp = TextTransformer.mixed(enc, lin, mix)
        scores.append(((logp.argmax(-1) == y).float().mean().item(), -F.nll_loss(logp, y).item(), mix))
    accuracy, neg_loss, mix = max(scores)
    model.mix.fill_(mix)
    model.train(was_training)
    return {"mix": mix, "val_accuracy": accuracy, "val_loss": -neg_loss,
            "val_accuracy_encoder_alone": scores[0][0], "val_accuracy_linear_alone": scores[-1][0]}


class _Encoder(nn.Module):
    def __init__(self, model: TextTransformer):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x)


class _Linear(_Encoder):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.linear_logits(x)


def fit(job: FitJob) -> FitResult:
    from unified_pipeline.models.baselines import TEXT_BASELINE_NAME, char_ngram_baseline
    from unified_pipeline.training.classification import fit_classifier

    job, bundle, data = classifier_job(job, SPEC, "text", ("x",))
    meta = bundle.meta
    texts = bundle.sidecars.get("texts")
    baseline = None
    if texts is not None:
        missing = [s for s in data if s not in texts]
        if missing:
            raise DatasetError(f"dataset {meta.get('dataset')!r}: texts.json lacks split(s) {missing}")
        baseline = char_ngram_baseline(texts, {s: data[s][1].tolist() for s in data}, seed=job.seed)
        job.log.info("text baseline (%s): test accuracy %.4f", TEXT_BASELINE_NAME, baseline["accuracy"])
    torch.manual_seed(job.seed)
    max_len = int(meta.get("max_len") or data["train"][0][0].shape[1])
    model = build(meta, job.hparams, max_len)
    calibrate = None
    if model.linear is not None:
        train_rows, val_rows = (data["train"][0][0], data["train"][1]), (data["val"][0][0], data["val"][1])

        # The encoder never reads the linear part while it trains, so the part is fitted once the
        # encoder is done: a warm start (which loads its parent's weights before training) then
        # keeps the parent's encoder but never the parent's n-gram weights, fitted on older data.
        def calibrate(trained: TextTransformer, val: tuple[torch.Tensor, ...]) -> dict[str, float]:
            trained.mix.fill_(0.0)
            device = trained.mix.device
            chosen = trained.linear.to("cpu").fit_lbfgs(train_rows, val_rows)  # a host solver
            trained.linear.to(device)
            job.log.info("text_service linear n-gram part: C %g, val accuracy %.4f", chosen["C"], chosen["val_accuracy"])
            return choose_mix(trained, val)
    extra = {"dataset": meta.get("dataset"), "vocab": list(meta["vocab"]), "max_len": max_len,
             "tokenizer": meta.get("tokenizer", "char")}
    return fit_classifier(job, model, data, classes=list(meta["classes"]), extra=extra,
                          baseline=baseline, baseline_name=TEXT_BASELINE_NAME if baseline else None,
                          calibrate=calibrate)


def encode_texts(texts: Sequence[str], extra: dict[str, Any]) -> torch.Tensor:
    """Strings -> token ids [N, max_len] with the data lane's tokenizer and the saved vocabulary."""
    from unified_pipeline.datasets.text import encode_chars

    if extra.get("tokenizer", "char") != "char":
        raise ConfigError(f"text_service: unsupported tokenizer {extra.get('tokenizer')!r}")
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise DatasetError(f"text_service: input {row} is {type(text).__name__}, expected a string")
    return torch.from_numpy(encode_chars(list(texts), list(extra["vocab"]), int(extra["max_len"])))


@torch.no_grad()
def predict(model_dir: Path, inputs: Sequence[str], top: int = 1) -> list:
    """Strings -> (label, probability) per string."""
    model = BaseModel.load(model_dir)
    return probabilities_to_labels(model(encode_texts(list(inputs), model.extra)), model.extra["classes"], top)


SPEC = ModelSpec(
    settings=TextTransformerConfig, fit=fit, predict=predict, build=build, inputs=("x",),
    derived=("vocab_size", "max_len", "num_classes"), warm_start=True,
    trainer_defaults={"epochs": 12, "batch_size": 64, "learning_rate": 2e-3, "weight_decay": 0.05,
                      "early_stopping_patience": 8},
)
