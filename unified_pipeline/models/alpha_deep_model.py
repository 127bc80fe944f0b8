"""alpha_deep_model: compresses DeepParameter memory records into small retrievable codes.

Encoder: gist words (mean embedding), keywords (multi-hot), relation triples (mean of
subject+verb+object embeddings) and modality features -> a `code_dim` vector squashed by tanh,
so it quantises to int8 with one fixed scale (1 byte per dimension, nothing stored per code).
Training is a denoising autoencoder: each batch is corrupted (gist words and keywords dropped,
modality noise) and the code must reconstruct the CLEAN keywords, bag of gist words, entity
bag and modality features; an InfoNCE term pulls two corrupted views of a record together,
which is what makes a partial copy find its original. The feedback head predicts (reward,
success) for a (memory, action) pair from the code and an embedding of the action taken: the
reward judges whether that action suited the remembered event, so without the action it is
unpredictable beyond its mean. Neither feedback nor action is an encoder input, so the head
is a real test of what the code carries; `predict_feedback` scores any action for a code.

Headline `recall_at_1`: a corrupted copy of each test record (30% of gist words and keywords
dropped, Gaussian noise of 0.3 feature-std on modalities) retrieves by cosine similarity
among the int8 codes of all test records; chance is 1 / n_test.

Beside the weights, fit stores the int8 code and id of every record (`memory_bank.*`) and the
vocabularies in the config, which is what `predict` needs to answer a raw record query.
"""
from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from unified_pipeline import atomic
from unified_pipeline.errors import ConfigError, DatasetError
from unified_pipeline.models.base import BaseModel, register_architecture
from unified_pipeline.models.spec import ModelSpec
from unified_pipeline.training.classification import fit_with_trainer
from unified_pipeline.training.job import FitJob, FitResult

FIELDS = ("gist", "keywords", "relations", "modalities", "feedback", "action")
# Dataset facts `predict` needs to turn a raw record into the encoder's inputs.
ENCODING_META = ("vocab", "keyword_vocab", "entity_vocab", "verb_vocab", "action_vocab")
MODALITY_ORDER = ("text_confidence", "audio_features", "image_features")  # the memory kind's vector layout
BANK_TENSORS, BANK_IDS = "memory_bank.safetensors", "memory_bank.json"


@dataclass
class AlphaConfig:
    # Sizes the data decides (SPEC.derived).
    vocab_size: int = 2
    keyword_size: int = 1
    entity_size: int = 2
    verb_size: int = 2
    modality_size: int = 1
    action_size: int = 1
    # The code each record is stored as, and the networks around it.
    code_dim: int = 32
    embed_dim: int = 64
    hidden: int = 128
    feedback_layers: int = 1


@dataclass
class AlphaSettings(AlphaConfig):
    # Denoising: the share of words dropped and the noise on the modality vector; loss weights.
    drop_fraction: float = 0.3
    modality_noise: float = 0.3
    contrastive_weight: float = 1.0
    temperature: float = 0.1
    feedback_weight: float = 10.0  # the reward is a (verb, object, action) table: weak weights leave it at the mean


@register_architecture("alpha_deep_model")
class AlphaDeepModel(BaseModel):
    config_cls = AlphaConfig

    def __init__(self, config: AlphaConfig):
        super().__init__(config)
        c = config
        self.word = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=0)
        self.entity = nn.Embedding(c.entity_size, c.embed_dim, padding_idx=0)
        self.verb = nn.Embedding(c.verb_size, c.embed_dim, padding_idx=0)
        self.keyword_in = nn.Linear(c.keyword_size, c.embed_dim)
        self.modality_in = nn.Linear(c.modality_size, c.embed_dim)
        self.encoder = nn.Sequential(nn.Linear(4 * c.embed_dim, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.code_dim))
        self.decoder = nn.Sequential(nn.Linear(c.code_dim, c.hidden), nn.GELU())
        self.keyword_out = nn.Linear(c.hidden, c.keyword_size)
        self.word_out = nn.Linear(c.hidden, c.vocab_size)
        self.entity_out = nn.Linear(c.hidden, c.entity_size)
        self.modality_out = nn.Linear(c.hidden, c.modality_size)
        # One (reward, success) readout per action: the action selects output rows, so every
        # action's value is a separate function of the memory (concatenating an action embedding
        # to the code stayed worse than the mean: the head never learnt the interaction).
        layers = [nn.Linear(c.code_dim, c.hidden), nn.GELU()]
        for _ in range(c.feedback_layers - 1):
            layers += [nn.Linear(c.hidden, c.hidden), nn.GELU()]
        self.feedback_out = nn.Sequential(*layers, nn.Linear(c.hidden, 2 * c.action_size))
        self.register_buffer("modality_mean", torch.zeros(c.modality_size))
        self.register_buffer("modality_std", torch.ones(c.modality_size))

    def encode(self, gist, keywords, relations, modalities) -> torch.Tensor:
        """Codes in [-1, 1] of shape [N, code_dim]."""
        words = self.word(gist).sum(1) / (gist != 0).sum(1, keepdim=True).clamp_min(1)
        present = (relations[..., 0] != 0).unsqueeze(-1).float()
        triples = self.entity(relations[..., 0]) + self.verb(relations[..., 1]) + self.entity(relations[..., 2])
        rel = (triples * present).sum(1) / present.sum(1).clamp_min(1)
        mods = self.modality_in((modalities - self.modality_mean) / self.modality_std)
        feats = torch.cat([words, self.keyword_in(keywords), rel, mods], -1)
        return torch.tanh(self.encoder(feats))

    def decode(self, code):
        h = self.decoder(code)
        return {"keywords": self.keyword_out(h), "words": self.word_out(h), "entities": self.entity_out(h),
                "modalities": self.modality_out(h)}

    def feedback(self, code: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """[N, 2]: reward and success logit for taking `action` [N] on the memories `code` [N, code_dim]."""
        per_action = self.feedback_out(code).view(len(code), self.config.action_size, 2)
        return per_action[torch.arange(len(code), device=code.device), action]


def corrupt(batch, drop: float, noise: float, model: AlphaDeepModel, generator=None):
    """A partial, noisy copy: drop a share of gist words and keywords, jitter modality features."""
    gist, keywords, relations, modalities = batch[:4]

    def keep(shape):
        return torch.rand(shape, generator=generator, device=gist.device) >= drop

    gist = gist * keep(gist.shape)
    keywords = keywords * keep(keywords.shape)
    jitter = torch.randn(modalities.shape, generator=generator, device=gist.device) * noise * model.modality_std
    return gist, keywords, relations, modalities + jitter


def _bag(ids: torch.Tensor, size: int) -> torch.Tensor:
    bag = torch.zeros(ids.shape[0], size, device=ids.device)
    bag.scatter_(1, ids.reshape(ids.shape[0], -1), 1.0)
    bag[:, 0] = 0.0  # padding id
    return bag


def quantise(codes: torch.Tensor) -> torch.Tensor:
    return torch.round(codes.clamp(-1, 1) * 127).to(torch.int8)


def dequantise(q: torch.Tensor) -> torch.Tensor:
    return q.float() / 127


def reconstruction_loss(model: AlphaDeepModel, code: torch.Tensor, batch, feedback_weight: float = 1.0) -> torch.Tensor:
    """Clean-record targets: keywords, bag of gist words, bag of entities, modality features, feedback."""
    gist, keywords, relations, modalities, feedback, action = batch
    c, out = model.config, model.decode(code)
    rec = (F.binary_cross_entropy_with_logits(out["keywords"], keywords)
           + F.binary_cross_entropy_with_logits(out["words"], _bag(gist, c.vocab_size))
           + F.binary_cross_entropy_with_logits(out["entities"], _bag(relations[..., [0, 2]], c.entity_size))
           + F.mse_loss(out["modalities"], (modalities - model.modality_mean) / model.modality_std))
    pred = model.feedback(code, action)
    fb = F.mse_loss(pred[:, 0], feedback[:, 0]) + F.binary_cross_entropy_with_logits(pred[:, 1], feedback[:, 1])
    return rec + feedback_weight * fb


def make_loss(hp: dict):
    def loss_fn(model: AlphaDeepModel, batch) -> torch.Tensor:
        z1 = model.encode(*corrupt(batch, hp["drop_fraction"], hp["modality_noise"], model))
        z2 = model.encode(*corrupt(batch, hp["drop_fraction"], hp["modality_noise"], model))
        a, b = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
        logits = a @ b.t() / hp["temperature"]
        target = torch.arange(len(a), device=a.device)
        nce = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        return reconstruction_loss(model, z1, batch, hp["feedback_weight"]) + hp["contrastive_weight"] * nce
    return loss_fn


@torch.no_grad()
def encode(model: AlphaDeepModel, records: dict[str, torch.Tensor] | tuple, batch_size: int = 1024) -> torch.Tensor:
    """Float codes [N, code_dim] for memory tensors (dict with gist/keywords/relations/modalities or a tuple)."""
    if isinstance(records, dict):
        missing = [f for f in FIELDS[:4] if f not in records]
        if missing:
            raise ConfigError(f"encode: memory tensors lack field(s) {missing}")
        records = tuple(records[f] for f in FIELDS[:4])
    dev = model.modality_mean.device
    parts = [model.encode(*(t[i:i + batch_size].to(dev) for t in records[:4]))
             for i in range(0, len(records[0]), batch_size)]
    return torch.cat(parts)


@torch.no_grad()
def predict_feedback(model: AlphaDeepModel, codes: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
    """Expected (reward, success probability) for codes [N, code_dim] (float or int8).

    With `actions` [N] one pair per memory, [N, 2]; without, every action: [N, action_size, 2]."""
    dev = model.modality_mean.device
    codes = (dequantise(codes) if codes.dtype == torch.int8 else codes).float().to(dev)
    if actions is None:
        k = model.config.action_size
        every = torch.arange(k, device=dev).repeat(len(codes))
        return predict_feedback(model, codes.repeat_interleave(k, 0), every).view(len(codes), k, 2)
    actions = actions.to(dev)
    if actions.shape != codes.shape[:1] or (len(actions) and int(actions.max()) >= model.config.action_size):
        raise ConfigError(f"predict_feedback: actions must be [N={len(codes)}] ids below {model.config.action_size}")
    out = model.feedback(codes, actions)
    return torch.stack([out[:, 0], torch.sigmoid(out[:, 1])], 1)


@torch.no_grad()
def nearest(model: AlphaDeepModel, query, memory, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine similarities, indices), each [Q, k], of the nearest memory codes for each query.

    `query` and `memory` are memory tensors (dict/tuple) or already-computed int8/float codes;
    tensors are quantised to int8 first, as they would be stored."""
    def codes(x):
        if isinstance(x, torch.Tensor):
            return dequantise(x) if x.dtype == torch.int8 else x
        return dequantise(quantise(encode(model, x)))
    q, m = F.normalize(codes(query).float(), dim=-1), F.normalize(codes(memory).float(), dim=-1)
    top = (q @ m.t().to(q.device)).topk(min(k, m.shape[0]), dim=-1)
    return top.values, top.indices


def retrieve(model: AlphaDeepModel, query, memory, k: int = 1) -> torch.Tensor:
    """Indices [Q, k] of the nearest memory codes (cosine over int8 codes) for each query."""
    return nearest(model, query, memory, k)[1]


def rebuilt_json_bytes(meta: dict, data: tuple) -> float:
    """Mean zlib size of each record re-serialised as DeepParameter-shaped JSON from its tensors.

    Timestamps, ids and the original summary punctuation are gone from the tensors, so this is
    a lower bound on the size of the original JSON record."""
    vocab, kw, ent, verb, acts = (meta[k] for k in ("vocab", "keyword_vocab", "entity_vocab", "verb_vocab",
                                                   "action_vocab"))
    gist, keywords, relations, modalities, feedback, action = data
    sizes = []
    for i in range(len(gist)):
        rec = {"base_gist": {"summary": " ".join(vocab[j] for j in gist[i].tolist() if j),
                             "keywords": [kw[j] for j in torch.nonzero(keywords[i]).flatten().tolist()]},
               "relational_context": {"relations": [{"subject": ent[s], "verb": verb[v], "object": ent[o]}
                                                    for s, v, o in relations[i].tolist() if s]},
               "modalities": [round(float(v), 4) for v in modalities[i]],
               "action_feedback": {"action": acts[int(action[i])], "reward": round(float(feedback[i, 0]), 4),
                                   "success": bool(feedback[i, 1] > 0.5)}}
        sizes.append(len(zlib.compress(json.dumps(rec).encode("utf-8"), 9)))
    return sum(sizes) / max(len(sizes), 1)


def make_metric(hp: dict, feedback_mean: torch.Tensor, json_bytes: float | None = None):
    def metric_fn(model: AlphaDeepModel, data) -> dict[str, float]:
        # fp32 whatever the training precision: the codes, the cosine ranking and so recall@k (the
        # headline metric and the best-epoch choice) are then exactly what `predict` computes.
        with torch.autocast(data[0].device.type, enabled=False):
            return _metrics(model, data)

    def _metrics(model: AlphaDeepModel, data) -> dict[str, float]:
        model.eval()
        gen = torch.Generator(device=data[0].device).manual_seed(1234)  # same queries every epoch
        memory = quantise(encode(model, data))
        query = quantise(encode(model, corrupt(data, hp["drop_fraction"], hp["modality_noise"], model, gen)))
        top = retrieve(model, query, memory, k=5)
        truth = torch.arange(len(top), device=top.device).unsqueeze(1)
        q_float = encode(model, corrupt(data, hp["drop_fraction"], hp["modality_noise"], model,
                                        torch.Generator(device=data[0].device).manual_seed(1234)))
        top_float = retrieve(model, q_float, encode(model, data), k=1)
        # Feedback from the stored int8 codes: what a consumer of the memory would have.
        pred = predict_feedback(model, memory, data[5])
        fb = data[4]
        mse = ((pred - fb) ** 2).mean(0)
        base = ((feedback_mean.to(fb.device) - fb) ** 2).mean(0)
        m = {"loss": float(reconstruction_loss(model, encode(model, data), data)),
             "recall_at_1": float((top[:, :1] == truth).any(1).float().mean()),
             "recall_at_5": float((top == truth).any(1).float().mean()),
             "recall_at_1_float": float((top_float == truth[:, :1]).float().mean()),
             "chance_recall_at_1": 1.0 / len(top),
             "feedback_mse": float(mse.mean()), "feedback_baseline_mse": float(base.mean()),
             "feedback_mse_ratio": float(mse.mean() / base.mean().clamp_min(1e-12)),
             "reward_mse": float(mse[0]), "reward_baseline_mse": float(base[0]),
             "success_brier": float(mse[1]), "success_baseline_brier": float(base[1]),
             "bytes_per_code": float(memory.shape[1] * memory.element_size())}
        # Recall saturates at 1.0 on easy data; the loss breaks ties so later, better epochs win.
        m["selection_score"] = m["recall_at_1"] - 1e-3 * m["loss"]
        if json_bytes is not None:
            m["json_zlib_bytes"] = json_bytes
            m["compression_ratio"] = json_bytes / m["bytes_per_code"]
        return m
    return metric_fn


def memory_split(name: str, bundle, split: str) -> tuple[torch.Tensor, ...]:
    t = bundle.split(split)
    missing = [f for f in FIELDS if f not in t]
    if missing:
        raise DatasetError(f"{name}: tensor(s) {[f'{split}/{f}' for f in missing]} missing; have {sorted(bundle.tensors)}")
    n = t["gist"].shape[0]
    expect = {"gist": 2, "keywords": 2, "relations": 3, "modalities": 2, "feedback": 2, "action": 1}
    for f, nd in expect.items():
        if t[f].ndim != nd or t[f].shape[0] != n:
            raise DatasetError(f"{name}: tensor '{split}/{f}' has shape {tuple(t[f].shape)}; expected {nd} dims and {n} rows")
    if t["relations"].shape[-1] != 3 or t["feedback"].shape[-1] != 2:
        raise DatasetError(f"{name}: '{split}/relations' must be [N,R,3] and '{split}/feedback' [N,2]")
    return tuple(t[f] for f in FIELDS)


def config_from_bundle(name: str, bundle, hp: dict) -> AlphaConfig:
    for key in ("vocab", "keyword_vocab", "entity_vocab", "verb_vocab", "action_vocab"):
        if not isinstance(bundle.meta.get(key), list):
            raise DatasetError(f"{name}: meta field {key!r} missing or not a list")
    meta, t = bundle.meta, bundle.tensors
    sizes = {"gist": len(meta["vocab"]), "relations": len(meta["entity_vocab"])}
    for split in ("train", "val", "test"):
        for f, size in sizes.items():
            ids = t[f"{split}/{f}"][..., [0, 2]] if f == "relations" else t[f"{split}/{f}"]
            if ids.numel() and (int(ids.max()) >= size or int(ids.min()) < 0):
                raise DatasetError(f"{name}: tensor '{split}/{f}' has ids outside the meta vocabulary (size {size})")
        verbs = t[f"{split}/relations"][..., 1]
        if verbs.numel() and int(verbs.max()) >= len(meta["verb_vocab"]):
            raise DatasetError(f"{name}: tensor '{split}/relations' has verb ids outside meta 'verb_vocab'")
        actions = t[f"{split}/action"]
        if actions.numel() and (int(actions.max()) >= len(meta["action_vocab"]) or int(actions.min()) < 0):
            raise DatasetError(f"{name}: tensor '{split}/action' has ids outside meta 'action_vocab'")
    return AlphaConfig(vocab_size=len(meta["vocab"]), keyword_size=int(t["train/keywords"].shape[1]),
                       entity_size=len(meta["entity_vocab"]), verb_size=len(meta["verb_vocab"]),
                       modality_size=int(t["train/modalities"].shape[1]),
                       action_size=max(1, len(meta["action_vocab"])), code_dim=int(hp["code_dim"]),
                       embed_dim=int(hp["embed_dim"]), hidden=int(hp["hidden"]),
                       feedback_layers=int(hp["feedback_layers"]))


def fit(job: FitJob) -> FitResult:
    hp = SPEC.resolve(job.hparams)
    if len(job.datasets) != 1:
        raise ConfigError(f"alpha_deep_model trains on one memory dataset, got {sorted(job.datasets)}")
    name, bundle = next(iter(job.datasets.items()))
    train, val, test = (memory_split(name, bundle, s) for s in ("train", "val", "test"))
    torch.manual_seed(job.seed)
    model = AlphaDeepModel(config_from_bundle(name, bundle, hp))
    model.modality_mean.copy_(train[3].mean(0))
    model.modality_std.copy_(train[3].std(0).clamp_min(1e-6))
    feedback_mean = train[4].mean(0)
    # The JSON size is a fact of the test records; every evaluation reports it beside bytes_per_code.
    json_bytes = rebuilt_json_bytes(bundle.meta, test)
    metric_fn = make_metric(hp, feedback_mean, json_bytes)
    base_mse = ((feedback_mean - test[4]) ** 2).mean(0)
    baseline = {"recall_at_1": 1.0 / max(len(test[0]), 1), "feedback_mse": float(base_mse.mean()),
                "reward_mse": float(base_mse[0]), "bytes_per_code": json_bytes}
    job = dataclasses.replace(job, hparams=hp)
    vocabularies = {k: bundle.meta.get(k) for k in ENCODING_META}
    vocabularies["modality_layout"] = modality_layout(bundle.meta.get("modality_dims") or {})
    result = fit_with_trainer(job, model, train, val, test, make_loss(hp), metric_fn, "selection_score", True,
                              extra={"dataset": name, "code_dim": int(hp["code_dim"]),
                                     "quantisation": "int8, scale 1/127", **vocabularies},
                              baseline=baseline,
                              baseline_name="chance recall, train-mean feedback, zlib JSON record bytes")
    write_memory_bank(job.out_dir, model, bundle, (train, val, test))
    return result


def modality_layout(dims: dict[str, int]) -> list[list]:
    """[[name, size], ...] in the modality vector's order (JSON files sort the meta's keys)."""
    rank = {name: i for i, name in enumerate(MODALITY_ORDER)}
    return [[k, int(v)] for k, v in sorted(dims.items(), key=lambda kv: rank.get(kv[0], len(rank)))]


def write_memory_bank(out_dir, model: AlphaDeepModel, bundle, splits) -> None:
    """Int8 codes of every record (train, val, test) and their ids: what `predict` searches."""
    codes, ids = [], []
    named = bundle.sidecars.get("records") or {}
    for split, data in zip(("train", "val", "test"), splits):
        codes.append(quantise(encode(model, data)).cpu())
        split_ids = named.get(split) if isinstance(named, dict) else None
        ids += split_ids if isinstance(split_ids, list) and len(split_ids) == len(data[0]) else \
            [f"{split}:{i}" for i in range(len(data[0]))]
    atomic.save_safetensors(out_dir / BANK_TENSORS, {"codes": torch.cat(codes)})
    atomic.write_json(out_dir / BANK_IDS, ids)


# memory_queries.SPEC adds predict (the registry names that module).
SPEC = ModelSpec(
    settings=AlphaSettings, fit=fit,
    derived=("vocab_size", "keyword_size", "entity_size", "verb_size", "modality_size", "action_size"),
    trainer_defaults={"epochs": 120, "batch_size": 128, "learning_rate": 3e-3, "weight_decay": 1e-4},
)
