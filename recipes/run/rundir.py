"""The run directory: resolved config, metrics (JSONL + TensorBoard), checkpoints, curve and video.

Layout of ``DIR``::

    config.json        the resolved config (a resumed run must match it unless forced)
    metrics.jsonl      one JSON object per log event; ``step`` = environment steps; ``eval_return`` on evaluations
    events.out.tfevents.*   TensorBoard
    checkpoints/       ``latest.pt`` (atomic replace) — model, agent, optimisers, RNG, counters
    replay/            episodes as compressed .npz (the replay on disk is the replay)
    curve.png, eval_episode.gif   written at the end
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel


class ConfigMismatchError(ValueError):
    """A resumed run was started with a different config."""


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
        old = {**(defaults or {}), **json.loads(path.read_text())}
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k) and k != "steps")
        if diff and not force:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff[:5])
            raise ConfigMismatchError(
                f"{logdir} holds a run with a different config ({shown}); use a new --logdir "
                "or --force to resume with the new values"
            )
    logdir.mkdir(parents=True, exist_ok=True)
    resuming = (logdir / "checkpoints" / "latest.pt").exists()
    _atomic_write(path, json.dumps(config, indent=1, sort_keys=True).encode())
    return resuming


def field_defaults(cfg: BaseModel) -> dict[str, Any]:
    """The defaults of ``cfg``'s fields that have one (JSON-compatible), for :func:`prepare`."""
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
    Unix ``time``) and TensorBoard."""

    def __init__(self, logdir: Path) -> None:
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

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


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


def save_checkpoint(logdir: Path, state: dict[str, Any]) -> None:
    """Write ``checkpoints/latest.pt`` atomically (a SIGKILL mid-write leaves the previous one intact)."""
    directory = logdir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".latest.", suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, directory / "latest.pt")


def load_checkpoint(logdir: Path) -> dict[str, Any] | None:
    path = logdir / "checkpoints" / "latest.pt"
    return torch.load(path, weights_only=False) if path.exists() else None


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
