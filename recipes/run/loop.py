"""The online run loop every recipe shares: act, store, train on a cadence, log, evaluate, checkpoint, resume.

It knows no algorithm.  A recipe hands it a :class:`Learner` (its agent and its data) and gets, in the run
directory (:mod:`recipes.run.rundir`), the resolved config, ``metrics.jsonl`` + TensorBoard, checkpoints that resume
after a SIGKILL (losing at most ``checkpoint_every`` env steps), an evaluation at every ``eval_every`` env steps and
at the end, ``curve.png`` and ``eval_episode.gif``.  Read :func:`train` top to bottom: it is the whole loop.

Faults: a run holds ``DIR/.lock`` (a second process on the same directory is refused); checkpoints rotate
(``latest.pt``, ``previous.pt``; a damaged latest one is reported and the previous one resumed); an update whose loss
or gradient is NaN or infinite is skipped before any optimiser step (:mod:`bilevel.guard`), counted
(``nonfinite_skips`` in ``metrics.jsonl``) and reported; no checkpoint is written while skips go on in a row, and
after ``max_nonfinite`` in a row the run stops (:class:`NonFiniteRunError`) with its last checkpoint from before the
first of them.  Progress: a bar on a terminal, one plain line every 30 s elsewhere (:mod:`recipes.run.progress`).
"""

from __future__ import annotations

import abc
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from bilevel.guard import NonFiniteError
from recipes.envs import Env, make_env
from recipes.run import heap, rundir
from recipes.run.config import RunConfig
from recipes.run.progress import Progress

T = TypeVar("T")


class NonFiniteRunError(RuntimeError):
    """A run stopped after ``max_nonfinite`` updates in a row with a non-finite loss or gradient."""


class Skips:
    """Updates skipped for a NaN or infinite loss or gradient (:class:`bilevel.guard.NonFiniteError`).

    Attributes:
        total: skipped since this object was made.  in_row: skipped since the last update that was not.
        last: the last error (names the quantity).  first_step: env step of the first skip of the current streak.
    """

    def __init__(self) -> None:
        self.total, self.in_row = 0, 0
        self.last: NonFiniteError | None = None
        self.first_step: int | None = None

    def add(self, err: NonFiniteError) -> None:
        """Count one skipped update."""
        self.total += 1
        self.in_row += 1
        self.last = err

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``fn(*args, **kwargs)`` — one update — or ``None`` when it raised :class:`NonFiniteError` (counted)."""
        try:
            out = fn(*args, **kwargs)
        except NonFiniteError as err:
            self.add(err)
            return None
        self.in_row, self.first_step = 0, None
        return out


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

    @property
    def skips(self) -> Skips:
        """The updates skipped for a non-finite loss or gradient.  A learner that does several updates per
        :meth:`train` call runs each as ``self.skips.run(update, ...)`` (and counts only the others as done); a
        :class:`bilevel.guard.NonFiniteError` that escapes :meth:`train` counts as one skip of the whole call."""
        if "_skips" not in self.__dict__:
            self.__dict__["_skips"] = Skips()
        return self.__dict__["_skips"]

    def flush(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Persist pending data before a checkpoint (e.g. unfinished episodes of an on-disk replay)."""

    def random_action(self, rng: np.random.Generator, env: Env) -> np.ndarray:
        """A prefill action: uniform over the env's actions (one-hot for discrete ones)."""
        if env.discrete:
            return np.eye(env.action_dim, dtype=np.float32)[rng.integers(env.action_dim)]
        return rng.uniform(-1, 1, env.action_dim).astype(np.float32)


def evaluate_tasks(learner: Learner, env: Env, episodes: int) -> tuple[float, dict[str, float]]:
    """Greedy evaluation; for a multi-task env (:class:`recipes.envs.multitask.MultiTaskEnv`) ``episodes`` per
    member.  Returns the mean return (over members: each member counts once) and the metrics to log:
    ``eval_return`` and, for a multi-task env, ``eval_return/<member name>`` per member."""
    from recipes.envs.multitask import MultiTaskEnv

    if not isinstance(env, MultiTaskEnv):
        mean, _ = evaluate(learner, env, episodes)
        return mean, {"eval_return": mean}
    per_task: dict[str, float] = {}
    try:
        for i, name in enumerate(env.task_names):
            env.set_task(i)
            per_task[f"eval_return/{name}"], _ = evaluate(learner, env, episodes)
    finally:
        env.set_task(None)
    mean = float(np.mean(list(per_task.values())))
    return mean, {"eval_return": mean, **per_task}


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


def _skipped(
    cfg: RunConfig,
    logdir: Path,
    skips: Skips,
    new: int,
    counters: dict[str, int],
    logger: rundir.Logger,
    bar: Progress,
) -> None:
    """After a training call that skipped ``new`` updates: count and log them, report the first of a streak, and
    stop the run after ``cfg.max_nonfinite`` in a row.

    Raises:
        NonFiniteRunError: names the last non-finite quantity, the streak's first env step and the checkpoint kept.
    """
    step = counters["env_steps"]
    counters["nonfinite_skips"] += new
    logger.log(step, nonfinite_skips=counters["nonfinite_skips"])
    assert skips.last is not None
    last = f"{skips.last.name} = {skips.last.value}"
    if skips.first_step is None or skips.in_row <= new:  # the streak began in this call
        skips.first_step = step
        bar.write(
            f"reweigh: warning: env step {step}: skipped an update with a non-finite {last} (nothing was written "
            f"into the model; {counters['nonfinite_skips']} skipped in all, at most {cfg.max_nonfinite} in a row)"
        )
    if skips.in_row >= cfg.max_nonfinite:
        latest = logdir / "checkpoints" / rundir.CHECKPOINTS[0]
        kept = (
            f"{latest} holds env step {counters['last_ckpt']}, from before the first, and nothing later was saved"
            if latest.exists()
            else "no checkpoint was written before the first"
        )
        raise NonFiniteRunError(
            f"stopped at env step {step}: {skips.in_row} updates in a row had a non-finite loss or gradient and were "
            f"skipped, the first at env step {skips.first_step} (the last: {last}); {kept}. Look for NaN or inf in "
            f"the data (observations, rewards) or lower the learning rates; max_nonfinite={cfg.max_nonfinite} is "
            "how many in a row a run tolerates"
        )


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

    Holds ``logdir/.lock`` throughout (:func:`recipes.run.rundir.lock`).  Arguments, return value and errors as
    :func:`_train`, and:

    Raises:
        recipes.run.rundir.RunDirInUseError: another process trains in ``logdir``.
        NonFiniteRunError: ``cfg.max_nonfinite`` updates in a row had a non-finite loss or gradient.
        recipes.run.rundir.CheckpointError: a checkpoint could not be written (disk full), or none can be read.
    """
    # _train freezes the objects alive after its first training call (gc.freeze), unless the caller froze some
    # itself (then the collector is left as the caller set it); here they go back to ordinary collection
    freeze = gc.get_freeze_count() == 0
    with rundir.lock(logdir):
        try:
            return _train(cfg, logdir, make_learner, recipe=recipe, force=force, progress=progress, freeze=freeze)
        finally:
            if freeze:
                gc.unfreeze()


def _train(
    cfg: RunConfig,
    logdir: Path,
    make_learner: Callable[[RunConfig, Env, Path], Learner],
    *,
    recipe: str,
    force: bool = False,
    progress: bool = True,
    freeze: bool = False,
) -> dict[str, Any]:
    """Train (or resume) one run in ``logdir`` until ``cfg.steps`` environment steps; returns a summary.

    Args:
        cfg: the resolved config (written to ``config.json`` with ``recipe``).
        logdir: the run directory.
        make_learner: ``(cfg, env, logdir) -> Learner``, called once the training env exists.
        recipe: the recipe's name, recorded in the config and the plot titles.
        force: resume even if ``config.json`` differs.
        progress: show progress (a bar on a terminal, a line every 30 s elsewhere: :mod:`recipes.run.progress`).
        freeze: after the first training call, collect once and ``gc.freeze()`` the survivors (the caller
            unfreezes).

    Returns:
        ``{"env_steps", "updates", "eval_return"}`` (the final evaluation's mean return).

    Raises:
        recipes.run.rundir.ConfigMismatchError: when resuming with another config and not ``force``.
    """
    torch.set_num_threads(cfg.threads)
    heap.configure_heap(cfg.heap)
    resuming = rundir.prepare(
        logdir, {"recipe": recipe, **cfg.model_dump()}, force=force, defaults=rundir.field_defaults(cfg)
    )
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    env = make_env(cfg.env, seed=cfg.seed, **cfg.env_kwargs())
    eval_env = make_env(cfg.env, seed=cfg.seed + 10_000, **cfg.env_kwargs(evaluation=True))
    learner = make_learner(cfg, env, logdir)
    logger = rundir.Logger(
        logdir, wandb_project=cfg.wandb_project if cfg.wandb else None, config={"recipe": recipe, **cfg.model_dump()}
    )
    counters = {
        "env_steps": 0,
        "updates": 0,
        "episodes": 0,
        "last_train": 0,
        "last_eval": 0,
        "last_log": 0,
        "last_ckpt": 0,
        "nonfinite_skips": 0,
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

    bar = Progress(cfg.steps, initial=counters["env_steps"], label=f"{recipe} {logdir.name}", enabled=progress)
    rng = np.random.default_rng(cfg.seed + counters["env_steps"])
    step, state, episode_return = env.reset(), None, 0.0
    t_start, updates_start, metrics = time.perf_counter(), counters["updates"], {}
    frozen = not freeze  # gc.freeze() after the first training call
    while counters["env_steps"] < cfg.steps:
        learner.observe(step)
        if counters["env_steps"] < cfg.prefill:
            action, state = learner.random_action(rng, env), None
        else:
            action, state = learner.act(step, state, explore=True)
        step = env.step(action)
        episode_return += float(step["reward"])
        counters["env_steps"] += cfg.action_repeat
        bar.update(cfg.action_repeat)
        if step["is_last"]:
            learner.observe(step)
            counters["episodes"] += 1
            names = getattr(env, "task_names", None)  # a multi-task env: also the return per task
            per_task = {f"train_return/{names[int(step['task'])]}": episode_return} if names else {}
            logger.log(counters["env_steps"], train_return=episode_return, episodes=counters["episodes"], **per_task)
            step, state, episode_return = env.reset(), None, 0.0
        ready = counters["env_steps"] >= cfg.prefill and learner.ready()
        if ready and counters["env_steps"] - counters["last_train"] >= cfg.train_every:
            counters["last_train"] = counters["env_steps"]
            skipped = learner.skips.total
            try:
                done, new_metrics = learner.train(counters["env_steps"])
            except NonFiniteError as err:  # a learner without per-update skipping: the whole call is one skip
                learner.skips.add(err)
                done, new_metrics = 0, {}
            counters["updates"] += done
            metrics = new_metrics or metrics
            if not frozen:
                # The first call built the agent's graphs (with compile=true, millions of long-lived objects):
                # collect once, then freeze the survivors, so that no later full collection walks them again
                # (0.39 s each at the cpu preset with compile=true; docs/performance.md).  Objects made later are
                # collected as usual; train() unfreezes when the run ends.
                gc.collect()
                gc.freeze()
                frozen = True
            if learner.skips.total == skipped:  # every update of the call went through
                learner.skips.in_row, learner.skips.first_step = 0, None
            else:
                try:
                    _skipped(cfg, logdir, learner.skips, learner.skips.total - skipped, counters, logger, bar)
                except NonFiniteRunError:
                    for closing in (bar, logger, env, eval_env):
                        closing.close()
                    raise
        if counters["env_steps"] - counters["last_log"] >= cfg.log_every and metrics:
            counters["last_log"] = counters["env_steps"]
            elapsed = time.perf_counter() - t_start
            logger.log(
                counters["env_steps"],
                **metrics,
                updates_per_s=(counters["updates"] - updates_start) / max(elapsed, 1e-9),
                nonfinite_skips=counters["nonfinite_skips"],
            )
        if counters["env_steps"] - counters["last_eval"] >= cfg.eval_every:
            counters["last_eval"] = counters["env_steps"]
            last_eval_return, eval_metrics = evaluate_tasks(learner, eval_env, cfg.eval_episodes)
            logger.log(counters["env_steps"], **eval_metrics)
        # no checkpoint during a streak of skipped updates: the last one on disk stays from before its first
        if counters["env_steps"] - counters["last_ckpt"] >= cfg.checkpoint_every and not learner.skips.in_row:
            checkpoint()
        if bar.enabled:
            elapsed = time.perf_counter() - t_start
            bar.set_postfix(
                upd_s=f"{(counters['updates'] - updates_start) / max(elapsed, 1e-9):.1f}",
                eval=f"{last_eval_return:.0f}",
            )
    if counters["last_eval"] != counters["env_steps"]:
        last_eval_return, eval_metrics = evaluate_tasks(learner, eval_env, cfg.eval_episodes)
        counters["last_eval"] = counters["env_steps"]
        logger.log(counters["env_steps"], **eval_metrics)
    checkpoint()
    bar.close()
    if cfg.video:
        _, frames = evaluate(learner, eval_env, 1, record=True)
        rundir.write_video(logdir / "eval_episode.gif", frames[::2])
    rundir.plot_curve(logdir, f"{recipe} on {cfg.env} (seed {cfg.seed})")
    logger.close()
    env.close()
    eval_env.close()
    return {"env_steps": counters["env_steps"], "updates": counters["updates"], "eval_return": last_eval_return}
