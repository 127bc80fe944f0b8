"""Model versions you can trust: immutable, checksummed, aliased, with rollback and retention."""
from __future__ import annotations

from unified_pipeline.registry.aliases import RULES as PROMOTE_RULES
from unified_pipeline.registry.compare import Comparison
from unified_pipeline.registry.incremental import file_set, warm_start_decision, warm_start_record
from unified_pipeline.registry.locking import RegistryBusy
from unified_pipeline.registry.policy import RegistrationPolicy, policy_from_hparams
from unified_pipeline.registry.retention import PruneReport
from unified_pipeline.registry.store import RegisterResult, ModelRegistry
from unified_pipeline.registry.versions import REQUIRED_LINEAGE, RegistryError, Version, preset_lineage

__all__ = [
    "Comparison", "ModelRegistry", "PROMOTE_RULES", "PruneReport", "REQUIRED_LINEAGE", "RegisterResult",
    "RegistrationPolicy", "RegistryBusy", "RegistryError", "Version", "file_set", "policy_from_hparams",
    "preset_lineage", "warm_start_decision", "warm_start_record",
]
