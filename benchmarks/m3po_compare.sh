#!/usr/bin/env bash
# Issue 9's learning comparison on this 2-core machine (two runs at a time, one torch thread each; resumable:
# re-running continues unfinished runs and reuses finished ones):
#   m3po vs sac, mbpo and m3po+weighting on meta:halfcheetah-fwd-bwd, cpu preset, 3 seeds × STEPS env steps.
# Then one summary per pair (the first recipe of each is tested against the second, one-tailed Welch's t-test).
set -euo pipefail
RUNS=${RUNS:-$HOME/runs}
CMP=${CMP:-$RUNS/cmp-m3po}
STEPS=${STEPS:-50000}
SEEDS=${SEEDS:-0,1,2}
ENV=${ENV:-meta:halfcheetah-fwd-bwd}
REWEIGH=${REWEIGH:-reweigh}
mkdir -p "$CMP"
"$REWEIGH" compare --recipes m3po,sac,mbpo,m3po+weighting=true --env "$ENV" --seeds "$SEEDS" --steps "$STEPS" \
  --logdir "$CMP" --jobs 2 --threads 1 --name all
"$REWEIGH" compare --recipes m3po,mbpo --env "$ENV" --seeds "$SEEDS" --steps "$STEPS" --logdir "$CMP" --no-run \
  --name m3po-vs-mbpo
"$REWEIGH" compare --recipes m3po+weighting=true,m3po --env "$ENV" --seeds "$SEEDS" --steps "$STEPS" \
  --logdir "$CMP" --no-run --name weighting
