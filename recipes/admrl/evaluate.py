"""AdMRL's evaluation (Lin et al. 2020, §5.2, Fig. 3): suboptimality gaps over a grid of test tasks.

For every ψ of the test grid, starting from the trained model and data:

* A₀(ψ): zero-shot adaptation — a fresh policy optimised for ψ inside the model, then its real return;
* A_i(ψ), i = 1…n: after i more SLBO iterations on ψ (real data collected, the model refit, the policy optimised);
* A*(ψ): the reference — a policy trained from scratch on the real env for ψ by the same SLBO procedure with a
  larger budget (``reference_iters`` iterations), cached as JSON so runs of several recipes or seeds on one env share
  it (it is trained with a fixed seed, whatever the run's);
* G_i(ψ) = A*(ψ) − A_i(ψ), the gap; the *worst-case gap* max_ψ G_i(ψ) is AdMRL's headline metric.

Grids: 7 points on [−1, 1] for 1-D families, 6 × 6 for 2-D ones, 4 × 4 × 3 for ant3d (the paper's sizes), and for
cheetah-highdim 16 points drawn uniformly from [−1, 1]¹⁸ with seed 0 (ours; the paper samples its test tasks too).
Returns are real-env returns of the deterministic policy over ``episode_len`` steps.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from recipes.admrl.admrl import AdmrlTrainer
from recipes.admrl.config import AdmrlConfig
from recipes.envs.admrl import OOD_BOUND, AdmrlEnv

#: A*(ψ) is trained with this seed whatever the run's seed: it depends on the env, ψ and the reference budget only,
#: so every run on one env (any recipe, any seed) can share one cache.
REFERENCE_SEED = 1_000


def task_grid(env: AdmrlEnv) -> np.ndarray:
    """The test grid [G, k] of ψ for ``env``'s family (module docstring)."""
    k = env.task_dim
    if env.admrl_family == "cheetah-highdim":
        return np.random.default_rng(0).uniform(-1.0, 1.0, (16, k))
    sizes = {1: (7,), 2: (6, 6), 3: (4, 4, 3)}[k]
    axes = [np.linspace(-1.0, 1.0, n) for n in sizes]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, k)


def ood_grid(env: AdmrlEnv) -> np.ndarray:
    """Out-of-distribution test tasks [G, k] (AdMRL §5.3): for 1-D families ψ ∈ {±1.25, ±1.5}; for 2-D ones the
    points of a 7 × 7 grid on [−1.5, 1.5]² outside [−1, 1]²; none (shape [0, k]) for higher dimensions (ours)."""
    k = env.task_dim
    if k == 1:
        return np.array([[-1.5], [-1.25], [1.25], [1.5]])
    if k == 2:
        axis = np.linspace(-OOD_BOUND, OOD_BOUND, 7)
        pts = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
        return pts[np.abs(pts).max(1) > 1.0 + 1e-9]
    return np.zeros((0, k))


def adapt(trainer: AdmrlTrainer, psi: np.ndarray, iters: int, episodes: int) -> list[float]:
    """[A₀(ψ), …, A_iters(ψ)] from ``trainer``'s model and data, which are left as they were (a copy adapts)."""
    work = AdmrlTrainer(trainer.cfg, trainer.env)
    work.load_state_dict(trainer.state_dict())
    cfg, p = work.cfg, work.psi_tensor(psi)
    work.env.set_task(psi, out_of_box=True)
    ppo = work.new_ppo()
    work.virtual(ppo, p, cfg.zeroshot_iters)
    returns = [work.evaluate_policy(ppo, episodes)]
    for _ in range(iters):
        work.collect(ppo, cfg.n_collect)
        work.fit()
        work.virtual(ppo, p, cfg.virtual_iters)
        returns.append(work.evaluate_policy(ppo, episodes))
    return returns


def reference_return(cfg: AdmrlConfig, env: AdmrlEnv, psi: np.ndarray, cache: Path | None) -> float:
    """A*(ψ): SLBO from scratch on the real env for ψ (``cfg.reference_iters`` iterations, seed
    ``REFERENCE_SEED``), cached in ``cache`` under a key of the env, ψ and the sizes that shape it."""
    fields = {
        k: getattr(cfg, k)
        for k in ("env", "reference_iters", "n_collect", "episode_len", "virtual_iters", "eval_episodes")
    }
    fields.update(model=[cfg.members, cfg.model_layers, cfg.model_units], ppo=[cfg.policy_units, cfg.ppo_lr])
    key = hashlib.sha1(json.dumps({**fields, "psi": np.round(psi, 6).tolist()}, sort_keys=True).encode()).hexdigest()
    path = None if cache is None else cache / f"{key[:16]}.json"
    if path is not None and path.exists():
        return float(json.loads(path.read_text())["return"])
    ref_cfg = cfg.model_copy(update={"seed": REFERENCE_SEED})
    ref = AdmrlTrainer(ref_cfg, env)
    env.set_task(psi, out_of_box=True)
    ppo = ref.new_ppo()
    p = ref.psi_tensor(psi)
    for _ in range(cfg.reference_iters):
        ref.collect(ppo, cfg.n_collect)
        ref.fit()
        ref.virtual(ppo, p, cfg.virtual_iters)
    value = ref.evaluate_policy(ppo, cfg.eval_episodes)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**fields, "psi": psi.tolist(), "return": value}, indent=1))
    return value


def _gap_rows(trainer: AdmrlTrainer, grid: np.ndarray, cache: Path | None) -> dict[str, Any]:
    cfg, env = trainer.cfg, trainer.env
    rows = []
    for psi in grid:
        adapted = adapt(trainer, psi, cfg.eval_adapt, cfg.eval_episodes)
        star = reference_return(cfg, env, psi, cache)
        rows.append({"psi": psi.tolist(), "adapted": adapted, "reference": star, "gaps": [star - a for a in adapted]})
    out: dict[str, Any] = {"grid": grid.tolist(), "rows": rows}
    if rows:
        gaps = np.array([r["gaps"] for r in rows])  # [G, n + 1]
        out.update(
            worst_gap=gaps.max(0).tolist(),
            mean_gap=gaps.mean(0).tolist(),
            adapted_mean=np.mean([r["adapted"] for r in rows], 0).tolist(),
        )
    return out


def evaluate_gaps(trainer: AdmrlTrainer, cache: Path | None) -> dict[str, Any]:
    """The gap table over ``task_grid``: per ψ, A₀…A_n, A* and G₀…G_n; the worst-case and mean gaps; and with
    ``eval_ood`` the same over ``ood_grid`` under ``"ood"``."""
    table = _gap_rows(trainer, task_grid(trainer.env), cache)
    if trainer.cfg.eval_ood:
        table["ood"] = _gap_rows(trainer, ood_grid(trainer.env), cache)
    trainer.env.set_task(trainer.psi)
    return table


def plot_gaps(table: dict[str, Any], path: Path, title: str) -> Path:
    """Gap G_n(ψ) after the last adaptation step (and zero-shot G₀) over the grid: lines for 1-D families,
    heatmaps (the paper's Fig. 3) for 2-D ones, one heatmap per last-axis value for 3-D, bars otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.asarray(table["grid"])
    gaps = np.array([r["gaps"] for r in table["rows"]])
    k = grid.shape[1]
    shown = [(0, "zero-shot G₀"), (gaps.shape[1] - 1, f"adapted G_{gaps.shape[1] - 1}")]
    ood = table.get("ood", {})
    if k == 1:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for i, label in shown:
            line = ax.plot(grid[:, 0], gaps[:, i], marker="o", label=label)[0]
            if ood.get("rows"):
                ogrid, ogaps = np.asarray(ood["grid"]), np.array([r["gaps"][i] for r in ood["rows"]])
                ax.plot(ogrid[:, 0], ogaps, ls="none", marker="x", color=line.get_color(), label=label + " (OOD)")
        ax.axvspan(-1, 1, color="0.9", zorder=0)
        ax.set_xlabel("ψ")
        ax.set_ylabel("suboptimality gap")
        ax.legend()
        ax.grid(alpha=0.3)
    elif k in (2, 3):
        xs, ys = np.unique(grid[:, 0]), np.unique(grid[:, 1])
        zs = np.unique(grid[:, 2]) if k == 3 else np.array([0.0])
        with_ood = k == 2 and bool(ood.get("rows"))
        cols = len(zs) + int(with_ood)
        fig, axes = plt.subplots(len(shown), cols, figsize=(3.6 * cols, 3.2 * len(shown)), squeeze=False)
        vmax = float(np.nanmax(gaps[:, [i for i, _ in shown]]))
        vmin = float(np.nanmin(gaps[:, [i for i, _ in shown]]))
        if with_ood:
            ogrid, ogaps = np.asarray(ood["grid"]), np.array([r["gaps"] for r in ood["rows"]])
            vmax = max(vmax, float(np.nanmax(ogaps[:, [i for i, _ in shown]])))
            vmin = min(vmin, float(np.nanmin(ogaps[:, [i for i, _ in shown]])))
            for row, (i, label) in enumerate(shown):  # the training box's grid (circles) and the OOD ring (squares)
                ax = axes[row, -1]
                ax.scatter(grid[:, 0], grid[:, 1], c=gaps[:, i], vmin=vmin, vmax=vmax, cmap="magma", s=60)
                ax.scatter(
                    ogrid[:, 0], ogrid[:, 1], c=ogaps[:, i], vmin=vmin, vmax=vmax, cmap="magma", s=90, marker="s"
                )
                ax.add_patch(plt.Rectangle((-1, -1), 2, 2, fill=False, ls="--", color="0.4"))
                ax.set_title(label + ", with OOD tasks", fontsize=9)
                ax.set_xlabel("ψ₁")
                ax.set_ylabel("ψ₂")
        for row, (i, label) in enumerate(shown):
            for col, z in enumerate(zs):
                sel = np.ones(len(grid), bool) if k == 2 else np.isclose(grid[:, 2], z)
                img = gaps[sel, i].reshape(len(xs), len(ys)).T
                ax = axes[row, col]
                im = ax.imshow(img, origin="lower", extent=(-1, 1, -1, 1), vmin=vmin, vmax=vmax, cmap="magma")
                ax.set_title(label + (f", ψ₃ = {z:.2f}" if k == 3 else ""), fontsize=9)
                ax.set_xlabel("ψ₁")
                ax.set_ylabel("ψ₂")
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="gap")
    else:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.4
        for j, (i, label) in enumerate(shown):
            ax.bar(np.arange(len(grid)) + j * width, gaps[:, i], width, label=label)
        ax.set_xlabel("test task")
        ax.set_ylabel("suboptimality gap")
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
