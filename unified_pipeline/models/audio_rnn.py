"""audio_service: conv front end over log-mel frames + bidirectional GRU/LSTM + classifier.

The front end (a strided 1-D convolution across time, mel bins as channels) halves the
sequence before the recurrent layer, which is where CPU time goes. Padding never reaches the
recurrent state (a packed sequence built from the bundle's `lengths`) nor the pooled embedding
(masked mean + max over valid frames).

Packing needs the lengths on the host. The trainer keeps them there (`host_fields`), and the
packing below moves only index tensors to the device, without waiting for it, so a CUDA step
never synchronises; lengths that arrive on the device cost one read-back (inference).

Under bf16 autocast the GRU must stay on cuDNN's fused kernels: `rnn_autocast()` checks once
per device which kernel autocast picks and runs the recurrent layer in fp32 (TF32, still fused)
when it would fall back to the per-time-step implementation. torch.compile is left off: the
packed sequence, the host lengths and the random SpecAugment offsets all break its graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from unified_pipeline.errors import ConfigError, DatasetError
from unified_pipeline.models.base import BaseModel, register_architecture
from unified_pipeline.models.inputs import classifier_job, probabilities_to_labels
from unified_pipeline.models.spec import ModelSpec, config_from
from unified_pipeline.training.job import FitJob, FitResult


@dataclass
class AudioRNNConfig:
    num_classes: int = 10  # from the data, with n_mels (SPEC.derived)
    n_mels: int = 40
    # A strided 1-d convolution over the mel frames, then the recurrent layers.
    conv_channels: int = 64
    conv_kernel: int = 5
    conv_stride: int = 2
    hidden_size: int = 64
    num_layers: int = 1
    rnn: str = "gru"  # "gru" or "lstm"
    dropout: float = 0.2
    spec_mask: int = 4  # max width of one random time and one mel-band mask, training mode only


def _lengths_both(lengths: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(host copy, device copy) of the valid lengths, without waiting for the device when they start on the host."""
    lengths = lengths.to(torch.long)
    if lengths.device.type == "cpu":
        return lengths, lengths.to(device, non_blocking=True)
    return lengths.cpu(), lengths


def run_packed(rnn: nn.RNNBase, h: torch.Tensor, n_host: torch.Tensor) -> torch.Tensor:
    """rnn over the first n_host[i] steps of each row of h [N, T, C]; zeros past them: [N, T, H].

    What pack_padded_sequence / pad_packed_sequence compute, with the sort order moved to the
    device asynchronously (theirs is a blocking copy, and pad_packed_sequence reads the order
    back to the host)."""
    sorted_n, order = torch.sort(n_host, descending=True)
    order_dev = order.to(h.device, non_blocking=True)
    data, batch_sizes = torch._pack_padded_sequence(h.index_select(0, order_dev), sorted_n, True)
    out, _ = rnn(PackedSequence(data, batch_sizes, order_dev, None))
    padded, _ = torch._pad_packed_sequence(out.data, out.batch_sizes, True, 0.0, h.shape[1])
    return padded.index_select(0, out.unsorted_indices)


_FUSED: dict[tuple[str, int | None, str], bool] = {}


def fused_under_autocast(rnn_type: str, device: torch.device) -> bool:
    """Does a GRU/LSTM under bf16 autocast on `device` run cuDNN's fused kernel? Checked once on a
    tiny layer through the autograd node it records (cuDNN's is `CudnnRnnBackward0`)."""
    if device.type != "cuda":
        return True
    key = (device.type, device.index, rnn_type)
    if key not in _FUSED:
        layer = {"gru": nn.GRU, "lstm": nn.LSTM}[rnn_type](4, 4, batch_first=True).to(device)
        # The first call may come from an evaluation without gradients: record them here regardless.
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            out, _ = layer(torch.zeros(2, 3, 4, device=device, requires_grad=True))
        _FUSED[key] = "Cudnn" in type(out.grad_fn).__name__
    return _FUSED[key]


@register_architecture("audio_rnn")
class AudioRNN(BaseModel):
    config_cls = AudioRNNConfig
    host_fields = (1,)  # forward(x, lengths): lengths on the host
    compile_off_reason = "packed sequences with host lengths and random masks break the graph"

    def __init__(self, config: AudioRNNConfig):
        super().__init__(config)
        c, k = config.conv_channels, config.conv_kernel
        self.frontend = nn.Sequential(
            nn.Conv1d(config.n_mels, c, k, stride=config.conv_stride, padding=k // 2, bias=False),
            nn.BatchNorm1d(c),
            nn.GELU(),
            nn.Conv1d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm1d(c),
            nn.GELU(),
        )
        rnn_cls = {"gru": nn.GRU, "lstm": nn.LSTM}.get(config.rnn)
        if rnn_cls is None:
            raise ConfigError(f"audio_service: rnn must be 'gru' or 'lstm', got {config.rnn!r}")
        self.rnn = rnn_cls(c, config.hidden_size, num_layers=config.num_layers, batch_first=True,
                           bidirectional=True, dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.embedding_dim = 4 * config.hidden_size  # mean and max of both directions
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(self.embedding_dim, config.num_classes))

    def _frames_after_frontend(self, lengths: torch.Tensor) -> torch.Tensor:
        k, s = self.config.conv_kernel, self.config.conv_stride
        return ((lengths + 2 * (k // 2) - k) // s + 1).clamp(min=1)

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        # SpecAugment-style: one random time band and one mel band zeroed per batch (0 = mean after normalising).
        w = self.config.spec_mask
        t0 = int(torch.randint(0, max(1, x.shape[2] - w), ()))
        f0 = int(torch.randint(0, max(1, x.shape[1] - w), ()))
        tw, fw = torch.randint(0, w + 1, (2,)).tolist()
        x = x.clone()
        x[:, :, t0:t0 + tw] = 0.0
        x[:, f0:f0 + fw, :] = 0.0
        return x

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Log-mel batch [N,n_mels,T] with valid frame counts [N] -> embedding [N, embedding_dim]."""
        host, dev = _lengths_both(lengths, x.device)
        # Padding is set to 0 (the normalised mean) so the convolutions near a clip's end never see what it held.
        frames = torch.arange(x.shape[-1], device=x.device).unsqueeze(0) < dev.unsqueeze(1)
        x = x * frames.unsqueeze(1).to(x.dtype)
        h = self.frontend(x).transpose(1, 2)  # [N, T', C]
        n_host = self._frames_after_frontend(host).clamp(max=h.shape[1])
        n = self._frames_after_frontend(dev).clamp(max=h.shape[1])
        if torch.is_autocast_enabled(h.device.type) and not fused_under_autocast(self.config.rnn, h.device):
            with torch.autocast(h.device.type, enabled=False):
                out = run_packed(self.rnn, h.float(), n_host)
        else:
            out = run_packed(self.rnn, h, n_host)
        valid = (torch.arange(h.shape[1], device=h.device).unsqueeze(0) < n.unsqueeze(1)).unsqueeze(-1)
        mean = (out * valid).sum(1) / n.to(out.dtype).unsqueeze(1)
        peak = out.masked_fill(~valid, float("-inf")).max(1).values
        return torch.cat([mean, peak], dim=1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.training and self.config.spec_mask > 0:
            x = self._mask(x)
        return self.head(self.encode(x, lengths))


def build(meta: dict[str, Any], hp: dict[str, Any]) -> AudioRNN:
    return AudioRNN(config_from(AudioRNNConfig, hp, num_classes=len(meta["classes"]), n_mels=int(meta["n_mels"])))


AUDIO_FACTS = ("sample_rate", "n_mels", "hop_length", "n_fft", "win_length", "max_samples", "log_offset", "mean", "std")


def fit(job: FitJob) -> FitResult:
    from unified_pipeline.training.classification import fit_classifier

    job, bundle, data = classifier_job(job, SPEC, "audio", ("x", "lengths"))
    meta = bundle.meta
    torch.manual_seed(job.seed)
    model = build(meta, job.hparams)
    extra = {k: meta[k] for k in AUDIO_FACTS if k in meta}
    extra["dataset"] = meta.get("dataset")
    return fit_classifier(job, model, data, classes=list(meta["classes"]), extra=extra)


def load_clips(paths: Sequence[str | Path], extra: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio files -> (normalised log-mel [N,n_mels,T], valid frames [N]) with the data lane's recipe."""
    from unified_pipeline.datasets import audio as lane

    rate, n_mels = int(extra["sample_rate"]), int(extra["n_mels"])
    max_samples = int(extra.get("max_samples") or 0) or None
    settings = lane.mel_settings(rate, n_mels)
    waves, lengths, resamplers = [], [], {}
    for p in paths:
        try:
            wave = lane.load_clip(Path(p), rate, max_samples or 10**9, resamplers)
        except Exception as exc:  # soundfile raises several types for unreadable files
            raise DatasetError(f"{p}: cannot decode audio ({type(exc).__name__}: {exc})") from exc
        if wave.numel() == 0:
            raise DatasetError(f"{p}: audio file holds no samples")
        waves.append(wave)
        lengths.append(lane.valid_frames(int(wave.shape[0]), settings["hop_length"]))
    length = max(max_samples or 0, max(w.shape[0] for w in waves))  # the training length, as the shards
    feats = lane.stored_log_mel(waves, length, settings).float()
    n = torch.tensor(lengths, dtype=torch.long).clamp(max=feats.shape[-1])
    mean = torch.tensor(extra["mean"], dtype=torch.float32).view(1, -1, 1)
    std = torch.tensor(extra["std"], dtype=torch.float32).view(1, -1, 1)
    valid = (torch.arange(feats.shape[-1])[None, :] < n[:, None]).unsqueeze(1)
    return (feats - mean) / std * valid, n


@torch.no_grad()
def predict(model_dir: Path, inputs: Sequence[str | Path], top: int = 1) -> list:
    """wav/flac/ogg paths -> (label, probability) per clip, for any model of (log-mel, lengths)."""
    model = BaseModel.load(model_dir)
    x, lengths = load_clips(list(inputs), model.extra)
    return probabilities_to_labels(model(x, lengths), model.extra["classes"], top)


SPEC = ModelSpec(
    settings=AudioRNNConfig, fit=fit, predict=predict, build=build, inputs=("x", "lengths"),
    derived=("num_classes", "n_mels"), warm_start=True,
    trainer_defaults={"epochs": 20, "batch_size": 32, "learning_rate": 3e-3, "weight_decay": 1e-4,
                      "early_stopping_patience": 6},
)
