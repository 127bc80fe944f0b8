"""Audio classification data: <dataset>/<class>/<clip> with wav, flac or ogg clips.

Clips may have any sample rate and channel count. `build_tensors` reads them with soundfile,
mixes to mono, resamples to cfg.sample_rate, pads or trims to cfg.max_audio_seconds and
turns them into log-mel spectrograms normalised per mel bin with train-split statistics.
`load_clip` and `log_mel` are public so prediction code preprocesses new clips identically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from unified_pipeline.code_version import code_version
from unified_pipeline.datasets.base import PreprocessConfig, TensorBundle
from unified_pipeline.datasets.class_folders import (
    class_folder_manifest, data_version, detect_class_folders, refuse_undecodable,
)
from unified_pipeline.datasets.decode_workers import LOG_OFFSET, decode_clips
from unified_pipeline.datasets.facts_readers import clip_facts
from unified_pipeline.datasets.preprocess_cache import PreprocessCache
from unified_pipeline.errors import DatasetError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
MANIFEST_COLUMNS = [
    "sample_id", "path", "label", "sha256", "size", "split", "decodable", "error",
    "sample_rate", "channels", "duration_s", "frames", "format", "peak",
]
BATCH = 256  # clips per MelSpectrogram call: bounded memory, vectorised FFTs


def load_clip(path: Path, sample_rate: int, max_samples: int, resamplers: dict | None = None):
    """Mono float32 torch waveform at `sample_rate`, trimmed to max_samples (not padded)."""
    import soundfile as sf
    import torch
    import torchaudio

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    keep = -(-max_samples * rate // sample_rate) + 64  # resample only what survives the trim (+ filter margin)
    wave = torch.from_numpy(np.ascontiguousarray(data[:keep].mean(axis=1)))
    if rate != sample_rate:
        resamplers = {} if resamplers is None else resamplers
        if rate not in resamplers:  # the transform caches its filter kernel: one per source rate
            resamplers[rate] = torchaudio.transforms.Resample(rate, sample_rate)
        wave = resamplers[rate](wave)
    return wave[:max_samples]


def mel_settings(sample_rate: int, n_mels: int) -> dict:
    """25 ms windows every 10 ms, the usual speech front end."""
    win = int(round(0.025 * sample_rate))
    n_fft = 1 << (win - 1).bit_length()
    return {"sample_rate": sample_rate, "n_fft": n_fft, "win_length": win,
            "hop_length": int(round(0.010 * sample_rate)), "n_mels": n_mels}


def log_mel(waves, settings: dict, mel=None):
    """[B,S] waveforms -> [B,n_mels,T] log-mel (natural log of power + LOG_OFFSET), in batches.
    `mel`: a MelSpectrogram of these settings to reuse (it caches its filter bank)."""
    import torch
    import torchaudio

    mel = mel or torchaudio.transforms.MelSpectrogram(**settings)
    with torch.no_grad():
        parts = [torch.log(mel(waves[i:i + BATCH]) + LOG_OFFSET) for i in range(0, waves.shape[0], BATCH)]
    return torch.cat(parts) if parts else torch.zeros(0, settings["n_mels"], 0)


def stored_log_mel(waves: list, length: int, settings: dict, mel=None):
    """1-D waveforms zero-padded to `length` samples -> float16 log-mel [N,n_mels,T], as the shards
    store them. Training and prediction both go through here: the STFT reflects at the signal's
    end, so a clip padded to another length would get other last frames."""
    import torch

    batch = torch.zeros(len(waves), length)
    for i, w in enumerate(waves):
        batch[i, : w.shape[0]] = w
    return log_mel(batch, settings, mel).to(torch.float16)


def frame_sums(x: np.ndarray, chunk: int = 256) -> dict[str, np.ndarray]:
    """Per mel bin: sum and sum of squares over the real frames (padding is NaN), and their count."""
    total, squares, count = np.zeros(x.shape[1]), np.zeros(x.shape[1]), 0
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].astype(np.float64)
        real = ~np.isnan(part[:, 0, :])
        part = np.nan_to_num(part)
        total += part.sum(axis=(0, 2))
        squares += (part**2).sum(axis=(0, 2))
        count += int(real.sum())
    return {"sum": total, "sumsq": squares, "count": np.array([float(count)])}


def valid_frames(n_samples: int, hop_length: int) -> int:
    """Frames of a centred STFT that contain real signal."""
    return 1 + n_samples // hop_length


class AudioKind:
    name = "audio"
    description = "audio clips in class sub-folders (wav/flac/ogg), any sample rate and channel count"

    # What write_tensors reads of a manifest (the tensors step reads no other column).
    tensor_columns = ("sample_id", "path", "label", "sha256", "split", "decodable", "error")

    hashes_while_reading = True  # build_manifest takes None for a file's unknown hash, and computes it

    def detect(self, root: Path) -> bool:
        return detect_class_folders(root, AUDIO_EXTENSIONS)

    def build_manifest(self, root: Path, file_hashes: dict[str, str],
                       cfg: PreprocessConfig | None = None) -> pd.DataFrame:
        return class_folder_manifest(root, file_hashes, AUDIO_EXTENSIONS, "clip", clip_facts, MANIFEST_COLUMNS,
                                     cfg or PreprocessConfig(), int_columns=("sample_rate", "channels", "frames"),
                                     float_columns=("duration_s", "peak"))

    def build_tensors(self, root: Path, manifest: pd.DataFrame, cfg: PreprocessConfig) -> TensorBundle:
        """The tensors in memory (built through the same shards as `write_tensors`, without the cache)."""
        from unified_pipeline.datasets.class_shards import in_memory

        return in_memory(self, root, manifest, cfg)

    def write_tensors(self, root: Path, manifest: pd.DataFrame, cfg: PreprocessConfig, out: Path,
                      reuse_from: list[Path] | None = None, cache: PreprocessCache | None = None,
                      version: str | None = None) -> dict:
        """float16 log-mel in shards, NaN in padded frames (normalised when read with the train
        split's per-bin mean/std, padding -> 0); returns the meta also written to out/meta.json.
        `version`: the data version when the caller has it (else it is computed from the manifest)."""
        from unified_pipeline.datasets.class_shards import Codec, write_class_index, write_class_tensors

        root = Path(root)
        if manifest.empty:
            raise DatasetError(f"{root}: manifest has no samples")
        refuse_undecodable(manifest, root)
        if cfg.sample_rate <= 0 or cfg.max_audio_seconds <= 0 or cfg.n_mels <= 0:
            raise DatasetError(
                f"{root}: sample_rate ({cfg.sample_rate}), max_audio_seconds ({cfg.max_audio_seconds}) "
                f"and n_mels ({cfg.n_mels}) must be positive"
            )
        max_samples = int(round(cfg.max_audio_seconds * cfg.sample_rate))
        settings = mel_settings(cfg.sample_rate, cfg.n_mels)
        frames = valid_frames(max_samples, settings["hop_length"])
        codec = Codec(kind=self.name, settings={"max_samples": max_samples, **settings}, decode=decode_clips,
                      extra=(cfg.sample_rate, max_samples, settings), row_shape=(cfg.n_mels, frames),
                      dtype=np.float16, stats=frame_sums, aux_field="lengths")
        report = write_class_tensors(codec, root, manifest, cfg, out, reuse_from, cache, code=code_version(__name__))
        count = max(report.stats["count"][0], 1.0)
        mean = report.stats["sum"] / count
        std = np.sqrt(np.maximum(report.stats["sumsq"] / count - mean**2, 0)).clip(min=1e-6)
        write_class_index(out, codec, report, {"scale": list(1 / std), "shift": list(-mean / std), "axis": 1, "nan": 0.0})
        meta = {
            "dataset": root.name, "kind": self.name, "data_version": version or data_version(manifest),
            "splits": report.counts, "classes": report.classes, "sample_rate": cfg.sample_rate,
            "n_mels": cfg.n_mels, "hop_length": settings["hop_length"], "n_fft": settings["n_fft"],
            "win_length": settings["win_length"], "max_samples": max_samples, "frames": frames,
            "log_offset": LOG_OFFSET, "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "scale": "log(mel power + log_offset), then (v - mean) / std per mel bin; padded frames 0",
        }
        TensorBundle(tensors={}, meta=meta, sidecars={"samples": report.samples}).save_json(out)
        return meta

    def generate_samples(self, raw_root: Path, seed: int = 0) -> list[Path]:
        from unified_pipeline.datasets.samples.spoken_digits import generate_spoken_digits

        return [generate_spoken_digits(Path(raw_root) / "spoken_digits", seed)]


KIND = AudioKind()
