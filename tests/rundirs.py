"""Helpers for the tests of a recipe's run directory: its metrics, and a SIGKILL in the middle of a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def records(logdir: Path) -> list[dict]:
    """Every record of ``metrics.jsonl``."""
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


def eval_steps(logdir: Path) -> list[int]:
    """The env steps of every evaluation, in order."""
    return [r["step"] for r in records(logdir) if "eval_return" in r]


def max_step(logdir: Path) -> int:
    """The largest ``step`` logged so far (0 before any; a torn last line is skipped)."""
    path = logdir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            continue
    return max(steps, default=0)


def kill_mid_run(logdir: Path, argv: list[str], *, after: int = 300, timeout: float = 240) -> tuple[int, int]:
    """Start ``reweigh ARGV`` in a subprocess, SIGKILL it once a checkpoint exists and ``after`` env steps are
    logged; returns (the last logged step, the checkpoint's env steps).  Fails the test if the run never gets there."""
    cmd = [sys.executable, "-m", "recipes.cli", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = logdir / "checkpoints" / "latest.pt"
    deadline = time.time() + timeout
    while time.time() < deadline and not (ckpt.exists() and max_step(logdir) >= after):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max_step(logdir)
    assert killed_at >= after, "the run never got going"
    return killed_at, int(torch.load(ckpt, weights_only=False)["counters"]["env_steps"])


#: ``--set`` items of a tiny Dreamer-family agent (a few seconds per hundred env steps), shared by the run tests
TINY_AGENT = [
    "deter=16",
    "stoch=4",
    "hidden=16",
    "mlp_layers=1",
    "mlp_units=16",
    "ac_layers=1",
    "ac_units=16",
    "batch_size=4",
    "seq_len=8",
    "horizon=3",
]

ArgsFn = Callable[[Path, int], list[str]]


def run_argv(recipe: str, logdir: Path, steps: int, items: list[str]) -> list[str]:
    """``reweigh``'s arguments for ``run RECIPE`` in ``logdir`` to ``steps``, quiet, with ``--set`` of every item."""
    argv = ["run", recipe, "--steps", str(steps), "--logdir", str(logdir), "--no-progress"]
    for item in items:
        argv += ["--set", item]
    return argv
