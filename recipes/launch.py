"""The one job runner of ``reweigh compare`` and ``reweigh sweep``: every run is a ``Trial``, an ordinary
``reweigh run`` in its own run directory, started as a subprocess with its output appended to ``RUN_DIR.log``.

Two backends run the same command line:

* ``local`` — ``jobs`` subprocesses at a time on this machine (no extra dependency);
* ``ray`` — one Ray task per trial, scheduled by its ``num_cpus`` / ``num_gpus`` (a fraction shares a GPU).
  Without an address a private local Ray is started for the duration of the call and shut down after it; with
  ``address`` (``HOST:6379``, or ``auto`` on a node of the cluster) the trials go to a cluster someone started with the
  ``ray`` CLI.  Nothing here starts a scheduler that outlives the call.

A trial whose run already reached its steps (evaluated there and checkpointed) is skipped, an unfinished one
resumes from its directory (the run loop's own resume), and a failed one is reported with its log path after the
others finished.  The Ray task runs ``reweigh run`` as a subprocess rather than calling the recipe in the Ray
worker: the run gets a fresh interpreter with ``OMP_NUM_THREADS`` and torch threads set before torch loads
(a Ray worker is reused and has imported torch already), a crash or an out-of-memory kill of one run cannot take
the worker or the driver down, and a run behaves exactly as the same command typed by hand.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Backend = Literal["local", "ray"]
BACKENDS: tuple[str, ...] = ("local", "ray")


@dataclass(frozen=True)
class Trial:
    """One ``reweigh run``: a recipe on an environment with a seed and overrides, in its run directory.

    Attributes:
        recipe: a registered recipe name.
        env: the environment (``dmc:cartpole_swingup``, ...).
        seed: the run's seed.
        steps: environment steps to reach.
        run_dir: the run directory; the log is ``RUN_DIR.log`` beside it.
        preset: the config preset.
        sets: ``key=value`` overrides, applied in order after ``threads=THREADS``.
        threads: torch threads (and ``OMP_NUM_THREADS``) of the run.
        num_cpus: CPUs the Ray backend reserves for the trial.
        num_gpus: GPUs (a fraction shares one) the Ray backend reserves for the trial.
        label: what messages call the trial (default: recipe, env and seed).
    """

    recipe: str
    env: str
    seed: int
    steps: int
    run_dir: Path
    preset: str = "cpu"
    sets: tuple[str, ...] = ()
    threads: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    label: str = ""

    @property
    def name(self) -> str:
        """A readable name for messages."""
        return self.label or f"{self.recipe} on {self.env} seed {self.seed}"

    @property
    def log_path(self) -> Path:
        """``RUN_DIR.log``: the run's stdout and stderr, appended by every attempt."""
        return self.run_dir.with_name(self.run_dir.name + ".log")

    def argv(self) -> list[str]:
        """The ``reweigh`` arguments of this run (``reweigh run RECIPE ...``)."""
        out = [
            "run",
            self.recipe,
            "--env",
            self.env,
            "--steps",
            str(self.steps),
            "--seed",
            str(self.seed),
            "--logdir",
            str(self.run_dir),
            "--preset",
            self.preset,
            "--no-progress",
            "--set",
            f"threads={self.threads}",
        ]
        for item in self.sets:
            out += ["--set", item]
        return out


@dataclass(frozen=True)
class TrialResult:
    """How one trial ended.

    Attributes:
        trial: the trial.
        returncode: the exit code of ``reweigh run`` (0: finished; ``None``: skipped, it was finished already;
            -1: it never ran to an exit code, see ``error``).
        seconds: wall time of the attempt (0 when skipped).
        host: the machine it ran on.
        error: why it failed, when it failed without an exit code (a lost Ray worker or node).
    """

    trial: Trial
    returncode: int | None
    seconds: float = 0.0
    host: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        """Finished now or before."""
        return self.returncode in (0, None)

    @property
    def skipped(self) -> bool:
        """Already finished before this call."""
        return self.returncode is None

    def describe(self) -> str:
        """One line: the trial, why it failed and its log path."""
        why = self.error or f"exit {self.returncode}"
        return f"{self.trial.name} ({why}); log: {self.trial.log_path}"


def finished(run_dir: Path, steps: int) -> bool:
    """Whether the run in ``run_dir`` reached ``steps``: an evaluation logged there or later, and a checkpoint."""
    path = run_dir / "metrics.jsonl"
    if not (run_dir / "checkpoints" / "latest.pt").exists() or not path.exists():
        return False
    last = 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a torn last line after a crash
            continue
        if "eval_return" in record:
            last = max(last, int(record["step"]))
    return last >= steps


def last_line(path: Path) -> str:
    """The last non-empty line of a log (``""`` if none), for failure messages."""
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _spawn(argv: Sequence[str], threads: int, log: Any) -> subprocess.Popen:
    """Start ``reweigh ARGV`` with ``OMP_NUM_THREADS=threads``, its output to the open binary file ``log`` after a
    header line naming the time, the host and the command."""
    cmd = [sys.executable, "-m", "recipes.cli", *argv]
    log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()}: {shlex.join(cmd)}\n".encode())
    log.flush()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def execute(argv: Sequence[str], threads: int, log_path: str) -> tuple[int, float, str]:
    """Run ``reweigh ARGV`` in a subprocess of this process (a Ray worker), its output appended to ``log_path``;
    returns (exit code, seconds, host).  The subprocess is terminated if this call is interrupted (a cancelled
    Ray task)."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "ab") as log:
        proc = _spawn(argv, threads, log)
        try:
            code = proc.wait()
        finally:
            _stop(proc)
    return code, time.perf_counter() - start, socket.gethostname()


Report = Callable[[str], None]


def run_trials(
    trials: Sequence[Trial],
    *,
    backend: Backend = "local",
    jobs: int = 2,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: float | None = None,
    retries: int = 1,
    report: Report | None = print,
    prefix: str = "run",
) -> list[TrialResult]:
    """Start or resume every trial whose run is not ``finished``; returns one result per trial, in order.

    Args:
        trials: the runs.
        backend: ``local`` (``jobs`` subprocesses at a time) or ``ray`` (one Ray task per trial).
        jobs: trials at a time on the ``local`` backend.
        address: the Ray cluster to use (``ray`` backend); ``None`` starts a private local Ray for this call.
        num_cpus: CPUs of the private local Ray (default: this machine's); not used with ``address``.
        num_gpus: GPUs of the private local Ray (default: detected); not used with ``address``.
        retries: times Ray re-runs a trial whose worker or node died (the run resumes from its directory).
        report: called with each progress line (``None``: silent).
        prefix: the word progress lines start with (``compare``, ``sweep``).

    Raises:
        ValueError: for an unknown backend, ``jobs < 1``, or a trial that needs more CPUs or GPUs than the local
            Ray has.
        RuntimeError: if the ``ray`` backend is asked for and Ray is not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown {backend!r}; choose one of {', '.join(BACKENDS)}")
    if jobs < 1:
        raise ValueError(f"jobs: must be at least 1, got {jobs}")
    say = report or (lambda _line: None)
    results: dict[int, TrialResult] = {}
    todo: list[tuple[int, Trial]] = []
    for i, trial in enumerate(trials):
        if finished(trial.run_dir, trial.steps):
            results[i] = TrialResult(trial, None)
        else:
            todo.append((i, trial))
    if todo:
        skipped = len(trials) - len(todo)
        note = f" ({skipped} finished already)" if skipped else ""
        say(f"{prefix}: {len(todo)} run(s) to start or resume on the {backend} backend{note}")
        run = _run_local if backend == "local" else _run_ray
        kwargs: dict[str, Any] = (
            {"jobs": jobs}
            if backend == "local"
            else {"address": address, "num_cpus": num_cpus, "num_gpus": num_gpus, "retries": retries}
        )
        for i, result in run(todo, say=say, prefix=prefix, **kwargs):
            results[i] = result
    return [results[i] for i in range(len(trials))]


def _finish_line(prefix: str, result: TrialResult) -> str:
    if result.returncode == 0:
        return f"{prefix}: finished {result.trial.name} in {result.seconds:.0f} s"
    tail = last_line(result.trial.log_path)
    return f"{prefix}: FAILED {result.describe()}" + (f"\n{prefix}:   {tail}" if tail else "")


def _run_local(todo: list[tuple[int, Trial]], *, jobs: int, say: Report, prefix: str) -> list[tuple[int, TrialResult]]:
    queue = list(todo)
    running: list[tuple[int, Trial, subprocess.Popen, Any, float]] = []
    out: list[tuple[int, TrialResult]] = []
    host = socket.gethostname()
    try:
        while queue or running:
            while queue and len(running) < jobs:
                i, trial = queue.pop(0)
                trial.run_dir.parent.mkdir(parents=True, exist_ok=True)
                say(f"{prefix}: starting {trial.name} -> {trial.run_dir}")
                log = trial.log_path.open("ab")
                proc = _spawn(trial.argv(), trial.threads, log)
                running.append((i, trial, proc, log, time.perf_counter()))
            time.sleep(0.5)
            for entry in list(running):
                i, trial, proc, log, start = entry
                if proc.poll() is None:
                    continue
                running.remove(entry)
                log.close()
                result = TrialResult(trial, proc.returncode, time.perf_counter() - start, host)
                say(_finish_line(prefix, result))
                out.append((i, result))
    finally:  # interrupted: stop what is still running (each run resumes from its last checkpoint)
        for _i, _trial, proc, log, _start in running:
            _stop(proc)
            log.close()
    return out


def import_ray() -> Any:
    """``import ray``, or a RuntimeError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("the ray backend needs Ray: pip install 'reweigh[sweep]' (or pip install ray)") from None
    return ray


def _run_ray(
    todo: list[tuple[int, Trial]],
    *,
    address: str | None,
    num_cpus: int | None,
    num_gpus: float | None,
    retries: int,
    say: Report,
    prefix: str,
) -> list[tuple[int, TrialResult]]:
    import logging

    ray = import_ray()
    started = False
    if not ray.is_initialized():
        if address:
            say(f"{prefix}: connecting to the Ray cluster at {address}")
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            cpus = num_cpus or os.cpu_count() or 1
            say(f"{prefix}: starting a local Ray with {cpus} CPUs for this sweep")
            ray.init(
                address="local",
                num_cpus=cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                object_store_memory=200 * 1024**2,  # trials return three numbers; runs write to disk
                logging_level=logging.WARNING,
            )
        started = True
    pending: dict[Any, tuple[int, Trial]] = {}
    out: list[tuple[int, TrialResult]] = []
    try:
        _check_resources(ray.cluster_resources(), [t for _, t in todo], local=not address, say=say, prefix=prefix)
        task = ray.remote(execute)
        for i, trial in todo:
            trial.run_dir.parent.mkdir(parents=True, exist_ok=True)
            here = dataclasses.replace(trial, run_dir=trial.run_dir.resolve())  # a Ray worker has its own cwd
            ref = task.options(
                num_cpus=trial.num_cpus, num_gpus=trial.num_gpus, max_retries=retries, name=f"reweigh {trial.name}"
            ).remote(here.argv(), here.threads, str(here.log_path))
            pending[ref] = (i, trial)
        say(f"{prefix}: submitted {len(todo)} trial(s); each logs to RUN_DIR.log")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i, trial = pending.pop(ref)
                try:
                    code, seconds, host = ray.get(ref)
                    result = TrialResult(trial, code, seconds, host)
                except ray.exceptions.RayError as err:  # the worker or its node died (after the retries)
                    result = TrialResult(trial, -1, error=f"Ray: {type(err).__name__}: {str(err).splitlines()[0]}")
                say(_finish_line(prefix, result))
                out.append((i, result))
    except BaseException:
        for ref in pending:  # a running task gets KeyboardInterrupt; execute() then terminates its run
            ray.cancel(ref)
        raise
    finally:
        if started:
            ray.shutdown()
    return out


def _check_resources(cluster: dict[str, float], trials: list[Trial], *, local: bool, say: Report, prefix: str) -> None:
    """Refuse (local Ray) or warn about (a cluster, which may scale up) trials larger than the cluster."""
    for key, need in (("CPU", max(t.num_cpus for t in trials)), ("GPU", max(t.num_gpus for t in trials))):
        have = float(cluster.get(key, 0.0))
        if need > have:
            msg = f"a trial needs {need:g} {key}(s) and the Ray cluster has {have:g}"
            if local:
                hint = "--num-cpus" if key == "CPU" else "--num-gpus"
                raise ValueError(f"resources.num_{key.lower()}s: {msg}; lower it or raise {hint}")
            say(f"{prefix}: warning: {msg}; those trials wait until the cluster can place them")
