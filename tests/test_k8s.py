"""A model step rendered as a Kubernetes Job asks for a GPU."""
from dagster import AssetKey

import tiny_data


def test_model_step_pod_spec_requests_a_gpu(home, tmp_path):
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

    from unified_pipeline.definitions import build_definitions

    tiny_data.vision(tmp_path / "raw")
    defs = build_definitions()
    step = defs.resolve_asset_graph().get(AssetKey(["vision_service"])).assets_def.op
    user_config = get_user_defined_k8s_config({k: str(v) for k, v in step.tags.items()})
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="unified-pipeline:latest", dagster_home="/opt/dagster/home",
                            image_pull_policy="IfNotPresent"),
        args=["dagster", "api", "execute_step"],
        job_name="vision-service-step",
        user_defined_k8s_config=user_config,
    )
    pod = job.spec.template.spec
    resources = pod.containers[0].resources
    assert resources.limits["nvidia.com/gpu"] == "1"
    assert resources.requests["nvidia.com/gpu"] == "1"
    assert any(t.key == "nvidia.com/gpu" for t in pod.tolerations)


def test_k8s_executor_selected_by_environment(home, tmp_path, monkeypatch):
    from unified_pipeline.definitions import build_definitions

    tiny_data.vision(tmp_path / "raw")
    monkeypatch.setenv("UNIFIED_EXECUTOR", "k8s")
    job = build_definitions().resolve_job_def("collaborative_training")
    assert job.executor_def.name == "k8s"


def test_k8s_concurrency_limit_defaults_to_the_preset_and_run_config_replaces_it(home, tmp_path, monkeypatch):
    from unified_pipeline import devices
    from unified_pipeline.definitions import build_definitions

    tiny_data.vision(tmp_path / "raw")
    monkeypatch.setenv("UNIFIED_EXECUTOR", "k8s")
    monkeypatch.setenv("UNIFIED_GPUS", "0")  # the code-location pod has no GPU; the cluster does
    devices.gpu_count.cache_clear()
    executor = build_definitions().resolve_job_def("collaborative_training").executor_def
    default = executor.config_schema.resolve_config({})
    assert default.success
    limit = {"key": "unified/device", "value": "accelerator", "limit": devices.k8s_model_steps()}
    assert default.value["config"]["tag_concurrency_limits"] == [limit]
    assert limit["limit"] == 4  # hardware_configuration.cluster_gpus of the shipped preset
    given = [{"key": "unified/device", "value": "accelerator", "limit": 16}]
    # What `execution: {config: {...}}` in a run config carries.
    run = executor.config_schema.resolve_config({"config": {"tag_concurrency_limits": given, "job_namespace": "ml"}})
    assert run.success
    assert run.value["config"]["tag_concurrency_limits"] == given
    assert run.value["config"]["job_namespace"] == "ml"
