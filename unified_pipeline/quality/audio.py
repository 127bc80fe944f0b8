"""Great Expectations suite for audio-clip manifests (datasets/audio.py).

The runner validates `prepare(manifest)` against `expectations(manifest, cfg)`; `prepare`
adds `label_conflict`, `class_count` and `class_share` (quality/common.py).

`cfg` (dict, every key optional): the class keys of quality/common.py (labels,
min_per_class, min_share_of_fair, max_share_of_fair), min_duration_s (0.05), max_duration_s (60),
min_sample_rate (4000), max_sample_rate (192000), max_channels (8), min_peak (0.001: quieter
clips are treated as silent).
"""
from __future__ import annotations

import pandas as pd

from unified_pipeline.quality.common import class_folder_expectations, prepare_labels, setting

AUDIO_FORMATS = ["WAV", "WAVEX", "FLAC", "OGG"]


def prepare(manifest: pd.DataFrame) -> pd.DataFrame:
    return prepare_labels(manifest)


def expectations(manifest: pd.DataFrame, cfg: dict | None = None) -> list:
    import great_expectations.expectations as gxe

    return class_folder_expectations(manifest, cfg) + [
        gxe.ExpectColumnValuesToBeBetween(
            column="sample_rate", min_value=int(setting(cfg, "min_sample_rate", 4000)),
            max_value=int(setting(cfg, "max_sample_rate", 192000)), description="sample rate in Hz",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="channels", min_value=1, max_value=int(setting(cfg, "max_channels", 8)), description="channels"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="duration_s", min_value=float(setting(cfg, "min_duration_s", 0.05)),
            max_value=float(setting(cfg, "max_duration_s", 60.0)), description="clip length in seconds",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="peak", min_value=float(setting(cfg, "min_peak", 1e-3)), description="clip is not silent"
        ),
        gxe.ExpectColumnValuesToBeInSet(column="format", value_set=AUDIO_FORMATS, description="readable container"),
    ]
