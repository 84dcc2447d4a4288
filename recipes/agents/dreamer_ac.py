"""Dreamer's actor-critic, learned in imagination on the RSSM's latent states (DreamerV2 §2.3–2.4).

* λ-returns (γ 0.99, λ 0.95) over a 15-step imagined rollout, bootstrapped with a slow critic that is copied
  from the critic every 100 updates;
* actor gradients by dynamics back-propagation for continuous actions, REINFORCE for discrete ones, plus an
  entropy bonus;
* the critic is exposed as V(features) for the upper-level task-aware losses (``value``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilevel.guard import check_finite
from recipes.agents.optim import adamw
from recipes.run.precision import autocast
from worldmodels.nets import TwoHotHead, at_least_fp32, mlp
from worldmodels.rssm import RSSM

States = dict[str, Tensor]


def lambda_return(reward: Tensor, value: Tensor, discount: Tensor, lam: float) -> Tensor:
    """λ-returns over an imagined trajectory (DreamerV2 eq. 4, with rewards aligned to the state reached).

    R_t = r_{t+1} + γ_{t+1} ((1 − λ) v_{t+1} + λ R_{t+1}),  R_H = v_H,  for t = 0 … H−1.

    Args:
        reward: [H+1, N], r_t predicted at state s_t (the reward received on arriving there); r_0 unused.
        value: [H+1, N], v(s_t).
        discount: [H+1, N], γ_t predicted at s_t (γ·continuation probability); γ_0 unused.
        lam: λ.

    Returns:
        [H, N]: R_0 … R_{H−1}.
    """
    out = []
    last = value[-1]
    for t in reversed(range(reward.shape[0] - 1)):
        last = reward[t + 1] + discount[t + 1] * ((1 - lam) * value[t + 1] + lam * last)
        out.append(last)
    return torch.stack(out[::-1], 0)


def replay_lambda_return(
    reward: Tensor, value: Tensor, discount: Tensor, is_first: Tensor, lam: float
) -> tuple[Tensor, Tensor]:
    """λ-returns along replayed sequences with the real rewards, cut where a new episode starts.

    R_t = r_{t+1} + γ_{t+1} ((1 − λ) v_{t+1} + λ R_{t+1}) as ``lambda_return``, except that where step t+1
    starts another episode (``is_first``: the sequence continued past a time limit into the next episode) there is
    no real transition, so R_t = v_t (bootstrapped at the episode's last state, a time-limit truncation) and the
    step gets no weight.  The last step has no target either.

    Args:
        reward: [T, N], r_t received on arriving at step t.
        value: [T, N], the bootstrap values v(s_t).
        discount: [T, N], γ_t (γ times 0 after a true termination).
        is_first: [T, N] bool, step t starts an episode.
        lam: λ.

    Returns:
        (R [T − 1, N], mask [T − 1, N] float: 1 where R_t is a real target).
    """
    cont = ~is_first[1:]
    out = []
    last = value[-1]
    for t in reversed(range(reward.shape[0] - 1)):
        step = reward[t + 1] + discount[t + 1] * ((1 - lam) * value[t + 1] + lam * last)
        last = torch.where(cont[t], step, value[t])
        out.append(last)
    return torch.stack(out[::-1], 0), cont.to(value.dtype)


_LOG_SQRT_2PI_E = 0.5 * math.log(2 * math.pi * math.e)
# DreamerV1's tanh-Normal actor (danijar/dreamer, networks.ActionDecoder): mean_scale 5, init_std 5, min_std 1e-4
_TANH_MEAN_SCALE, _TANH_MIN_STD = 5.0, 1e-4
_TANH_RAW_INIT_STD = math.log(math.expm1(5.0))


def truncated_normal(
    mean: Tensor, std: Tensor, deterministic: bool = False, low: float = -1.0, high: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """A reparameterised sample of N(mean, std²) truncated to [low, high], its log-density and entropy.

    The sample is x = μ + σ Φ⁻¹(Φ(α) + u (Φ(β) − Φ(α))), u ~ U(0, 1), α = (low − μ)/σ, β = (high − μ)/σ, so
    gradients reach μ and σ exactly (the distribution DreamerV2 uses for continuous actions).  The entropy is the
    closed form log(√(2πe) σ Z) + (α φ(α) − β φ(β)) / (2Z), Z = Φ(β) − Φ(α): bounded above by log(high − low),
    unlike a clipped Normal's.  ``deterministic`` returns the mode, clamp(μ, low, high).

    Shapes: ``mean``, ``std`` [...] → (sample, log_prob, entropy), each [...] (per dimension; sum yourself).
    """
    alpha, beta = (low - mean) / std, (high - mean) / std
    cdf_a, cdf_b = torch.special.ndtr(alpha), torch.special.ndtr(beta)
    z = (cdf_b - cdf_a).clamp_min(1e-8)
    if deterministic:
        x = mean.clamp(low, high)
    else:
        u = torch.rand_like(mean)
        tiny = torch.finfo(mean.dtype).eps
        x = mean + std * torch.special.ndtri((cdf_a + u * z).clamp(tiny, 1 - tiny))
        x = x.clamp(low, high)
    xi = (x.detach() - mean) / std
    log_prob = -0.5 * xi**2 - 0.5 * math.log(2 * math.pi) - std.log() - z.log()
    pdf_a, pdf_b = torch.exp(-0.5 * alpha**2), torch.exp(-0.5 * beta**2)
    inv_sqrt_2pi = 1.0 / math.sqrt(2 * math.pi)
    entropy = _LOG_SQRT_2PI_E + std.log() + z.log() + inv_sqrt_2pi * (alpha * pdf_a - beta * pdf_b) / (2 * z)
    return x, log_prob, entropy


class Actor(nn.Module):
    """π(a | features).  Continuous: DreamerV2's truncated Normal on [−1, 1] (mean tanh(·), std
    2·σ((·+init_std)/2) + min_std), sampled by the reparameterised inverse CDF (``truncated_normal``);
    discrete: one-hot categorical with a straight-through sample, optionally mixed with ``unimix`` of the uniform
    (DreamerV3).  ``dist="normal"``: DreamerV3's bounded Normal instead (Hafner et al. 2023; danijar/dreamerv3
    ``bounded_normal``): mean tanh(·), std (max_std − min_std)·σ(· + 2) + min_std ∈ [0.1, 1], not truncated — the
    environment clips the action — so even at its largest std the policy still follows its mean (the truncated
    Normal's std reaches 2.1, where P(a > 0 | mean = 1) is only 0.56: near-uniform exploration).

    ``dist="tanh_normal"``: DreamerV1's (Hafner et al. 2020, §4 and its code) and SAC's (Haarnoja et al. 2018,
    App. C eq. 21) squashed Normal: u ~ N(μ, σ²), a = tanh(u), with μ = 5·tanh(·/5), σ = softplus(· + softplus⁻¹(5))
    + 1e-4 (DreamerV1's mean_scale, init_std, min_std); log π(a) = log N(u) − Σ log(1 − tanh²u), and the entropy is
    the one-sample estimate −log π(a), whose log-Jacobian term falls without bound as u saturates — so the entropy
    bonus holds the pre-squash mean where tanh still has a gradient.  The other two put tanh on the *mean*: once
    dynamics backprop pushes a mean's pre-activation far out (Adam steps at full size whatever tanh′ is), its
    gradient vanishes for good, which is what left a pendulum swing-up actor at a constant full torque (pre-tanh
    means of −48 … 37; docs/recipe-dreamerv2.md).  Deterministic action: tanh(μ).

    ``mean_bound`` b (``trunc_normal`` and ``normal``; None: off): ``sample`` also returns the hinge penalty
    Σ_a max(0, |μ̃_a| − b)² on the pre-tanh mean μ̃, which the actor-critic adds to the actor's loss, so the mean stays
    where tanh′ ≥ tanh′(b) (0.0099 at b = 3) and the policy can still turn round.  It is the bounded counterpart of
    the pre-squash mean regulariser of SAC's original code (Haarnoja et al. 2018, haarnoja/sac: 1e-3·μ̃²), and
    leaves the mean free inside [−b, b].

    Shapes: ``forward(feat[..., F]) -> (action[..., A], log_prob[...], entropy[...])``;
    ``sample(feat) -> (action, log_prob, entropy, mean_penalty[...])``.

    Raises:
        ValueError: ``unimix`` outside [0, 1), an unknown ``dist``, ``max_std <= min_std``, or a ``mean_bound``
        that is not positive or is given with ``tanh_normal`` or discrete actions.
    """

    def __init__(
        self,
        feat: int,
        action_dim: int,
        discrete: bool,
        layers: int = 4,
        units: int = 400,
        min_std: float = 0.1,
        init_std: float = 0.0,
        unimix: float = 0.0,
        dist: str = "trunc_normal",
        max_std: float = 1.0,
        mean_bound: float | None = None,
    ) -> None:
        super().__init__()
        if mean_bound is not None:
            if not mean_bound > 0.0:
                raise ValueError(f"mean_bound must be positive, got {mean_bound}")
            if discrete or dist == "tanh_normal":
                raise ValueError("mean_bound bounds a tanh-mean actor: continuous trunc_normal or normal only")
        self.mean_bound = mean_bound
        if not 0.0 <= unimix < 1.0:
            raise ValueError(f"unimix must be in [0, 1), got {unimix}")
        if dist not in ("trunc_normal", "normal", "tanh_normal"):
            raise ValueError(f"dist must be 'trunc_normal', 'normal' or 'tanh_normal', got {dist!r}")
        if dist == "normal" and not max_std > min_std:
            raise ValueError(f"max_std must exceed min_std ({min_std}), got {max_std}")
        self.dist, self.max_std = dist, max_std
        self.discrete, self.action_dim, self.min_std, self.init_std = discrete, action_dim, min_std, init_std
        self.unimix = unimix
        self.net = mlp(feat, action_dim if discrete else 2 * action_dim, layers, units)

    def forward(self, feat: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        action, log_prob, entropy, _ = self.sample(feat, deterministic)
        return action, log_prob, entropy

    def sample(self, feat: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``forward``'s action, log-probability and entropy, and the pre-tanh mean's hinge penalty [...] (None
        without ``mean_bound``)."""
        out = self.net(feat)
        if self.discrete:
            logp_all = out.log_softmax(-1)
            if self.unimix:  # DreamerV3: (1 − u)·softmax + u/A, so every action keeps probability ≥ u/A
                logp_all = torch.log((1 - self.unimix) * logp_all.exp() + self.unimix / self.action_dim)
            probs = logp_all.exp()
            index = (
                probs.argmax(-1)
                if deterministic
                else torch.multinomial(probs.reshape(-1, self.action_dim), 1).reshape(probs.shape[:-1])
            )
            onehot = F.one_hot(index, self.action_dim).to(probs)
            action = onehot + probs - probs.detach()
            log_prob = (onehot * logp_all).sum(-1)
            entropy = -(probs * logp_all).sum(-1)
            return action, log_prob, entropy, None
        mean, std = out.chunk(2, -1)
        if self.dist == "tanh_normal":  # DreamerV1 / SAC: squash the sample, not the mean
            mean = _TANH_MEAN_SCALE * torch.tanh(mean / _TANH_MEAN_SCALE)
            std = F.softplus(std + _TANH_RAW_INIT_STD) + _TANH_MIN_STD
            noise = torch.zeros_like(mean) if deterministic else torch.randn_like(mean)
            u = mean + std * noise
            # log(1 − tanh²u) = 2 (log 2 − u − softplus(−2u)), stable for large |u| (SAC App. C eq. 21)
            log_det = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
            log_prob = (-0.5 * noise**2 - std.log() - 0.5 * math.log(2 * math.pi) - log_det).sum(-1)
            return torch.tanh(u), log_prob, -log_prob, None
        penalty = None
        if self.mean_bound is not None:
            penalty = (mean.abs() - self.mean_bound).clamp(min=0.0).square().sum(-1)
        mean = torch.tanh(mean)
        if self.dist == "normal":  # DreamerV3's bounded Normal
            std = (self.max_std - self.min_std) * torch.sigmoid(std + 2.0) + self.min_std
            noise = torch.zeros_like(mean) if deterministic else torch.randn_like(mean)
            action = mean + std * noise
            log_prob = -0.5 * noise**2 - std.log() - 0.5 * math.log(2 * math.pi)
            entropy = _LOG_SQRT_2PI_E + std.log()
            return action, log_prob.sum(-1), entropy.sum(-1), penalty
        std = 2 * torch.sigmoid((std + self.init_std) / 2) + self.min_std
        action, log_prob, entropy = truncated_normal(mean, std, deterministic)
        return action, log_prob.sum(-1), entropy.sum(-1), penalty


class ActorCritic(nn.Module):
    """Behaviour learning in imagination (DreamerV2).

    Every keyword argument is required: a recipe builds it from its config (``recipes.run.config.config_kwargs``),
    the one place its numbers live; the values in parentheses below are DreamerV2's.

    Args:
        rssm: the world model's latent dynamics (only used, never updated here).
        reward_head, discount_head: the world model's heads on features (``discount_head=None``: constant γ).
        action_dim, discrete: the action space.
        horizon, gamma, lam: imagination horizon (15), discount (0.99), λ (0.95).
        entropy: entropy bonus scale (DMC 1e-4, Atari 1e-3).
        actor_grad: ``"dynamics"`` (continuous default) or ``"reinforce"`` (discrete default).
        slow_every: copy the critic into the slow critic every this many updates (100).
        imag_starts: imagine from a random subset of this many start states (None: all B·T, as DreamerV2).
        layers, units: actor/critic MLPs (4 × 400).
        actor_lr, critic_lr, eps, clip, weight_decay: optimiser settings (DMC 8e-5/8e-5, eps 1e-5, clip 100, 1e-6).
        autocast_dtype: run the imagination and the losses under ``torch.autocast`` to this dtype (bf16: matrix
            products in bf16, distributions and returns in fp32; ``recipes.run.precision``); None: plain fp32.
        unimix: discrete actions: the actor's categorical mixed with this share of the uniform (DreamerV3, 0.01).
        actor_dist, actor_max_std: continuous actions: ``trunc_normal`` (DreamerV2), ``normal`` (DreamerV3's
            bounded Normal, std ∈ [0.1, ``actor_max_std``]) or ``tanh_normal`` (DreamerV1 / SAC: the sample
            squashed, entropy with its log-Jacobian); see ``Actor``.
        actor_mean_bound: None (default): off; b > 0: the actor's loss also has the mean over imagined states of
            Σ_a max(0, |μ̃_a| − b)² on the pre-tanh mean μ̃ (``Actor``), so dynamics backprop, whose tiny
            gradients Adam steps at full size, cannot push the mean into tanh's flat tails for good.
        twohot_bins: 0: DreamerV2's critic (a scalar, squared error); K > 0: a two-hot critic over K symlog-spaced
            bins (DreamerV3 §3, 255; ``worldmodels.nets.TwoHotHead``).
        return_norm: DreamerV3's return normalisation (Hafner et al. 2023, §3 "Actor learning", eq. 7): the actor's
            objective (the advantage R − v for REINFORCE, R for dynamics backprop) is divided by max(L, S), S an EMA
            (decay ``return_norm_decay``, 0.99) of the 5th-95th percentile range of the λ-returns and L =
            ``return_norm_limit`` (1): large returns are scaled down, small ones are not scaled up, so the entropy
            bonus keeps its weight while returns are tiny (sparse rewards).
        repval_scale: 0 (DreamerV2): the critic learns from imagined returns only; > 0: DreamerV3's replay value
            loss (Hafner et al. 2023; danijar/dreamerv3 ``repval``, 0.3) is added to the critic's loss with this
            weight — the critic also regresses, at the replayed posterior states, λ-returns of the *real* rewards
            (``replay_lambda_return``), so value spreads from the rare rewarded states actually visited.
            Bootstrapped with the slow critic (DreamerV3 bootstraps with the imagined returns).  Needs ``replay``
            in ``update``.
    """

    def __init__(
        self,
        rssm: RSSM,
        reward_head: nn.Module,
        discount_head: nn.Module | None,
        action_dim: int,
        discrete: bool,
        *,
        horizon: int,
        gamma: float,
        lam: float,
        entropy: float,
        actor_grad: str | None,
        slow_every: int,
        imag_starts: int | None,
        layers: int,
        units: int,
        actor_lr: float,
        critic_lr: float,
        eps: float,
        clip: float,
        weight_decay: float,
        autocast_dtype: torch.dtype | None,
        return_norm: bool,
        unimix: float,
        twohot_bins: int,
        return_norm_decay: float,
        return_norm_limit: float,
        actor_dist: str,
        actor_max_std: float,
        repval_scale: float,
        actor_mean_bound: float | None,
    ) -> None:
        super().__init__()
        if not repval_scale >= 0.0:
            raise ValueError(f"repval_scale must be >= 0, got {repval_scale}")
        self.repval_scale = repval_scale
        self.autocast_dtype = autocast_dtype
        if not 0.0 <= return_norm_decay < 1.0:
            raise ValueError(f"return_norm_decay must be in [0, 1), got {return_norm_decay}")
        if not return_norm_limit > 0.0:
            raise ValueError(f"return_norm_limit must be positive, got {return_norm_limit}")
        self.return_norm, self.return_norm_decay = return_norm, return_norm_decay
        self.return_norm_limit = return_norm_limit
        if return_norm:  # (only then: checkpoints of runs without it keep their keys)
            # S: EMA of the 5th-95th percentile range of the λ-returns (DreamerV3 eq. 7); NaN until the first update
            self.register_buffer("return_scale", torch.full((), float("nan")))
        self._wm = {"rssm": rssm, "reward": reward_head, "discount": discount_head}  # not submodules
        feat = rssm.feat_size
        self.actor = Actor(
            feat,
            action_dim,
            discrete,
            layers,
            units,
            unimix=unimix,
            dist=actor_dist,
            max_std=actor_max_std,
            mean_bound=actor_mean_bound,
        )
        self.critic: nn.Module = (
            TwoHotHead(feat, layers, units, twohot_bins) if twohot_bins else mlp(feat, 1, layers, units)
        )
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.horizon, self.gamma, self.lam, self.entropy = horizon, gamma, lam, entropy
        self.actor_grad = actor_grad or ("reinforce" if discrete else "dynamics")
        if self.actor_grad not in ("dynamics", "reinforce"):
            raise ValueError(f"actor_grad must be 'dynamics' or 'reinforce', got {self.actor_grad!r}")
        self.slow_every, self.clip, self.imag_starts = slow_every, clip, imag_starts
        self.actor_opt = adamw(self.actor.parameters(), actor_lr, eps=eps, weight_decay=weight_decay)
        self.critic_opt = adamw(self.critic.parameters(), critic_lr, eps=eps, weight_decay=weight_decay)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        #: the imagination and losses ``update`` runs: ``losses`` itself, or a fast backend's equal replacement
        #: (``recipes.dreamer.fast.CompiledImagination``)
        self.loss_fn: Callable[[States, Tensor | None], tuple[Tensor, Tensor, dict[str, Tensor]]] = self.losses

    @property
    def rssm(self) -> RSSM:
        """The world model's latent dynamics the rollouts imagine with (not a submodule)."""
        return self._wm["rssm"]

    def value(self, feat: Tensor, slow: bool = True) -> Tensor:
        """V(features) [...]: the (slow) critic, as the upper-level losses use it."""
        return (self.slow_critic if slow else self.critic)(feat).squeeze(-1)

    def act(self, feat: Tensor, deterministic: bool = False) -> Tensor:
        """An action for acting in the environment."""
        return self.actor(feat, deterministic)[0].detach()

    def update(
        self,
        start: dict[str, Tensor],
        is_terminal: Tensor | None = None,
        replay: dict[str, Tensor] | None = None,
    ) -> dict[str, float]:
        """One actor and one critic step on a rollout imagined from ``start`` (posterior states [..., ·]).

        Args:
            start: posterior states (any leading shape; flattened); detached here.
            is_terminal: optional [...] bool, the start states that are terminal (their γ_0 is 0).
            replay: for ``repval_scale > 0``: the replayed sequences, ``feat`` [B, T, F] (posterior features),
                ``reward`` [B, T], ``is_first`` [B, T] bool and optionally ``discount`` [B, T] (0 after a
                termination); ignored otherwise.

        Returns:
            ``actor_loss``, ``critic_loss``, the rollout's statistics, ``actor_grad_norm``, ``critic_grad_norm``.

        Raises:
            bilevel.NonFiniteError: a loss, statistic or gradient norm is NaN or infinite; neither optimiser stepped.
        """
        start = {k: v.detach().reshape(-1, *v.shape[-1:] if k != "logits" else v.shape[-2:]) for k, v in start.items()}
        if is_terminal is not None:
            is_terminal = is_terminal.reshape(-1)
        n = start["deter"].shape[0]
        if self.imag_starts is not None and n > self.imag_starts:
            keep = torch.randperm(n, device=start["deter"].device)[: self.imag_starts]
            start = {k: v[keep] for k, v in start.items()}
            is_terminal = None if is_terminal is None else is_terminal[keep]
        for p in self._wm_params():
            p.requires_grad_(False)  # the model is used, not trained: only gradients w.r.t. its features may flow
        try:
            with autocast(start["deter"].device, self.autocast_dtype):
                actor_loss, critic_loss, stats = self.loss_fn(start, is_terminal)
                if self.repval_scale > 0.0:
                    if replay is None:
                        raise ValueError("repval_scale > 0 needs the replayed sequences (update(..., replay=...))")
                    repval = self._replay_value_loss(replay)
                    critic_loss = critic_loss + self.repval_scale * repval
                    stats = {**stats, "repval_loss": repval.detach()}
        finally:
            for p in self._wm_params():
                p.requires_grad_(True)
        # one backward pass for both losses: the actor loss reaches only the actor (the model and the slow critic
        # are frozen, the start states detached) and the critic loss only the critic (its inputs and target are
        # detached); a compiled graph has one backward, which can run once
        self.actor_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        (actor_loss + critic_loss).backward()
        actor_norm = nn.utils.clip_grad_norm_(self.actor.parameters(), self.clip)
        critic_norm = nn.utils.clip_grad_norm_(self.critic.parameters(), self.clip)
        # every metric in one device synchronisation, checked before either step (bilevel.guard): a NaN or infinite
        # loss or gradient raises NonFiniteError with both optimisers' gradients cleared and nothing stepped
        metrics = check_finite(
            {
                "actor_loss": actor_loss.detach(),
                "critic_loss": critic_loss.detach(),
                **stats,
                "actor_grad_norm": actor_norm,
                "critic_grad_norm": critic_norm,
            },
            zero=(self.actor_opt, self.critic_opt),
        )
        self.actor_opt.step()
        self.critic_opt.step()
        self.actor_opt.zero_grad(set_to_none=True)
        self.updates += 1
        if int(self.updates) % self.slow_every == 0:
            self.slow_critic.load_state_dict(self.critic.state_dict())
        return metrics

    def imagination_policy(
        self, logps: list[Tensor], ents: list[Tensor], penalties: list[Tensor]
    ) -> Callable[[Tensor], Tensor]:
        """The policy ``worldmodels.RSSM.imagine`` rolls out: samples the actor at the (detached) features and
        appends each step's log-probability, entropy and mean penalty to the given lists."""
        reinforce = self.actor_grad == "reinforce"

        def policy(feat: Tensor) -> Tensor:
            action, logp, ent, penalty = self.actor.sample(feat)
            logps.append(logp)
            ents.append(ent)
            if penalty is not None:
                penalties.append(penalty)
            # REINFORCE needs no gradient through the dynamics: a detached action keeps the whole rollout, its
            # rewards and values out of the autograd graph (less memory, no bookkeeping; same values)
            return action.detach() if reinforce else action

        return policy

    def losses(self, start: States, is_terminal: Tensor | None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The imagined rollout from ``start`` ([N, ·] states; ``is_terminal`` [N] bool or None) and DreamerV2's
        actor and critic losses (§2.3, eq. 5-7), with the world model frozen by the caller."""
        logps: list[Tensor] = []
        ents: list[Tensor] = []
        penalties: list[Tensor] = []
        policy = self.imagination_policy(logps, ents, penalties)
        states, _ = self._wm["rssm"].imagine(policy, start, self.horizon, keys=("feat",))
        penalty = torch.stack(penalties, 0) if penalties else None
        return self.rollout_losses(states["feat"], torch.stack(logps, 0), torch.stack(ents, 0), penalty, is_terminal)

    def rollout_losses(
        self, feat: Tensor, logp: Tensor, ent: Tensor, penalty: Tensor | None, is_terminal: Tensor | None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """DreamerV2's actor and critic losses (§2.3, eq. 5-7) of an imagined rollout: ``feat`` [H+1, N, F] (the
        start included; differentiable w.r.t. the actions under dynamics backprop), the actor's ``logp``, ``ent``
        [H, N] and mean ``penalty`` [H, N] (or None) at the first H states."""
        reward_head, discount_head = self._wm["reward"], self._wm["discount"]
        reward = reward_head(feat).squeeze(-1)
        if discount_head is not None:
            discount = self.gamma * torch.sigmoid(discount_head(feat).squeeze(-1))
        else:
            discount = torch.full_like(reward, self.gamma)
        if is_terminal is not None:
            discount = torch.cat([(1.0 - is_terminal.reshape(1, -1).to(discount)) * self.gamma, discount[1:]], 0)
        value_slow = self.slow_critic(feat).squeeze(-1)
        target = lambda_return(reward, value_slow, discount, self.lam)  # [H, N]
        with torch.no_grad():
            weight = torch.cumprod(torch.cat([torch.ones_like(discount[:1]), discount[:-1]], 0), 0)[:-1]

        scale = self._return_scale(target) if self.return_norm else None
        if self.actor_grad == "dynamics":
            objective = target if scale is None else target / scale
        else:
            baseline = value_slow[:-1]  # v_slow(s_t) at the same states: no second pass of the slow critic
            advantage = (target - baseline).detach()
            objective = logp * (advantage if scale is None else advantage / scale)
        actor_loss = -(weight * (objective + self.entropy * ent)).mean()
        if penalty is not None:  # the pre-tanh mean held in [−b, b] (Actor.mean_bound), unweighted by the discount
            mean_penalty = penalty.mean()
            actor_loss = actor_loss + mean_penalty
        if isinstance(self.critic, TwoHotHead):  # DreamerV3 eq. 10: cross-entropy against twohot(symlog R)
            critic_nll = self.critic.nll(feat[:-1].detach(), target.detach())
        else:
            critic_nll = 0.5 * (self.critic(feat[:-1].detach()).squeeze(-1) - target.detach()) ** 2
        critic_loss = (weight * critic_nll).mean()

        stats = {
            **({} if scale is None else {"return_scale": scale}),
            "imag_reward": reward[1:].detach().mean(),
            "imag_value": value_slow.detach().mean(),
            "imag_return": target.detach().mean(),
            "actor_entropy": ent.detach().mean(),
            **({"actor_mean_penalty": mean_penalty.detach()} if penalty is not None else {}),
        }
        return actor_loss, critic_loss, stats

    def _replay_value_loss(self, replay: dict[str, Tensor]) -> Tensor:
        """DreamerV3's replay value loss: the critic at the replayed posterior features against λ-returns of the
        real rewards (``replay_lambda_return``, bootstrapped with the slow critic), masked where no real
        transition follows; a scalar."""
        feat = replay["feat"].detach().transpose(0, 1)  # [T, B, F]
        reward = replay["reward"].detach().transpose(0, 1).float()
        is_first = replay["is_first"].bool().transpose(0, 1)
        discount = torch.full_like(reward, self.gamma)
        if "discount" in replay:
            discount = discount * replay["discount"].detach().transpose(0, 1).float()
        with torch.no_grad():
            value = at_least_fp32(self.slow_critic(feat).squeeze(-1))
            target, mask = replay_lambda_return(reward, value, discount, is_first, self.lam)
        if isinstance(self.critic, TwoHotHead):
            nll = self.critic.nll(feat[:-1], target)
        else:
            nll = 0.5 * (self.critic(feat[:-1]).squeeze(-1) - target) ** 2
        return (mask * nll).sum() / mask.sum().clamp_min(1.0)

    @torch.no_grad()
    def _return_scale(self, target: Tensor) -> Tensor:
        """max(L, S) after updating S ← decay·S + (1 − decay)·(Per(R, 95) − Per(R, 5)) with this batch's λ-returns
        ``target`` [H, N] (DreamerV3 eq. 7; S starts at the first batch's range)."""
        flat = at_least_fp32(target.detach().reshape(-1))  # (torch.quantile has no bf16 kernel)
        lo, hi = torch.quantile(flat, flat.new_tensor([0.05, 0.95]))
        span = hi - lo
        ema = self.return_scale
        new = torch.where(torch.isnan(ema), span, self.return_norm_decay * ema + (1 - self.return_norm_decay) * span)
        new = torch.where(torch.isfinite(span), new, ema)  # a non-finite batch (its update is skipped) leaves S as is
        self.return_scale.copy_(new)
        return new.clamp_min(self.return_norm_limit).to(target.dtype)

    def _wm_params(self) -> list[nn.Parameter]:
        mods: list[Callable | nn.Module | None] = [self._wm["rssm"], self._wm["reward"], self._wm["discount"]]
        return [p for m in mods if isinstance(m, nn.Module) for p in m.parameters()]
