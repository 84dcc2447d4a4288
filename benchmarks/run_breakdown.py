"""Where a run's wall time goes: a ``reweigh`` command run as is, with every call of the run loop timed.

Wraps the learner's ``train`` (model updates, compiling included), ``act`` and ``observe``, the environments'
``step``, the evaluations and the checkpoints, and times the garbage collector's collections per generation
(``gc.callbacks``); at exit prints seconds, calls and milliseconds per call, largest first, and writes them as JSON
(``--out``). Everything after ``--`` is the ``reweigh`` command line:

    python benchmarks/run_breakdown.py --out breakdown.json -- run tempo --env dmc:cartpole_swingup --preset cpu \\
        --steps 20000 --logdir /tmp/r1 --set compile=true
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.run import loop, rundir  # noqa: E402

SECONDS: collections.defaultdict[str, float] = collections.defaultdict(float)
CALLS: collections.Counter[str] = collections.Counter()


def _timed(fn: Any, key: str) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SECONDS[key] += time.perf_counter() - t0
            CALLS[key] += 1

    return wrapper


def _instrument() -> None:
    train, make_env = loop.train, loop.make_env

    def timed_train(cfg: Any, logdir: Any, make_learner: Any, **kwargs: Any) -> Any:
        def make(cfg: Any, env: Any, logdir: Any) -> Any:
            learner = make_learner(cfg, env, logdir)
            for name in ("train", "act", "observe"):
                setattr(learner, name, _timed(getattr(learner, name), name))
            return learner

        return train(cfg, logdir, make, **kwargs)

    def timed_env(*args: Any, **kwargs: Any) -> Any:
        env = make_env(*args, **kwargs)
        env.step = _timed(env.step, "env.step")
        return env

    loop.train, loop.make_env = timed_train, timed_env
    loop.evaluate_tasks = _timed(loop.evaluate_tasks, "evaluate")
    rundir.save_checkpoint = _timed(rundir.save_checkpoint, "checkpoint")
    started: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
        elif "t" in started:
            key = f"gc generation {info['generation']}"
            SECONDS[key] += time.perf_counter() - started.pop("t")
            CALLS[key] += 1

    gc.callbacks.append(on_gc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the reweigh arguments")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    _instrument()
    from recipes.cli import main as reweigh

    t0 = time.perf_counter()
    rc = reweigh(command)
    total = time.perf_counter() - t0
    rows = [
        {"part": k, "seconds": SECONDS[k], "calls": CALLS[k], "ms_per_call": 1000 * SECONDS[k] / max(CALLS[k], 1)}
        for k in sorted(SECONDS, key=SECONDS.__getitem__, reverse=True)
    ]
    print(f"total {total:.1f} s (reweigh exit status {rc})")
    for r in rows:
        print(f"{r['part']:20s} {r['seconds']:9.1f} s {r['calls']:9d} calls {r['ms_per_call']:9.2f} ms per call")
    if args.out:
        args.out.write_text(json.dumps({"command": command, "total_s": total, "rc": rc, "rows": rows}, indent=1))
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
