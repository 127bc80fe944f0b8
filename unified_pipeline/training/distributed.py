"""Data-parallel training of one classifier over several processes with torch.distributed.

Launched by torchrun (or `python -m torch.distributed.run`), one process per GPU, or per
CPU worker on the gloo backend:

    torchrun --nproc_per_node 2 -m unified_pipeline.training.distributed \\
        --model vision_service --tensors .unified/tensors/digits/<version> --out /tmp/ddp --epochs 5

DistributedDataParallel averages gradients across ranks every step, so all ranks hold the
same weights; each rank trains on its own shard of every epoch's permutation. Rank 0 saves
the model; every rank writes the digest of its final weights so the agreement is checkable.

It offers the service classifiers that train from their dataset alone (`offered_models()`);
models distilled from or built on other models train through the pipeline. Training is
plain fp32 (TF32 matmuls on CUDA); the step loop never waits for the GPU: the epoch's loss is
summed on the device and read once per epoch, and the inputs that the model reads on the host
(audio `lengths`) stay on the host.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from unified_pipeline import atomic
from unified_pipeline.datasets.base import TensorBundle
from unified_pipeline.errors import ConfigError
from unified_pipeline.models.registry import BUILT_IN, MODELS

# Tensor fields a classifier's forward() takes, by dataset kind.
INPUT_FIELDS = {"vision": ("x",), "audio": ("x", "lengths"), "text": ("x",)}
# Fields the model wants on the host (pack_padded_sequence needs CPU lengths): never copied over.
HOST_FIELDS = {"lengths"}


def offered_models() -> list[str]:
    """Built-in classifiers of one vision/audio/text dataset that need no other model (an instance
    from a preset is one of these architectures: train it under the architecture's name)."""
    return sorted(m for m, e in BUILT_IN.items()
                  if len(e.dataset_kinds) == 1 and e.dataset_kinds[0] in INPUT_FIELDS and not e.upstream_models)

def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

def train(args: argparse.Namespace) -> dict:
    backend = "nccl" if torch.cuda.is_available() and args.backend != "gloo" else "gloo"
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device(f"cuda:{local}" if backend == "nccl" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        from unified_pipeline.training.fit_settings import allow_tf32

        allow_tf32()
    try:
        bundle = TensorBundle.load(args.tensors)
        kind = bundle.meta.get("kind")
        if kind not in INPUT_FIELDS:
            raise ConfigError(f"{args.tensors}: distributed training supports {sorted(INPUT_FIELDS)} data, not {kind!r}")
        spec = MODELS[args.model].spec()
        hp = {**spec.defaults(), "learning_rate": args.lr}
        part = bundle.split("train")
        torch.manual_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        model = spec.build(bundle.meta, hp).to(device)
        # device_ids=None: DDP then leaves the inputs where they are (host lengths stay on the host).
        ddp = DistributedDataParallel(model, device_ids=None)
        opt = torch.optim.AdamW(ddp.parameters(), lr=args.lr)
        inputs = [part[f] if f in HOST_FIELDS else part[f].to(device) for f in INPUT_FIELDS[kind]]
        y = part["y"].to(device)
        gen = torch.Generator().manual_seed(args.seed)
        losses = []
        for _ in range(args.epochs):
            perm = torch.randperm(len(y), generator=gen)  # same on all ranks; each takes its stride
            shard = perm[rank::world]
            steps = len(perm) // world // args.batch_size  # equal step count on every rank
            shard_dev = shard.to(device)
            ddp.train()
            total = torch.zeros((), device=device)
            for i in range(max(steps, 1)):
                rows = slice(i * args.batch_size, (i + 1) * args.batch_size)
                idx, idx_dev = shard[rows], shard_dev[rows]
                opt.zero_grad(set_to_none=True)
                batch = [t[idx] if t.device.type == "cpu" else t[idx_dev] for t in inputs]
                loss = F.cross_entropy(ddp(*batch), y[idx_dev])
                loss.backward()
                opt.step()
                total += loss.detach()
            losses.append(float(total) / max(steps, 1))
        # Buffers (BatchNorm running stats) are only broadcast at the start of a forward; align
        # them once more so every rank ends with exactly rank 0's state.
        for buf in model.buffers():
            dist.broadcast(buf, src=0)
        digest = weights_digest(model)
        out = Path(args.out)
        atomic.write_json(out / f"rank{rank}.json", {"rank": rank, "world": world, "digest": digest, "losses": losses,
                                                    "backend": backend, "device": str(device)})
        if rank == 0:
            model.save(out / "model", extra={"classes": bundle.meta.get("classes"), "world_size": world})
        dist.barrier()
        return {"rank": rank, "digest": digest}
    finally:
        dist.destroy_process_group()

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=offered_models())
    p.add_argument("--tensors", required=True, help="folder of a dataset's tensors (safetensors + meta.json)")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["auto", "gloo"], default="auto")
    train(p.parse_args(argv))

if __name__ == "__main__":
    main()
