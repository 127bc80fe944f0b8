"""DDP through torch.distributed: two CPU ranks on gloo end with identical weights, for every
model the entry point offers."""
import json
import os
import subprocess
import sys

import pytest

import tiny_data

KINDS = {"vision_service": "vision", "audio_service": "audio", "text_service": "text"}


def build_tensors(kind_name, raw, out):
    from unified_pipeline.datasets import get_kind
    from unified_pipeline.datasets.base import PreprocessConfig
    from unified_pipeline.hashing import dataset_version

    ds = getattr(tiny_data, kind_name)(raw)
    kind = get_kind(kind_name)
    _, hashes = dataset_version(ds)
    bundle = kind.build_tensors(ds, kind.build_manifest(ds, hashes), PreprocessConfig())
    bundle.meta.update(dataset=f"tiny_{kind_name}", kind=kind_name)
    return bundle.save(out)


def test_every_offered_model_is_tested_here():
    from unified_pipeline.training.distributed import offered_models

    assert offered_models() == sorted(KINDS)


@pytest.mark.parametrize("model", sorted(KINDS))
def test_two_gloo_ranks_end_with_equal_weights(tmp_path, model):
    tensors = build_tensors(KINDS[model], tmp_path / "raw", tmp_path / "tensors")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNIFIED_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "unified_pipeline.training.distributed", "--model", model, "--tensors", str(tensors),
           "--out", str(out), "--epochs", "4", "--batch-size", "4", "--backend", "gloo"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["backend"] == "gloo"
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["losses"][-1] < ranks[0]["losses"][0]  # it learned, not just agreed
    assert (out / "model" / "weights.safetensors").exists()
