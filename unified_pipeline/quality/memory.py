"""Great Expectations suite for memory-record manifests (datasets/memory.py).

Row checks name `path:row` (row = line): lines that are not JSON or miss a required field
(`decodable`, reason in `error`), duplicate memory ids, empty gists, confidences outside
[0, 1], rewards outside the configured range, and modality vectors whose length differs
from the dataset's usual one (`audio_dim_ok`, `image_dim_ok`), since every record must
encode to the same modality width.

`cfg` (dict or PreprocessConfig, every key optional): min_rows (10), reward_min /
reward_max (-1e6 / 1e6), max_relations (64).
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from unified_pipeline.quality.common import reward_expectation, setting, table_expectations

REQUIRED = ["sample_id", "path", "row", "memory_id", "summary", "text_confidence", "reward", "success",
            "sha256", "split", "decodable", "error"]


def prepare(manifest: pd.DataFrame) -> pd.DataFrame:
    df = manifest.copy().reset_index(drop=True)
    good = df["decodable"].astype(bool)
    for col in ("audio_dim", "image_dim"):
        usual = df.loc[good, col].mode()
        df[f"{col}_ok"] = (~good) | (df[col] == (usual.iloc[0] if len(usual) else 0))
    return df


def expectations(manifest: pd.DataFrame, cfg: Any = None) -> list:
    import great_expectations.expectations as gxe

    return table_expectations(
        cfg, REQUIRED, 10, "enough records", unique="memory_id", unique_what="memory ids are unique",
        decodable="every line is a complete record (see the error column)") + [
        gxe.ExpectColumnValuesToBeBetween(column="n_words", min_value=1, description="the gist has words"),
        gxe.ExpectColumnValuesToBeBetween(column="text_confidence", min_value=0.0, max_value=1.0,
                                          description="text confidence is a probability"),
        reward_expectation(cfg),
        gxe.ExpectColumnValuesToBeBetween(column="n_relations", min_value=0,
                                          max_value=int(setting(cfg, "max_relations", 64)),
                                          description="relation count"),
        gxe.ExpectColumnValuesToBeInSet(column="audio_dim_ok", value_set=[True],
                                        description="audio feature length matches the dataset's"),
        gxe.ExpectColumnValuesToBeInSet(column="image_dim_ok", value_set=[True],
                                        description="image feature length matches the dataset's"),
    ]
