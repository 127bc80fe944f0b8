"""multimodal_service: "do this handwritten digit, this spoken digit and this written word name one number?"

The hybrid concept model reuses the trained vision_service, audio_service and text_service
encoders (their classifier heads dropped) and learns only a fusion head over each side's
projection plus, for every pair of sides, |a-b| and a*b. The answer needs all three: a
negative changes one or two sides, so no single pair decides. To show what reuse buys, fit()
also trains the same architecture from scratch with the same budget (epochs, batch size,
learning rate, tuples) and reports it as the baseline.

Tuples come from the SAME split of every dataset (train tuples from train splits, and so on),
half matching, drawn deterministically from the seed. Labels are matched by meaning: vision
"3", audio "three" and text "3" (the number-words dataset labels "drei" with "3") share a key.
The written words are tokenised with text_service's own vocabulary, so its encoder reads them
exactly as it reads its training texts.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from unified_pipeline.errors import ConfigError, DatasetError
from unified_pipeline.models.audio_rnn import AudioRNN, AudioRNNConfig
from unified_pipeline.models.base import BaseModel, register_architecture
from unified_pipeline.models.text_transformer import TextTransformer, TextTransformerConfig
from unified_pipeline.models.inputs import one_bundle, probabilities_to_labels
from unified_pipeline.models.spec import ModelSpec
from unified_pipeline.models.vision_cnn import VisionCNN, VisionCNNConfig
from unified_pipeline.training.job import FitJob, FitResult

CLASSES = ["no_match", "match"]
BASELINE_NAME = "same architecture from scratch"
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}
SIDES = ("vision", "audio", "text")  # dataset kind = FusionConfig field = encoder attribute
# Weights of each service that the fusion does not reuse: its classifier parts.
CLASSIFIER_PARTS = {"vision": ("head.",), "audio": ("head.",), "text": ("head.", "linear.", "mix")}
ARCHITECTURES = {"vision": "vision_cnn", "audio": "audio_rnn", "text": "text_transformer"}
INPUT_KEYS = {"vision": "image", "audio": "audio", "text": "text"}  # JSON keys of a predict input


@dataclass
class FusionConfig:
    vision: dict = field(default_factory=dict)  # VisionCNNConfig fields
    audio: dict = field(default_factory=dict)  # AudioRNNConfig fields
    text: dict = field(default_factory=dict)  # TextTransformerConfig fields; empty: a vision+audio model
    fusion_dim: int = 64
    hidden: int = 128
    dropout: float = 0.1
    freeze_encoders: bool = True
    finetune: list = field(default_factory=list)  # sides whose encoder trains even when freeze_encoders


@dataclass
class FusionSettings(FusionConfig):
    pairs_train: int = 3000  # tuples drawn from the train splits
    pairs_eval: int = 1000  # tuples drawn from each of the val and test splits


@register_architecture("multimodal_fusion")
class FusionModel(BaseModel):
    config_cls = FusionConfig
    host_fields = (2,)  # forward(image, mel, lengths, tokens): the audio encoder packs with host lengths
    compile_off_reason = "its audio encoder packs sequences with host lengths"

    def __init__(self, config: FusionConfig):
        super().__init__(config)
        self.vision = VisionCNN(VisionCNNConfig(**config.vision))
        self.audio = AudioRNN(AudioRNNConfig(**config.audio))
        # Versions saved before the text side existed have no text config and still load.
        self.text = TextTransformer(TextTransformerConfig(**config.text)) if config.text else None
        p = config.fusion_dim
        for side in self.sides:
            encoder = getattr(self, side)
            encoder.head = nn.Identity()  # encoders only: the class heads of the services are not used
            setattr(self, _proj(side), nn.Linear(encoder.embedding_dim, p))
        n = len(self.sides)
        self.embedding_dim = (n + n * (n - 1)) * p  # each side, then |a-b| and a*b per pair of sides
        self.head = nn.Sequential(nn.LayerNorm(self.embedding_dim), nn.Linear(self.embedding_dim, config.hidden),
                                  nn.GELU(), nn.Dropout(config.dropout), nn.Linear(config.hidden, 2))
        for side in self.frozen:
            getattr(self, side).requires_grad_(False)

    @property
    def sides(self) -> tuple[str, ...]:
        return SIDES if self.text is not None else SIDES[:2]

    @property
    def frozen(self) -> tuple[str, ...]:
        return tuple(s for s in self.sides if s not in self.config.finetune) if self.config.freeze_encoders else ()

    def train(self, mode: bool = True) -> "FusionModel":
        super().train(mode)
        for side in self.frozen:  # frozen encoders keep their BatchNorm statistics and no dropout
            getattr(self, side).eval()
        return self

    def encode(self, image: torch.Tensor, mel: torch.Tensor, lengths: torch.Tensor,
               tokens: torch.Tensor | None = None) -> torch.Tensor:
        z = [self.proj_v(self.vision.encode(image)), self.proj_a(self.audio.encode(mel, lengths))]
        if self.text is not None:
            if tokens is None:
                raise ConfigError("multimodal_service: this model needs text token ids as well")
            z.append(self.proj_t(self.text.encode(tokens)))
        pairs = list(itertools.combinations(z, 2))
        return torch.cat([*z, *((a - b).abs() for a, b in pairs), *(a * b for a, b in pairs)], dim=1)

    def forward(self, image: torch.Tensor, mel: torch.Tensor, lengths: torch.Tensor,
                tokens: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encode(image, mel, lengths, tokens))


def _proj(side: str) -> str:
    return f"proj_{side[0]}"  # proj_v, proj_a, proj_t: the weight names of saved versions


def label_key(label: str) -> str:
    """Meaning of a class name: "3", "three" and "Three" all become "3"; other names lower-cased."""
    text = str(label).strip().lower()
    if text in NUMBER_WORDS:
        return str(NUMBER_WORDS.index(text))
    return str(int(text)) if text.isdigit() else text


def make_tuples(sides: Sequence[tuple[torch.Tensor, list[str]]], n: int,
                seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One sample index per side and a match flag (1: every side names the same key) for n tuples.

    Half match. A non-matching tuple keeps the key on some sides and gives the others (at least
    one, never all) a different key each, so every side has to be read to answer."""
    index, match, _ = make_tuples_with_changes(sides, n, seed)
    return index, match


def make_tuples_with_changes(sides: Sequence[tuple[torch.Tensor, list[str]]], n: int,
                             seed: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """make_tuples plus, per tuple, a bit mask of the sides given a different key (0: a match)."""
    keys = [[label_key(classes[int(i)]) for i in y] for y, classes in sides]
    shared = sorted(set.intersection(*(set(k) for k in keys)))
    if not shared:
        raise DatasetError("multimodal_service: no class shared by " + " and ".join(
            f"{sorted(set(k))}" for k in keys) + " in this split")
    members = [{k: [i for i, x in enumerate(side) if x == k] for k in shared} for side in keys]
    rng = random.Random(seed)
    m = len(sides)
    index: list[list[int]] = [[] for _ in range(m)]
    match, changes = [], []
    for t in range(n):
        key = rng.choice(shared)
        positive = t % 2 == 0 or len(shared) == 1
        changed = 0 if positive else rng.randrange(1, 2 ** m - 1)  # a proper, non-empty subset of sides
        for s in range(m):
            k = rng.choice([x for x in shared if x != key]) if changed >> s & 1 else key
            index[s].append(rng.choice(members[s][k]))
        match.append(int(positive))
        changes.append(changed)
    return [torch.tensor(ix) for ix in index], torch.tensor(match), torch.tensor(changes)


def _upstream(job: FitJob) -> dict[str, Path]:
    by_arch = {BaseModel.read_config(folder).get("architecture"): Path(folder) for folder in job.upstream.values()}
    missing = [ARCHITECTURES[s] for s in SIDES if ARCHITECTURES[s] not in by_arch]
    if missing:
        raise ConfigError(f"multimodal_service: upstream models lack architecture(s) {missing}; got {sorted(job.upstream)}")
    return {s: by_arch[ARCHITECTURES[s]] for s in SIDES}


def _check_compatible(cfg: dict, meta: dict, fields: dict[str, Any], folder: Path) -> None:
    for key, want in fields.items():
        if cfg.get(key) != want:
            raise ConfigError(f"{folder}: upstream encoder was trained with {key}={cfg.get(key)!r} "
                              f"but dataset {meta.get('dataset')!r} has {want!r}")


def _tokens(tb, split: str, text_extra: dict) -> torch.Tensor:
    from unified_pipeline.models.text_transformer import encode_texts

    texts = (tb.sidecars.get("texts") or {}).get(split)
    if texts is None:
        raise DatasetError(f"multimodal_service: dataset {tb.meta.get('dataset')!r} keeps no texts for split {split!r}")
    return encode_texts(texts, text_extra)


def _tuple_data(bundles: dict, job: FitJob, text_extra: dict
                ) -> tuple[dict[str, tuple[tuple[torch.Tensor, ...], torch.Tensor]], torch.Tensor]:
    """Tuples per split, and for the test tuples which sides differ (make_tuples_with_changes)."""
    data, changes = {}, {}
    for split, offset in SPLIT_OFFSET.items():
        parts = {s: b.split(split) for s, b in bundles.items()}
        empty = [bundles[s].meta.get("dataset") for s, p in parts.items() if len(p.get("y", [])) == 0]
        if empty:
            raise DatasetError(f"multimodal_service: split {split!r} is empty in dataset(s) {empty}")
        n = int(job.hp("pairs_train") if split == "train" else job.hp("pairs_eval"))
        (vi, ai, ti), match, changes[split] = make_tuples_with_changes(
            [(parts[s]["y"], bundles[s].meta["classes"]) for s in SIDES], n, job.seed * 10 + offset)
        v, a = parts["vision"], parts["audio"]
        data[split] = ((v["x"][vi], a["x"][ai], a["lengths"][ai], _tokens(bundles["text"], split, text_extra)[ti]), match)
    return data, changes["test"]


@torch.no_grad()
def accuracy_by_side(model: nn.Module, test: tuple[tuple[torch.Tensor, ...], torch.Tensor],
                     changes: torch.Tensor) -> dict[str, float]:
    """Test accuracy on matching tuples and on tuples where exactly one side differs: a side the
    model cannot read shows up as chance-level accuracy on its own row."""
    from unified_pipeline.training.classification import batched_logits

    model.eval()
    inputs, match = test
    right = batched_logits(model, tuple(inputs)).argmax(-1).cpu() == match
    out = {"accuracy_all_sides_match": right[changes == 0].float().mean().item()}
    for bit, side in enumerate(SIDES):
        alone = changes == 1 << bit
        if alone.any():
            out[f"accuracy_only_{side}_differs"] = right[alone].float().mean().item()
    return out


def fit(job: FitJob) -> FitResult:
    from safetensors.torch import load_file

    from unified_pipeline.training.classification import fit_classifier

    job = dataclasses.replace(job, hparams=SPEC.resolve(job.hparams))
    bundles = {s: one_bundle(job, s) for s in SIDES}
    dirs = _upstream(job)
    cfgs = {s: BaseModel.read_config(d) for s, d in dirs.items()}
    vm, am = bundles["vision"].meta, bundles["audio"].meta
    _check_compatible(cfgs["vision"]["config"], vm, {"in_channels": int(vm.get("channels", 1)),
                                                     "image_size": [int(s) for s in vm["image_size"]]}, dirs["vision"])
    _check_compatible(cfgs["audio"]["config"], am, {"n_mels": int(am["n_mels"])}, dirs["audio"])
    text_extra = {k: v for k, v in cfgs["text"]["extra"].items() if k != "classes"}
    data, test_changes = _tuple_data(bundles, job, text_extra)
    names = {f.name for f in dataclasses.fields(FusionConfig)}
    head_hp = {k: v for k, v in job.hparams.items() if k in names - {*SIDES, "freeze_encoders"}}
    unknown = sorted(set(head_hp.get("finetune", [])) - set(SIDES))
    if unknown:
        raise ConfigError(f"multimodal_service: finetune names unknown side(s) {unknown}; valid: {list(SIDES)}")

    # Encoders only: text_service's n-gram logistic regression beside its encoder is a classifier
    # part, like the heads, and stays behind.
    encoder_cfgs = {s: cfgs[s]["config"] for s in SIDES}
    encoder_cfgs["text"] = {**encoder_cfgs["text"], "linear_ngrams": False}

    def build(freeze: bool) -> FusionModel:
        return FusionModel(FusionConfig(**encoder_cfgs, freeze_encoders=freeze, **head_hp))

    extra = {**{s: {k: v for k, v in cfgs[s]["extra"].items() if k != "classes"} for s in SIDES},
             **{f"{s}_classes": bundles[s].meta["classes"] for s in SIDES},
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
    for side, folder in dirs.items():
        weights = {k: v for k, v in load_file(str(folder / "weights.safetensors")).items()
                   if not k.startswith(CLASSIFIER_PARTS[side])}
        getattr(model, side).load_state_dict(weights)
    sub = dataclasses.replace(job, checkpoint_dir=Path(job.checkpoint_dir) / "transfer")
    result = fit_classifier(sub, model, data, classes=CLASSES, extra=extra, baseline=baseline, baseline_name=BASELINE_NAME)
    by_side = accuracy_by_side(model, data["test"], test_changes)
    result.metrics["test"].update(by_side)
    job.log.info("multimodal_service test accuracy by side: %s", {k: round(v, 3) for k, v in by_side.items()})
    result.notes["transfer"] = "encoders loaded from upstream models and frozen; fusion head trained"
    result.notes["upstream"] = {s: str(d) for s, d in dirs.items()}
    return result


def parse_input(item: Any, sides: Sequence[str]) -> tuple:
    """(image, audio[, text]) from a tuple, a JSON array or a JSON object {"image", "audio", "text"}."""
    value = item
    if isinstance(item, str):
        try:
            value = json.loads(item)
        except ValueError as exc:
            raise DatasetError(f"multimodal_service: input {item!r} is not JSON: {exc}") from exc
    keys = [INPUT_KEYS[s] for s in sides]
    if isinstance(value, dict):
        missing = [k for k in keys if k not in value]
        if missing:
            raise DatasetError(f"multimodal_service: input {item!r} lacks {missing}")
        value = [value[k] for k in keys]
    if not isinstance(value, (list, tuple)) or len(value) != len(sides):
        raise DatasetError(f"multimodal_service: input {item!r} must give {', '.join(keys)} "
                           f"(a JSON array in that order or an object with those keys)")
    return tuple(value)


@torch.no_grad()
def predict(model_dir: Path, inputs: Sequence[Any], top: int = 1) -> list:
    """(image path, audio path, text) per input -> ("match" | "no_match", probability)."""
    from unified_pipeline.models.audio_rnn import load_clips
    from unified_pipeline.models.text_transformer import encode_texts
    from unified_pipeline.models.vision_cnn import load_images

    model = BaseModel.load(model_dir)
    rows = [parse_input(item, model.sides) for item in inputs]
    images = load_images([r[0] for r in rows], model.extra["vision"])
    mel, lengths = load_clips([r[1] for r in rows], model.extra["audio"])
    tokens = encode_texts([r[2] for r in rows], model.extra["text"]) if model.text is not None else None
    return probabilities_to_labels(model(images, mel, lengths, tokens), model.extra["classes"], top)


SPEC = ModelSpec(
    settings=FusionSettings, fit=fit, predict=predict,
    derived=(*SIDES, "freeze_encoders"),  # the encoders' configs come from the upstream models; fit sets freezing
    trainer_defaults={"epochs": 3, "batch_size": 64, "learning_rate": 2e-3, "weight_decay": 1e-4,
                      "early_stopping_patience": 0},
)
