"""mbrl-lib 0.2.0's MBPO on a gymnasium MuJoCo task, logged as one of our run directories (run in the peer's scratch
venv by ``benchmarks/peers/mbrl_mbpo.sh``; it imports nothing of this repository).

The training loop is mbrl-lib's own ``mbrl.algorithms.mbpo.train``, called as mbrl-lib's ``mbrl/examples/main.py``
calls it (``EnvHandler.make_env`` twice, ``np.random.seed``/``torch.manual_seed``), with the config composed by
Hydra from the wheel's bundled ``mbrl/examples/conf``: ``main`` + ``algorithm=mbpo`` + ``overrides=mbpo_hopper``
(the ``--overrides`` file; ``mbpo_halfcheetah``/``mbpo_walker``/``mbpo_ant``/... are picked from --env's name) +
``dynamics_model=gaussian_mlp_ensemble``.  The setting flags below become Hydra override strings (``++key=value``;
--steps and --dataset-size are set on the composed config); ``--set KEY=VALUE`` passes any other override (e.g.
``--set overrides.sac_alpha=0.1``).  Omitted flags leave mbrl-lib's value (in brackets: Hopper's).

    --steps              total env steps, initial exploration included: ``overrides.num_steps`` (mbrl-lib counts
                         the loop only) = steps - init_steps; the run stops after exactly --steps env steps
                         (mbrl-lib would finish the epoch).  Default: mbrl-lib's num_steps + its init steps
    --init-steps         algorithm.initial_exploration_steps (5000; mbrl-lib explores with the untrained SAC
                         policy, ``random_initial_explore=false``)
    --sac-updates        overrides.num_sac_updates_per_step (Hopper: 40)
    --rollouts-per-step  overrides.effective_model_rollouts_per_step (400); mbrl-lib rolls out
                         rollouts_per_step * freq_train_model start states at once after each model training
    --rollout-schedule   overrides.rollout_schedule: MIN_EPOCH MAX_EPOCH MIN_LEN MAX_LEN ([20, 150, 1, 15]; an
                         mbrl-lib epoch is epoch_length = 1000 loop steps, initial exploration not counted)
    --freq-train-model   overrides.freq_train_model (250 env steps)
    --model-max-epochs   overrides.num_epochs_train_model (unset in mbrl-lib: train until patience runs out)
    --patience           overrides.patience (5)
    --ensemble-size      dynamics_model.ensemble_size (7)     --elites     overrides.num_elites (5)
    --hidden-size        dynamics_model.hid_size (200)        --model-layers  dynamics_model.num_layers (4)
    --sac-hidden         overrides.sac_hidden_size (512)
    --real-data-ratio    algorithm.real_data_ratio (0.0): probability that a whole SAC batch comes from real data
    --dataset-size       algorithm.dataset_size, the real replay buffer's capacity: default --steps (every real
                         transition kept, as our recipe's D_env).  mbrl-lib leaves it unset and sizes the buffer
                         overrides.num_steps (loop steps), so at its defaults the last 5000 of 130000 real steps
                         overwrite the exploration data, and a short --steps would shrink the buffer with it: pass
                         --dataset-size STEPS-INIT_STEPS for mbrl-lib's own sizing
    --threads            torch threads (1)

Evaluation: mbrl-lib's loop only evaluates at the end of each epoch (every ``epoch_length`` loop steps, one episode,
mean only), so this wrapper evaluates from a hook instead: ``mbrl.util.common.step_env_and_add_to_buffer`` (every
real env step of the initial exploration and of the loop goes through it) is wrapped so that after every
--eval-every-th env step (counted from the first exploration step) --eval-episodes episodes run with mbrl-lib's own
evaluation action (``agent.act(obs)``: the SAC policy's deterministic mean) on a separate env seeded seed + 10000 on
its first reset, as our run loop's evaluation env; one more evaluation follows the last step when --steps is not a
multiple of --eval-every. The same hook ends the run after --steps env steps. The agent evaluated is the SAC agent
``mbpo.train`` made, also while a random initial exploration (``--set algorithm.random_initial_explore=true``) hands
the hook mbrl-lib's ``RandomAgent`` instead (as our run loop evaluates its SAC policy at the end of its random
prefill): ``mbrl.algorithms.mbpo.SACAgent`` is replaced by a subclass that only records its instance. That subclass
and the wrapper are the only patches of mbrl-lib. ``--sample-real-actions`` (off by default) makes the same hook pass
``sample=True`` to the agent's real-env action, as MBPO's code acts; mbrl-lib 0.2.0 acts with the mean. mbrl-lib's
own per-epoch evaluation still runs (results.csv, sac.pth: 1 episode every 1000 loop steps, well under 1% of the
time), and it still saves model.pth and replay_buffer.npz into LOGDIR after every model training. The policy's
evaluation action draws (and discards) a noise sample from torch's global generator, so evaluations, ours as
mbrl-lib's, shift the random stream of the training that follows them.

Adapting mbrl-lib 0.2.0 (written for Hydra 1.0.3, which does not import on Python 3.11) to Hydra 1.3.2, all by
config, each written into config.json: the config is composed with ``version_base="1.1"`` (Hydra 1.3 reads the
``# @package _group_`` headers of mbrl-lib's config files only in that compatibility mode; under the newer default
the groups land under a literal ``_group_`` key); ``++algorithm.agent._recursive_=false`` and
``++dynamics_model._recursive_=false``, because Hydra >= 1.1 instantiates nested ``_target_`` nodes by default while
Hydra 1.0.3 passed them on as plain config nodes, which mbrl-lib relies on: the SAC constructor reads
``action_space: {_target_: gym.env.Box, ...}`` (a class that does not exist) as a config node, and GaussianMLP
instantiates ``activation_fn_cfg: {_target_: torch.nn.SiLU}`` itself; an empty ``action_optimizer/cem`` config is
registered in Hydra's ConfigStore and deleted again (``~action_optimizer``), because ``main.yaml`` lists it as a
default and the wheel does not ship ``conf/action_optimizer``; ``device=cpu`` (mbrl-lib's default is cuda:0).
Versions pinned and why: see mbrl_mbpo.sh.

Writes ``LOGDIR/config.json`` (``recipe: mbrl-mbpo``, the wrapper's settings, the Hydra overrides, the full resolved
mbrl-lib config ``mbrl_cfg``, package versions), ``LOGDIR/metrics.jsonl`` (one line per evaluation: ``step``,
``eval_return``, ``eval_return_se`` = std(ddof=1)/sqrt(episodes), ``time`` (a Unix timestamp, as in our runs' and
sb3_sac.py's metrics) and ``wall_s`` (seconds since the start of training)),
``LOGDIR/machine.jsonl``, and mbrl-lib's own outputs (results.csv, train.csv, model_train.csv, model.pth,
replay_buffer.npz, sac.pth).  ``--dry-run`` prints the resolved config and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gymnasium as gym
import mbrl
import mbrl.algorithms.mbpo as mbpo
import mbrl.planning
import mbrl.util.common
import mbrl.util.env
import numpy as np
import omegaconf
import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from peer_common import cpu_name, episode_returns

# mbrl-lib's configs use Hydra 1.0's "# @package _group_" header and no _self_: supported (with these warnings) under
# version_base="1.1", the compatibility mode compose_config uses.
warnings.filterwarnings("ignore", message=".*(deprecated keyword in package header|Defaults list is missing `_self_`)")
warnings.filterwarnings("ignore", message=".*np.bool8", category=DeprecationWarning)  # gymnasium 0.26.3's checker
CONF_DIR = Path(mbrl.__file__).parent / "examples" / "conf"
OVERRIDES_BY_ENV = {
    "Hopper": "mbpo_hopper",
    "HalfCheetah": "mbpo_halfcheetah",
    "Walker2d": "mbpo_walker",
    "Ant": "mbpo_ant",
    "Humanoid": "mbpo_humanoid",
    "InvertedPendulum": "mbpo_inv_pendulum",
}
# flag -> Hydra key; the flag's value (when given) becomes "++key=value".
FLAG_KEYS = {
    "init_steps": "algorithm.initial_exploration_steps",
    "sac_updates": "overrides.num_sac_updates_per_step",
    "rollouts_per_step": "overrides.effective_model_rollouts_per_step",
    "rollout_schedule": "overrides.rollout_schedule",
    "freq_train_model": "overrides.freq_train_model",
    "model_max_epochs": "overrides.num_epochs_train_model",
    "patience": "overrides.patience",
    "ensemble_size": "dynamics_model.ensemble_size",
    "elites": "overrides.num_elites",
    "hidden_size": "dynamics_model.hid_size",
    "model_layers": "dynamics_model.num_layers",
    "sac_hidden": "overrides.sac_hidden_size",
    "real_data_ratio": "algorithm.real_data_ratio",
}


class StopTraining(Exception):
    """Raised by the step hook once --steps env steps have been taken."""


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="Hopper-v4")
    ap.add_argument("--overrides", help="mbrl-lib overrides config (default: from --env, e.g. mbpo_hopper)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, help="total env steps, initial exploration included")
    ap.add_argument("--logdir", type=Path)
    ap.add_argument("--eval-every", type=int, default=5_000)
    ap.add_argument("--eval-episodes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init-steps", type=int)
    ap.add_argument("--sac-updates", type=int)
    ap.add_argument("--rollouts-per-step", type=int)
    ap.add_argument("--rollout-schedule", type=int, nargs=4, metavar=("MIN_EPOCH", "MAX_EPOCH", "MIN_LEN", "MAX_LEN"))
    ap.add_argument("--freq-train-model", type=int)
    ap.add_argument("--model-max-epochs", type=int)
    ap.add_argument("--patience", type=int)
    ap.add_argument("--ensemble-size", type=int)
    ap.add_argument("--elites", type=int)
    ap.add_argument("--hidden-size", type=int)
    ap.add_argument("--model-layers", type=int)
    ap.add_argument("--sac-hidden", type=int)
    ap.add_argument("--real-data-ratio", type=float)
    ap.add_argument("--dataset-size", type=int, help="real replay buffer capacity (default: --steps)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any Hydra override")
    ap.add_argument("--quiet", action="store_true", help="mbrl-lib's silent=True (no train/model logs)")
    ap.add_argument(
        "--sample-real-actions",
        action="store_true",
        help="act in the real env with a sample of the policy, as MBPO's code does (mbrl-lib 0.2.0: the mean); "
        "off by default, the peer as it ships",
    )
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = ap.parse_args()
    if not args.dry_run and args.logdir is None:
        ap.error("--logdir is required")
    return args


def overrides_name(args: argparse.Namespace) -> str:
    """The mbrl-lib overrides config for --env (or --overrides)."""
    if args.overrides:
        return args.overrides
    for prefix, name in OVERRIDES_BY_ENV.items():
        if args.env.startswith(prefix):
            return name
    raise SystemExit(f"no mbrl-lib MBPO overrides known for {args.env}: pass --overrides")


def hydra_overrides(args: argparse.Namespace) -> list[str]:
    """Hydra override strings for the flags given (steps are applied after composing, see ``compose_config``)."""
    out = [
        "algorithm=mbpo",
        f"overrides={overrides_name(args)}",
        "~action_optimizer",
        f"++overrides.env=gym___{args.env}",
        f"seed={args.seed}",
        "device=cpu",
        "++algorithm.agent._recursive_=false",
        "++dynamics_model._recursive_=false",
    ]
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            out.append(f"++{key}={json.dumps(value)}")
    return out + list(args.set)


def compose_config(args: argparse.Namespace) -> tuple[omegaconf.DictConfig, list[str]]:
    """mbrl-lib's config composed by Hydra from the wheel's conf directory, with --steps and --dataset-size."""
    ConfigStore.instance().store(group="action_optimizer", name="cem", node={})
    overrides = hydra_overrides(args)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.1"):
        cfg = compose(config_name="main", overrides=overrides)
    init = cfg.algorithm.initial_exploration_steps
    total = args.steps if args.steps is not None else init + cfg.overrides.num_steps
    if total <= init:
        raise SystemExit("--steps must exceed the initial exploration steps")
    with omegaconf.open_dict(cfg):
        cfg.overrides.num_steps = total - init
        cfg.algorithm.dataset_size = args.dataset_size or total
    return cfg, overrides


def complete_config(cfg: omegaconf.DictConfig, env: gym.Env) -> None:
    """Fills the ``???`` sizes as ``mbpo.train`` would (idempotent), so config.json holds what ran."""
    mbrl.planning.complete_agent_cfg(env, cfg.algorithm.agent)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    cfg.dynamics_model.in_size = obs_dim + act_dim
    cfg.dynamics_model.out_size = obs_dim + int(cfg.algorithm.learned_rewards)


def record(step: int, returns: list[float], t0: float) -> dict[str, float]:
    """One metrics.jsonl line."""
    se = float(np.std(returns, ddof=1) / np.sqrt(len(returns))) if len(returns) > 1 else 0.0
    wall = round(time.perf_counter() - t0, 3)
    return {
        "step": step,
        "eval_return": float(np.mean(returns)),
        "eval_return_se": se,
        "time": round(time.time(), 3),
        "wall_s": wall,
    }


def install_step_hook(args: argparse.Namespace, total_steps: int, eval_env: gym.Env, t0: float) -> None:
    """Wraps mbrl-lib's ``step_env_and_add_to_buffer``: evaluation of the SAC agent (recorded as ``mbpo.train`` makes
    it) every --eval-every env steps, stop at --steps."""
    original: Callable = mbrl.util.common.step_env_and_add_to_buffer
    count = 0
    made: list[Any] = []

    class RecordedSACAgent(mbpo.SACAgent):
        """mbrl-lib's ``SACAgent``, its instance recorded for the evaluations."""

        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            made.append(self)

    def hooked(env: gym.Env, obs: np.ndarray, agent: Any, *rest: Any, **kwargs: Any) -> Any:
        """mbrl-lib's env step, then an evaluation (of the SAC agent) when one is due."""
        nonlocal count
        if args.sample_real_actions and rest:  # rest[0]: the agent_kwargs mbpo.train passes as {}
            rest = ({**rest[0], "sample": True}, *rest[1:])
        out = original(env, obs, agent, *rest, **kwargs)
        count += 1
        if count % args.eval_every == 0 or count == total_steps:
            policy = made[-1] if made else agent
            line = record(count, episode_returns(policy.act, eval_env, args.eval_episodes), t0)
            with open(args.logdir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            print(f"[mbrl_mbpo] {json.dumps(line)}", flush=True)
        if count >= total_steps:
            raise StopTraining
        return out

    mbpo.SACAgent = RecordedSACAgent
    mbrl.util.common.step_env_and_add_to_buffer = hooked


def write_run_files(args: argparse.Namespace, cfg: omegaconf.DictConfig, overrides: list[str], total: int) -> None:
    """config.json and machine.jsonl in --logdir."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    packages = ["mbrl", "torch", "gymnasium", "mujoco", "hydra-core", "omegaconf", "numpy"]
    rollout_batch = cfg.overrides.effective_model_rollouts_per_step * cfg.algorithm.freq_train_model
    config = {
        "recipe": "mbrl-mbpo",
        **settings,
        "env": f"gym:{args.env}",
        "total_env_steps": total,
        "rollout_batch_size": rollout_batch,
        "hydra_overrides": overrides,
        "versions": {p: version(p) for p in packages},
        "mbrl_cfg": omegaconf.OmegaConf.to_container(cfg, resolve=True),
    }
    (args.logdir / "config.json").write_text(json.dumps(config, indent=1))
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    (args.logdir / "machine.jsonl").write_text(json.dumps({**machine, "torch": torch.__version__}) + "\n")


def main() -> None:
    """Composes the config, writes the run files and runs ``mbpo.train`` as mbrl-lib's main.py does."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    cfg, overrides = compose_config(args)
    env, term_fn, _ = mbrl.util.env.EnvHandler.make_env(cfg)
    complete_config(cfg, env)
    total = cfg.algorithm.initial_exploration_steps + cfg.overrides.num_steps
    if args.dry_run:
        print(omegaconf.OmegaConf.to_yaml(cfg, resolve=True) + f"# hydra overrides: {overrides}\n# env steps: {total}")
        return
    args.logdir.mkdir(parents=True, exist_ok=True)
    if (args.logdir / "metrics.jsonl").exists():
        raise SystemExit(f"{args.logdir} already holds a run (mbrl-lib runs do not resume): use a new --logdir")
    write_run_files(args, cfg, overrides, total)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    test_env, *_ = mbrl.util.env.EnvHandler.make_env(cfg)
    eval_env = gym.make(args.env)
    eval_env.reset(seed=args.seed + 10_000)
    t0 = time.perf_counter()
    install_step_hook(args, total, eval_env, t0)
    try:
        mbpo.train(env, test_env, term_fn, cfg, silent=args.quiet, work_dir=str(args.logdir))
    except StopTraining:
        pass
    print(f"[mbrl_mbpo] done: {total} env steps in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
