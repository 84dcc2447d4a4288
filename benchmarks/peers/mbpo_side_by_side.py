"""Our ``mbpo`` beside mbrl-lib 0.2.0's MBPO at equal settings on a gymnasium MuJoCo task (Hopper-v4: mbrl-lib's
gymnasium 0.26.3 has no Hopper-v5): the same SAC, model, rollout and evaluation settings, seeds and env steps.

    python benchmarks/peers/mbpo_side_by_side.py --env Hopper-v4 --seeds 0,1,2 --steps 130000 --logdir runs/peers/mbpo
    python benchmarks/peers/mbpo_side_by_side.py ... --sac-updates 10 --rollouts-per-step 100 --model-max-epochs 20
    python benchmarks/peers/mbpo_side_by_side.py ... --dry-run      # both commands of every seed, nothing run
    python benchmarks/peers/mbpo_side_by_side.py ... --no-run       # the table from the runs already there

Our runs are ``reweigh run mbpo --env gym:ENV --preset paper --set threads=1`` plus the rollout schedule and the
reduced settings below as ``--set``; mbrl-lib's are ``benchmarks/peers/mbrl_mbpo.sh`` (its own ``mbpo.train`` with
its ``mbpo_hopper`` config) with every setting that differs from ours overridden by a flag or a Hydra override.  The
peer's values are read from our resolved run config (``recipes.registry.resolve``, the same ``--set`` as our
command), so the two cannot drift apart; a setting of ours that mbrl-lib cannot mirror stops the tool
(``check_mirrorable``).  Runs go two at a time with one torch thread each, in ``LOGDIR/ours-sS`` and
``LOGDIR/mbrl-sS``; a finished run is not run again, an unfinished one of ours resumes, an unfinished one of
mbrl-lib's (which cannot resume) is moved aside to ``LOGDIR/mbrl-sS.unfinished-N`` and started again.

Reduced settings, each given to both sides (omitted: our paper preset's value): ``--init-steps`` (prefill /
initial_exploration_steps), ``--sac-updates`` (G per env step), ``--rollouts-per-step`` (M), ``--model-max-epochs``
(cap per model fit; default none: until the patience runs out), ``--patience``, ``--eval-every``;
``--rollout-schedule MIN_EPOCH MAX_EPOCH MIN_LEN MAX_LEN`` in mbrl-lib's terms (default MBPO's Hopper schedule 20 150 1
15 of both MBPO's code and mbrl-lib, which our paper preset lacks: its k is 1 throughout).

Mapping (setting | ours: MBPOConfig field | mbrl-lib: flag of mbrl_mbpo.py or Hydra key | value at the paper preset):

    SAC hidden layers × units      sac_layers × sac_units      pranz24 SAC: 2 (fixed) × --sac-hidden       2 × 256
    SAC Adam lr (actor, critic, α) sac_lr                      overrides.sac_lr                            3e-4
    SAC batch                      sac_batch                   overrides.sac_batch_size                    256
    τ, γ                           tau, gamma                  overrides.sac_tau, overrides.sac_gamma      0.005, 0.99
    learned α                      (always)                    overrides.sac_automatic_entropy_tuning      true
    target entropy                 target_entropy (None: −|A|) overrides.sac_target_entropy (null: −|A|)   −3
    initial α                      sac_init_alpha              overrides.sac_alpha (first update; log α=0) 1.0
    target update interval         sac_target_update_every     overrides.sac_target_update_interval        1
    SAC updates per env step       sac_updates, train_every=1  --sac-updates, sac_updates_every_steps=1    10
    initial exploration            prefill (uniform random)    --init-steps, random_initial_explore=true   5000
    real share of a SAC batch      real_ratio_start = _end     --real-data-ratio                           0.05
    model rollouts per env step    rollouts_per_step           --rollouts-per-step                         400
    rollout length k               rollout_length(_end/_from/_until)  --rollout-schedule                   see above
    model fit every                model_every                 --freq-train-model                          250
    model epochs cap / patience    model_max_epochs, model_patience  --model-max-epochs, --patience        none, 5
    improvement that counts        model_improvement           overrides.improvement_threshold             0.01
    hold-out share                 holdout_ratio               overrides.validation_ratio                  0.2
    ensemble / elites              members, elites             --ensemble-size, --elites                   7, 5
    model hidden layers × units    model_layers × model_units  --model-layers × --hidden-size              4 × 200
    model activation               model_activation            dynamics_model.activation_fn_cfg (SiLU)     silu
    model Adam lr, weight decay    model_lr, model_wd          overrides.model_lr, overrides.model_wd      1e-3, 1e-5
    model batch                    model_batch                 overrides.model_batch_size                  256
    learned log-variance bounds    (always)                    dynamics_model.learn_logvar_bounds          true
    model data kept (env steps)    model_retain                num_epochs_to_retain_sac_buffer × epoch_length  1000
    rollout actions sampled        (always)                    algorithm.sac_samples_action                true
    real data kept                 D_env keeps every step      --dataset-size (default --steps)            all
    evaluation                     eval_every, eval_episodes   --eval-every, --eval-episodes (hook)        5000, 3

Both evaluate the policy's deterministic mean on a separate env seeded seed + 10000.  The rollout schedule is
converted exactly: mbrl-lib's k in loop epoch e (e = 0, 1, ... after the initial exploration, ``epoch_length`` =
1000 env steps) is int(truncated_linear(MIN_EPOCH, MAX_EPOCH, MIN_LEN, MAX_LEN, e + 1)); ours at env step t is
int(rollout_length + clip((t − from) / (until − from), 0, 1) · (rollout_length_end − rollout_length)) with from =
prefill + (MIN_EPOCH − 1) · 1000 and until = prefill + (MAX_EPOCH − 1) · 1000, the same number at the start of every
mbrl-lib epoch (t = prefill + 1000 e).

Known differences (each library does it its own way; no setting makes them equal):

* Real-env actions: mbrl-lib 0.2.0's loop acts with the SAC policy's deterministic mean (``mbpo.train`` calls
  ``step_env_and_add_to_buffer(env, obs, agent, {}, ...)``, and ``SACAgent.act`` defaults to ``sample=False``);
  ours, as MBPO's code (softlearning's sampler), samples from the policy.  mbrl-lib's real data after the initial
  exploration thus carries no exploration noise (its model rollouts do sample); ``mbrl_mbpo.py --sample-real-actions``
  (off here) makes it sample, to tell whether this difference explains a gap.
* Episodes: mbrl-lib resets the real env at the start of every epoch (every 1000 loop steps), cutting the episode
  under way (not as a terminal); ours (and MBPO's code) run every episode to its end or time limit.
* When rollouts happen: mbrl-lib (as MBPO's code) rolls out rollouts_per_step × freq_train_model (400 × 250) start
  states at once right after each model fit, with the policy of that moment; ours rolls out rollouts_per_step every
  env step with the current policy (MBPO's Algorithm 2).  The same number per env step and the same retention.
* First model fit: ours fits at the end of the prefill (env step 5000, as MBPO's code, which fits at step 0 of each
  epoch) and trains SAC from then on; mbrl-lib fits first after 250 loop steps (env step 5250), and until then its
  SAC update loop stops at the first draw of the empty model buffer (only the few real-data draws before it update).
* Real/model mixture: ours takes round(0.05 × 256) = 13 rows of every SAC batch from real data (MBPO's code:
  int(0.05 × 256) = 12); mbrl-lib takes each whole batch from real data with probability 0.05 (the same share in
  expectation, but 95% of its updates see no real data).
* Rollout-length schedule: mbrl-lib's k is constant within an epoch; ours is linear in env steps, equal to mbrl-lib's
  at each epoch start and within an epoch at most that of the next epoch (reaching each new k up to 1000 env steps
  earlier).  (mbrl-lib's ``epoch + 1`` is itself one epoch ahead of MBPO's code, which uses the epoch index.)
* Model targets: ours normalises inputs and targets (Δo, r) by running mean/std and scores the hold-out (early
  stopping, elites) by the MSE in normalised units; mbrl-lib normalises the inputs only, so its NLL and hold-out MSE
  are in raw units, dominated by the dimensions with large Δ (the velocities).
* Model loss scale: mbrl-lib's NLL is a mean over rows and dimensions, summed over members; ours a sum over
  dimensions with the ½ factors, averaged over members.  Adam makes the step nearly scale-free, but the weight
  decay's strength relative to the loss gradient differs.
* Bootstrap and epochs: mbrl-lib gives each member indices drawn with replacement and iterates them, the last
  minibatch partial; ours weights each row of a shuffled minibatch by its per-member bootstrap count and drops the
  last partial minibatch.  Both draw a fresh 80/20 hold-out split at every fit and keep training the same model.
* Early stopping: mbrl-lib scores the hold-out once before the first epoch (the untrained model is its first best),
  restores the best weights and picks the elites by each member's best score over the epochs; ours counts from the
  first epoch and picks the elites by the restored model's hold-out score.  Both: any member > 1% better resets the
  patience.
* Model member per model step: mbrl-lib splits each step's rollout batch evenly over the elites by a random
  permutation; ours (and MBPO's code) draws an elite per rollout and step independently.
* SAC details: pranz24's networks start from Xavier-uniform weights, ours from PyTorch's default; its critic loss is
  the sum of the two MSEs, ours half of it (Adam: nearly the same step); its tanh correction adds ε = 1e-6 inside
  the log, ours is exact; its α starts at 1 (log α = 0 hard-coded), so only sac_init_alpha = 1 is mirrorable.
* Numerics: mbrl-lib keeps real data and its normaliser in float64, ours float32 data with float64 statistics; its
  Hopper-v4 runs on gymnasium 0.26.3 / mujoco 2.3.1, ours on our gymnasium 1.x / mujoco 3.x (the same model file).
* Termination in model rollouts: the same conditions (|obs[1:]| < 100, z > 0.7, |angle| < 0.2); mbrl-lib's also
  ends a rollout at a non-finite observation.
* Ours needs a termination function for gym:Hopper-v4 (``recipes.envs.gym.TERMINATIONS`` lists Hopper-v5 only);
  without it our run stops at start with "no termination function is known for 'gym:Hopper-v4'".

The test (as sac_side_by_side.py's): at every evaluation a two-sided Welch p > 0.1 and means within 20% of the
peer's (of the larger magnitude), and on each run's mean over the evaluations the difference with its bootstrap 95%
CI.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import side_by_side
from side_by_side import finished, run_pending

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: mbrl-lib's epoch (env steps), as its mbpo_hopper config has it: the unit of its rollout schedule and retention.
EPOCH_LENGTH = 1000
#: MBPO's Hopper rollout schedule (MBPO's code and mbrl-lib): k from 1 to 15 over epochs 20 to 150.
HOPPER_SCHEDULE = (20, 150, 1, 15)
#: This tool's reduced-setting flags (argparse dest) and the MBPOConfig field each sets on both sides.
REDUCED = {
    "init_steps": "prefill",
    "sac_updates": "sac_updates",
    "rollouts_per_step": "rollouts_per_step",
    "model_max_epochs": "model_max_epochs",
    "patience": "model_patience",
    "eval_every": "eval_every",
}
#: mbrl_mbpo.py's flags and the MBPOConfig field each mirrors (a None field: the flag is left out, mbrl-lib's own
#: default then means the same: no epoch cap).
FLAGS = {
    "init-steps": "prefill",
    "sac-updates": "sac_updates",
    "sac-hidden": "sac_units",
    "rollouts-per-step": "rollouts_per_step",
    "freq-train-model": "model_every",
    "model-max-epochs": "model_max_epochs",
    "patience": "model_patience",
    "ensemble-size": "members",
    "elites": "elites",
    "hidden-size": "model_units",
    "model-layers": "model_layers",
    "real-data-ratio": "real_ratio_start",
    "eval-every": "eval_every",
    "eval-episodes": "eval_episodes",
}
#: Hydra keys of mbrl-lib's config (mbrl_mbpo.py ``--set``) and the MBPOConfig field each mirrors.
KEYS = {
    "overrides.sac_lr": "sac_lr",
    "overrides.sac_batch_size": "sac_batch",
    "overrides.sac_gamma": "gamma",
    "overrides.sac_tau": "tau",
    "overrides.sac_alpha": "sac_init_alpha",
    "overrides.sac_target_entropy": "target_entropy",
    "overrides.sac_target_update_interval": "sac_target_update_every",
    "overrides.sac_updates_every_steps": "train_every",
    "overrides.model_lr": "model_lr",
    "overrides.model_wd": "model_wd",
    "overrides.model_batch_size": "model_batch",
    "overrides.validation_ratio": "holdout_ratio",
    "overrides.improvement_threshold": "model_improvement",
}
#: Hydra keys set to what our recipe always does (no field of ours): α learned, a uniform random initial
#: exploration, learned log-variance bounds, sampled actions in model rollouts, a SiLU model, mbrl-lib's epoch.
FIXED: dict[str, Any] = {
    "overrides.sac_automatic_entropy_tuning": True,
    "algorithm.random_initial_explore": True,
    "dynamics_model.learn_logvar_bounds": True,
    "algorithm.sac_samples_action": True,
    "dynamics_model.activation_fn_cfg._target_": "torch.nn.SiLU",
    "overrides.epoch_length": EPOCH_LENGTH,
}


def resolve_ours(env: str, sets: Sequence[str], steps: int, seed: int = 0) -> Any:
    """Our ``mbpo`` run config at the paper preset with ``sets`` (``KEY=VALUE``, parsed as ``reweigh run`` does)."""
    from recipes.registry import resolve
    from recipes.run.config import parse_sets

    return resolve(f"gym:{env}", "paper", parse_sets(sets), recipe="mbpo", steps=steps, seed=seed)


def schedule_fields(schedule: Sequence[int], prefill: int) -> dict[str, int]:
    """mbrl-lib's ``rollout_schedule`` [MIN_EPOCH, MAX_EPOCH, MIN_LEN, MAX_LEN] as our fields, for a run whose
    initial exploration is ``prefill`` env steps (equal k at every mbrl-lib epoch start, see the module docstring)."""
    min_epoch, max_epoch, min_len, max_len = schedule
    return {
        "rollout_length": min_len,
        "rollout_length_end": max_len,
        "rollout_length_from": prefill + (min_epoch - 1) * EPOCH_LENGTH,
        "rollout_length_until": prefill + (max_epoch - 1) * EPOCH_LENGTH,
    }


def rollout_schedule(cfg: Any) -> list[int]:
    """Our config's rollout-length schedule as mbrl-lib's ``rollout_schedule`` (the inverse of ``schedule_fields``;
    a constant k as [0, 0, k, k], which mbrl-lib's truncated_linear reads as k throughout).

    Raises:
        ValueError: the schedule's ends are not whole mbrl-lib epochs after the prefill.
    """
    if cfg.rollout_length_end is None:
        return [0, 0, cfg.rollout_length, cfg.rollout_length]
    ends = (cfg.rollout_length_from - cfg.prefill, cfg.rollout_length_until - cfg.prefill)
    if any(e % EPOCH_LENGTH for e in ends):
        raise ValueError(
            f"rollout_length_from/until: {ends} env steps after the prefill are not whole mbrl-lib epochs of "
            f"{EPOCH_LENGTH}"
        )
    return [ends[0] // EPOCH_LENGTH + 1, ends[1] // EPOCH_LENGTH + 1, cfg.rollout_length, cfg.rollout_length_end]


def our_sets(env: str, steps: int, schedule: Sequence[int] = HOPPER_SCHEDULE, **reduced: Any) -> list[str]:
    """Our run's ``--set`` overrides: one torch thread, the reduced settings given (``REDUCED``'s names; None: the
    paper preset's value) and mbrl-lib's ``schedule`` in our fields."""
    sets = {"threads": 1, **{REDUCED[k]: v for k, v in reduced.items() if v is not None}}
    items = [f"{k}={json.dumps(v)}" for k, v in sets.items()]
    prefill = resolve_ours(env, items, steps).prefill
    return items + [f"{k}={json.dumps(v)}" for k, v in schedule_fields(schedule, prefill).items()]


def check_mirrorable(cfg: Any) -> None:
    """Raises ValueError naming the settings of ``cfg`` that mbrl-lib's MBPO cannot run the same way."""
    problems = {
        "history_len": cfg.history_len == 0,
        "real_ratio_end": cfg.real_ratio_end == cfg.real_ratio_start,  # mbrl-lib: one constant ratio
        "sac_layers": cfg.sac_layers == 2,  # pranz24's SAC networks: two hidden layers
        "sac_grad_clip": cfg.sac_grad_clip is None,
        "train_every": cfg.train_every == 1,
        "model_activation": cfg.model_activation == "silu",
        "model_loss": cfg.model_loss == "nll" and not cfg.weighting,
        "model_precision": cfg.model_precision == "fp32",
        "sac_init_alpha": cfg.sac_init_alpha == 1.0,  # pranz24: log α starts at 0
        "model_every": EPOCH_LENGTH % cfg.model_every == 0,  # mbrl-lib's model-data capacity counts fits per epoch
        "elites": cfg.rollouts_per_step * cfg.model_every % cfg.elites == 0,  # random_model splits rollouts evenly
        "model_retain": cfg.model_retain % EPOCH_LENGTH == 0,  # whole epochs (num_epochs_to_retain_sac_buffer)
        "action_repeat": cfg.action_repeat == 1,
        "random_episodes": cfg.random_episodes == 0,
        "distractors": cfg.distractors == 0 and cfg.obs_noise == 0,
    }
    bad = [name for name, ok in problems.items() if not ok]
    if bad:
        raise ValueError(f"mbrl-lib's MBPO cannot mirror these settings of ours: {', '.join(bad)}")
    rollout_schedule(cfg)


def peer_settings(cfg: Any) -> list[str]:
    """mbrl_mbpo.py's setting flags and Hydra overrides (``--set ++KEY=VALUE``) mirroring our run config ``cfg``."""
    check_mirrorable(cfg)
    out: list[str] = []
    for flag, field in FLAGS.items():
        if getattr(cfg, field) is not None:
            out += [f"--{flag}", str(getattr(cfg, field))]
    out += ["--rollout-schedule", *map(str, rollout_schedule(cfg))]
    hydra = {**{key: getattr(cfg, field) for key, field in KEYS.items()}, **FIXED}
    hydra["overrides.num_epochs_to_retain_sac_buffer"] = cfg.model_retain // EPOCH_LENGTH
    for key, value in hydra.items():
        out += ["--set", f"++{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return out


def commands(env: str, seed: int, steps: int, logdir: Path, sets: Sequence[str]) -> dict[str, list[str]]:
    """The two runs of one seed: ours (``reweigh run mbpo --preset paper`` with ``sets``) and mbrl-lib's, the latter
    with every setting read from our resolved config."""
    ours = [sys.executable, "-m", "recipes.cli", "run", "mbpo", "--env", f"gym:{env}", "--preset", "paper"]
    ours += ["--steps", str(steps), "--seed", str(seed), "--logdir", str(logdir / f"ours-s{seed}"), "--no-progress"]
    for item in sets:
        ours += ["--set", item]
    cfg = resolve_ours(env, sets, steps, seed)
    peer = ["bash", str(ROOT / "benchmarks/peers/mbrl_mbpo.sh"), "--env", env, "--seed", str(seed)]
    peer += ["--steps", str(steps), "--logdir", str(logdir / f"mbrl-s{seed}"), "--threads", "1"]
    return {"ours": ours, "mbrl": peer + peer_settings(cfg)}


def check_env(env: str) -> None:
    """Stops before any run starts when our recipe cannot run ``gym:ENV`` (model rollouts need its termination
    function, ``recipes.envs.gym.TERMINATIONS``).

    Raises:
        SystemExit: naming the missing termination function.
    """
    from recipes.envs.registry import termination_fn

    try:
        termination_fn(f"gym:{env}")
    except ValueError as err:
        raise SystemExit(f"our mbpo cannot run gym:{env}: {err}") from None


def set_aside_unfinished(logdir: Path, seeds: list[int], steps: int) -> None:
    """Moves an unfinished mbrl-lib run (mbrl-lib runs do not resume) to ``mbrl-sS.unfinished-N``."""
    for seed in seeds:
        run = logdir / f"mbrl-s{seed}"
        if run.exists() and not finished(run, steps):
            n = 1
            while (aside := logdir / f"{run.name}.unfinished-{n}").exists():
                n += 1
            run.rename(aside)
            print(f"moved the unfinished {run.name} to {aside.name}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="Hopper-v4", help="a gymnasium id both have (ours runs it as gym:ID)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=130_000, help="env steps, initial exploration included")
    ap.add_argument("--logdir", type=Path, default=Path("runs/peers/mbpo"))
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    ap.add_argument("--init-steps", type=int, help="initial random env steps (paper: 5000)")
    ap.add_argument("--sac-updates", type=int, help="SAC updates per env step (paper preset: 10)")
    ap.add_argument("--rollouts-per-step", type=int, help="model rollouts per env step (paper: 400)")
    ap.add_argument("--model-max-epochs", type=int, help="epoch cap per model fit (paper: none)")
    ap.add_argument("--patience", type=int, help="model epochs without improvement before stopping (paper: 5)")
    ap.add_argument("--eval-every", type=int, help="env steps between evaluations (paper: 5000)")
    ap.add_argument(
        "--rollout-schedule",
        type=int,
        nargs=4,
        default=list(HOPPER_SCHEDULE),
        metavar=("MIN_EPOCH", "MAX_EPOCH", "MIN_LEN", "MAX_LEN"),
        help="mbrl-lib's rollout_schedule, converted to ours (default MBPO's Hopper: 20 150 1 15)",
    )
    ap.add_argument("--no-run", action="store_true", help="only the table, from the runs already there")
    ap.add_argument("--dry-run", action="store_true", help="print both commands of every seed and exit")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Runs what is not finished (unless --no-run or --dry-run), then prints and writes the table."""
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    reduced = {name: getattr(args, name) for name in REDUCED}
    sets = our_sets(args.env, args.steps, args.rollout_schedule, **reduced)
    runs = {}
    for seed in seeds:
        for name, cmd in commands(args.env, seed, args.steps, args.logdir, sets).items():
            runs[f"{name}-s{seed}"] = cmd
    if args.dry_run:
        for name, cmd in runs.items():
            print(f"# {name}\n{shlex.join(cmd)}")
        return None
    if not args.no_run:
        check_env(args.env)
        set_aside_unfinished(args.logdir, seeds, args.steps)
        run_pending(runs, args.steps, args.logdir, args.jobs)
    result = side_by_side.table(seeds, args.steps, args.logdir, "mbrl")
    print(side_by_side.markdown(result, "mbrl-lib"))
    (args.logdir / "side_by_side.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
