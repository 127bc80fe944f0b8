#!/usr/bin/env bash
# The device check: one command on a machine with one GPU (an H200 here), under 8 minutes, so
# that it can run twice within 15 minutes of device time. Run from the project root:
#
#   bash bench/gpu_session.sh
#
# Needs .whl/ beside the project: the wheels the GPU machine lacks (dagster, great-expectations,
# ...), collected beforehand on a machine with the project's virtualenv by the shared
# `tools/device-wheels` script (its header says how); torch itself is the machine's own.
#
# Sections, in this order (GPU_SESSION_SECTIONS, comma-separated, picks some):
#   checks    pytest -m cuda: steps that never wait for the GPU, GRU on cuDNN's fused kernel
#             under bf16, leases that make their GPU current, uint8 shards streamed through
#             pinned memory training like the split held on the GPU
#   models    every model trained on CUDA (bf16) against the CPU: samples/s, peak GPU memory
#             (bench/gpu_models.py)
#   busy      GPU busy fraction of the service models (bench/gpu_busy.py)
#   parallel  collaborative_training with all slots against one slot, epochs capped
#             (bench/gpu_preset.py, bench/parallel.py)
# Each section gets what is left of GPU_SESSION_BUDGET_S (default 450 s) after setup, and one
# that does not fit is reported as skipped, never cut short silently. Output: a table per
# section on screen, the gpu_* sections of docs/benchmarks.md, and (with $OUT set) that file
# and the result JSONs under $OUT.
#
# GPU_SESSION_DRY=1 checks this script on a CPU-only machine: no wheels installed (the current
# python must hold the project), CUDA hidden, tiny sizes, and every figure written to
# $GPU_SESSION_WORK/benchmarks.md instead of docs/: CPU numbers never reach the GPU sections.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
budget=${GPU_SESSION_BUDGET_S:-450}
sections=",${GPU_SESSION_SECTIONS:-checks,models,busy,parallel},"
dry=${GPU_SESSION_DRY:-0}
work=${GPU_SESSION_WORK:-/tmp/gpu_session}
py=${PYTHON:-python3}
failed=()

say() { printf '\n== %s (%ss elapsed)\n' "$*" "$((SECONDS - start))"; }
die() { echo "gpu_session: $*" >&2; exit 2; }
left() { local t=$((budget - (SECONDS - start))); echo $((t > 1 ? t : 1)); }
want() { [[ $sections == *",$1,"* ]]; }
# section NAME CAP_S COMMAND...: run within min(CAP_S, time left), report how it ended.
section() {
  local name=$1 cap=$2 t
  shift 2
  want "$name" || return 0
  t=$(left)
  ((t > cap)) && t=$cap
  if ((t < 20)); then echo "gpu_session: $name skipped: $(left)s of the ${budget}s budget left"; failed+=("$name(skipped)"); return 0; fi
  say "$name (limit ${t}s)"
  timeout -k 5 "$t" "$@"
  local rc=$?
  if ((rc == 124 || rc == 137)); then echo "gpu_session: $name stopped at its ${t}s limit"; failed+=("$name(timeout)")
  elif ((rc != 0)); then echo "gpu_session: $name failed (exit $rc)"; failed+=("$name(exit $rc)"); fi
  return 0
}

rm -rf "$work" && mkdir -p "$work" || die "cannot create $work"
if [[ $dry == 1 ]]; then
  export UNIFIED_GPUS=0 CUDA_VISIBLE_DEVICES="" BENCH_DOC=$work/benchmarks.md BENCH_RESULTS=$work/results
  cp docs/benchmarks.md "$BENCH_DOC"
  epochs=${GPU_SESSION_EPOCHS:-1} max_train=${GPU_SESSION_MAX_TRAIN:-128} steps=10 cpu_only=--cpu-only
  echo "gpu_session: DRY RUN on the CPU: figures go to $BENCH_DOC, not docs/benchmarks.md"
else
  compgen -G ".whl/*.whl" >/dev/null \
    || die "no wheels in .whl/: run tools/device-wheels (shared tools) in the project first and bring .whl/ along"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || die "installing .whl/*.whl into /tmp/site failed (wheels for another Python than $("$py" -V 2>&1)?)"
  export PYTHONPATH=/tmp/site:$PWD
  "$py" -c "import dagster, great_expectations, torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" \
    || die "the project's dependencies do not import from .whl/, or no CUDA device (see the line above)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  epochs=${GPU_SESSION_EPOCHS:-2} max_train=${GPU_SESSION_MAX_TRAIN:-0} steps=60 cpu_only=
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} UNIFIED_HOME=$work/home UNIFIED_DATA=$work/raw DAGSTER_HOME=$work/dagster_home
export GX_ANALYTICS_ENABLED=false PYTHONWARNINGS=ignore::DeprecationWarning UNIFIED_PROGRESS_BAR=0
mkdir -p "$DAGSTER_HOME" && cp dagster.yaml "$DAGSTER_HOME/"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.version.cuda)"

say "setup: sample data and every data lane"
"$py" -m unified_pipeline.cli sample-data --no-progress >"$work/sample.log" 2>&1 \
  || { tail -20 "$work/sample.log"; die "sample-data failed (log above)"; }
timeout -k 5 "$(left)" "$py" -m dagster job execute -m unified_pipeline.definitions -j data_lane >"$work/data_lane.log" 2>&1 \
  || { tail -30 "$work/data_lane.log"; die "the data_lane job failed or ran out of time (log above)"; }
echo "setup done in $((SECONDS - start))s"

section checks 120 "$py" -m pytest -q -p no:randomly -m cuda tests/test_cuda_steps.py -rs -s
section models 200 "$py" -m bench.gpu_models --epochs "$epochs" --max-train "$max_train" $cpu_only
if [[ $dry == 1 ]]; then
  want busy && echo "gpu_session: busy needs CUDA: not measured in a dry run"
else
  section busy 60 "$py" -m bench.gpu_busy --steps "$steps"
fi
"$py" -m bench.gpu_preset "$work/short_preset.json" --epochs "$epochs"
UNIFIED_PRESET=$work/short_preset.json section parallel 240 "$py" -m bench.parallel collaborative_training sequential,parallel gpu_parallel

doc=${BENCH_DOC:-docs/benchmarks.md}
if [[ -n ${OUT:-} ]]; then
  mkdir -p "$OUT/results" && cp "$doc" "$OUT/benchmarks.md" && cp "${BENCH_RESULTS:-bench/results}"/gpu_*.json "$OUT/results/" 2>/dev/null
  cp "$work"/*.log "$OUT/" 2>/dev/null
fi
say "done"
echo "sections written to $doc: $(grep -o '<!-- gpu_[a-z_]*:begin' "$doc" | sed 's/<!-- //; s/:begin//' | tr '\n' ' ')"
if ((${#failed[@]})); then echo "gpu_session: not complete: ${failed[*]}"; exit 1; fi
