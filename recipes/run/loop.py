"""The online run loop every recipe shares: act, store, train on a cadence, log, evaluate, checkpoint, resume.

It knows no algorithm.  A recipe hands it a ``Learner`` (its agent and its data) and gets, in the run
directory (``recipes.run.rundir``), the resolved config, ``metrics.jsonl`` + TensorBoard, checkpoints that resume
after a SIGKILL (losing at most ``checkpoint_every`` env steps), an evaluation at every ``eval_every`` env steps and
at the end, ``curve.png`` and ``eval_episode.gif``.  Read ``train`` top to bottom: it is the whole loop.

Faults: a run holds ``DIR/.lock`` (a second process on the same directory is refused); checkpoints rotate
(``latest.pt``, ``previous.pt``; a damaged latest one is reported and the previous one resumed); an update whose loss
or gradient is NaN or infinite is skipped before any optimiser step (``bilevel.guard``), counted
(``nonfinite_skips`` in ``metrics.jsonl``) and reported; no checkpoint is written while skips go on in a row, and
after ``max_nonfinite`` in a row the run stops (``NonFiniteRunError``) with its last checkpoint from before the
first of them.  SIGINT and SIGTERM let the current update finish, write a checkpoint and stop the run
(``recipes.run.stop``); environments, learner and logger are closed however a run ends; an optional artifact (a
GIF, a plot) that fails is one warning line.  Progress: a bar on a terminal, one plain line every 30 s elsewhere
(``recipes.run.progress``).
"""

from __future__ import annotations

import abc
import contextlib
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from bilevel.guard import NonFiniteError
from recipes.envs import Env, make_env
from recipes.run import heap, rundir, stop
from recipes.run.config import RunConfig
from recipes.run.progress import Progress

T = TypeVar("T")


class NonFiniteRunError(RuntimeError):
    """A run stopped after ``max_nonfinite`` updates in a row with a non-finite loss or gradient."""


class Skips:
    """Updates skipped for a NaN or infinite loss or gradient (``bilevel.guard.NonFiniteError``).

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
        """``fn(*args, **kwargs)`` — one update — or ``None`` when it raised ``NonFiniteError`` (counted)."""
        try:
            out = fn(*args, **kwargs)
        except NonFiniteError as err:
            self.add(err)
            return None
        self.in_row, self.first_step = 0, None
        return out


class Learner(abc.ABC):
    """What the run loop drives: an agent with its data.

    The loop calls ``observe`` with every step dict exactly once (the reset step, every transition, and the
    last step of an episode), ``act`` to choose actions after ``prefill`` env steps, and ``train`` every
    ``train_every`` env steps once ``prefill`` is done and ``ready`` is true.  Checkpoints hold
    ``state_dict`` (after ``flush``).
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
        """Restore what ``state_dict`` returned."""

    @property
    def skips(self) -> Skips:
        """The updates skipped for a non-finite loss or gradient.  A learner that does several updates per
        ``train`` call runs each as ``self.skips.run(update, ...)`` (and counts only the others as done); a
        ``bilevel.guard.NonFiniteError`` that escapes ``train`` counts as one skip of the whole call."""
        if "_skips" not in self.__dict__:
            self.__dict__["_skips"] = Skips()
        return self.__dict__["_skips"]

    def flush(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Persist pending data before a checkpoint (e.g. unfinished episodes of an on-disk replay)."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Release what the learner holds open (files, worker processes) when the run ends, however it ends."""

    def random_action(self, rng: np.random.Generator, env: Env) -> np.ndarray:
        """A prefill action: uniform over the env's actions (one-hot for discrete ones)."""
        if env.discrete:
            return np.eye(env.action_dim, dtype=np.float32)[rng.integers(env.action_dim)]
        return rng.uniform(-1, 1, env.action_dim).astype(np.float32)


def evaluate_tasks(learner: Learner, env: Env, episodes: int) -> tuple[float, dict[str, float]]:
    """Greedy evaluation; for a multi-task env (``recipes.envs.multitask.MultiTaskEnv``) ``episodes`` per
    member; for a meta-RL env with a fixed evaluation list (``recipes.envs.metarl.MetaEnv.evaluation_tasks``)
    ⌈``episodes`` / tasks⌉ per task of the list.  Returns the mean return (over members or tasks: each counts once)
    and the metrics to log: ``eval_return`` and ``eval_return/<member or task label>`` each; for a single env with
    ``episodes`` > 1 also ``eval_return_se``, the standard error of the mean over its episodes (how much of a change
    between two evaluations the evaluation's own noise explains)."""
    from recipes.envs.multitask import MultiTaskEnv

    if callable(getattr(env, "evaluation_tasks", None)):
        tasks = env.evaluation_tasks()  # type: ignore[attr-defined]
        return _per_task(learner, tasks, env.force_task, -(-episodes // len(tasks)), env)  # type: ignore[attr-defined]
    if isinstance(env, MultiTaskEnv):
        return _per_task(learner, [(name, i) for i, name in enumerate(env.task_names)], env.set_task, episodes, env)
    returns, _ = evaluate(learner, env, episodes)
    mean = float(np.mean(returns))
    spread = {"eval_return_se": float(np.std(returns, ddof=1) / np.sqrt(episodes))} if episodes > 1 else {}
    return mean, {"eval_return": mean, **spread}


def _per_task(
    learner: Learner, tasks: list[tuple[str, Any]], select: Callable[[Any], None], episodes: int, env: Env
) -> tuple[float, dict[str, float]]:
    """``evaluate_tasks`` over labelled tasks: ``select(task)`` before each one's ``episodes`` greedy episodes,
    ``select(None)`` at the end (the env draws its tasks again)."""
    per_task: dict[str, float] = {}
    try:
        for label, task in tasks:
            select(task)
            per_task[f"eval_return/{label}"] = float(np.mean(evaluate(learner, env, episodes)[0]))
    finally:
        select(None)
    mean = float(np.mean(list(per_task.values())))
    return mean, {"eval_return": mean, **per_task}


#: ``act(step, state) -> (action, state)``: a policy as ``run_episodes`` calls it (``state``: None at each reset).
Policy = Callable[[dict[str, Any], Any], tuple[np.ndarray, Any]]


def run_episodes(
    env: Env, act: Policy, episodes: int, *, max_steps: int | None = None, record: bool = False
) -> tuple[list[float], list[np.ndarray]]:
    """The one evaluation routine: the return of each of ``episodes`` episodes of ``act`` on ``env`` (each ended by
    the env, or after ``max_steps`` agent steps), and the frames of the first one when ``record``."""
    returns, frames = [], []
    for i in range(episodes):
        step, state, total, steps = env.reset(), None, 0.0, 0
        while max_steps is None or steps < max_steps:
            if record and i == 0:
                frames.append(env.render())
            action, state = act(step, state)
            step = env.step(action)
            total, steps = total + float(step["reward"]), steps + 1
            if step["is_last"]:
                break
        returns.append(total)
    return returns, frames


def evaluate(learner: Learner, env: Env, episodes: int, *, record: bool = False) -> tuple[list[float], list]:
    """The returns of ``episodes`` greedy episodes of ``learner``; frames of the first one when ``record``."""
    return run_episodes(env, lambda step, state: learner.act(step, state, explore=False), episodes, record=record)


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

    Holds ``logdir/.lock`` throughout (``recipes.run.rundir.lock``); SIGINT and SIGTERM stop it after the
    current update with a checkpoint (``recipes.run.stop``).  Arguments, return value and errors as
    ``_train``, and:

    Raises:
        recipes.run.rundir.RunDirInUseError: another process trains in ``logdir``.
        recipes.run.stop.Interrupted: a signal stopped the run (a checkpoint was written).
        NonFiniteRunError: ``cfg.max_nonfinite`` updates in a row had a non-finite loss or gradient.
        recipes.run.rundir.CheckpointError: a checkpoint could not be written (disk full), or none can be read.
        recipes.run.stop.RunFailedError: any other exception but a ``RuntimeError`` once the run directory was
            written (the original is its cause).
    """
    # _train freezes the objects alive after its first training call (gc.freeze), unless the caller froze some
    # itself (then the collector is left as the caller set it); here they go back to ordinary collection
    freeze = gc.get_freeze_count() == 0
    with rundir.lock(logdir), stop.stop_on_signals() as flag:
        try:
            return _train(
                cfg, logdir, make_learner, recipe=recipe, force=force, progress=progress, freeze=freeze, flag=flag
            )
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
    flag: stop.StopFlag | None = None,
) -> dict[str, Any]:
    """Train (or resume) one run in ``logdir`` until ``cfg.steps`` environment steps; returns a summary.

    Args:
        cfg: the resolved config (written to ``config.json`` with ``recipe``).
        logdir: the run directory.
        make_learner: ``(cfg, env, logdir) -> Learner``, called once the training env exists.
        recipe: the recipe's name, recorded in the config and the plot titles.
        force: resume even if ``config.json`` differs.
        progress: show progress (a bar on a terminal, a line every 30 s elsewhere: ``recipes.run.progress``).
        freeze: after the first training call, collect once and ``gc.freeze()`` the survivors (the caller
            unfreezes).
        flag: stop (checkpoint, then ``recipes.run.stop.Interrupted``) once it holds a signal.

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
    rundir.record_machine(logdir)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    try:
        with contextlib.ExitStack() as closing:  # envs, learner and logger closed however the run ends
            run = _Run.start(cfg, logdir, make_learner, recipe, closing, resume=resuming, progress=progress)
            return run.loop(flag if flag is not None else stop.StopFlag(), freeze=freeze)
    except (RuntimeError, stop.Interrupted):
        raise
    except Exception as err:  # after config.json was written: a failure of the run, not of its arguments
        raise stop.RunFailedError(f"{type(err).__name__}: {err}") from err


class _Run:
    """One run between its set-up and its end: the loop's state and its steps, each a method.

    Attributes:
        counters: ``env_steps``, ``updates``, ``episodes``, the env step of the last training call, evaluation,
            log record and checkpoint, and ``nonfinite_skips`` — all checkpointed.
    """

    def __init__(
        self,
        cfg: RunConfig,
        logdir: Path,
        recipe: str,
        env: Env,
        eval_env: Env,
        learner: Learner,
        logger: Any,
        t_process: float,
    ) -> None:
        self.cfg, self.logdir, self.recipe = cfg, logdir, recipe
        self.env, self.eval_env, self.learner, self.logger = env, eval_env, learner, logger
        self.counters = dict.fromkeys(
            ("env_steps", "updates", "episodes", "last_train", "last_eval", "last_log", "last_ckpt", "nonfinite_skips"),
            0,
        )
        self.last_eval_return = float("nan")
        self.metrics: dict[str, float] = {}
        self.bar: Progress | None = None
        # the run's wall time: seconds of the processes before this one (from the checkpoint) and this one's start
        self.wall_before, self.t_process = 0.0, t_process

    def wall_s(self) -> float:
        """Seconds this run has been running, over every process that worked on it (set-up and compilation
        included, the time between an interruption and the resume not)."""
        return self.wall_before + time.perf_counter() - self.t_process

    @classmethod
    def start(
        cls,
        cfg: RunConfig,
        logdir: Path,
        make_learner: Callable[[RunConfig, Env, Path], Learner],
        recipe: str,
        closing: contextlib.ExitStack,
        *,
        resume: bool,
        progress: bool,
    ) -> _Run:
        """Environments, learner, logger and progress (each registered on ``closing``), resumed from the latest
        checkpoint when ``resume``."""
        t0 = time.perf_counter()
        env = make_env(cfg.env, seed=cfg.seed, **cfg.env_kwargs())
        closing.callback(env.close)
        eval_env = make_env(cfg.env, seed=cfg.seed + 10_000, **cfg.env_kwargs(evaluation=True))
        closing.callback(eval_env.close)
        learner = make_learner(cfg, env, logdir)
        closing.callback(learner.close)
        logger = rundir.Logger(
            logdir,
            wandb_project=cfg.wandb_project if cfg.wandb else None,
            config={"recipe": recipe, **cfg.model_dump()},
        )
        closing.callback(logger.close)
        run = cls(cfg, logdir, recipe, env, eval_env, learner, logger, t0)
        if resume and (ckpt := rundir.load_checkpoint(logdir)) is not None:
            learner.load_state_dict(ckpt)
            run.counters.update(ckpt["counters"])
            rundir.set_rng_state(ckpt["rng"])
            run.last_eval_return = ckpt.get("last_eval_return", run.last_eval_return)
            run.wall_before = float(ckpt.get("wall_s", 0.0))
        run.bar = Progress(
            cfg.steps, initial=run.counters["env_steps"], label=f"{recipe} {logdir.name}", enabled=progress
        )
        closing.callback(run.bar.close)
        return run

    def checkpoint(self) -> None:
        """The learner's state, the counters and every RNG's state as the run's latest checkpoint."""
        self.learner.flush()
        rundir.save_checkpoint(
            self.logdir,
            {
                **self.learner.state_dict(),
                "counters": self.counters,
                "rng": rundir.rng_state(),
                "last_eval_return": self.last_eval_return,
                "wall_s": self.wall_s(),
            },
        )
        self.counters["last_ckpt"] = self.counters["env_steps"]

    def loop(self, flag: stop.StopFlag, *, freeze: bool) -> dict[str, Any]:
        """Act, store, train on a cadence, log, evaluate and checkpoint until ``cfg.steps``, then the final
        evaluation, checkpoint and artifacts.  ``freeze``: ``gc.freeze()`` after the first training call.

        Raises:
            recipes.run.stop.Interrupted: ``flag`` rose (a checkpoint was written first).
        """
        cfg, counters, bar = self.cfg, self.counters, self.bar
        assert bar is not None
        rng = np.random.default_rng(cfg.seed + counters["env_steps"])
        (step, random_episode), state, episode_return = self._new_episode(rng), None, 0.0
        t_start, updates_start, frozen = time.perf_counter(), counters["updates"], not freeze
        while counters["env_steps"] < cfg.steps:
            if flag:
                self.checkpoint()
                raise stop.Interrupted(flag.received[0], counters["env_steps"])
            self.learner.observe(step)
            acted_randomly = counters["env_steps"] < cfg.prefill or random_episode
            if acted_randomly:
                action, state = self.learner.random_action(rng, self.env), None
            else:
                action, state = self.learner.act(step, state, explore=True)
            step = self._tagged(self.env.step(action), acted_randomly)
            episode_return += float(step["reward"])
            counters["env_steps"] += cfg.action_repeat
            bar.update(cfg.action_repeat)
            if step["is_last"]:
                self._episode_end(step, episode_return, random_episode)
                (step, random_episode), state, episode_return = self._new_episode(rng), None, 0.0
            ready = counters["env_steps"] >= cfg.prefill and self.learner.ready()
            if ready and counters["env_steps"] - counters["last_train"] >= cfg.train_every:
                self._train_call()
                if not frozen:
                    # The first call built the agent's graphs (with compile=true, millions of long-lived objects):
                    # collect once, then freeze the survivors, so that no later full collection walks them again.
                    # Objects made later are collected as usual; train() unfreezes when the run ends.
                    gc.collect()
                    gc.freeze()
                    frozen = True
            self._log_evaluate_checkpoint(time.perf_counter() - t_start, counters["updates"] - updates_start)
        return self._finish()

    def _new_episode(self, rng: np.random.Generator) -> tuple[dict[str, Any], bool]:
        """The first step of a new episode (tagged, ``_tagged``) and whether the uniform random policy acts it:
        with probability ``random_episodes`` after prefill (data of mixed relevance); no draw when that is 0."""
        share, prefill = self.cfg.random_episodes, self.counters["env_steps"] < self.cfg.prefill
        random_episode = share > 0 and not prefill and bool(rng.random() < share)
        return self._tagged(self.env.reset(), random_episode or prefill), random_episode

    def _tagged(self, step: dict[str, Any], random: bool) -> dict[str, Any]:
        """With ``random_episodes`` > 0: ``step`` with ``random_policy`` (float32 1.0 where the uniform random policy
        acted: prefill and random episodes; 0.0 where the agent did), so that the replay keeps which data is which
        and the weights can be held against it; ``step`` unchanged otherwise."""
        if self.cfg.random_episodes <= 0:
            return step
        return {**step, "random_policy": np.float32(random)}

    def _episode_end(self, step: dict[str, Any], episode_return: float, random_episode: bool = False) -> None:
        """Store the episode's last step and log its return (per task for a set of environments; a random-policy
        episode of ``random_episodes`` as ``random_return``)."""
        self.learner.observe(step)
        self.counters["episodes"] += 1
        if random_episode:
            self.logger.log(self.counters["env_steps"], random_return=episode_return)
            return
        names = getattr(self.env, "task_names", None)
        per_task = {f"train_return/{names[int(step['task'])]}": episode_return} if names else {}
        self.logger.log(
            self.counters["env_steps"], train_return=episode_return, episodes=self.counters["episodes"], **per_task
        )

    def _train_call(self) -> None:
        """One training call of the learner; skipped updates are counted, reported, and stop a run after
        ``max_nonfinite`` in a row (``_skipped``)."""
        counters, learner = self.counters, self.learner
        counters["last_train"] = counters["env_steps"]
        skipped = learner.skips.total
        try:
            done, new_metrics = learner.train(counters["env_steps"])
        except NonFiniteError as err:  # a learner without per-update skipping: the whole call is one skip
            learner.skips.add(err)
            done, new_metrics = 0, {}
        counters["updates"] += done
        self.metrics = new_metrics or self.metrics
        if learner.skips.total == skipped:  # every update of the call went through
            learner.skips.in_row, learner.skips.first_step = 0, None
        else:
            assert self.bar is not None
            _skipped(
                self.cfg, self.logdir, learner.skips, learner.skips.total - skipped, counters, self.logger, self.bar
            )

    def _log_evaluate_checkpoint(self, elapsed: float, updates: int) -> None:
        """Whatever is due at this env step: a log record, an evaluation, a checkpoint; the progress line."""
        cfg, counters, bar = self.cfg, self.counters, self.bar
        assert bar is not None
        if counters["env_steps"] - counters["last_log"] >= cfg.log_every and self.metrics:
            counters["last_log"] = counters["env_steps"]
            self.logger.log(
                counters["env_steps"],
                **self.metrics,
                updates_per_s=updates / max(elapsed, 1e-9),
                nonfinite_skips=counters["nonfinite_skips"],
            )
        if counters["env_steps"] - counters["last_eval"] >= cfg.eval_every:
            self._evaluate()
        # no checkpoint during a streak of skipped updates: the last one on disk stays from before its first
        if counters["env_steps"] - counters["last_ckpt"] >= cfg.checkpoint_every and not self.learner.skips.in_row:
            self.checkpoint()
        if bar.enabled:
            bar.set_postfix(upd_s=f"{updates / max(elapsed, 1e-9):.1f}", eval=f"{self.last_eval_return:.0f}")

    def _evaluate(self) -> None:
        """``eval_episodes`` greedy episodes now, logged."""
        self.counters["last_eval"] = self.counters["env_steps"]
        self.last_eval_return, eval_metrics = evaluate_tasks(self.learner, self.eval_env, self.cfg.eval_episodes)
        self.logger.log(self.counters["env_steps"], **eval_metrics, wall_s=self.wall_s())

    def _finish(self) -> dict[str, Any]:
        """The last evaluation (if not just done) and checkpoint, then the optional artifacts."""
        if self.counters["last_eval"] != self.counters["env_steps"]:
            self._evaluate()
        self.checkpoint()
        assert self.bar is not None
        self.bar.close()
        if self.cfg.video:
            optional(self.logdir / "eval_episode.gif", self._video)
        optional(
            self.logdir / "curve.png",
            rundir.plot_curve,
            self.logdir,
            f"{self.recipe} on {self.cfg.env} (seed {self.cfg.seed})",
        )
        return {
            "env_steps": self.counters["env_steps"],
            "updates": self.counters["updates"],
            "eval_return": self.last_eval_return,
        }

    def _video(self) -> None:
        _, frames = evaluate(self.learner, self.eval_env, 1, record=True)
        rundir.write_video(self.logdir / "eval_episode.gif", frames[::2])


def optional(path: Path, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, which writes the optional artifact ``path`` (a GIF, a plot); if it fails, one warning line on
    stderr names the file and the error, and the run goes on (returns None)."""
    try:
        return fn(*args)
    except Exception as err:  # an optional output never fails the run it belongs to
        print(f"reweigh: warning: {path} not written: {type(err).__name__}: {err}", file=sys.stderr)
        return None
