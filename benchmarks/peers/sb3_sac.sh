#!/usr/bin/env bash
# Stable-Baselines3's SAC as a peer of our `sac` recipe: builds a scratch venv outside the repository on first use
# (torch==2.13.0 first: an unpinned torch would pull a CUDA build; then stable-baselines3 and gymnasium's MuJoCo at
# the versions our venv has), then runs benchmarks/peers/sb3_sac.py in it with the arguments given:
#
#   bash benchmarks/peers/sb3_sac.sh --env Hopper-v5 --seed 0 --steps 50000 --logdir runs/peers/sb3-sac-s0
#
# benchmarks/peers/sac_side_by_side.py runs both libraries at equal settings and compares them.
#
# Environment variables (defaults in brackets):
#   SB3_VENV   scratch venv, outside the repo        [$HOME/.cache/reweigh-peers/sb3-2.9.2]
#   PYTHON     interpreter that builds the venv      [python3]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${SB3_VENV:-$HOME/.cache/reweigh-peers/sb3-2.9.2}"
stamp="$venv/.installed-sb3-2.9.2"
if [ ! -f "$stamp" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install -q "torch==2.13.0"
  "$venv/bin/pip" install -q "torch==2.13.0" "stable-baselines3==2.9.2" "gymnasium[mujoco]==1.4.0" "mujoco==3.17.0"
  touch "$stamp"
fi
exec "$venv/bin/python" "$here/sb3_sac.py" "$@"
