"""multimodal_service: "does this spoken digit name the same number as this handwritten digit?"

The hybrid concept model reuses the trained vision_service and audio_service encoders (their
classifier heads dropped) and learns only a fusion head over [a, b, |a-b|, a*b]. To show
what reuse buys, fit() also trains the same architecture from scratch with the same budget
(epochs, batch size, learning rate, pairs) and reports it as the baseline.

Pairs come from the SAME split of both datasets (train pairs from train splits, and so on),
half matching and half not, drawn deterministically from the seed. Labels are matched by
meaning: vision "3" and audio "three" are the same key.
"""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from unified_pipeline.errors import ConfigError, DatasetError
from unified_pipeline.models.audio_rnn import AudioRNN, AudioRNNConfig
from unified_pipeline.models.base import BaseModel, register_architecture
from unified_pipeline.models.vision_cnn import VisionCNN, VisionCNNConfig, _bundle, probabilities_to_labels
from unified_pipeline.training.job import FitJob, FitResult

CLASSES = ["no_match", "match"]
BASELINE_NAME = "same architecture from scratch"
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}

DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "batch_size": 64,
    "learning_rate": 2e-3,
    "weight_decay": 1e-4,
    "early_stopping_patience": 0,
    "pairs_train": 3000,
    "pairs_eval": 1000,
    "fusion_dim": 64,
    "hidden": 128,
    "dropout": 0.1,
}


@dataclass
class FusionConfig:
    vision: dict = field(default_factory=dict)  # VisionCNNConfig fields
    audio: dict = field(default_factory=dict)  # AudioRNNConfig fields
    fusion_dim: int = 64
    hidden: int = 128
    dropout: float = 0.1
    freeze_encoders: bool = True


@register_architecture("multimodal_fusion")
class FusionModel(BaseModel):
    config_cls = FusionConfig

    def __init__(self, config: FusionConfig):
        super().__init__(config)
        self.vision = VisionCNN(VisionCNNConfig(**config.vision))
        self.audio = AudioRNN(AudioRNNConfig(**config.audio))
        self.vision.head = nn.Identity()  # encoders only: the class heads of the services are not used
        self.audio.head = nn.Identity()
        p = config.fusion_dim
        self.proj_v = nn.Linear(self.vision.embedding_dim, p)
        self.proj_a = nn.Linear(self.audio.embedding_dim, p)
        self.embedding_dim = 4 * p
        self.head = nn.Sequential(nn.LayerNorm(4 * p), nn.Linear(4 * p, config.hidden), nn.GELU(),
                                  nn.Dropout(config.dropout), nn.Linear(config.hidden, 2))
        if config.freeze_encoders:
            for enc in (self.vision, self.audio):
                enc.requires_grad_(False)

    def train(self, mode: bool = True) -> "FusionModel":
        super().train(mode)
        if self.config.freeze_encoders:  # frozen encoders keep their BatchNorm statistics and no dropout
            self.vision.eval()
            self.audio.eval()
        return self

    def encode(self, image: torch.Tensor, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        a = self.proj_v(self.vision.encode(image))
        b = self.proj_a(self.audio.encode(mel, lengths))
        return torch.cat([a, b, (a - b).abs(), a * b], dim=1)

    def forward(self, image: torch.Tensor, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(image, mel, lengths))


def label_key(label: str) -> str:
    """Meaning of a class name: "3", "three" and "Three" all become "3"; other names lower-cased."""
    text = str(label).strip().lower()
    if text in NUMBER_WORDS:
        return str(NUMBER_WORDS.index(text))
    return str(int(text)) if text.isdigit() else text


def make_pairs(yv: torch.Tensor, v_classes: list[str], ya: torch.Tensor, a_classes: list[str],
               n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vision index, audio index, match 0/1) for n pairs, half matching, over keys both sides share."""
    v_keys = [label_key(v_classes[int(i)]) for i in yv]
    a_keys = [label_key(a_classes[int(i)]) for i in ya]
    shared = sorted(set(v_keys) & set(a_keys))
    if not shared:
        raise DatasetError(f"multimodal_service: no class shared by vision {sorted(set(v_keys))} "
                           f"and audio {sorted(set(a_keys))} in this split")
    by_v = {k: torch.tensor([i for i, x in enumerate(v_keys) if x == k]) for k in shared}
    by_a = {k: torch.tensor([i for i, x in enumerate(a_keys) if x == k]) for k in shared}
    g = torch.Generator().manual_seed(seed)
    vi, ai, match = [], [], []
    for p in range(n):
        positive = p % 2 == 0 or len(shared) == 1
        k = shared[int(torch.randint(len(shared), (1,), generator=g))]
        if positive:
            k2 = k
        else:  # a different key, uniformly among the others
            k2 = shared[(shared.index(k) + 1 + int(torch.randint(len(shared) - 1, (1,), generator=g))) % len(shared)]
        vi.append(int(by_v[k][torch.randint(len(by_v[k]), (1,), generator=g)]))
        ai.append(int(by_a[k2][torch.randint(len(by_a[k2]), (1,), generator=g)]))
        match.append(int(positive))
    return torch.tensor(vi), torch.tensor(ai), torch.tensor(match)


def _upstream(job: FitJob) -> tuple[Path, Path]:
    found: dict[str, Path] = {}
    for name, folder in job.upstream.items():
        arch = BaseModel.read_config(folder).get("architecture")
        if arch in ("vision_cnn", "audio_rnn"):
            found[arch] = Path(folder)
    missing = [a for a in ("vision_cnn", "audio_rnn") if a not in found]
    if missing:
        raise ConfigError(f"multimodal_service: upstream models lack architecture(s) {missing}; got {sorted(job.upstream)}")
    return found["vision_cnn"], found["audio_rnn"]


def _check_compatible(cfg: dict, meta: dict, fields: dict[str, Any], folder: Path) -> None:
    for key, want in fields.items():
        if cfg.get(key) != want:
            raise ConfigError(f"{folder}: upstream encoder was trained with {key}={cfg.get(key)!r} "
                              f"but dataset {meta.get('dataset')!r} has {want!r}")


def _pair_data(vb, ab, job: FitJob) -> dict[str, tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
    data = {}
    for split, offset in SPLIT_OFFSET.items():
        v, a = vb.split(split), ab.split(split)
        if len(v.get("y", [])) == 0 or len(a.get("y", [])) == 0:
            raise DatasetError(f"multimodal_service: split {split!r} is empty in {vb.meta.get('dataset')!r} "
                               f"or {ab.meta.get('dataset')!r}")
        n = int(job.hp("pairs_train") if split == "train" else job.hp("pairs_eval"))
        vi, ai, match = make_pairs(v["y"], vb.meta["classes"], a["y"], ab.meta["classes"], n, job.seed * 10 + offset)
        data[split] = ((v["x"][vi], a["x"][ai], a["lengths"][ai]), match)
    return data


def fit(job: FitJob) -> FitResult:
    from safetensors.torch import load_file

    from unified_pipeline.training.classification import fit_classifier

    job = dataclasses.replace(job, hparams={**DEFAULTS, **job.hparams})
    vb, ab = _bundle(job, "vision"), _bundle(job, "audio")
    v_dir, a_dir = _upstream(job)
    v_cfg, a_cfg = BaseModel.read_config(v_dir), BaseModel.read_config(a_dir)
    _check_compatible(v_cfg["config"], vb.meta, {"in_channels": int(vb.meta.get("channels", 1)),
                                                 "image_size": [int(s) for s in vb.meta["image_size"]]}, v_dir)
    _check_compatible(a_cfg["config"], ab.meta, {"n_mels": int(ab.meta["n_mels"])}, a_dir)
    data = _pair_data(vb, ab, job)
    names = {f.name for f in dataclasses.fields(FusionConfig)}
    head_hp = {k: v for k, v in job.hparams.items() if k in names - {"vision", "audio", "freeze_encoders"}}

    def build(freeze: bool) -> FusionModel:
        return FusionModel(FusionConfig(vision=v_cfg["config"], audio=a_cfg["config"], freeze_encoders=freeze, **head_hp))

    extra = {"vision": {k: v for k, v in v_cfg["extra"].items() if k != "classes"},
             "audio": {k: v for k, v in a_cfg["extra"].items() if k != "classes"},
             "vision_classes": vb.meta["classes"], "audio_classes": ab.meta["classes"],
             "pairs": {s: int(len(d[1])) for s, d in data.items()}}

    # Same budget, random encoders, everything trainable; its artefacts stay out of out_dir.
    torch.manual_seed(job.seed)
    scratch = build(freeze=False)
    with tempfile.TemporaryDirectory(prefix="scratch_") as tmp:
        sub = dataclasses.replace(job, checkpoint_dir=Path(job.checkpoint_dir) / "scratch", out_dir=Path(tmp),
                                  on_epoch=None, control_file=None)
        scratch_result = fit_classifier(sub, scratch, data, classes=CLASSES, extra=extra)
    baseline = {**scratch_result.metrics["test"], "epochs": float(scratch_result.epochs_run),
                "samples_per_s": float(scratch_result.samples_per_s), "wall_time_s": float(scratch_result.wall_time_s),
                "param_count": float(scratch_result.param_count)}
    job.log.info("multimodal_service baseline (%s): test accuracy %.4f", BASELINE_NAME, baseline.get("accuracy", float("nan")))

    torch.manual_seed(job.seed)
    model = build(freeze=True)
    for enc, folder in ((model.vision, v_dir), (model.audio, a_dir)):
        weights = {k: v for k, v in load_file(str(folder / "weights.safetensors")).items() if not k.startswith("head.")}
        enc.load_state_dict(weights)
    sub = dataclasses.replace(job, checkpoint_dir=Path(job.checkpoint_dir) / "transfer")
    result = fit_classifier(sub, model, data, classes=CLASSES, extra=extra, baseline=baseline, baseline_name=BASELINE_NAME)
    result.notes["transfer"] = "encoders loaded from upstream models and frozen; fusion head trained"
    result.notes["upstream"] = {"vision": str(v_dir), "audio": str(a_dir)}
    return result


@torch.no_grad()
def predict(model_dir: Path, inputs: Sequence[tuple[str | Path, str | Path]]) -> list[tuple[str, float]]:
    """(image path, audio path) pairs -> ("match" | "no_match", probability) per pair."""
    from unified_pipeline.models.audio_rnn import load_clips
    from unified_pipeline.models.vision_cnn import load_images

    pairs = list(inputs)
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise DatasetError(f"multimodal_service: input {i} must be (image_path, audio_path), got {pair!r}")
    model = BaseModel.load(model_dir)
    images = load_images([p[0] for p in pairs], model.extra["vision"])
    mel, lengths = load_clips([p[1] for p in pairs], model.extra["audio"])
    return probabilities_to_labels(model(images, mel, lengths), model.extra["classes"])
