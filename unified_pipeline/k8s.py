"""Running the jobs on Kubernetes through dagster-k8s (optional extra `[k8s]`).

Every model step carries a `dagster-k8s/config` op tag asking for one GPU, so under
`k8s_job_executor` each model step becomes its own pod on a GPU node. With
`UNIFIED_EXECUTOR=k8s` the Definitions use that executor instead of the local multiprocess
one; image, namespace and the rest come from run config or the Helm chart (docs/kubernetes.md).
The limit on parallel model steps defaults to the preset's cluster size (devices.py) and run
config's `execution: {config: {tag_concurrency_limits: ...}}` replaces it.
"""
from __future__ import annotations

import json
import os
from typing import Any

K8S_CONFIG_TAG = "dagster-k8s/config"


def gpus_per_step() -> int:
    return max(1, int(os.environ.get("UNIFIED_K8S_GPUS_PER_STEP", "1")))


def gpu_step_k8s_config() -> dict[str, Any]:
    gpus = str(gpus_per_step())
    return {
        "container_config": {
            "resources": {
                "requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": gpus},
                "limits": {"memory": "16Gi", "nvidia.com/gpu": gpus},
            },
        },
        "pod_spec_config": {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


def gpu_step_tags() -> dict[str, str]:
    return {K8S_CONFIG_TAG: json.dumps(gpu_step_k8s_config(), sort_keys=True)}


def use_k8s() -> bool:
    return os.environ.get("UNIFIED_EXECUTOR", "").lower() == "k8s"


def k8s_executor(limits: list[dict[str, Any]]):
    """k8s_job_executor whose default `tag_concurrency_limits` are `limits`; unlike a plain
    `.configured({...})`, which would silently drop it, run config may still set every field."""
    from dagster_k8s import k8s_job_executor

    if not limits:
        return k8s_job_executor

    def with_default_limits(config: dict[str, Any]) -> dict[str, Any]:
        return {**config, "tag_concurrency_limits": config.get("tag_concurrency_limits") or limits}

    return k8s_job_executor.configured(
        with_default_limits, name="k8s", config_schema=k8s_job_executor.config_schema.as_field().config_type)
