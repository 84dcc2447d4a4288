"""After-run analysis of ``tempo`` runs: TEMPO Fig. 9's curves, Table 2's weights, the weights against rewards and
the weighter's history over training.  Every function returns data; ``inspection_lines`` and the CLI print it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor

from bilevel import BilevelProblem, MetaWeighter, Naive
from bilevel.diagnose import weighting_gain
from recipes.dreamer import dreamerv2
from recipes.dreamer.config import TempoConfig
from recipes.dreamer.tempo import TempoAgent
from recipes.run import rundir
from recipes.run.config import explain

#: TEMPO Fig. 9's panels (plus the weights): (title, metric keys of ``metrics.jsonl``).
DIAGNOSTICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("value estimates", ("tempo/value_post", "tempo/value_prior")),
    ("upper objective (task loss)", ("model/upper_loss",)),
    ("lower objective", ("model/lower_loss", "model/lower_loss_unweighted")),
    ("meta weights", ("model/weight_mean", "model/weight_min", "model/weight_max")),
    (
        "weights: spread and what they follow",
        ("model/weight_ess", "model/weight_corr/reward", "model/weight_corr/value_grad_norm"),
    ),
)


def diagnostics(logdirs: list[Path]) -> dict[str, dict[str, list[float]]]:
    """TEMPO Fig. 9's curves over runs: for every key of ``DIAGNOSTICS`` that all runs logged,
    ``{"steps", "mean", "std"}`` over the runs at the log steps they share (env steps; std 0 for one run)."""
    records = [rundir.read_metrics(d) for d in logdirs]
    out: dict[str, dict[str, list[float]]] = {}
    for _, keys in DIAGNOSTICS:
        for key in keys:
            series = [{r["step"]: r[key] for r in recs if key in r} for recs in records]
            steps = sorted(set.intersection(*[set(s) for s in series])) if series else []
            if not steps:
                continue
            values = np.array([[s[t] for t in steps] for s in series], dtype=float)  # [runs, steps]
            out[key] = {"steps": steps, "mean": values.mean(0).tolist(), "std": values.std(0).tolist()}
    return out


def plot_diagnostics(logdirs: list[Path], path: Path, title: str) -> Path | None:
    """One PNG of TEMPO Fig. 9 (value estimates, upper objective, weighted lower objective and unweighted ELBO)
    and the meta weights' mean/min/max, each as mean ± std over ``logdirs``; ``None`` if none was logged."""
    curves = diagnostics(logdirs)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DIAGNOSTICS), figsize=(4 * len(DIAGNOSTICS), 3.3))
    for ax, (panel, keys) in zip(axes, DIAGNOSTICS, strict=True):
        for key in keys:
            if key in curves:
                c = curves[key]
                mean, std = np.array(c["mean"]), np.array(c["std"])
                ax.plot(c["steps"], mean, marker=".", label=key.split("/", 1)[1])
                ax.fill_between(c["steps"], mean - std, mean + std, alpha=0.2)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
        if any(key in curves for key in keys):
            ax.legend(fontsize=7)
    runs = f"mean ± std over {len(logdirs)} runs" if len(logdirs) > 1 else "one run"
    fig.suptitle(f"{title} ({runs})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def weights_by_reward(meta: Tensor, reward: Tensor) -> dict[str, float]:
    """How the meta weights of replayed steps go with those steps' real rewards.

    Args:
        meta: [B, T] meta weights.
        reward: [B, T] rewards of the same steps (the reward term of the step's ELBO predicts ``reward[b, t]``).

    Returns:
        ``pearson`` and ``spearman`` (NaN where either side is constant), ``mean_rewarded`` / ``mean_unrewarded``
        (mean weight where reward > 0 / <= 0; NaN where no step is), ``share_rewarded`` (fraction of steps with
        reward > 0).  On DMC's sparse tasks (pendulum, reacher: reward 1 inside the target region, else 0) this
        asks whether the weighter up-weights the rare rewarded transitions.

    Raises:
        ValueError: ``meta`` and ``reward`` differ in shape.
    """
    from scipy.stats import pearsonr, spearmanr

    if meta.shape != reward.shape:
        raise ValueError(f"meta {tuple(meta.shape)} and reward {tuple(reward.shape)} must have the same shape")
    w, r = meta.flatten().double().numpy(), reward.flatten().double().numpy()
    constant = bool(np.ptp(w) == 0.0 or np.ptp(r) == 0.0)
    rewarded = r > 0
    return {
        "pearson": float("nan") if constant else float(pearsonr(w, r).statistic),
        "spearman": float("nan") if constant else float(spearmanr(w, r).statistic),
        "mean_rewarded": float(w[rewarded].mean()) if rewarded.any() else float("nan"),
        "mean_unrewarded": float(w[~rewarded].mean()) if (~rewarded).any() else float("nan"),
        "share_rewarded": float(rewarded.mean()),
    }


#: What ``training_history`` summarises: the logged key and how (median or mean over a span's records).
HISTORY_KEYS: tuple[tuple[str, str], ...] = (
    ("model/weight_std", "mean"),
    ("model/weight_ess", "mean"),
    ("model/weight_corr/reward", "mean"),
    ("model/weight_corr/value_grad_norm", "mean"),
    ("model/weighter_step", "median"),
    ("model/weighter_step_vs_lr", "median"),
    ("model/upper_loss", "mean"),
)


def training_history(logdir: Path, spans: int = 5) -> list[dict[str, float]]:
    """How the weights and the weighter moved over a run, from its ``metrics.jsonl``: the logged records split into
    ``spans`` equal spans of environment steps, and per span ``start``/``end`` (env steps) and each key of
    ``HISTORY_KEYS`` (without its ``model/`` prefix) that was logged there — the weights' std (batch spread), their
    effective sample size share and correlation with the reward,
    the weighter's effective step ‖Δα‖/‖α‖ and ‖Δα‖/(lr·√P) (1: every parameter moves by Adam's learning rate) and
    the upper loss.  Empty where no record has the weights.

    Raises:
        ValueError: ``spans`` < 1.
    """
    if spans < 1:
        raise ValueError(f"spans must be >= 1, got {spans}")
    records = [r for r in rundir.read_metrics(logdir) if "model/weight_std" in r]
    if not records:
        return []
    first, last = records[0]["step"], records[-1]["step"]
    width = max(1, (last - first + 1) / spans)
    rows = []
    for i in range(spans):
        lo, hi = first + i * width, first + (i + 1) * width
        part = [r for r in records if lo <= r["step"] < hi or (i == spans - 1 and r["step"] == last)]
        if not part:
            continue
        row = {"start": float(part[0]["step"]), "end": float(part[-1]["step"])}
        for key, how in HISTORY_KEYS:
            values = [float(r[key]) for r in part if key in r]
            if values:
                row[key.split("/", 1)[1]] = float(np.median(values) if how == "median" else np.mean(values))
        rows.append(row)
    return rows


def weight_summary(meta: Tensor, weighter: MetaWeighter) -> dict[str, Any]:
    """The meta weights ``meta`` (any shape) against the weighter's bounds (shift, shift + scale): a batch's min and
    max reach the bounds long before most weights do, so the share near each bound is what tells.

    Returns:
        ``mean``, ``std``, ``q05_q50_q95``, ``share_near_low`` / ``share_near_high`` (the share of weights within
        ``near`` = 2% of the weighter's range of ``low`` / ``high``), ``low``, ``high``, ``near``, ``steps``.
    """
    lo, hi = weighter.shift, weighter.shift + weighter.scale
    flat, near = meta.flatten().float(), 0.02 * weighter.scale
    q05, q50, q95 = torch.quantile(flat, torch.tensor([0.05, 0.5, 0.95])).tolist()
    return {
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "q05_q50_q95": [q05, q50, q95],
        "share_near_low": float((flat < lo + near).float().mean()),
        "share_near_high": float((flat > hi - near).float().mean()),
        "low": float(lo),
        "high": float(hi),
        "near": float(near),
        "steps": flat.numel(),
    }


def load_run(logdir: Path) -> tuple[TempoConfig, TempoAgent]:
    """A ``tempo`` run's config and its agent at the latest checkpoint, in eval mode.

    Raises:
        ValueError: ``logdir`` holds no ``tempo`` run, an unreadable config or no checkpoint.
    """
    from recipes.envs import make_env

    config_path = logdir / "config.json"
    config = rundir.read_config(logdir)
    if config.pop("recipe", None) != "tempo":
        raise ValueError(f"logdir: {logdir} is not a tempo run (its config.json names no recipe 'tempo')")
    try:
        cfg = TempoConfig(**config)
    except ValidationError as err:
        raise ValueError(f"{config_path}: {explain(err, TempoConfig)}") from None
    ckpt = rundir.load_checkpoint(logdir)
    if ckpt is None:
        raise ValueError(f"logdir: no checkpoint in {logdir / 'checkpoints'}")
    env = make_env(cfg.env, seed=cfg.seed, **cfg.env_kwargs())
    agent = TempoAgent(cfg, env.obs_shape, env.action_dim, env.discrete)
    env.close()
    agent.load_state_dict(ckpt["agent"])
    agent.eval()
    return cfg, agent


def weighting_gain_of_run(logdir: Path, *, batches: int, seed: int = 0) -> dict[str, Any]:
    """Does the run's weighter do what its upper loss asks, on replayed batches?  For ``batches`` batches of the
    run's shape (``batch_size`` × ``seq_len``) at the latest checkpoint, in float64: ``bilevel.diagnose.
    weighting_gain`` with one virtual SGD step of the model's learning rate (the step SameState's hypergradient
    linearises, TEMPO eq. 8–9), for the weighter's weights (``meta``) and, as the rule to beat, TEMPO's naive
    weights 1 + normalised upper loss (``naive``, §3.4).

    Returns:
        ``batches``, ``lr``, ``upper`` (L_up before the step), and per kind (``meta``, ``naive``) and field of
        ``bilevel.diagnose.WeightingGain`` (``gain``, ``shuffled_gain``, ``step_gain``, ``alignment``) a dict of
        ``mean``, ``se`` (standard error over the batches) and ``values`` (one per batch).

    Raises:
        ValueError: ``batches`` < 2, or ``logdir`` holds no ``tempo`` run or no checkpoint.
    """
    if batches < 2:
        raise ValueError(f"batches must be >= 2 for a standard error, got {batches}")
    cfg, agent = load_run(logdir)
    agent.double()  # the gains are differences of nearby losses after a small step
    replay = dreamerv2.make_replay(cfg, logdir, seed=seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    fields = ("gain", "shuffled_gain", "step_gain", "alignment")
    values: dict[str, list[float]] = {f"{kind}/{k}": [] for kind in ("meta", "naive") for k in fields}
    values["upper"] = []
    for _ in range(batches):
        batch = {k: _as_double(torch.as_tensor(v)) for k, v in replay.sample(cfg.batch_size).items()}
        problem, weights = _gain_problem(agent, batch)
        for kind, w in weights.items():
            result = weighting_gain(problem, w, cfg.model_lr, generator=gen)
            for key in fields:
                values[f"{kind}/{key}"].append(float(getattr(result, key)))
        values["upper"].append(result.upper)
    out: dict[str, Any] = {"batches": batches, "lr": cfg.model_lr}
    for name, vs in values.items():
        cell = {"mean": float(np.mean(vs)), "se": float(np.std(vs, ddof=1) / np.sqrt(len(vs))), "values": vs}
        kind, _, key = name.rpartition("/")
        (out.setdefault(kind, {}) if kind else out)[key] = cell
    return out


def _gain_problem(agent: TempoAgent, batch: dict[str, Tensor]) -> tuple[BilevelProblem, dict[str, Tensor]]:
    """The bi-level problem of one batch at the agent's θ (latent noise drawn once, shared by every virtual pass)
    and the weights to test on it: the weighter's and the naive rule's."""
    forward = agent.world_model_forward(batch)
    params = {n: p.detach().requires_grad_(True) for n, p in agent.wm.named_parameters()}
    problem = BilevelProblem(
        per_sample_loss=lambda p: forward(agent.update.view(p)).loss,
        upper_loss=lambda p: forward(agent.update.view(p)).upper,
        params=params,
    )
    with torch.no_grad():
        levels = forward(agent.wm)
        assert levels.upper is not None
        weights = {
            "meta": agent.weighter(levels.features),
            "naive": Naive("batch").rule_weights(levels.loss, levels.upper),
        }
    return problem, weights


def _as_double(x: Tensor) -> Tensor:
    return x.double() if x.is_floating_point() else x


def inspect_weights(logdir: Path, *, sequences: int = 4, seed: int = 0, gain: int = 0) -> dict[str, Any]:
    """TEMPO Table 2 for a run's latest checkpoint: meta and naive weights of ``sequences`` replayed sequences.

    Meta weights come from the weighter in eval mode (BatchNorm running statistics); naive weights are
    1 + the per-step upper loss normalised over the sampled sequences (TEMPO §3.4).  Pearson's r is computed per
    sequence over all its T steps.

    Returns:
        ``{"meta": [[T] per sequence], "naive": [...], "pearson": [r per sequence], "summary": weight_summary of
        all steps, "by_reward": weights_by_reward of all steps, "history": training_history of the run}``, for a
        set of environments ``per_task``: ``{name: {mean, std, steps}}``, and with ``gain`` ≥ 2 ``gain``:
        ``weighting_gain_of_run`` over that many batches.

    Raises:
        ValueError: ``logdir`` holds no ``tempo`` run or no checkpoint, or ``gain`` is 1 or negative.
    """
    from scipy.stats import pearsonr

    if gain != 0 and gain < 2:
        raise ValueError(f"gain: the number of batches must be 0 (off) or >= 2, got {gain}")
    cfg, agent = load_run(logdir)
    replay = dreamerv2.make_replay(cfg, logdir, seed=seed)
    batch = {k: torch.as_tensor(v) for k, v in replay.sample(sequences).items()}
    torch.manual_seed(seed)
    with torch.no_grad():
        levels = agent.world_model_forward(batch)(agent.wm)
        meta = agent.weighter(levels.features)
        assert levels.upper is not None
        naive = Naive("batch").rule_weights(levels.loss, levels.upper)
    rows: dict[str, Any] = {
        "meta": meta.tolist(),
        "naive": naive.tolist(),
        "pearson": [float(pearsonr(m, n).statistic) for m, n in zip(meta.numpy(), naive.numpy(), strict=True)],
        "summary": weight_summary(meta, agent.weighter),
        "by_reward": weights_by_reward(meta, batch["reward"]),
        "history": training_history(logdir),
    }
    if "task" in batch:  # a set of environments: the meta weights' mean and spread per task
        from recipes.envs.multitask import split_names

        task = batch["task"].long()
        rows["per_task"] = {}
        for i, name in enumerate(split_names(cfg.env)):
            w = meta[task == i]
            if w.numel():
                rows["per_task"][name] = {"mean": float(w.mean()), "std": float(w.std()), "steps": int(w.numel())}
    if gain:
        rows["gain"] = weighting_gain_of_run(logdir, batches=gain, seed=seed)
    return rows


def inspection_lines(rows: dict[str, Any], *, show: int = 8) -> list[str]:
    """``inspect_weights``'s result as text: the first ``show`` weights of each sequence (meta over naive, with
    Pearson's r), the weights' summary, weight against reward, the history and the weights per task."""
    seq_len = len(rows["meta"][0]) if rows["meta"] else 0
    lines = [f"{'set':>3}  {'type':<5}  weights (w_1:{show} of {seq_len})" + " " * max(0, 6 * show - 24) + "  r"]
    for i, r in enumerate(rows["pearson"]):
        for kind in ("meta", "naive"):
            values = " ".join(f"{x:5.2f}" for x in rows[kind][i][:show])
            cell = f"{r:+.2f}" if kind == "meta" else ""
            lines.append(f"{i + 1 if kind == 'meta' else '':>3}  {kind:<5}  [{values} ...]  {cell}")
    s = rows["summary"]
    q05, q50, q95 = s["q05_q50_q95"]
    lines.append(
        f"meta weights over {s['steps']} steps: mean {s['mean']:.3f} ± {s['std']:.3f}, "
        f"5/50/95% {q05:.3f}/{q50:.3f}/{q95:.3f}; within {s['near']:.2f} of a bound: "
        f"{s['share_near_low']:.1%} near {s['low']:g}, {s['share_near_high']:.1%} near {s['high']:g}"
    )
    b = rows["by_reward"]
    lines.append(
        f"meta weight vs reward: Pearson r {b['pearson']:+.3f}, Spearman {b['spearman']:+.3f}; "
        f"mean {b['mean_rewarded']:.3f} where r > 0 ({b['share_rewarded']:.1%} of steps), "
        f"{b['mean_unrewarded']:.3f} where r <= 0"
    )
    if rows["history"]:
        lines.append(
            "over training (from metrics.jsonl): env steps | weights' std | ESS share | r(w, reward) "
            "| r(w, ‖∂V/∂s‖) | weighter step ‖Δα‖/‖α‖ | ‖Δα‖/(lr·√P)"
        )
        for row in rows["history"]:
            keys = (
                "weight_std",
                "weight_ess",
                "weight_corr/reward",
                "weight_corr/value_grad_norm",
                "weighter_step",
                "weighter_step_vs_lr",
            )
            cells = [f"{row[k]:.3g}" if k in row else "-" for k in keys]
            lines.append(f"  {row['start']:>9.0f}–{row['end']:<9.0f} | {' | '.join(cells)}")
    for name, w in rows.get("per_task", {}).items():
        lines.append(f"task {name}: meta weight {w['mean']:.3f} ± {w['std']:.3f} over {w['steps']} steps")
    if "gain" in rows:
        lines.extend(gain_lines(rows["gain"]))
    return lines


def gain_lines(gain: dict[str, Any]) -> list[str]:
    """``weighting_gain_of_run``'s result as text: mean ± standard error over the batches."""
    lines = [
        f"one virtual SGD step (lr {gain['lr']:g}) on {gain['batches']} replayed batches; upper loss before "
        f"{gain['upper']['mean']:.4g}, change by the step with w = 1 {-gain['meta']['step_gain']['mean']:+.3g}:",
        "  weights | gain over w = 1 | gain shuffled | alignment cos(w − w̄, −g)",
    ]
    for kind in ("meta", "naive"):
        cells = [
            f"{gain[kind][k]['mean']:+.3g} ± {gain[kind][k]['se']:.2g}" for k in ("gain", "shuffled_gain", "alignment")
        ]
        lines.append(f"  {kind:<7} | {' | '.join(cells)}")
    return lines
