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
