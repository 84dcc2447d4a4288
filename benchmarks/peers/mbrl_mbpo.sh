#!/usr/bin/env bash
# mbrl-lib 0.2.0's MBPO (facebookresearch/mbrl-lib, PyPI mbrl==0.2.0) as a peer of our `mbpo` recipe: builds a
# scratch venv outside the repository on first use, then runs benchmarks/peers/mbrl_mbpo.py in it with the arguments
# given (mbrl-lib's own mbpo.train with its mbpo_hopper config; the flags, the evaluation hook and the outputs are
# described in that file's docstring):
#
#   OMP_NUM_THREADS=1 nice -n 10 bash benchmarks/peers/mbrl_mbpo.sh --env Hopper-v4 --seed 0 --steps 130000 \
#       --logdir runs/peers/mbrl-mbpo-s0 [--sac-updates 20 --real-data-ratio 0.05 ...] [--dry-run]
#
# Environment variables (defaults in brackets):
#   MBRL_VENV        scratch venv, outside the repo        [$HOME/.cache/reweigh-peers/mbrl-0.2.0]
#   PYTHON           interpreter that builds the venv      [python3; must be 3.11: the torch wheel below is cp311]
#   OMP_NUM_THREADS  set to 1 here unless given; the wrapper also sets torch.set_num_threads(--threads, default 1)
#
# What running mbrl-lib 0.2.0 on this machine (Python 3.11, CPU only, headless) takes, and why each pin:
#   torch==2.13.0            first and in every later pip call: the CPU wheel from the local cache (an unpinned torch
#                            pulls a multi-GB CUDA build); mbrl declares no torch requirement
#   mbrl==0.2.0 --no-deps    its metadata pins hydra-core==1.0.3 and omegaconf<2.1, and pulls jupyter, pytest,
#                            tensorboard, matplotlib and sk-video, none of which MBPO imports.  The wheel does ship
#                            mbrl/examples/conf (algorithm/mbpo.yaml, overrides/mbpo_hopper.yaml, ...), but not
#                            conf/action_optimizer nor examples/main.py
#   hydra-core==1.3.2, omegaconf==2.3.0
#                            hydra-core 1.0.x (1.0.3 and 1.0.7 tried) fails at import on Python 3.11 (dataclass
#                            "mutable default ... use default_factory"); 1.3 is the first Hydra that supports 3.11.
#                            mbrl_mbpo.py adapts the config to it (version_base="1.1", _recursive_=false, a stub
#                            action_optimizer/cem): no mbrl-lib source is patched
#   gymnasium==0.26.3        mbrl 0.2.0's exact pin (Hopper-v4; there is no Hopper-v5 in 0.26.3)
#   mujoco==2.3.1.post1      gymnasium 0.26.3's [mujoco] extra pins mujoco==2.2, which has no cp311 wheel (2.2.0-2.2.2
#                            and 2.3.0 have no cp311 wheel); 2.3.1.post1 is the oldest release with one, and
#                            gymnasium 0.26.3's Hopper-v4 runs on it unchanged.  Pulls absl-py, glfw and PyOpenGL,
#                            which stay unused (nothing renders)
#   numpy==1.26.4            numpy<2: gymnasium 0.26.3's env checker uses np.bool8 (removed in numpy 2) and mujoco
#                            2.3.1 is built against numpy 1.x
#   termcolor, tqdm, imageio, packaging
#                            imported by mbrl.util.logger, mbrl.models.model_trainer, mbrl.third_party.pytorch_sac
#                            (VideoRecorder) and mbrl.util.math; pinned at the versions first installed
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${MBRL_VENV:-$HOME/.cache/reweigh-peers/mbrl-0.2.0}"
stamp="$venv/.installed-mbrl-0.2.0"
if [ ! -f "$stamp" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install -q "torch==2.13.0"
  "$venv/bin/pip" install -q --no-deps "torch==2.13.0" "mbrl==0.2.0"
  "$venv/bin/pip" install -q "torch==2.13.0" "numpy==1.26.4" "gymnasium==0.26.3" "mujoco==2.3.1.post1" \
    "hydra-core==1.3.2" "omegaconf==2.3.0" "termcolor==3.3.0" "tqdm==4.70.1" "imageio==2.38.2" "packaging==26.4"
  touch "$stamp"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$venv/bin/python" "$here/mbrl_mbpo.py" "$@"
