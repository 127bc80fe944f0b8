"""Data-parallel training of one classifier over several processes with torch.distributed.

Launched by torchrun (or `python -m torch.distributed.run`), one process per GPU, or per
CPU worker on the gloo backend:

    torchrun --nproc_per_node 2 -m unified_pipeline.training.distributed \\
        --model vision_service --tensors .unified/tensors/digits/<version> --out /tmp/ddp --epochs 5

DistributedDataParallel averages gradients across ranks every step, so all ranks hold the
same weights; each rank trains on its own shard of every epoch's permutation. Rank 0 saves
the model; every rank writes the digest of its final weights so the agreement is checkable.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from unified_pipeline import atomic
from unified_pipeline.datasets.base import TensorBundle
from unified_pipeline.errors import ConfigError
from unified_pipeline.models.registry import MODELS

# Tensor fields a classifier's forward() takes, by dataset kind.
INPUT_FIELDS = {"vision": ("x",), "audio": ("x", "lengths"), "text": ("x",)}


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
    try:
        bundle = TensorBundle.load(args.tensors)
        kind = bundle.meta.get("kind")
        if kind not in INPUT_FIELDS:
            raise ConfigError(f"{args.tensors}: distributed training supports {sorted(INPUT_FIELDS)} data, not {kind!r}")
        module = importlib.import_module(MODELS[args.model].module)
        hp = {**getattr(module, "DEFAULTS", {}), "learning_rate": args.lr}
        torch.manual_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        model = module.build(bundle.meta, hp).to(device)
        ddp = DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)
        opt = torch.optim.AdamW(ddp.parameters(), lr=args.lr)
        part = bundle.split("train")
        inputs = [part[f].to(device) for f in INPUT_FIELDS[kind]]
        y = part["y"].to(device)
        gen = torch.Generator().manual_seed(args.seed)
        losses = []
        for _ in range(args.epochs):
            perm = torch.randperm(len(y), generator=gen)  # same on all ranks; each takes its stride
            shard = perm[rank::world]
            steps = len(perm) // world // args.batch_size  # equal step count on every rank
            ddp.train()
            total = 0.0
            for i in range(max(steps, 1)):
                idx = shard[i * args.batch_size:(i + 1) * args.batch_size].to(device)
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(ddp(*[t[idx] for t in inputs]), y[idx])
                loss.backward()
                opt.step()
                total += loss.item()
            losses.append(total / max(steps, 1))
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
    p.add_argument("--model", required=True, choices=[m for m, e in MODELS.items() if set(e.dataset_kinds) <= set(INPUT_FIELDS) and len(e.dataset_kinds) == 1])
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
