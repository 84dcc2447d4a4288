"""The online run loop every recipe shares: act, store, train on a cadence, log, evaluate, checkpoint, resume.

It knows no algorithm.  A recipe hands it a :class:`Learner` (its agent and its data) and gets, in the run
directory (:mod:`recipes.run.rundir`), the resolved config, ``metrics.jsonl`` + TensorBoard, checkpoints that resume
after a SIGKILL (losing at most ``checkpoint_every`` env steps), an evaluation at every ``eval_every`` env steps and
at the end, ``curve.png`` and ``eval_episode.gif``.  Read :func:`train` top to bottom: it is the whole loop.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recipes.envs import Env, make_env
from recipes.run import rundir
from recipes.run.config import RunConfig


class Learner(abc.ABC):
    """What the run loop drives: an agent with its data.

    The loop calls :meth:`observe` with every step dict exactly once (the reset step, every transition, and the
    last step of an episode), :meth:`act` to choose actions after ``prefill`` env steps, and :meth:`train` every
    ``train_every`` env steps once ``prefill`` is done and :meth:`ready` is true.  Checkpoints hold
    :meth:`state_dict` (after :meth:`flush`).
    """

    @abc.abstractmethod
    def act(self, step: dict[str, Any], state: Any, *, explore: bool) -> tuple[np.ndarray, Any]:
        """The action for ``step`` (numpy ``[A]``) and the recurrent state to pass with the next step (``None`` at
        an episode's start)."""

    @abc.abstractmethod
    def observe(self, step: dict[str, Any]) -> None:
        """Store one step dict of the training environment."""

    def ready(self) -> bool:
        """Whether there is data to train on."""
        return True

    @abc.abstractmethod
    def train(self, env_steps: int) -> tuple[int, dict[str, float]]:
        """One training call at ``env_steps``: returns (gradient updates done, metrics of the last one)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything to resume: parameters, optimisers, data indices (flat keys of the checkpoint)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def flush(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Persist pending data before a checkpoint (e.g. unfinished episodes of an on-disk replay)."""

    def random_action(self, rng: np.random.Generator, env: Env) -> np.ndarray:
        """A prefill action: uniform over the env's actions (one-hot for discrete ones)."""
        if env.discrete:
            return np.eye(env.action_dim, dtype=np.float32)[rng.integers(env.action_dim)]
        return rng.uniform(-1, 1, env.action_dim).astype(np.float32)


def evaluate(learner: Learner, env: Env, episodes: int, *, record: bool = False) -> tuple[float, list]:
    """Mean return of ``episodes`` greedy episodes; frames of the first one when ``record``."""
    returns, frames = [], []
    for i in range(episodes):
        step, state, total = env.reset(), None, 0.0
        while True:
            if record and i == 0:
                frames.append(env.render())
            action, state = learner.act(step, state, explore=False)
            step = env.step(action)
            total += float(step["reward"])
            if step["is_last"]:
                break
        returns.append(total)
    return float(np.mean(returns)), frames


def train(
    cfg: RunConfig,
    logdir: Path,
    make_learner: Callable[[RunConfig, Env, Path], Learner],
    *,
    recipe: str,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) one run in ``logdir`` until ``cfg.steps`` environment steps; returns a summary.

    Args:
        cfg: the resolved config (written to ``config.json`` with ``recipe``).
        logdir: the run directory.
        make_learner: ``(cfg, env, logdir) -> Learner``, called once the training env exists.
        recipe: the recipe's name, recorded in the config and the plot titles.
        force: resume even if ``config.json`` differs.
        progress: show a progress bar.

    Returns:
        ``{"env_steps", "updates", "eval_return"}`` (the final evaluation's mean return).

    Raises:
        recipes.run.rundir.ConfigMismatchError: when resuming with another config and not ``force``.
    """
    torch.set_num_threads(cfg.threads)
    resuming = rundir.prepare(
        logdir, {"recipe": recipe, **cfg.model_dump()}, force=force, defaults=rundir.field_defaults(cfg)
    )
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    env = make_env(cfg.env, seed=cfg.seed, **cfg.env_kwargs())
    eval_env = make_env(cfg.env, seed=cfg.seed + 10_000, **cfg.env_kwargs(evaluation=True))
    learner = make_learner(cfg, env, logdir)
    logger = rundir.Logger(logdir)
    counters = {
        "env_steps": 0,
        "updates": 0,
        "episodes": 0,
        "last_train": 0,
        "last_eval": 0,
        "last_log": 0,
        "last_ckpt": 0,
    }
    last_eval_return = float("nan")
    if resuming and (ckpt := rundir.load_checkpoint(logdir)) is not None:
        learner.load_state_dict(ckpt)
        counters.update(ckpt["counters"])
        rundir.set_rng_state(ckpt["rng"])
        last_eval_return = ckpt.get("last_eval_return", last_eval_return)

    def checkpoint() -> None:
        learner.flush()
        rundir.save_checkpoint(
            logdir,
            {
                **learner.state_dict(),
                "counters": counters,
                "rng": rundir.rng_state(),
                "last_eval_return": last_eval_return,
            },
        )
        counters["last_ckpt"] = counters["env_steps"]

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=counters["env_steps"], unit="env step", dynamic_ncols=True)
    rng = np.random.default_rng(cfg.seed + counters["env_steps"])
    step, state, episode_return = env.reset(), None, 0.0
    t_start, updates_start, metrics = time.perf_counter(), counters["updates"], {}
    while counters["env_steps"] < cfg.steps:
        learner.observe(step)
        if counters["env_steps"] < cfg.prefill:
            action, state = learner.random_action(rng, env), None
        else:
            action, state = learner.act(step, state, explore=True)
        step = env.step(action)
        episode_return += float(step["reward"])
        counters["env_steps"] += cfg.action_repeat
        if bar is not None:
            bar.update(cfg.action_repeat)
        if step["is_last"]:
            learner.observe(step)
            counters["episodes"] += 1
            logger.log(counters["env_steps"], train_return=episode_return, episodes=counters["episodes"])
            step, state, episode_return = env.reset(), None, 0.0
        ready = counters["env_steps"] >= cfg.prefill and learner.ready()
        if ready and counters["env_steps"] - counters["last_train"] >= cfg.train_every:
            counters["last_train"] = counters["env_steps"]
            done, new_metrics = learner.train(counters["env_steps"])
            counters["updates"] += done
            metrics = new_metrics or metrics
        if counters["env_steps"] - counters["last_log"] >= cfg.log_every and metrics:
            counters["last_log"] = counters["env_steps"]
            elapsed = time.perf_counter() - t_start
            logger.log(
                counters["env_steps"],
                **metrics,
                updates_per_s=(counters["updates"] - updates_start) / max(elapsed, 1e-9),
            )
        if counters["env_steps"] - counters["last_eval"] >= cfg.eval_every:
            counters["last_eval"] = counters["env_steps"]
            last_eval_return, _ = evaluate(learner, eval_env, cfg.eval_episodes)
            logger.log(counters["env_steps"], eval_return=last_eval_return)
        if counters["env_steps"] - counters["last_ckpt"] >= cfg.checkpoint_every:
            checkpoint()
        if bar is not None:
            elapsed = time.perf_counter() - t_start
            bar.set_postfix(
                upd_s=f"{(counters['updates'] - updates_start) / max(elapsed, 1e-9):.1f}",
                eval=f"{last_eval_return:.0f}",
            )
    if counters["last_eval"] != counters["env_steps"]:
        last_eval_return, _ = evaluate(learner, eval_env, cfg.eval_episodes)
        counters["last_eval"] = counters["env_steps"]
        logger.log(counters["env_steps"], eval_return=last_eval_return)
    checkpoint()
    if bar is not None:
        bar.close()
    if cfg.video:
        _, frames = evaluate(learner, eval_env, 1, record=True)
        rundir.write_video(logdir / "eval_episode.gif", frames[::2])
    rundir.plot_curve(logdir, f"{recipe} on {cfg.env} (seed {cfg.seed})")
    logger.close()
    env.close()
    eval_env.close()
    return {"env_steps": counters["env_steps"], "updates": counters["updates"], "eval_return": last_eval_return}
