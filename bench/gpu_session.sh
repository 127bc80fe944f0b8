#!/usr/bin/env bash
# Run on the GPU machine from the project root, with .whl/ beside it (see shared tools/device-wheels):
#   bash bench/gpu_session.sh <bench sections, comma-separated>
# Installs the project's pure-Python dependencies next to the machine's own torch, writes the
# sample data, builds every data lane (or, for the overhead section, which replays the models'
# own training with their upstream models, runs the whole main job), then runs the requested
# benchmark sections; results and docs/benchmarks.md go to $OUT when set.
set -euo pipefail
sections=${1:-gpu_busy,overhead}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
export UNIFIED_HOME=${UNIFIED_HOME:-/tmp/unified} UNIFIED_DATA=${UNIFIED_DATA:-/tmp/raw}
export DAGSTER_HOME=${DAGSTER_HOME:-/tmp/dagster_home} GX_ANALYTICS_ENABLED=false
mkdir -p "$DAGSTER_HOME" && cp dagster.yaml "$DAGSTER_HOME/"
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m unified_pipeline.cli sample-data
job=data_lane; case ",$sections," in *,overhead,*) job=collaborative_training;; esac
t0=$(date +%s); python3 -m dagster job execute -m unified_pipeline.definitions -j $job > /tmp/$job.log 2>&1 \
  || { tail -50 /tmp/$job.log; exit 1; }
echo "$job: $(( $(date +%s) - t0 ))s"
if [ "${sections#parallel_}" != "$sections" ]; then python3 -m bench.parallel collaborative_training "${sections#parallel_}"; else python3 -m bench.run --only "$sections"; fi
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/results"; cp docs/benchmarks.md "$OUT/"; cp bench/results/*.json "$OUT/results/" 2>/dev/null || true; fi
