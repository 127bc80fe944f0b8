"""DDP through torch.distributed: two CPU ranks on gloo end with identical weights."""
import json
import os
import subprocess
import sys

import tiny_data


def build_tensors(raw, out):
    from unified_pipeline.datasets import get_kind
    from unified_pipeline.datasets.base import PreprocessConfig
    from unified_pipeline.hashing import dataset_version

    ds = tiny_data.vision(raw)
    kind = get_kind("vision")
    _, hashes = dataset_version(ds)
    bundle = kind.build_tensors(ds, kind.build_manifest(ds, hashes), PreprocessConfig())
    bundle.meta.update(dataset="tiny_images", kind="vision")
    return bundle.save(out)


def test_two_gloo_ranks_end_with_equal_weights(tmp_path):
    tensors = build_tensors(tmp_path / "raw", tmp_path / "tensors")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNIFIED_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "unified_pipeline.training.distributed", "--model", "vision_service", "--tensors", str(tensors),
           "--out", str(out), "--epochs", "3", "--batch-size", "4", "--backend", "gloo"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["backend"] == "gloo"
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["losses"][-1] < ranks[0]["losses"][0]  # it learned, not just agreed
    assert (out / "model" / "weights.safetensors").exists()
