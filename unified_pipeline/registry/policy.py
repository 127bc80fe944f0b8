"""Registry settings a training run takes from its resolved hyperparameters.

Both decide what happens to a finished version, not what it computes, so they stay out of the
step fingerprint: changing them never retrains a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unified_pipeline.errors import ConfigError
from unified_pipeline.registry.aliases import DEFAULT_RULE, RULES
from unified_pipeline.registry.retention import check_keep

PROMOTION_RULE = "promotion_rule"
KEEP_VERSIONS = "keep_versions"
HPARAM_KEYS = frozenset({PROMOTION_RULE, KEEP_VERSIONS})


@dataclass(frozen=True)
class RegistrationPolicy:
    promotion_rule: str = DEFAULT_RULE
    keep_versions: int | None = None  # None: no automatic prune


def policy_from_hparams(hparams: dict[str, Any], model: str = "") -> RegistrationPolicy:
    """Read and check `promotion_rule` and `keep_versions`; ConfigError naming the key otherwise."""
    where = f"{model}: hyperparameter" if model else "hyperparameter"
    rule = hparams.get(PROMOTION_RULE)
    if rule is None:
        rule = DEFAULT_RULE
    elif rule not in RULES:
        raise ConfigError(f"{where} {PROMOTION_RULE} {rule!r} is not a promotion rule; valid: {list(RULES)}")
    keep = check_keep(hparams.get(KEEP_VERSIONS), f"{where} {KEEP_VERSIONS}", allow_none=True)
    return RegistrationPolicy(promotion_rule=rule, keep_versions=keep)
