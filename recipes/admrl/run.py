"""The run directory of the AdMRL family: Algorithm 1 task by task, a checkpoint after every task, the gap
evaluation at the end (``recipes.admrl.evaluate``).

``logdir`` gets ``config.json``, ``metrics.jsonl`` + TensorBoard (one record per task at its real env step: ψ, the
task gradient, returns, model fit; and at the end ``worst_gap``, ``mean_gap``, ``worst_gap_zeroshot``,
``eval_return`` = the mean adapted return over the grid), ``checkpoints/latest.pt`` (resumes after a SIGKILL,
losing at most the task in progress), ``tasks.json`` (the records), ``gaps.json`` and ``gaps.png`` (the paper's
Fig. 3), ``psi.png`` (the tasks visited) and ``reference/`` (cached A*(ψ) unless ``reference_dir`` is set).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recipes.admrl.admrl import AdmrlTrainer
from recipes.admrl.config import AdmrlConfig
from recipes.admrl.evaluate import evaluate_gaps, plot_gaps
from recipes.envs import make_env
from recipes.run import heap, rundir
from recipes.run.progress import Progress


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {"task": float(record["task"])}
    for key in ("psi", "next_psi", "task_grad"):
        for i, v in enumerate(record.get(key, [])):
            out[f"{key}/{i}"] = float(v)
    for key, value in record.items():
        if isinstance(value, (int, float)) and key != "task":
            out[key] = float(value)
    return out


def plot_tasks(history: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """ψ of every training task against the task index (one line per coordinate, at most 6 shown)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    psi = np.array([r["psi"] for r in history])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i in range(min(psi.shape[1], 6)):
        ax.plot(range(len(psi)), psi[:, i], marker="o", label=f"ψ{i + 1}")
    ax.set_xlabel("training task")
    ax.set_ylabel("ψ")
    ax.set_ylim(-1.05, 1.05)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def train(
    cfg: AdmrlConfig, logdir: Path, *, force: bool = False, progress: bool = True, recipe: str = "admrl"
) -> dict[str, Any]:
    """Train (or resume) one AdMRL-family run in ``logdir``, holding its lock; returns ``{"env_steps", "updates",
    "eval_return", "worst_gap"}`` (updates: tasks done).

    Raises:
        recipes.run.rundir.ConfigMismatchError: when resuming with another config and not ``force``.
        recipes.run.rundir.RunDirInUseError: another process trains in ``logdir``.
    """
    with rundir.lock(logdir):
        return _train(cfg, logdir, force=force, progress=progress, recipe=recipe)


def _train(cfg: AdmrlConfig, logdir: Path, *, force: bool, progress: bool, recipe: str) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    heap.configure_heap(cfg.heap)
    resuming = rundir.prepare(
        logdir, {"recipe": recipe, **cfg.model_dump()}, force=force, defaults=rundir.field_defaults(cfg)
    )
    rundir.record_machine(logdir)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    env = make_env(cfg.env, seed=cfg.seed, **cfg.env_kwargs())
    trainer = AdmrlTrainer(cfg, env)
    table: dict[str, Any] | None = None
    if resuming and (ckpt := rundir.load_checkpoint(logdir)) is not None:
        trainer.load_state_dict(ckpt["trainer"])
        rundir.set_rng_state(ckpt["rng"])
        if ckpt.get("gaps_after") == trainer.task:  # evaluated after the last task: nothing left to do
            table = ckpt.get("gaps")

    def checkpoint(**extra: Any) -> None:
        state = {
            "trainer": trainer.state_dict(),
            "rng": rundir.rng_state(),
            "counters": {"env_steps": trainer.env_steps},
        }
        rundir.save_checkpoint(logdir, {**state, **extra})

    logger = rundir.Logger(
        logdir, wandb_project=cfg.wandb_project if cfg.wandb else None, config={"recipe": recipe, **cfg.model_dump()}
    )
    bar = Progress(cfg.tasks, initial=trainer.task, unit="task", label=f"{recipe} {logdir.name}", enabled=progress)
    start_task = trainer.task
    while trainer.task < cfg.tasks:
        record = trainer.task_iteration()
        logger.log(trainer.env_steps, **_scalars(record))
        checkpoint()
        bar.set_postfix(psi=np.round(trainer.psi, 2).tolist(), steps=trainer.env_steps)
        bar.update(1)
    bar.close()
    if trainer.task != start_task:  # trained further since any earlier evaluation
        table = None
    (logdir / "tasks.json").write_text(json.dumps(trainer.history, indent=1))
    plot_tasks(trainer.history, logdir / "psi.png", f"{recipe} on {cfg.env}: training tasks")
    if table is None:
        cache = Path(cfg.reference_dir) if cfg.reference_dir else logdir / "reference"
        table = evaluate_gaps(trainer, cache)
        (logdir / "gaps.json").write_text(json.dumps(table, indent=1))
        checkpoint(gaps=table, gaps_after=trainer.task)
        logger.log(
            trainer.env_steps,
            worst_gap=table["worst_gap"][-1],
            mean_gap=table["mean_gap"][-1],
            worst_gap_zeroshot=table["worst_gap"][0],
            eval_return=table["adapted_mean"][-1],
            **({"worst_gap_ood": table["ood"]["worst_gap"][-1]} if table.get("ood", {}).get("rows") else {}),
        )
    plot_gaps(table, logdir / "gaps.png", f"{recipe} on {cfg.env}: suboptimality gaps")
    logger.close()
    env.close()
    return {
        "env_steps": trainer.env_steps,
        "updates": trainer.task,
        "eval_return": table["adapted_mean"][-1],
        "worst_gap": table["worst_gap"][-1],
    }
