#!/usr/bin/env bash
# Issue 10's learning comparison on this 2-core machine (two runs at a time, one torch thread each; resumable:
# re-running continues unfinished runs and reuses finished ones):
#   admrl vs mb-unif vs mb-gauss on admrl:halfcheetah-vel, cpu preset, 3 seeds × STEPS real env steps, judged by the
#   worst-case suboptimality gap over the test grid (lower is better).  The references A*(ψ) are shared by every run
#   through one cache directory, filled first by benchmarks/admrl_references.py.
set -euo pipefail
RUNS=${RUNS:-$HOME/runs}
CMP=${CMP:-$RUNS/cmp-admrl}
STEPS=${STEPS:-50000}
SEEDS=${SEEDS:-0,1,2}
ENV=${ENV:-admrl:halfcheetah-vel}
REWEIGH=${REWEIGH:-reweigh}
PY=${PY:-python}
mkdir -p "$CMP"
# The references first, once, split over the two cores (runs started together would each compute all of them).
for shard in 0 1; do
  "$PY" benchmarks/admrl_references.py --env "$ENV" --reference-dir "$CMP/reference" --shard $shard --shards 2 \
    > "$CMP/references-$shard.log" 2>&1 &
done
wait
"$REWEIGH" compare --recipes admrl,mb-unif,mb-gauss --env "$ENV" --seeds "$SEEDS" --steps "$STEPS" \
  --logdir "$CMP" --jobs 2 --threads 1 --name all --set "reference_dir=$CMP/reference"
"$REWEIGH" compare --recipes admrl,mb-gauss --env "$ENV" --seeds "$SEEDS" --steps "$STEPS" --logdir "$CMP" --no-run \
  --name admrl-vs-gauss --set "reference_dir=$CMP/reference"
