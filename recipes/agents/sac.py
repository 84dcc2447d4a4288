"""Soft Actor-Critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications", arXiv:1812.05905) as
M3PO's meta-policy: policy and critics conditioned on the current episode's history (Hiraoka et al. 2021, §6 and
Algorithm 2, lines 10–12).

* Actor: a squashed (tanh) diagonal Gaussian π(a | o, z_π), log-std clamped to [−20, 2] (the softlearning/MBPO and
  Stable-Baselines3 convention), actions in [−1, 1]; its log-density carries the tanh change of variables of the SAC
  paper's Appendix C, log π(a|s) = log μ(u|s) − Σ_i log(1 − tanh²(u_i)), computed stably as
  log(1 − tanh²(u)) = 2 (log 2 − u − softplus(−2u)).
* Critic: twin soft Q-functions Q_1, Q_2(o, z_Q, a) trained on the clipped double-Q target (eq. 5; Fujimoto et al.
  2018) y = r + γ (1 − done) (min_i Q̄_i(o', z̄_Q', a') − α log π(a' | o', z_π')), a' ~ π(· | o', z_π'), with target
  networks Q̄ updated by Polyak averaging Q̄ ← (1 − τ) Q̄ + τ Q every ``target_update_every`` updates.
* Actor loss (eq. 7 with the reparameterisation of eq. 8–9): E[α log π(a|s) − min_i Q_i(s, a)], a = tanh(μ + σ ε).
* Temperature (eq. 18): J(α) = E[−α (log π(a|s) + H̄)] with the target entropy H̄ = −|A| by default; as in
  softlearning (the MBPO code) and Stable-Baselines3 it is optimised through log α, i.e. the loss is
  −log α · (log π + H̄) — the same sign of the gradient as eq. 18, scaled by 1/α, and α stays positive.
* One ``SAC.update`` is one gradient step of the critic, then the actor (on the updated critic) and then α, as
  in the SAC paper's Algorithm 1; the actor and the critic targets use α before its step.

History conditioning (``history_len`` = L > 0).  z = ``worldmodels.history.HistoryEncoder`` (a GRU) of the window
``history`` [N, L, O + A + 1] / ``mask`` [N, L] (layout of ``worldmodels.history``), concatenated to the
observation.  The actor and the critic have *separate* encoders: the twin Qs share one critic encoder, trained by the
critic loss only (the actor loss sees its code detached); the target critic has a Polyak-averaged target copy of it;
the actor's encoder is trained by the actor loss.  M3PO's Figure 5 feeds "z" to the policy and to the value network
without saying whether the RNN is shared; Ni et al. 2022 ("Recurrent Model-Free RL Can Be a Strong Baseline for Many
POMDPs", ICML) found an RNN shared by actor and critic unstable in off-policy recurrent SAC/TD3 and recommend
separate ones, which is what this module does.  L = 0 gives plain SAC: no encoder, and any history passed in is
ignored.

Why not Stable-Baselines3: SB3's ``SAC.train()`` samples its batches from its own replay buffer and its policies
take the observation only, so M3PO's mixture of real (D_env) and model (D_model) data with per-row history windows
would mean overriding most of it.  Here ``SAC.update`` takes any batch the caller assembles.

Defaults are the SAC paper's (arXiv:1812.05905, Appendix D, Table 1), which MBPO (Janner et al. 2019) keeps for its
policy: Adam with learning rate 3·10⁻⁴ (actor, critic and α), γ = 0.99, 2 hidden ReLU layers of 256 units, target
smoothing τ = 0.005, target update interval 1, target entropy −dim(A); the initial α = 1 (log α = 0) is
softlearning's and SB3's ``ent_coef="auto"`` default.

Twin Qs: two MLPs rather than one batched network ([2, in, out] weights via ``baddbmm``): on CPU at SAC's sizes
the batched forms measured no faster (a tie or a few per cent in favour of the two MLPs, docs/results.md), and
the two MLPs reuse ``worldmodels.nets.mlp`` and its standard initialisation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilevel.guard import check_finite
from worldmodels.history import HistoryEncoder, history_dim
from worldmodels.nets import mlp

#: Clamp of the actor's log-std (softlearning/MBPO and Stable-Baselines3).
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

_LOG_2 = math.log(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def tanh_log_abs_det(u: Tensor) -> Tensor:
    """log |d tanh(u)/du| = log(1 − tanh²(u)) = 2 (log 2 − u − softplus(−2u)), elementwise and stable for large |u|.

    Shapes: ``u`` [...] → [...].
    """
    return 2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))


def squashed_gaussian_log_prob(u: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log π(tanh(u)) of a tanh-squashed diagonal Gaussian at the pre-tanh sample ``u`` (SAC paper, Appendix C).

    log π(a) = Σ_i [log N(u_i; μ_i, σ_i²) − log(1 − tanh²(u_i))], a = tanh(u).

    Shapes: ``u``, ``mean``, ``log_std`` [..., A] (broadcastable) → [...].
    """
    normal = -0.5 * ((u - mean) * torch.exp(-log_std)) ** 2 - log_std - _LOG_SQRT_2PI
    return (normal - tanh_log_abs_det(u)).sum(-1)


def _with_code(x: Tensor, z: Tensor | None) -> Tensor:
    """``x`` [..., D] concatenated with a history code ``z`` [N, H] broadcast over the leading dims of ``x``."""
    if z is None:
        return x
    return torch.cat([x, z.expand(*x.shape[:-1], z.shape[-1]).to(x.dtype)], -1)


class SquashedGaussianActor(nn.Module):
    """π(a | o, z): an optional history encoder and an MLP head giving a tanh-squashed diagonal Gaussian.

    Args:
        obs_dim, action_dim: O and A.
        history_len: L; 0 builds no encoder.
        history_hidden: size H of the code z (L > 0).
        layers, units: the head MLP (ReLU).

    Shapes: ``encode(history [N, L, O + A + 1], mask [N, L]) -> z [N, H]`` (``None`` with L = 0);
    ``head(obs [..., O], z [N, H] | None, *, deterministic, noise [..., A]) -> (action [..., A], log_prob [...])``,
    z broadcast over the leading dims of ``obs`` (whose last must be N or broadcast to it).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        history_len: int = 0,
        history_hidden: int = 64,
        layers: int = 2,
        units: int = 256,
    ) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.encoder = HistoryEncoder(history_dim(obs_dim, action_dim), history_hidden) if history_len > 0 else None
        code = history_hidden if history_len > 0 else 0
        self.net = mlp(obs_dim + code, 2 * action_dim, layers, units, nn.ReLU)

    def encode(self, history: Tensor | None, mask: Tensor | None) -> Tensor | None:
        """z [N, H] of the windows, or ``None`` without an encoder."""
        if self.encoder is None:
            return None
        if history is None or mask is None:
            raise ValueError("history_len > 0: pass the history window and its mask")
        return self.encoder(history, mask)

    def head(
        self, obs: Tensor, z: Tensor | None, *, deterministic: bool = False, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """A reparameterised action a = tanh(μ + σ ε) (``deterministic``: tanh(μ)) and its log-density.

        ``noise`` is ε (standard normal, broadcastable to [..., A]); drawn here when ``None``.
        """
        mean, log_std = self.net(_with_code(obs, z)).chunk(2, -1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        if deterministic:
            u = mean
        else:
            eps = torch.randn_like(mean) if noise is None else noise.to(mean.dtype)
            u = mean + log_std.exp() * eps
        return torch.tanh(u), squashed_gaussian_log_prob(u, mean, log_std)

    def forward(
        self, obs: Tensor, history: Tensor | None = None, mask: Tensor | None = None, *, deterministic: bool = False
    ) -> tuple[Tensor, Tensor]:
        """``head(obs, encode(history, mask))``: (action [..., A], log_prob [...])."""
        return self.head(obs, self.encode(history, mask), deterministic=deterministic)


class TwinCritic(nn.Module):
    """Twin soft Q-functions Q_1, Q_2(o, z, a) sharing one optional history encoder; two MLPs (ReLU).

    Args: as ``SquashedGaussianActor``.

    Shapes: ``encode(history, mask) -> z [N, H] | None``; ``q(obs [..., O], z, action [..., A]) -> [2, ...]``.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        history_len: int = 0,
        history_hidden: int = 64,
        layers: int = 2,
        units: int = 256,
    ) -> None:
        super().__init__()
        self.encoder = HistoryEncoder(history_dim(obs_dim, action_dim), history_hidden) if history_len > 0 else None
        code = history_hidden if history_len > 0 else 0
        self.qs = nn.ModuleList(mlp(obs_dim + code + action_dim, 1, layers, units, nn.ReLU) for _ in range(2))

    def encode(self, history: Tensor | None, mask: Tensor | None) -> Tensor | None:
        """z [N, H] of the windows, or ``None`` without an encoder."""
        if self.encoder is None:
            return None
        if history is None or mask is None:
            raise ValueError("history_len > 0: pass the history window and its mask")
        return self.encoder(history, mask)

    def q(self, obs: Tensor, z: Tensor | None, action: Tensor) -> Tensor:
        """[Q_1, Q_2] stacked: ``[2, ...]``."""
        x = torch.cat([_with_code(obs, z), action.to(obs.dtype)], -1)
        return torch.stack([net(x).squeeze(-1) for net in self.qs])

    def forward(self, obs: Tensor, action: Tensor, history: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``q(obs, encode(history, mask), action)``: ``[2, ...]``."""
        return self.q(obs, self.encode(history, mask), action)


class SAC(nn.Module):
    """Soft Actor-Critic with automatic temperature, optionally conditioned on the episode's history (see module doc).

    Args:
        obs_dim, action_dim: O and A (actions in [−1, 1]).
        history_len: L ≥ 0, the window the actor and critic are conditioned on (0: plain SAC).
        history_hidden: size H of each encoder's code z.
        layers, units: hidden layers and units of the actor and Q MLPs (2 × 256).
        gamma: discount γ (0.99).
        tau: Polyak rate τ of the target critic (0.005).
        lr: Adam learning rate of the actor and the critic, each with its encoder (3·10⁻⁴).
        alpha_lr: Adam learning rate of log α (3·10⁻⁴).
        init_alpha: initial temperature α (1.0).
        target_entropy: H̄; ``None`` → −A.
        target_update_every: Polyak-update the target critic every this many updates (1).
        grad_clip: ``None`` (default, as the paper) or the max global grad norm of the actor and of the critic.

    State: the submodules ``actor``, ``critic``, ``critic_target``, the parameter ``log_alpha`` and the buffer
    ``updates`` are all in ``state_dict()``; the optimisers are in ``optimizers``.

    Raises:
        ValueError: on a negative ``history_len`` or another out-of-range argument.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        history_len: int = 0,
        history_hidden: int = 64,
        layers: int = 2,
        units: int = 256,
        gamma: float = 0.99,
        tau: float = 0.005,
        lr: float = 3e-4,
        alpha_lr: float = 3e-4,
        init_alpha: float = 1.0,
        target_entropy: float | None = None,
        target_update_every: int = 1,
        grad_clip: float | None = None,
    ) -> None:
        super().__init__()
        if history_len < 0:
            raise ValueError(f"history_len must be >= 0 (0: no history), got {history_len}")
        if obs_dim < 1 or action_dim < 1:
            raise ValueError(f"obs_dim and action_dim must be >= 1, got {obs_dim} and {action_dim}")
        if history_len > 0 and history_hidden < 1:
            raise ValueError(f"history_hidden must be >= 1, got {history_hidden}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        if init_alpha <= 0.0:
            raise ValueError(f"init_alpha must be > 0, got {init_alpha}")
        if target_update_every < 1:
            raise ValueError(f"target_update_every must be >= 1, got {target_update_every}")
        if grad_clip is not None and grad_clip <= 0.0:
            raise ValueError(f"grad_clip must be None or > 0, got {grad_clip}")
        self.obs_dim, self.action_dim, self.history_len = obs_dim, action_dim, history_len
        self.gamma, self.tau, self.target_update_every, self.grad_clip = gamma, tau, target_update_every, grad_clip
        self.target_entropy = float(-action_dim if target_entropy is None else target_entropy)
        sizes = {"history_len": history_len, "history_hidden": history_hidden, "layers": layers, "units": units}
        self.actor = SquashedGaussianActor(obs_dim, action_dim, **sizes)
        self.critic = TwinCritic(obs_dim, action_dim, **sizes)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_alpha)))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], alpha_lr)

    # -- acting and values -------------------------------------------------------------------------------------
    @property
    def alpha(self) -> Tensor:
        """The temperature α = exp(log α), detached (a scalar tensor)."""
        return self.log_alpha.detach().exp()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers by checkpoint name: ``actor_opt``, ``critic_opt``, ``alpha_opt``."""
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt, "alpha_opt": self.alpha_opt}

    @torch.no_grad()
    def act(
        self, obs: Tensor, history: Tensor | None = None, mask: Tensor | None = None, *, deterministic: bool = False
    ) -> Tensor:
        """An action per row: a ~ π(· | o, z) (``deterministic``: tanh(μ)), no gradient.

        Args:
            obs: [N, O].
            history, mask: [N, L, O + A + 1] and [N, L], the window ending before ``obs`` (required when
                ``history_len > 0``, ignored otherwise).

        Returns:
            [N, A] in [−1, 1].
        """
        return self.actor.head(obs, self.actor.encode(history, mask), deterministic=deterministic)[0]

    def value(
        self, obs: Tensor, history: Tensor | None = None, mask: Tensor | None = None, *, samples: int = 1
    ) -> Tensor:
        """The soft state value V(s) = E_{a~π}[min_i Q_i(s, a) − α log π(a|s)] (SAC paper eq. 3).

        Estimated with ``samples`` reparameterised actions per state, with the *current* critics (the target
        critic lags by design and is only there to stabilise the TD target; M3PO computes V from Q and π, §6).
        Differentiable w.r.t. ``obs`` (for ∇ₛV) and, through the graph, w.r.t. the parameters: whether those
        gradients are used is the caller's decision (nothing here freezes or updates them).  α is a constant.

        Args:
            obs: [..., O]; with a history, its last leading dim is the N rows of the windows (z is broadcast over
                the others, e.g. [E, N, O] ensemble predictions).
            history, mask: [N, L, O + A + 1] and [N, L], as in ``act``.
            samples: the number of action samples S ≥ 1.

        Returns:
            [...].
        """
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        z_pi, z_q = self.actor.encode(history, mask), self.critic.encode(history, mask)
        noise = torch.randn(samples, *obs.shape[:-1], self.action_dim, device=obs.device, dtype=obs.dtype)
        return self._value(obs, z_pi, z_q, noise)

    def value_fn(
        self, history: Tensor | None = None, mask: Tensor | None = None, *, samples: int = 1
    ) -> Callable[[Tensor], Tensor]:
        """A ``tasklosses.base.ValueFn`` for the task-aware losses: states [..., O] → V [...] (``value``).

        The closure is a *deterministic* function of the states: the history codes are computed once, here,
        without gradient (the windows are data, not variables of a task loss), and the action noise ε is fixed per
        closure — one [S, N, A] draw per row n, shared by every extra leading dim (so V(s_{e,n}) and V(s_n) use the
        same ε, which also makes V(ŝ) − V(s) a common-random-numbers difference).  Without a history, N is the
        last leading dim of the states of each call, and the noise for it is drawn once from a seed fixed here.
        V is differentiable w.r.t. the states (``tasklosses.value_gradient`` takes ∇ₛV of it).

        Args:
            history, mask: [N, L, O + A + 1] and [N, L] (required when ``history_len > 0``).
            samples: S ≥ 1 action samples per state.

        Returns:
            ``fn(states [..., N, O]) -> [..., N]`` (a single state [O] → a scalar).
        """
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        with torch.no_grad():
            z_pi, z_q = self.actor.encode(history, mask), self.critic.encode(history, mask)
        rows = None if z_pi is None else z_pi.shape[0]
        seed = int(torch.randint(0, 2**62, ()))
        cache: dict[int, Tensor] = {}

        def fn(states: Tensor) -> Tensor:
            lead = states.shape[:-1]
            n = lead[-1] if lead else 1
            if rows is not None and n not in (rows, 1):
                raise ValueError(
                    f"value_fn: the states' last leading dim must be the {rows} rows of the history, "
                    f"got states {tuple(states.shape)}"
                )
            n = rows if rows is not None else n
            if n not in cache:
                generator = torch.Generator().manual_seed(seed)
                cache[n] = torch.randn(samples, n, self.action_dim, generator=generator)
            eps = cache[n].to(device=states.device, dtype=states.dtype)
            if not lead:
                eps = eps[:, 0]
            else:
                eps = eps.reshape(samples, *([1] * (len(lead) - 1)), n, self.action_dim)
            return self._value(states, z_pi, z_q, eps)

        return fn

    def _value(self, obs: Tensor, z_pi: Tensor | None, z_q: Tensor | None, noise: Tensor) -> Tensor:
        """V at ``obs`` [..., O] from codes and noise ε broadcastable to [S, ..., A]: → [...]."""
        samples = noise.shape[0]
        obs_s = obs.unsqueeze(0).expand(samples, *obs.shape)
        action, log_prob = self.actor.head(obs_s, z_pi, noise=noise)
        q = self.critic.q(obs_s, z_q, action).min(0).values
        return (q - self.alpha.to(q.dtype) * log_prob).mean(0)

    # -- learning ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def td_target(self, batch: dict[str, Tensor]) -> Tensor:
        """The clipped double-Q soft TD target (eq. 5 with the target critic and eq. 3 for V):

        y = r + γ (1 − done) (min_i Q̄_i(o', z̄_Q', a') − α log π(a' | o', z_π')),  a' ~ π(· | o', z_π').

        Args:
            batch: ``reward`` [N], ``next_obs`` [N, O], ``done`` [N] and, with a history, ``next_history`` /
                ``next_history_mask`` (see ``update``).

        Returns:
            [N], no gradient.  Where ``done`` = 1 it is exactly r.
        """
        next_obs = batch["next_obs"]
        reward = batch["reward"].reshape(-1).to(next_obs.dtype)
        done = batch["done"].reshape(-1).to(next_obs.dtype)
        next_history, next_mask = self._window(batch, "next_history", "next_history_mask")
        next_action, next_log_prob = self.actor.head(next_obs, self.actor.encode(next_history, next_mask))
        z_target = self.critic_target.encode(next_history, next_mask)
        next_q = self.critic_target.q(next_obs, z_target, next_action).min(0).values
        return reward + self.gamma * (1.0 - done) * (next_q - self.alpha * next_log_prob)

    def update(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One gradient step of the critic (eq. 5), then the actor (eq. 7) and the temperature (eq. 18); then the
        Polyak update of the target critic every ``target_update_every`` calls.

        Args:
            batch: ``obs`` [N, O], ``action`` [N, A], ``reward`` [N], ``next_obs`` [N, O], ``done`` [N] (1.0 for a
                true terminal, 0 otherwise — a time-limit truncation is not done), and with ``history_len > 0``:
                ``history`` / ``history_mask`` [N, L, O + A + 1] / [N, L], the window ending *before* ``obs``, and
                ``next_history`` / ``next_history_mask``, the window ending before ``next_obs`` (``history``
                rolled by (obs, action, reward), ``worldmodels.history.roll_history``; the caller supplies it).

        Returns:
            ``critic_loss`` (Σ_i ½ E[(Q_i − y)²]), ``actor_loss``, ``alpha`` (the α used in this step),
            ``alpha_loss``, ``entropy`` (−E log π of the actor's samples), ``q_mean`` (mean of both Qs).

        Raises:
            bilevel.NonFiniteError: a loss (or, with ``grad_clip``, a gradient norm) is NaN or infinite
                (``bilevel.guard``).  The critic's values are checked before the critic's step, the actor's and
                the temperature's before theirs: a non-finite critic skips the whole update, a non-finite actor or
                temperature skips those two steps (the critic's step of this update stands) and the Polyak update.
        """
        obs, action = batch["obs"], batch["action"]
        history, mask = self._window(batch, "history", "history_mask")
        alpha = self.alpha

        # critic: ½ (Q_i(s, a) − y)² for both Qs (eq. 5)
        target = self.td_target(batch)
        z_q = self.critic.encode(history, mask)
        q = self.critic.q(obs, z_q, action)
        critic_loss = 0.5 * (q - target).pow(2).mean(-1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_values = check_finite(
            {
                "critic_loss": critic_loss.detach(),
                "q_mean": q.detach().mean(),
                **self._clip("critic", self.critic.parameters()),
            },
            zero=(self.critic_opt,),
        )
        self.critic_opt.step()

        # actor: α log π(a|s) − min_i Q_i(s, a), a reparameterised (eq. 7–9), on the updated critic
        z_pi = self.actor.encode(history, mask)
        new_action, log_prob = self.actor.head(obs, z_pi)
        with torch.no_grad():
            z_q = self.critic.encode(history, mask)  # the critic's code after its step, a constant for the actor
        q_pi = self.critic.q(obs, z_q, new_action).min(0).values
        actor_loss = (alpha * log_prob - q_pi).mean()
        params = [p for p in self.actor.parameters() if p.requires_grad]
        grads = torch.autograd.grad(actor_loss, params)  # the actor only: no gradient reaches the critic
        self.actor_opt.zero_grad(set_to_none=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        # temperature: −log α (log π + H̄) (eq. 18 through log α); it reads no actor parameter
        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        actor_values = check_finite(
            {
                "actor_loss": actor_loss.detach(),
                "alpha": alpha,
                "alpha_loss": alpha_loss.detach(),
                "entropy": -log_prob.detach().mean(),
                **self._clip("actor", params),
            },
            zero=(self.actor_opt,),
        )
        self.actor_opt.step()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()

        self.updates += 1
        if self.target_update_every == 1 or int(self.updates) % self.target_update_every == 0:
            self.polyak_update()
        values = {**critic_values, **actor_values}
        return {k: values[k] for k in ("critic_loss", "actor_loss", "alpha", "alpha_loss", "entropy", "q_mean")}

    @torch.no_grad()
    def polyak_update(self) -> None:
        """Q̄ ← (1 − τ) Q̄ + τ Q for every parameter of the target critic (its encoder included)."""
        target = list(self.critic_target.parameters())
        online = list(self.critic.parameters())
        torch._foreach_mul_(target, 1.0 - self.tau)
        torch._foreach_add_(target, online, alpha=self.tau)

    def _clip(self, name: str, params: Iterable[Tensor]) -> dict[str, Tensor]:
        """With ``grad_clip``: clip the gradients of ``params`` and return ``{"<name>_grad_norm": the norm before}``
        (not read) for the finiteness check.  Without: nothing — the check reads the losses only (a NaN or inf in the
        data or the parameters makes them non-finite), so the default path computes no extra norm."""
        if self.grad_clip is None:
            return {}
        with_grad = [p for p in params if p.grad is not None]
        return {f"{name}_grad_norm": nn.utils.clip_grad_norm_(with_grad, self.grad_clip)}

    def _window(self, batch: dict[str, Tensor], key: str, mask_key: str) -> tuple[Tensor | None, Tensor | None]:
        if self.history_len == 0:
            return None, None
        if key not in batch or mask_key not in batch:
            raise ValueError(f"history_len > 0: the batch needs {key!r} and {mask_key!r}")
        return batch[key], batch[mask_key]

    def extra_repr(self) -> str:
        return (
            f"history_len={self.history_len}, gamma={self.gamma}, tau={self.tau}, "
            f"target_entropy={self.target_entropy}, target_update_every={self.target_update_every}"
        )
