"""Recipes ``m3po``, ``mbpo`` and ``sac``: M3PO's Algorithm 2 (Hiraoka et al. 2021) on the shared run loop.

One training call at env step t (every ``train_every`` env steps, after ``prefill``):

    every F env steps: fit the meta-model p_θ(o', r | o, a, z) on D_env         (Alg. 2 line 3; early stopping
                       and elites by hold-out loss; optionally bi-level weighted)
    M·train_every branched rollouts of k steps from histories sampled from D_env  (lines 6–9)
    G·train_every SAC updates on batches mixing D_env and D_model at real_ratio(t)  (lines 10–12; M3PO-h §7.1)

``mbpo`` is the same with L = 0 and MBPO's constant mixture; ``sac`` has no model and trains on D_env alone.
Every number lives in ``recipes.m3po.config.M3POConfig``.

Option ``weighting`` (the framework's own, in no paper): a ``bilevel.MetaWeighter`` weighs every training
transition of the meta-model; the upper loss is a task loss from ``tasklosses`` (VaGraM by default) of the
model's predicted next observations through the SAC critic's V(o', z'), and the weighter learns by any
``bilevel`` strategy — the same ``bilevel.BilevelUpdate`` TEMPO uses, here with the ensemble's per-sample
NLL ℓ[N] as the lower loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bilevel import BilevelUpdate, LevelOutputs, MetaWeighter, NonFiniteError, Uniform
from recipes.agents.sac import SAC
from recipes.data.transitions import TransitionBuffer, next_history
from recipes.envs import Env
from recipes.m3po.config import M3POConfig
from recipes.m3po.rollouts import branched_rollouts, termination_fn
from recipes.run import loop
from recipes.run.config import MODEL_FIELDS, WEIGHTER_FIELDS, config_kwargs
from recipes.run.precision import autocast_fn, resolve_precision
from recipes.run.strategy import strategy_from_config
from tasklosses import make_task_loss
from tasklosses.vagram import value_gradient
from worldmodels import GaussianEnsemble, HistoryEnsemble, bootstrap_counts, fit_to_holdout
from worldmodels.history import history_dim, roll_history

#: ``SAC``'s arguments whose config fields have other names (α's learning rate is SAC's).
SAC_FIELDS = {
    "layers": "sac_layers",
    "units": "sac_units",
    "lr": "sac_lr",
    "alpha_lr": "sac_lr",
    "init_alpha": "sac_init_alpha",
    "target_update_every": "sac_target_update_every",
    "grad_clip": "sac_grad_clip",
}


class M3POLearner(loop.Learner):
    """Meta-model, SAC meta-policy, D_env and D_model, as the run loop drives them.

    Args:
        cfg: the run's config.
        obs_dim, action_dim: the environment's vector observation and action sizes.
        max_transitions: capacity of D_env (the run's agent steps; D_env never wraps, see
            ``recipes.data.transitions``).
    """

    def __init__(
        self, cfg: M3POConfig, obs_dim: int, action_dim: int, max_transitions: int, terminal: Any = None
    ) -> None:
        self.cfg, self.device = cfg, torch.device(cfg.device)
        self.obs_dim, self.action_dim, self.terminal = obs_dim, action_dim, terminal
        self.sac = SAC(obs_dim, action_dim, **config_kwargs(cfg, SAC, SAC_FIELDS)).to(self.device)
        f32 = torch.float32
        env_fields = {
            "obs": ((obs_dim,), f32),
            "action": ((action_dim,), f32),
            "reward": ((), f32),
            "next_obs": ((obs_dim,), f32),
            "done": ((), f32),
            "pos": ((), torch.long),
        }
        self.d_env = TransitionBuffer(max_transitions, env_fields, self.device, wrap=False)
        self.model: HistoryEnsemble | None = None
        self.update: BilevelUpdate | None = None
        self.weighter: MetaWeighter | None = None
        self.counters = {"last_model": -1, "model_fits": 0, "normalized": 0, "model_updates": 0}
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.prev: dict[str, Any] | None = None  # the last observed step of the current episode
        self.pos = 0
        if cfg.model_based:
            self._build_model(env_fields)

    def _build_model(self, env_fields: dict[str, Any]) -> None:
        """The meta-model (a history-conditioned ensemble), its optimiser, its rollout buffer D_model and the
        bi-level update (with a weighter where ``weighting``)."""
        cfg, obs_dim, action_dim, length = self.cfg, self.obs_dim, self.action_dim, self.cfg.history_len
        f32 = torch.float32
        self.model = HistoryEnsemble(
            obs_dim,
            action_dim,
            **config_kwargs(cfg, HistoryEnsemble),
            **config_kwargs(cfg, GaussianEnsemble, MODEL_FIELDS, exclude=("context_dim",), learn_reward=True),
        ).to(self.device)
        self.model_opt = torch.optim.Adam(self.model.parameters(), cfg.model_lr, weight_decay=cfg.model_wd)
        # (device, dtype) of the meta-model's training forward: dtype None = plain fp32 (recipes.run.precision)
        self.model_autocast = (self.device, resolve_precision(cfg.model_precision, self.device))
        longest = max(cfg.rollout_length, cfg.rollout_length_end or 0)
        capacity = cfg.rollouts_per_step * longest * cfg.model_retain
        width = history_dim(obs_dim, action_dim)
        self.d_model = TransitionBuffer(
            capacity,
            {
                **{k: v for k, v in env_fields.items() if k != "pos"},
                "history": ((length, width), f32),
                "history_mask": ((length,), f32),
            },
            self.device,
        )
        strategy = Uniform()
        if cfg.model_loss == "vagram":  # the model's own objective (its settings: task_loss_kwargs)
            self.task_loss = make_task_loss("vagram", **cfg.task_loss_kwargs)
        if cfg.weighting and self.model.encoder is not None:
            self.model.encoder.cudnn = False  # hypergradients differentiate the GRU twice: cuDNN's cannot
        if cfg.weighting:
            strategy = strategy_from_config(cfg)
            self.task_loss = make_task_loss(cfg.task_loss, **cfg.task_loss_kwargs)
            if strategy.trains_weighter:
                features = 2 * obs_dim + action_dim + 2  # (o, a) and (Δo, r) normalised, and ℓ_i
                self.weighter = MetaWeighter(
                    features, **config_kwargs(cfg, MetaWeighter, WEIGHTER_FIELDS, exclude=("groups", "group_dim"))
                ).to(self.device)
                self.weighter_opt = torch.optim.Adam(self.weighter.parameters(), cfg.weighter_lr)
        self.update = BilevelUpdate(
            self.model,
            self.model_opt,
            strategy,
            self.weighter,
            self.weighter_opt if self.weighter is not None else None,
            hypergradient_scale=cfg.hypergradient_scale,
        )

    # -- acting and storing ------------------------------------------------------------------------------------
    def act(self, step: dict[str, Any], state: Any, *, explore: bool) -> tuple[np.ndarray, Any]:
        """π(a | o, z) with z from the last L steps of this episode; ``state`` carries the window."""
        obs = torch.as_tensor(np.asarray(step["obs"], np.float32), device=self.device)[None]
        if state is None:
            width = history_dim(self.obs_dim, self.action_dim)
            hist = obs.new_zeros(1, self.cfg.history_len, width)
            mask = obs.new_zeros(1, self.cfg.history_len)
        else:
            action = torch.as_tensor(np.asarray(step["action"], np.float32), device=self.device)[None]
            reward = torch.as_tensor([float(step["reward"])], device=self.device)
            hist, mask = roll_history(state["history"], state["mask"], state["obs"], action, reward)
        action = self.sac.act(obs, hist, mask, deterministic=not explore)[0]
        return action.cpu().numpy().astype(np.float32), {"history": hist, "mask": mask, "obs": obs}

    def observe(self, step: dict[str, Any]) -> None:
        if step["is_first"]:
            self.prev, self.pos = step, 0
            return
        assert self.prev is not None, "observe() got a transition before its episode's first step"

        def t(x: Any) -> Tensor:
            return torch.as_tensor(np.asarray(x, np.float32), device=self.device)[None]

        self.d_env.add(
            obs=t(self.prev["obs"]),
            action=t(step["action"]),
            reward=t(step["reward"]),
            next_obs=t(step["obs"]),
            done=t(float(step["is_terminal"])),
            pos=torch.tensor([self.pos], device=self.device),
        )
        self.prev, self.pos = step, self.pos + 1

    def ready(self) -> bool:
        return len(self.d_env) >= max(self.cfg.sac_batch, 2 * self.cfg.model_batch if self.cfg.model_based else 1)

    # -- training ------------------------------------------------------------------------------------------------
    def env_batch(self, index: Tensor) -> dict[str, Tensor]:
        """Rows of D_env with their windows before and after (``history``, ``next_history``, and masks)."""
        batch = self.d_env.get(index)
        batch["history"], batch["history_mask"] = self.d_env.history(index, self.cfg.history_len)
        batch["next_history"], batch["next_history_mask"] = next_history(batch)
        return batch

    def sac_batch(self, env_steps: int) -> dict[str, Tensor]:
        """A SAC batch: ``real_ratio(t)`` of it from D_env, the rest from D_model (all real while D_model is empty)."""
        n = self.cfg.sac_batch
        n_real = n if not self.cfg.model_based or len(self.d_model) == 0 else round(self.cfg.real_ratio(env_steps) * n)
        parts = []
        if n_real > 0:
            batch = self.env_batch(self.d_env.sample_indices(n_real, self.generator))
            batch.pop("pos")
            parts.append(batch)
        if n_real < n:
            # the model data of the last model_retain env steps at the current rollout length (MBPO's pool size)
            recent = self.cfg.rollouts_per_step * self.cfg.rollout_length_at(env_steps) * self.cfg.model_retain
            batch = self.d_model.get(self.d_model.sample_indices(n - n_real, self.generator, recent=recent))
            batch["next_history"], batch["next_history_mask"] = next_history(batch)
            parts.append(batch)
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def train(self, env_steps: int) -> tuple[int, dict[str, float]]:
        cfg, metrics = self.cfg, {}
        if cfg.model_based:
            if self.counters["last_model"] < 0 or env_steps - self.counters["last_model"] >= cfg.model_every:
                metrics.update(self.fit_model())
                self.counters["last_model"] = env_steps
            metrics.update(self.rollouts(cfg.rollouts_per_step * cfg.train_every, cfg.rollout_length_at(env_steps)))
        updates, sac_metrics = 0, {}
        for _ in range(cfg.sac_updates * cfg.train_every):  # one with a non-finite loss is skipped (self.skips)
            out = self.skips.run(self._sac_update, self.sac_batch(env_steps))
            if out is not None:
                updates, sac_metrics = updates + 1, out
        metrics.update({f"sac/{k}": v for k, v in sac_metrics.items()})
        metrics["mix/real_ratio"] = cfg.real_ratio(env_steps)
        return updates, metrics

    def _sac_update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        try:
            return self.sac.update(batch)
        except NonFiniteError as err:
            raise err.prefixed("sac/") from None

    def _model_update(self, forward: Any, meta: bool) -> dict[str, float]:
        assert self.update is not None
        try:
            return self.update.step(forward, meta=meta)
        except NonFiniteError as err:
            raise err.prefixed("model/") from None

    def rollouts(self, n: int, length: int | None = None) -> dict[str, float]:
        """``n`` branched rollouts of ``length`` steps (default ``rollout_length``) into D_model (Algorithm 2,
        lines 6–9)."""
        assert self.model is not None
        start = self.env_batch(self.d_env.sample_indices(n, self.generator))
        rows, stats = branched_rollouts(
            self.model,
            self.sac,
            start,
            self.cfg.rollout_length if length is None else length,
            self.terminal,
            generator=self.generator,
            deterministic=self.cfg.model_loss == "vagram",  # no variance was trained
        )
        self.d_model.add(**rows)
        return {f"rollout/{k}": v for k, v in {**stats, "length": float(length or self.cfg.rollout_length)}.items()}

    def _model_forward(self, batch: dict[str, Tensor]) -> Any:
        """The ``forward`` closure of the bi-level update: ℓ[N], and with ``weighting`` the weighter's features and
        the per-sample task loss of the predicted next observations through V(o', z')."""
        assert self.model is not None
        if self.cfg.model_loss == "vagram":
            return autocast_fn(self._vagram_forward(batch), *self.model_autocast)
        if not self.cfg.weighting:
            return autocast_fn(lambda fn: LevelOutputs(loss=(out := fn(batch)).loss, aux=out), *self.model_autocast)
        # V(o', z') is built once per batch (its action noise fixed), so every pass sees the same upper loss
        value_fn = self.sac.value_fn(batch["next_history"], batch["next_history_mask"])

        # what the weights are held against (diagnostics): the reward and the value gradient's size at o'
        probes = {
            "reward": batch["reward"],
            "value_grad_norm": value_gradient(value_fn, batch["next_obs"]).norm(dim=-1),
        }

        def forward(fn: Any) -> LevelOutputs:
            out = fn(batch)
            upper = self.task_loss(out.states["next_obs_mean"], batch["next_obs"], value_fn)
            upper = upper.mean(0) if upper.dim() > 1 else upper  # VaGraM per member [E, N] → [N]
            features = torch.cat([out.states["inputs"], out.states["targets"], out.loss.detach().unsqueeze(-1)], -1)
            return LevelOutputs(loss=out.loss, features=features.detach(), upper=upper, aux=out, probes=probes)

        return autocast_fn(forward, *self.model_autocast)

    def _vagram_forward(self, batch: dict[str, Tensor]) -> Any:
        """The ``forward`` closure of ``model_loss=vagram`` (Voelcker et al. 2022, eq. 7; the official code's
        model objective): per sample ℓ = Σ_d (∂V/∂o'_d · (ô'_d − o'_d))² + (r̂ − r)², averaged over the members
        (with their bootstrap counts), ô' and r̂ each member's mean; ∂V/∂o' of the SAC critic's V(o', z') at the
        real o' (``batch["value_grad"]`` where the fit computed it once for all its rows, else here).  No weighter;
        the variance is not trained (rollouts use the mean)."""
        value_grad = batch["value_grad"] if "value_grad" in batch else self._value_grad(batch)

        def forward(fn: Any) -> LevelOutputs:
            out = fn(batch)
            member = self._vagram_members(out, batch, value_grad)  # [E, N]
            counts = batch.get("bootstrap")
            loss = (member if counts is None else counts.to(member.dtype) * member).mean(0)
            return LevelOutputs(loss=loss, aux=out)

        return forward

    def _value_grad(self, batch: dict[str, Tensor]) -> Tensor:
        """∂V/∂o' [N, O] of the SAC critic's V(o', z') at the batch's real o' (a constant for the model)."""
        return value_gradient(self.sac.value_fn(batch["next_history"], batch["next_history_mask"]), batch["next_obs"])

    def _vagram_members(self, out: Any, batch: dict[str, Tensor], value_grad: Tensor) -> Tensor:
        """Each member's VaGraM loss plus reward error per sample [E, N] (``_vagram_forward``)."""
        member = self.task_loss(out.states["next_obs_mean"], batch["next_obs"], value_grad=value_grad)
        return member + (out.states["reward_mean"] - batch["reward"].to(member.dtype)) ** 2

    def _holdout_score(self, hold: dict[str, Tensor]) -> Tensor:
        """The per-member hold-out score [E] of ``model_loss=vagram``: the loss it trains on (early stopping and
        elites by it, not by the MSE of dimensions the value does not weight); ``hold`` carries its
        ``value_grad``."""
        assert self.model is not None
        with torch.no_grad():
            return self._vagram_members(self.model.loss(hold), hold, hold["value_grad"]).mean(1)

    def fit_model(self) -> dict[str, float]:
        """Train the meta-model on D_env: a fresh hold-out split, per-member bootstrap counts, epochs of minibatches
        until the hold-out MSE (with ``model_loss=vagram`` the hold-out VaGraM loss) stops improving by
        ``model_improvement`` for ``model_patience`` epochs (or ``model_max_epochs``), the best epoch's parameters
        kept, elites by the same score (mbrl-lib's ModelTrainer, Algorithm 2 line 3)."""
        assert self.model is not None and self.update is not None
        cfg, model = self.cfg, self.model
        index = self.d_env.indices()
        new = index[self.counters["normalized"] :]  # running normaliser: every row once
        if len(new):
            model.update_normalizer(self.env_batch(new))
            self.counters["normalized"] = len(index)
        perm = index[torch.randperm(len(index), generator=self.generator).to(self.device)]
        n_hold = max(1, int(cfg.holdout_ratio * len(perm)))
        hold, train = self.env_batch(perm[:n_hold]), perm[n_hold:]
        counts = bootstrap_counts(cfg.members, len(train), generator=self.generator).to(self.device)
        metrics: dict[str, float] = {}
        vagram = cfg.model_loss == "vagram"  # then ∂V/∂o' of every row once per fit: V does not change during it
        if vagram:
            hold["value_grad"] = self._value_grad(hold)
            train_grad = self._value_grad(self.env_batch(train))

        def minibatch(pos: Tensor) -> None:
            nonlocal metrics
            pos = pos.to(self.device)
            batch = {**self.env_batch(train[pos]), "bootstrap": counts[:, pos]}
            forward = self._model_forward({**batch, "value_grad": train_grad[pos]} if vagram else batch)
            meta = self.counters["model_updates"] % cfg.meta_every == 0
            # a minibatch with a non-finite loss or gradient is skipped (self.skips), nothing written
            metrics = self.skips.run(self._model_update, forward, meta) or metrics
            self.counters["model_updates"] += 1

        epochs, final = fit_to_holdout(
            model,
            hold,
            len(train),
            minibatch,
            batch=cfg.model_batch,
            max_epochs=cfg.model_max_epochs,
            patience=cfg.model_patience,
            generator=self.generator,
            improvement=cfg.model_improvement,
            score=self._holdout_score if vagram else None,
        )
        self.counters["model_fits"] += 1
        mse = model.holdout_loss(hold) if vagram else final  # with vagram ``final`` is the hold-out VaGraM loss
        return {
            "model/holdout_mse": float(mse[model.elite_idx].mean()),
            **({"model/holdout_vagram": float(final[model.elite_idx].mean())} if vagram else {}),
            **self._holdout_split(hold),
            "model/epochs": float(epochs),
            "model/fits": float(self.counters["model_fits"]),
            "model/updates": float(self.counters["model_updates"]),
            **{f"model/{k}": v for k, v in metrics.items()},
        }

    @torch.no_grad()
    def _holdout_split(self, hold: dict[str, Tensor]) -> dict[str, float]:
        """With ``distractors``: the elites' hold-out MSE on the env's own Δs dimensions and on the distractors'
        (where the model spends its fit; recipes.envs.mismatch); nothing otherwise."""
        if not self.cfg.distractors or self.model is None:
            return {}
        real = self.obs_dim - self.cfg.distractors
        error = self.model.holdout_loss(hold, per_dim=True)[self.model.elite_idx].mean(0)  # [D]
        return {
            "model/holdout_mse_state": float(error[:real].mean()),
            "model/holdout_mse_distractors": float(error[real : self.obs_dim].mean()),
        }

    # -- checkpoints -------------------------------------------------------------------------------------------
    def modules(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sac": self.sac, **self.sac.optimizers()}
        if self.model is not None:
            out.update(model=self.model, model_opt=self.model_opt)
        if self.weighter is not None:
            out.update(weighter=self.weighter, weighter_opt=self.weighter_opt)
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {name: m.state_dict() for name, m in self.modules().items()}
        state.update(
            d_env=self.d_env.state_dict(),
            counters=dict(self.counters),
            learner_rng=self.generator.get_state(),
            prev=self.prev,
            pos=self.pos,
        )
        if self.model is not None:
            state["d_model"] = self.d_model.state_dict()
        return {"learner": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = state["learner"]
        for name, m in self.modules().items():
            m.load_state_dict(state[name])
        self.d_env.load_state_dict(state["d_env"])
        if self.model is not None:
            self.d_model.load_state_dict(state["d_model"])
        self.counters.update(state["counters"])
        self.generator.set_state(state["learner_rng"])
        self.prev, self.pos = state["prev"], state["pos"]


def make_learner(cfg: M3POConfig, env: Env, logdir: Path) -> M3POLearner:
    """The learner of an ``m3po``/``mbpo``/``sac`` run on ``env`` (vector observations); the env's termination
    function for model rollouts where there is a model (model-free ``sac`` runs on any env)."""
    terminal = termination_fn(cfg.env) if cfg.model_based else None
    return M3POLearner(cfg, env.obs_shape[0], env.action_dim, cfg.steps // cfg.action_repeat + 1, terminal=terminal)


def train(
    cfg: M3POConfig, logdir: Path, *, force: bool = False, progress: bool = True, recipe: str = "m3po"
) -> dict[str, Any]:
    """Train (or resume) a run of the M3PO family in ``logdir`` (``recipes.run.loop.train``)."""
    return loop.train(cfg, logdir, make_learner, recipe=recipe, force=force, progress=progress)
