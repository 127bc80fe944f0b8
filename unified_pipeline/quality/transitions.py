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
from unified_pipeline.quality.common import (
    max_abs_expectation, reward_expectation, setting, table_expectations, with_max_abs)

REQUIRED = ["sample_id", "path", "row", "episode", "episode_key", "reward", "sha256", "split", "decodable", "error"]


def prepare(manifest: pd.DataFrame) -> pd.DataFrame:
    groups = column_groups(list(manifest.columns))
    return with_max_abs(manifest, groups["state"] + groups["action"] + groups["next_state"])


def expectations(manifest: pd.DataFrame, cfg: Any = None) -> list:
    import great_expectations.expectations as gxe

    return table_expectations(cfg, REQUIRED, 10, "enough transitions") + [
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="episode_key", min_value=int(setting(cfg, "min_episodes", 3)),
                                                    description="enough episodes to split by episode"),
        gxe.ExpectColumnValuesToNotBeNull(column="reward", description="every transition has a finite reward"),
        reward_expectation(cfg),
        max_abs_expectation(cfg, "largest state/action magnitude in the row"),
    ]
