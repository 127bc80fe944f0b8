"""Streaming a split that is not held on the device: batches in the trainer's order through a
DataLoader, fields kept on disk read by worker processes and decoded on the device."""
from __future__ import annotations

import torch

from unified_pipeline.datasets.shards import MappedRows, decode_rows


def stream_batches(train: tuple, batches: list[torch.Tensor], workers: int, device: torch.device):
    """The epoch's batches (in the given order) through a DataLoader, pinned for an accelerator.
    Fields kept on disk (MappedRows) are read by `workers` processes in their stored form (uint8
    pixels, float16 features: less to copy and pin) and decoded by `place_batch` on the device;
    in-memory fields are cut in-process, where a worker would only add a copy."""
    on_disk = any(isinstance(t, MappedRows) for t in train)
    stored = tuple(t.stored() if isinstance(t, MappedRows) else t for t in train)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*stored), sampler=batches, batch_size=None,
        num_workers=workers if on_disk and len(batches) > 1 else 0,
        pin_memory=device.type == "cuda" and train[0].device.type == "cpu",
        # its own generator: a loader seeds its workers from the global RNG otherwise, which would
        # shift dropout's random numbers against the on-device path and after a resume
        generator=torch.Generator().manual_seed(0))


def place_batch(batch: tuple, train: tuple, host_fields: frozenset, device: torch.device) -> tuple:
    """A streamed batch on the training device (host fields stay), stored fields decoded there."""
    out = []
    for i, (t, field) in enumerate(zip(batch, train)):
        if i not in host_fields:
            t = t.to(device, non_blocking=True)
        out.append(decode_rows(t, field.decode) if isinstance(field, MappedRows) else t)
    return tuple(out)
