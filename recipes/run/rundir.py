"""The run directory: resolved config, metrics (JSONL + TensorBoard), checkpoints, curve and video.

Layout of ``DIR``:

    config.json        the resolved config (a resumed run must match it unless forced)
    metrics.jsonl      one JSON object per log event; ``step`` = environment steps; ``eval_return`` on evaluations
    events.out.tfevents.*   TensorBoard
    machine.jsonl      one line per process that worked on the run: its CPU, cores, torch threads and version
    .lock              held (``fcntl.flock``) by the process training in ``DIR``; holds its pid
    checkpoints/       ``latest.pt`` and the one before it, ``previous.pt`` (each replaced atomically) — model,
                       agent, optimisers, RNG, counters; a damaged ``latest.pt`` is reported and ``previous.pt`` used
    replay/            episodes as compressed .npz (the replay on disk is the replay)
    curve.png, eval_episode.gif   written at the end
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

log = logging.getLogger("reweigh")

#: config keys that control the run rather than define it: a resumed run may change them without ``--force``.
RUN_CONTROL_KEYS = frozenset({"steps", "max_nonfinite", "wandb", "wandb_project", "heap", "threads"})


class ConfigMismatchError(ValueError):
    """A resumed run was started with a different config."""


class RunDirInUseError(ValueError):
    """Another process holds the run directory's lock."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, ...) or no checkpoint of a run directory can be read."""


def prepare(
    logdir: Path, config: dict[str, Any], *, force: bool = False, defaults: dict[str, Any] | None = None
) -> bool:
    """Create ``logdir`` and write ``config.json``; return True when resuming an existing run.

    ``defaults``: values of fields added since a run was started; a key missing from its ``config.json`` counts as
    its default there, so a run started before a field existed resumes while the new field keeps its default.

    Raises:
        ConfigMismatchError: if ``config.json`` exists with different values and ``force`` is False (names the
            differing keys).
    """
    path = logdir / "config.json"
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            if not isinstance(stored, dict):
                raise ValueError(f"a {type(stored).__name__}")
        except ValueError as err:  # json.JSONDecodeError included
            raise ConfigMismatchError(
                f"{path} is not a JSON object of config values ({err}); fix or delete it, or use a new --logdir"
            ) from None
        old = {**(defaults or {}), **stored}
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k) and k not in RUN_CONTROL_KEYS)
        if diff and not force:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff[:5])
            raise ConfigMismatchError(
                f"{logdir} holds a run with a different config ({shown}); use a new --logdir "
                "or --force to resume with the new values"
            )
    logdir.mkdir(parents=True, exist_ok=True)
    resuming = any((logdir / "checkpoints" / name).exists() for name in CHECKPOINTS)
    _atomic_write(path, json.dumps(config, indent=1, sort_keys=True).encode())
    return resuming


@contextmanager
def lock(logdir: Path) -> Iterator[None]:
    """Hold ``logdir/.lock`` (an advisory ``fcntl.flock``, released when the process ends however it ends) while
    the block runs; the file records the holder's pid.  Creates ``logdir``.  No-op where ``fcntl`` is missing.

    Raises:
        RunDirInUseError: another process holds it (names the directory and that process's pid).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise RunDirInUseError(
            f"{logdir} is in use by another process (pid {holder}); wait for it to end or use another --logdir"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def record_machine(logdir: Path) -> None:
    """Append this process's machine to ``logdir/machine.jsonl`` (a resumed run may continue on another one), so
    that wall times read from the run name the CPU that produced them."""
    record = {
        "time": round(time.time(), 3),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with open(logdir / "machine.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def field_defaults(cfg: BaseModel) -> dict[str, Any]:
    """The defaults of ``cfg``'s fields that have one (JSON-compatible), for ``prepare``."""
    out: dict[str, Any] = {}
    for name, field in type(cfg).model_fields.items():
        if not field.is_required():
            out[name] = field.get_default(call_default_factory=True)
    return json.loads(json.dumps(out, default=str))


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Logger:
    """Metrics to ``metrics.jsonl`` (flushed per event, so a crash loses nothing logged; every record carries its
    Unix ``time``), TensorBoard, and optionally Weights & Biases.

    Args:
        logdir: the run directory.
        wandb_project: forward every record to a Weights & Biases run of this project (``wandb`` is imported only
            then); the run's id is kept in ``logdir/wandb_id`` so that a resumed run continues the same W&B run.
        config: the run's config, recorded by W&B.

    Raises:
        ValueError: ``wandb_project`` is set and the ``wandb`` package is not installed.
    """

    def __init__(self, logdir: Path, *, wandb_project: str | None = None, config: dict[str, Any] | None = None) -> None:
        self.wandb: Any = None
        if wandb_project is not None:
            try:
                self.wandb = start_wandb(logdir, wandb_project, config)
            except ValueError:  # the package is missing: a config error
                raise
            except Exception as err:  # W&B is an optional copy of metrics.jsonl: never fails the run
                print(f"reweigh: warning: Weights & Biases not started: {type(err).__name__}: {err}", file=sys.stderr)
        self.path = logdir / "metrics.jsonl"
        self.file = self.path.open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb: Any = SummaryWriter(str(logdir))
        except ImportError:  # tensorboard is an optional extra
            self.tb = None

    def log(self, step: int, **metrics: float) -> None:
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}, "time": round(time.time(), 3)}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, float(v), int(step))
        if self.wandb is not None:
            self.wandb.log({k: float(v) for k, v in metrics.items()}, step=int(step))

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


WANDB_MISSING = "wandb=true needs the Weights & Biases package: pip install wandb"


def start_wandb(logdir: Path, project: str, config: dict[str, Any] | None = None) -> Any:
    """A W&B run for ``logdir`` (resumed if ``logdir/wandb_id`` names one), logging into ``logdir/wandb``.

    Raises:
        ValueError: the ``wandb`` package is not installed.
    """
    try:
        import wandb
    except ImportError:
        raise ValueError(WANDB_MISSING) from None
    id_file = logdir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.exists() else None
    if not run_id:
        run_id = re.sub(r"[^A-Za-z0-9_.-]+", "_", logdir.name)[:40] + "-" + os.urandom(4).hex()
        _atomic_write(id_file, run_id.encode())
    (logdir / "wandb").mkdir(exist_ok=True)
    return wandb.init(
        project=project, name=logdir.name, id=run_id, resume="allow", dir=str(logdir / "wandb"), config=config
    )


def read_config(logdir: Path) -> dict[str, Any]:
    """A run directory's ``config.json`` as written (``recipe`` and every field).

    Raises:
        ValueError: no ``config.json`` in ``logdir``, or one that is not a JSON object.
    """
    path = logdir / "config.json"
    if not path.exists():
        raise ValueError(f"logdir: no config.json in {logdir}")
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not a JSON config ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a JSON object of config values")
    return config


def read_metrics(logdir: Path) -> list[dict[str, Any]]:
    """All records of ``metrics.jsonl`` (a torn last line from a crash is skipped)."""
    path = logdir / "metrics.jsonl"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


#: the checkpoint files, newest first.
CHECKPOINTS = ("latest.pt", "previous.pt")


def save_checkpoint(logdir: Path, state: dict[str, Any]) -> None:
    """Write ``checkpoints/latest.pt``, keeping the one it replaces as ``checkpoints/previous.pt``.

    The new checkpoint is written to a temporary file and fsynced first; then the old ``latest.pt`` is hard-linked
    to ``previous.pt`` and the new file renamed over ``latest.pt`` (each an atomic rename), so at every moment a
    complete ``latest.pt`` exists: a SIGKILL or a failed write anywhere leaves the previous checkpoints intact.

    Raises:
        CheckpointError: the write failed (disk full, quota, I/O error); the temporary file is removed and
            ``latest.pt`` / ``previous.pt`` are untouched.  The message names the file and the reason.
    """
    directory = logdir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    latest, previous = directory / CHECKPOINTS[0], directory / CHECKPOINTS[1]
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".latest.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # a file object: a failed write raises OSError with its errno
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            reason = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else err.strerror or repr(err)
            kept = f"{latest} from before is intact" if latest.exists() else "no earlier checkpoint exists"
            raise CheckpointError(f"could not write the checkpoint {latest}: {reason} ({err}); {kept}") from err
        raise
    if latest.exists():
        staged = directory / ".previous.pt.tmp"
        try:
            staged.unlink(missing_ok=True)
            os.link(latest, staged)  # previous.pt := latest.pt without a moment where latest.pt is missing
            os.replace(staged, previous)
        except OSError:  # no hard links here: a plain rename (load_checkpoint copes with a missing latest.pt)
            os.replace(latest, previous)
    os.replace(tmp, latest)


def load_checkpoint(logdir: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint of ``logdir``: ``checkpoints/latest.pt``, or ``previous.pt`` when that one is
    missing or damaged (truncated, corrupt; a warning on the ``reweigh`` logger names the file and the error).

    Returns:
        The checkpoint's dict, or None when the run has no checkpoint.

    Raises:
        CheckpointError: checkpoints exist but none can be read (names each file and its error).
    """
    directory = logdir / "checkpoints"
    errors: list[str] = []
    for name in CHECKPOINTS:
        path = directory / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, weights_only=False)
            if not isinstance(state, dict):
                raise TypeError(f"holds a {type(state).__name__}, not a dict")
        except Exception as err:
            errors.append(f"{path}: {type(err).__name__}: {str(err)[:200]}")
            log.warning("reweigh: checkpoint %s is damaged and skipped (%s: %.200s)", path, type(err).__name__, err)
            continue
        if errors:
            log.warning("reweigh: resuming from the older checkpoint %s", path)
        return state
    if errors:
        raise CheckpointError(
            f"no checkpoint of {logdir} can be read ({'; '.join(errors)}); delete {directory} to start the run over "
            "or use a new --logdir"
        )
    return None


def plot_curve(logdir: Path, title: str) -> Path | None:
    """``curve.png``: evaluation return against environment steps."""
    records = [r for r in read_metrics(logdir) if "eval_return" in r]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in records], [r["eval_return"] for r in records], marker="o")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("eval return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = logdir / "curve.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path | None:
    """An animated GIF of ``frames`` (H×W×3 uint8)."""
    if not frames:
        return None
    import imageio.v2 as imageio

    imageio.mimsave(path, [np.asarray(f) for f in frames], duration=1.0 / fps, loop=0)
    return path
