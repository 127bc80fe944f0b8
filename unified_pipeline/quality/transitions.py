"""Great Expectations suite for transition manifests (datasets/transitions.py).

Row checks name `path:row`: unparsable or non-finite cells (`decodable`, with the column in
`error`), state/action magnitudes beyond `max_abs_value`,
and rewards outside the configured range. Table checks: at least `min_episodes` episodes,
so a split by episode leaves data for training and evaluation.

`cfg` (dict or PreprocessConfig, every key optional): reward_min / reward_max (-1e6 / 1e6),
max_abs_value (1e6, for state and action cells), min_rows (10), min_episodes (3).
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from unified_pipeline.datasets.transitions import column_groups
from unified_pipeline.quality.vision import SHA256_REGEX, SPLIT_NAMES, setting

REQUIRED = ["sample_id", "path", "row", "episode", "episode_key", "reward", "sha256", "split", "decodable", "error"]


def prepare(manifest: pd.DataFrame) -> pd.DataFrame:
    df = manifest.copy().reset_index(drop=True)
    groups = column_groups(list(df.columns))
    cells = groups["state"] + groups["action"] + groups["next_state"]
    # One row-level magnitude column instead of one expectation per column (GX costs ~30 ms each).
    df["max_abs_value"] = df[cells].abs().max(axis=1, skipna=True) if cells else 0.0
    return df


def expectations(manifest: pd.DataFrame, cfg: Any = None) -> list:
    import great_expectations.expectations as gxe

    bound = float(setting(cfg, "max_abs_value", 1e6))
    suite = [
        gxe.ExpectTableRowCountToBeBetween(min_value=int(setting(cfg, "min_rows", 10)),
                                           description="enough transitions"),
        gxe.ExpectTableColumnsToMatchSet(column_set=REQUIRED, exact_match=False, description="manifest schema"),
        gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True],
                                        description="every cell numeric and finite (see the error column)"),
        gxe.ExpectColumnValuesToBeUnique(column="sample_id", description="each row appears once"),
        gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=SHA256_REGEX, description="content hash present"),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=SPLIT_NAMES, description="known split"),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="episode_key", min_value=int(setting(cfg, "min_episodes", 3)),
                                                    description="enough episodes to split by episode"),
        gxe.ExpectColumnValuesToNotBeNull(column="reward", description="every transition has a finite reward"),
        gxe.ExpectColumnValuesToBeBetween(column="reward", min_value=float(setting(cfg, "reward_min", -1e6)),
                                          max_value=float(setting(cfg, "reward_max", 1e6)), description="reward range"),
    ]
    suite.append(gxe.ExpectColumnValuesToBeBetween(column="max_abs_value", min_value=0, max_value=bound,
                                                   description="largest state/action magnitude in the row"))
    return suite
