"""Trains the tiny classifier of _train_worker.py and logs each finished epoch; killed by the fault tests.

usage: _fault_worker.py CKPT_DIR OUT_FILE LOG_FILE EPOCHS CHECKPOINT_INTERVAL EPOCH_SLEEP_S
The log gets "start", then "epoch N" once epoch N's checkpoint (when due) is committed, then "done".
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _train_worker as worker  # noqa: E402
from unified_pipeline import atomic  # noqa: E402


def main(argv: list[str]) -> int:
    ckpt_dir, out_file, log_file = Path(argv[0]), Path(argv[1]), Path(argv[2])
    epochs, interval, epoch_sleep = int(argv[3]), int(argv[4]), float(argv[5])
    with open(log_file, "a", buffering=1) as log:
        log.write("start\n")
        model, summary = worker.train(ckpt_dir, epochs, epoch_sleep=epoch_sleep, checkpoint_interval=interval,
                                      on_epoch_hook=lambda rec: log.write(f"epoch {rec['epoch']}\n"))
        atomic.save_safetensors(out_file, model.state_dict())
        log.write(f"done resumed_from={summary.resumed_from}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
