"""Trains the tiny classifier of _train_worker.py and logs its progress; killed by the fault tests.

usage: _fault_worker.py CKPT_DIR OUT_FILE LOG_FILE EPOCHS CHECKPOINT_INTERVAL EPOCH_SLEEP_S [SAVE_PAUSE_S]
The log gets "start", then "epoch N" once epoch N's checkpoint (when due) is committed, then "done".
With SAVE_PAUSE_S, each checkpoint write also logs "mid-save K" (K counts the writes) after its
tensors file is on disk and before the folder is committed, then waits that long: a kill timed
from that line lands inside the write.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _train_worker as worker  # noqa: E402
from unified_pipeline import atomic  # noqa: E402
from unified_pipeline.training import checkpoints  # noqa: E402


def main(argv: list[str]) -> int:
    ckpt_dir, out_file, log_file = Path(argv[0]), Path(argv[1]), Path(argv[2])
    epochs, interval, epoch_sleep = int(argv[3]), int(argv[4]), float(argv[5])
    save_pause = float(argv[6]) if len(argv) > 6 else 0.0
    with open(log_file, "a", buffering=1) as log:
        if save_pause:
            real_save, saves = atomic.save_safetensors, [0]

            def slow_save(path, *a, **k):
                out = real_save(path, *a, **k)
                if path.name == checkpoints.TENSORS_FILE:
                    saves[0] += 1
                    log.write(f"mid-save {saves[0]}\n")
                    time.sleep(save_pause)
                return out

            checkpoints.atomic.save_safetensors = slow_save
        log.write("start\n")
        model, summary = worker.train(ckpt_dir, epochs, epoch_sleep=epoch_sleep, checkpoint_interval=interval,
                                      on_epoch_hook=lambda rec: log.write(f"epoch {rec['epoch']}\n"))
        atomic.save_safetensors(out_file, model.state_dict())
        log.write(f"done resumed_from={summary.resumed_from}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
