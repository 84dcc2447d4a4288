#!/usr/bin/env bash
# Issue 4's experiments on this 2-core machine (two runs at a time, one torch thread each; resumable):
#  1. tempo vs dreamerv2, dmc:cartpole_swingup, cpu preset, proprio, 3 seeds × 100k env steps;
#  2. tempo with the correct vs the official-code SameState sign, 3 seeds × 50k (the correct-sign runs of (1)
#     are reused: compare only needs runs that reach the requested steps).
# train_every=10: the cpu preset's value when these ran (it is 2 since 2026-12-03).
# Finished dreamerv2 runs of the same config (benchmarks/dreamer_cartpole.sh) are linked in, not repeated.
set -euo pipefail
RUNS=${RUNS:-$HOME/runs}
CMP=${CMP:-$RUNS/cmp-cartpole}
REWEIGH=${REWEIGH:-reweigh}
mkdir -p "$CMP"
for seed in 0 1 2; do
  if [ -d "$RUNS/dv2-tn-s$seed" ] && [ ! -e "$CMP/dreamerv2-s$seed" ]; then
    ln -s "$RUNS/dv2-tn-s$seed" "$CMP/dreamerv2-s$seed"
  fi
done
"$REWEIGH" compare --recipes tempo,dreamerv2 --env dmc:cartpole_swingup --seeds 0,1,2 --steps 100000 \
  --set train_every=10 --logdir "$CMP" --jobs 2 --threads 1
"$REWEIGH" compare --recipes tempo,tempo+convention=official --env dmc:cartpole_swingup --seeds 0,1,2 \
  --steps 50000 --set train_every=10 --logdir "$CMP" --jobs 2 --threads 1 --name sign
