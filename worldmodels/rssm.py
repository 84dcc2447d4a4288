"""Recurrent state-space model (RSSM) of DreamerV2 with per-step, per-sequence ELBO terms.

Hafner et al. 2021, "Mastering Atari with Discrete World Models" (DreamerV2), and TEMPO eq. 1–2:

    deterministic state   h_t = f_θ(h_{t−1}, s_{t−1}, a_{t−1})          (GRU with LayerNorm)
    prior                 s_t ~ p_θ(s_t | h_t)
    posterior             s_t ~ q_θ(s_t | h_t, o_t)
    heads                 o_t, r_t, γ_t ~ p_θ(· | h_t, s_t)

The stochastic state is Gaussian (DMC: 32 dims, std ≥ 0.1) or categorical (Atari: 32 variables × 32 classes,
straight-through gradients).  The KL term uses KL balancing (DreamerV2 §2.2, α = 0.8) and free nats.

Data convention (DreamerV2's): at step t the batch holds the observation o_t, the action a_{t−1} that led to it
(zeros when ``is_first``), the reward r_t received on arrival and the discount target γ_t (0 after a terminal
transition); ``is_first`` resets the recurrent state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels.base import ModelLoss
from worldmodels.nets import TwoHotHead, at_least_fp32, mlp, symlog

State = dict[str, Tensor]


def free_nats_on_mean(kl: Tensor, free: float) -> Tensor:
    """Free nats on the batch mean (DreamerV2 ``free_avg``): ``kl`` itself where mean(kl) ≥ ``free``, else the
    constant ``free`` at every step (no gradient), so that mean(result) = max(mean(kl), free).

    Args:
        kl: per-step KL values, any shape (e.g. [B, T]).
        free: free nats (0: ``kl`` unchanged).

    Returns:
        A tensor of ``kl``'s shape.
    """
    if free <= 0:
        return kl
    # a tensor condition, not a Python branch: no graph break or recompile under torch.compile
    return torch.where(kl.detach().mean() >= free, kl, torch.full_like(kl, free))


#: ``(state, embed, action, is_first, noise) -> (last state, posts, priors)``: ``RSSM.observe_chunk``'s signature
#: (a fast backend runs a compiled one along the sequence).
ObserveChunk = Callable[[State, Tensor, Tensor, Tensor, "tuple[Tensor, Tensor] | None"], tuple[State, State, State]]
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def categorical_one_hot(probs: Tensor, u: Tensor) -> Tensor:
    """Exact categorical samples by inverting the CDF: the one-hot of the first class k with P(X ≤ k) > u.

    One uniform per variable rather than one per class (Gumbel-max): no logarithms, no argmax and a C× smaller
    draw, so it is faster than Gumbel-max at DreamerV2's latent sizes (``benchmarks/categorical_sampler.py``;
    docs/results.md).  The last class absorbs the CDF's rounding
    (it is taken whenever no earlier one is).

    Args:
        probs: [..., C] probabilities (rows summing to 1; not differentiated).
        u: [...] draws from U[0, 1).

    Returns:
        [..., C] one-hot rows in ``probs``' dtype.
    """
    ge = probs.cumsum(-1) > u.unsqueeze(-1).to(probs.dtype)  # monotone along the classes: F, …, F, T, …, T
    ge[..., -1] = True
    onehot = ge.to(probs.dtype)
    onehot[..., 1:] -= onehot[..., :-1].clone()  # the first True
    return onehot


class LayerNormGRUCell(nn.Module):
    """DreamerV2's GRU cell: one linear map of [x, h], LayerNorm, update-gate bias −1.

    Shapes: ``forward(x[B, I], h[B, H]) -> h'[B, H]``.
    """

    def __init__(self, inp: int, size: int, update_bias: float = -1.0) -> None:
        super().__init__()
        self.linear = nn.Linear(inp + size, 3 * size, bias=False)
        self.norm = nn.LayerNorm(3 * size)
        self.update_bias = update_bias

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        reset, cand, update = self.norm(self.linear(torch.cat([x, h], -1))).chunk(3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update + self.update_bias)
        return update * cand + (1 - update) * h


class RSSM(nn.Module):
    """The latent dynamics: prior ``img_step``, posterior ``obs_step``, ``observe`` and ``imagine``.

    Args:
        embed: size E of the observation embedding the posterior reads.
        action_dim: A.
        deter: size D of h (DMC 200, Atari 600).
        stoch: number S of stochastic variables (32).
        classes: C classes per variable for a categorical latent (Atari 32); 0 for a Gaussian latent (DMC).
        hidden: units of the prior/posterior MLPs.
        min_std: lower bound of the Gaussian std (0.1).
        unimix: categorical latents only: mix this share of the uniform distribution into every latent's
            probabilities, p = (1 − u)·softmax(x) + u/C, so no class has probability 0 and the KL stays bounded
            (DreamerV3, Hafner et al. 2023, §3 "unimix"; they use 0.01).  0: DreamerV2's plain softmax.

    A state is a dict of tensors with leading shape [...]: ``deter`` [..., D], ``stoch`` [..., S·C or S] (the
    sample, flattened), and the statistics ``mean``/``std`` [..., S] (Gaussian) or ``logits`` [..., S, C].
    """

    def __init__(
        self,
        embed: int,
        action_dim: int,
        deter: int = 200,
        stoch: int = 32,
        classes: int = 0,
        hidden: int = 200,
        min_std: float = 0.1,
        unimix: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= unimix < 1.0:
            raise ValueError(f"unimix must be in [0, 1), got {unimix}")
        self.deter_size, self.stoch_vars, self.classes, self.min_std = deter, stoch, classes, min_std
        self.unimix = unimix
        self.stoch_size = stoch * classes if classes else stoch
        stats = stoch * classes if classes else 2 * stoch
        self.img_in = nn.Sequential(nn.Linear(self.stoch_size + action_dim, hidden), nn.LayerNorm(hidden), nn.ELU())
        self.cell = LayerNormGRUCell(hidden, deter)
        self.img_out = nn.Sequential(nn.Linear(deter, hidden), nn.LayerNorm(hidden), nn.ELU(), nn.Linear(hidden, stats))
        self.obs_out = nn.Sequential(
            nn.Linear(deter + embed, hidden), nn.LayerNorm(hidden), nn.ELU(), nn.Linear(hidden, stats)
        )

    @property
    def feat_size(self) -> int:
        """Size of ``features``: S·C (or S) + D."""
        return self.stoch_size + self.deter_size

    def initial(self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        """The zero state for ``batch`` sequences."""
        p = next(self.parameters())
        kw = {"device": device or p.device, "dtype": dtype or p.dtype}
        state = {"deter": torch.zeros(batch, self.deter_size, **kw), "stoch": torch.zeros(batch, self.stoch_size, **kw)}
        if self.classes:
            state["logits"] = torch.zeros(batch, self.stoch_vars, self.classes, **kw)
        else:
            state["mean"] = torch.zeros(batch, self.stoch_vars, **kw)
            state["std"] = torch.ones(batch, self.stoch_vars, **kw)
        return state

    def _stats(self, x: Tensor) -> State:
        x = at_least_fp32(x)  # latent statistics in fp32 under autocast: samples, states and the KL too
        if self.classes:
            logits = x.reshape(*x.shape[:-1], self.stoch_vars, self.classes)
            if self.unimix:  # normalised log-probabilities of the mixture (DreamerV3 unimix)
                logits = torch.log((1 - self.unimix) * logits.softmax(-1) + self.unimix / self.classes)
            return {"logits": logits}
        mean, std = x.chunk(2, -1)
        return {"mean": mean, "std": F.softplus(std) + self.min_std}

    def _sample(self, stats: State, noise: Tensor | None) -> Tensor:
        """Reparameterised sample (Gaussian) or straight-through one-hot sample (categorical), flattened.

        ``noise``: [..., S], standard Normal (Gaussian) or U[0, 1) (categorical: one uniform per variable,
        ``categorical_one_hot``); None draws it.

        Raises:
            ValueError: categorical ``noise`` not of shape [..., S] (the per-class noise of the Gumbel-max
                sampler this replaced, [..., S, C], included)."""
        if self.classes:
            logits = stats["logits"]
            probs = logits.softmax(-1)
            if noise is None:
                u = torch.rand(logits.shape[:-1], device=logits.device, dtype=probs.dtype)
            elif noise.shape != logits.shape[:-1]:
                raise ValueError(
                    f"categorical noise must have shape [..., S] = {tuple(logits.shape[:-1])} "
                    f"(noise_shape), got {tuple(noise.shape)}"
                )
            else:
                u = noise
            onehot = categorical_one_hot(probs.detach(), u)
            # straight-through gradients (DreamerV2 §2.1, Bengio et al. 2013): value one-hot, gradient of probs
            return (onehot + probs - probs.detach()).flatten(-2)
        eps = torch.randn_like(stats["mean"]) if noise is None else noise
        return stats["mean"] + stats["std"] * eps

    def noise_shape(self, *lead: int) -> tuple[int, ...]:
        """Shape of the per-step noise ``observe``/``img_step`` accept (for reproducible samples): [*lead, S] for
        both latents (Normal draws for a Gaussian latent, U[0, 1) draws for a categorical one)."""
        return (*lead, self.stoch_vars)

    def img_step(self, state: State, action: Tensor, noise: Tensor | None = None) -> State:
        """Prior transition: h_t = f(h_{t−1}, s_{t−1}, a_{t−1}), s_t ~ p(s_t | h_t)."""
        x = self.img_in(torch.cat([state["stoch"], action], -1))
        deter = self.cell(x, state["deter"])
        stats = self._stats(self.img_out(deter))
        return {"deter": deter, "stoch": self._sample(stats, noise), **stats}

    def obs_step(
        self, state: State, action: Tensor, embed: Tensor, is_first: Tensor, noise: tuple[Tensor, Tensor] | None = None
    ) -> tuple[State, State]:
        """One filtering step: reset on ``is_first``, prior from (h, s, a), posterior from (h_t, embed_t)."""
        keep = (~is_first).to(embed.dtype).unsqueeze(-1)
        state = {k: v * (keep.unsqueeze(-1) if v.dim() == 3 else keep) for k, v in state.items()}
        prior = self.img_step(state, action * keep, None if noise is None else noise[0])
        stats = self._stats(self.obs_out(torch.cat([prior["deter"], embed], -1)))
        post = {"deter": prior["deter"], "stoch": self._sample(stats, None if noise is None else noise[1]), **stats}
        return post, prior

    def observe(
        self,
        embed: Tensor,
        action: Tensor,
        is_first: Tensor,
        state: State | None = None,
        noise: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[State, State]:
        """Posterior pass over sequences.

        Args:
            embed: [B, T, E]; action: [B, T, A] (a_{t−1}); is_first: [B, T] bool.
            state: the state before step 0 (default zeros).
            noise: optional (prior noise, posterior noise), each of ``noise_shape`` (B, T), for reproducible
                latent samples.

        Returns:
            (post, prior), dicts of tensors [B, T, ...].
        """
        state = self.initial(embed.shape[0], embed.device, embed.dtype) if state is None else state
        return self.observe_chunk(state, embed, action, is_first, noise)[1:]

    def observe_chunk(
        self,
        state: State,
        embed: Tensor,
        action: Tensor,
        is_first: Tensor,
        noise: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[State, State, State]:
        """The filtering loop over K steps from ``state`` (shapes of ``observe`` with T = K): the last
        posterior state ([B, ...]) and the posterior and prior states ([B, K, ...])."""
        posts, priors = [], []
        # unbind, not embed[:, i]: the backward of K slices is one stack, not K zero-filled [B, K, E] gradients
        embeds, actions, firsts = embed.unbind(1), action.unbind(1), is_first.unbind(1)
        for i in range(embed.shape[1]):
            step_noise = None if noise is None else (noise[0][:, i], noise[1][:, i])
            state, prior = self.obs_step(state, actions[i], embeds[i], firsts[i], step_noise)
            posts.append(state)
            priors.append(prior)
        stack = lambda xs: {k: torch.stack([x[k] for x in xs], 1) for k in xs[0]}  # noqa: E731
        return state, stack(posts), stack(priors)

    def imagine(
        self,
        policy: Callable[[Tensor], Tensor],
        start: State,
        horizon: int,
        keys: Collection[str] | None = None,
    ) -> tuple[State, Tensor]:
        """Prior rollout under ``policy(features) -> action`` from ``start`` ([N, ...] states).

        Args:
            policy: maps detached features [N, F] to actions [N, A] (gradients reach the features only through
                the actions it returns).
            start: the states to start from, [N, ...] each.
            horizon: H, the number of prior steps.
            keys: the state entries to stack and return; None: every entry the start and the imagined states share.
                ``"feat"`` is also accepted: ``features`` of every state, [H+1, N, F], differentiable like the
                states — the per-step features the policy read, kept, so asking for only ``("feat",)`` costs no
                second concatenation and no stacks of unused entries (the actor-critic's case).

        Returns:
            (states with leading [H+1, N] including the start, actions [H, N, A] taken at steps 0..H−1).

        Raises:
            KeyError: a requested key that is neither ``"feat"`` nor an entry of the states.
        """
        have = start.keys() & self._state_keys()
        keys = set(have) if keys is None else set(keys)
        unknown = keys - {"feat"} - have
        if unknown:
            raise KeyError(f"imagine: unknown state keys {sorted(unknown)} (have {sorted(have)} and 'feat')")
        want = keys - {"feat"}
        kept: dict[str, list[Tensor]] = {k: [] for k in keys}
        actions = []
        state = start
        for step in range(horizon + 1):
            feat = self.features(state)
            if "feat" in kept:
                kept["feat"].append(feat)
            for k in want:
                kept[k].append(state[k])
            if step == horizon:
                break
            action = policy(feat.detach())
            state = self.img_step(state, action)
            actions.append(action)
        return {k: torch.stack(v, 0) for k, v in kept.items()}, torch.stack(actions, 0)

    def _state_keys(self) -> set[str]:
        """The entries an imagined state has (an img_step output): deter, stoch and the latent statistics."""
        return {"deter", "stoch", "logits"} if self.classes else {"deter", "stoch", "mean", "std"}

    def features(self, state: State) -> Tensor:
        """[..., S·C + D]: the concatenation of the stochastic sample and h (what heads, actor and critic read)."""
        return torch.cat([state["stoch"], state["deter"]], -1)

    def kl(self, post: State, prior: State, balance: float = 0.8, free: float = 0.0) -> Tensor:
        """Per-step balanced KL (DreamerV2 §2.2, "KL balancing"):

            α KL(sg(q) ‖ p) + (1 − α) KL(q ‖ sg(p))

        whose value is KL(q ‖ p) and whose gradient reaches the prior with weight α and the posterior with
        1 − α.  Implemented as one autograd function with closed-form, differentiable partials instead of two
        ``detach``-ed copies: first-order gradients are identical, and second-order products (Lookahead K ≥ 2,
        Implicit) are the exact Jacobian of that gradient field, which ``detach`` would silently drop.  Free nats
        clip the value from below per step (zero gradient where clipped).

        Returns [...] (the leading shape of the states).
        """
        if torch.compiler.is_compiling():
            # under torch.compile the two-copy form: dynamo traces an autograd.Function's forward and backward but
            # not its ``jvp`` inside torch.func.jvp (the compiled tangents were the unbalanced KL's), and compiled
            # graphs are first-order only, where both forms have the same derivative; inductor fuses the copies
            value = balance * self._kl_value(post, prior, True, False) + (1 - balance) * self._kl_value(
                post, prior, False, True
            )
        elif self.classes:
            value = _BalancedCategoricalKL.apply(post["logits"], prior["logits"], balance)
        else:
            value = _BalancedGaussianKL.apply(post["mean"], post["std"], prior["mean"], prior["std"], balance)
        return value.clamp_min(free) if free > 0 else value

    def _kl_value(self, post: State, prior: State, stop_post: bool, stop_prior: bool) -> Tensor:
        """KL(q ‖ p) per step [...], with the posterior's and/or the prior's statistics detached."""

        def sg(x: Tensor, stop: bool) -> Tensor:
            return x.detach() if stop else x

        if self.classes:
            log_q = sg(post["logits"], stop_post).log_softmax(-1)
            log_p = sg(prior["logits"], stop_prior).log_softmax(-1)
            return (log_q.exp() * (log_q - log_p)).sum((-1, -2))
        return _gaussian_kl(
            sg(post["mean"], stop_post),
            sg(post["std"], stop_post),
            sg(prior["mean"], stop_prior),
            sg(prior["std"], stop_prior),
        )


def _gaussian_kl(mq: Tensor, sq: Tensor, mp: Tensor, sp: Tensor) -> Tensor:
    ratio = (sq / sp) ** 2
    return 0.5 * (ratio + ((mq - mp) / sp) ** 2 - 1 - ratio.log()).sum(-1)


def _gaussian_kl_partials(mq: Tensor, sq: Tensor, mp: Tensor, sp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """∂KL/∂mq (= −∂KL/∂mp), ∂KL/∂sq and ∂KL/∂sp of the diagonal-Gaussian KL, elementwise [..., S]."""
    var_p = sp**2
    diff = mq - mp
    return diff / var_p, sq / var_p - 1 / sq, (1 - (sq**2 + diff**2) / var_p) / sp


class _BalancedGaussianKL(torch.autograd.Function):
    """KL(N(mq, sq²) ‖ N(mp, sp²)) summed over the last dim; gradients scaled by (1 − α) for q, α for p.

    ``backward`` and ``jvp`` apply the same balanced partials (reverse and forward mode of one surrogate
    derivative), so a forward-mode JVP (``SameState(method="jvp")``) agrees with the double backward.
    """

    @staticmethod
    def forward(mq, sq, mp, sp, balance):  # type: ignore[override]
        return _gaussian_kl(mq, sq, mp, sp)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        mq, sq, mp, sp, balance = inputs
        ctx.save_for_backward(mq, sq, mp, sp)
        ctx.save_for_forward(mq, sq, mp, sp)
        ctx.balance = balance

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        mq, sq, mp, sp = ctx.saved_tensors
        a = ctx.balance
        g = grad.unsqueeze(-1)
        d_mq, d_sq, d_sp = _gaussian_kl_partials(mq, sq, mp, sp)
        return (1 - a) * g * d_mq, (1 - a) * g * d_sq, -a * g * d_mq, a * g * d_sp, None

    @staticmethod
    def jvp(ctx, t_mq, t_sq, t_mp, t_sp, _t_balance):  # type: ignore[override]
        mq, sq, mp, sp = ctx.saved_tensors
        a = ctx.balance
        d_mq, d_sq, d_sp = _gaussian_kl_partials(mq, sq, mp, sp)
        out = torch.zeros_like(mq)
        for scale, d, t in ((1 - a, d_mq, t_mq), (1 - a, d_sq, t_sq), (-a, d_mq, t_mp), (a, d_sp, t_sp)):
            if t is not None:
                out = out + scale * d * t
        return out.sum(-1)


def _categorical_kl_partials(lq: Tensor, lp: Tensor) -> tuple[Tensor, Tensor]:
    """∂KL/∂lq and ∂KL/∂lp of KL(Cat(lq) ‖ Cat(lp)) with respect to the logits, elementwise [..., S, C]."""
    log_q, log_p = lq.log_softmax(-1), lp.log_softmax(-1)
    q, p = log_q.exp(), log_p.exp()
    d = log_q - log_p
    kl_var = (q * d).sum(-1, keepdim=True)
    return q * (d - kl_var), p - q


class _BalancedCategoricalKL(torch.autograd.Function):
    """KL(Cat(lq) ‖ Cat(lp)) summed over the last two dims [S, C]; gradients scaled (1 − α) for q, α for p.

    ``backward`` and ``jvp`` apply the same balanced partials, as in ``_BalancedGaussianKL``.
    """

    @staticmethod
    def forward(lq, lp, balance):  # type: ignore[override]
        log_q, log_p = lq.log_softmax(-1), lp.log_softmax(-1)
        return (log_q.exp() * (log_q - log_p)).sum((-1, -2))

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        lq, lp, balance = inputs
        ctx.save_for_backward(lq, lp)
        ctx.save_for_forward(lq, lp)
        ctx.balance = balance

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        lq, lp = ctx.saved_tensors
        a = ctx.balance
        d_lq, d_lp = _categorical_kl_partials(lq, lp)
        g = grad.unsqueeze(-1).unsqueeze(-1)
        return (1 - a) * g * d_lq, a * g * d_lp, None

    @staticmethod
    def jvp(ctx, t_lq, t_lp, _t_balance):  # type: ignore[override]
        lq, lp = ctx.saved_tensors
        a = ctx.balance
        d_lq, d_lp = _categorical_kl_partials(lq, lp)
        out = torch.zeros_like(lq)
        if t_lq is not None:
            out = out + (1 - a) * d_lq * t_lq
        if t_lp is not None:
            out = out + a * d_lp * t_lp
        return out.sum((-1, -2))


class ConvEncoder(nn.Module):
    """DreamerV2's image encoder: stride-2 4×4 convs with depth d·2^i, ELU; 64×64 (4 layers) or 32×32 (3).

    Shapes: ``[..., C, H, W]`` float in [−0.5, 0.5] → ``[..., out_size]``.
    """

    def __init__(self, channels: int, size: int = 64, depth: int = 48) -> None:
        super().__init__()
        if size not in (32, 64):
            raise ValueError(f"image size must be 32 or 64, got {size}")
        n = 4 if size == 64 else 3
        mods: list[nn.Module] = []
        for i in range(n):
            mods += [nn.Conv2d(channels if i == 0 else depth * 2 ** (i - 1), depth * 2**i, 4, 2), nn.ELU()]
        self.net = nn.Sequential(*mods)
        self.out_size = depth * 2 ** (n - 1) * 2 * 2

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-3]
        return self.net(x.reshape(-1, *x.shape[-3:])).reshape(*lead, -1)

    def forward_with_activations(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``forward`` and every layer's ELU output ([N, C_i, H_i, W_i], N = the leading dims' product): what
        ``tangent`` reuses instead of recomputing them."""
        lead = x.shape[:-3]
        h, acts = x.reshape(-1, *x.shape[-3:]), []
        for m in self.net:
            h = m(h)
            if isinstance(m, nn.ELU):
                acts.append(h)
        return h.reshape(*lead, -1), acts

    def tangent(
        self, x: Tensor, acts: Sequence[Tensor], params: dict[str, Tensor], tangents: dict[str, Tensor]
    ) -> Tensor:
        """∂e/∂θ · v of ``forward`` at ``x`` ([..., C, H, W]) from the forward's ELU outputs ``acts``
        (``forward_with_activations``), so no layer's primal is recomputed: per layer the tangent of
        h_i = conv(u_{i−1}; W_i, b_i) is conv(u_{i−1}; V_i, c_i) + conv(du_{i−1}; W_i), and du_i = ELU′(h_i)·dh_i with
        ELU′ = 1 where u_i > 0, else u_i + 1 (α = 1).  Two convolutions per layer (one for the first) where
        ``torch.func.jvp`` runs three.

        Args:
            x: the input of the forward that produced ``acts``.
            acts: its ELU outputs, one per layer.
            params: this module's parameters by name (``net.<i>.weight``/``bias``; missing ones: the module's own).
            tangents: v by the same names; missing names have zero tangent.

        Returns:
            [..., out_size], the embedding's tangent.
        """
        lead = x.shape[:-3]
        inp, dh = x.reshape(-1, *x.shape[-3:]), None
        acts_it = iter(acts)
        for i, m in enumerate(self.net):
            if not isinstance(m, nn.Conv2d):
                continue
            u = next(acts_it)
            w = params.get(f"net.{i}.weight", m.weight)
            dw, db = tangents.get(f"net.{i}.weight"), tangents.get(f"net.{i}.bias")
            t: Tensor | None = None
            if dw is not None:
                t = F.conv2d(inp, dw, db, m.stride)
            elif db is not None:
                t = db.reshape(1, -1, 1, 1).expand_as(u)
            if dh is not None:
                y = F.conv2d(dh, w, None, m.stride)
                t = y if t is None else t + y
            dh = None if t is None else t * torch.where(u > 0, 1.0, u + 1.0)
            inp = u
        out = torch.zeros_like(inp) if dh is None else dh
        return out.reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """Transposed-conv image decoder (kernels 5, 5, 6, 6 for 64×64; 5, 6, 6 for 32×32), mean of a unit Normal."""

    def __init__(self, feat: int, channels: int, size: int = 64, depth: int = 48) -> None:
        super().__init__()
        kernels = [5, 5, 6, 6] if size == 64 else [5, 6, 6]
        n = len(kernels)
        self.first = depth * 2 ** (n + 1 if size == 64 else n)
        self.linear = nn.Linear(feat, self.first)
        mods: list[nn.Module] = []
        inp = self.first
        for i, k in enumerate(kernels):
            last = i == n - 1
            out = channels if last else depth * 2 ** (n - 2 - i)
            mods.append(nn.ConvTranspose2d(inp, out, k, 2))
            if not last:
                mods.append(nn.ELU())
            inp = out
        self.net = nn.Sequential(*mods)
        self.channels, self.size = channels, size

    def forward(self, feat: Tensor) -> Tensor:
        """``feat`` [..., F] → image means [..., C, size, size]."""
        lead = feat.shape[:-1]
        x = self.linear(feat).reshape(-1, self.first)
        # The first transposed conv sees a 1×1 input, so it is a matrix product, computed as one with its own
        # weight [first, O, k, k] and bias: y[n, o, i, j] = Σ_c x[n, c] W[c, o, i, j] + b[o].  The same map as the
        # conv, without a [N, first, 1, 1] input whose strides are contiguous and channels-last at once: on CUDA,
        # torch 2.11's compiled backward expected a channels-last weight gradient there that cuDNN did not return.
        up = self.net[0]
        y = (x @ up.weight.flatten(1)).reshape(-1, up.out_channels, *up.kernel_size) + up.bias[:, None, None]
        for m in list(self.net)[1:]:
            y = m(y)
        return y.reshape(*lead, self.channels, self.size, self.size)


class RSSMWorldModel(nn.Module):
    """Encoder + RSSM + decoder, reward and (optional) discount heads; ``loss(batch)`` gives ℓ[B, T].

    ℓ_{b,t} = obs_scale·(−log p(o_t)) + reward_scale·(−log p(r_t)) + discount_scale·(−log p(γ_t))
              + kl_scale·KL_t  (balanced; free nats per step, or on the batch mean with kl_free_avg)

    which is the negative per-step ELBO of TEMPO eq. 2 with DreamerV2's scales.  Every term is per step, so the
    bi-level core can weight each one (TEMPO's official code multiplies every ELBO term by w_t).

    Args:
        obs_shape: ``(C, H, W)`` for images (uint8 expected, mapped to [−0.5, 0.5]) or ``(O,)`` for vectors.
        action_dim: A.
        deter: see ``RSSM``.
        stoch: see ``RSSM``.
        classes: see ``RSSM``.
        hidden: see ``RSSM``.
        min_std: see ``RSSM``.
        unimix: see ``RSSM``.
        symlog_obs: vector observations: the encoder reads symlog(o) and the decoder's unit-variance Normal
            reconstructs symlog(o), i.e. DreamerV3's symlog squared error (§3, eq. 1-2).
        twohot_bins: 0: DreamerV2's unit-variance Normal reward head; K > 0: a ``worldmodels.nets.TwoHotHead``
            over K symlog-spaced bins (DreamerV3, 255), whose per-step cross-entropy is the ``reward`` term.
        depth: conv depth (DreamerV2 48); mlp_layers/mlp_units: vector encoder/decoder and heads (4 × 400).
        discount_head: predict γ_t (Atari yes, DMC no).
        kl_balance: DreamerV2 loss setting.
        kl_free: free nats: the KL term is clipped from below at this value (0: none).
        kl_free_avg: clip the batch mean of the KL instead of each step's (DreamerV2 ``free_avg: True``, as in
            TEMPO's official code): every step's KL keeps its gradient while the batch mean is at least
            ``kl_free``, none does below it, and the mean of ℓ equals DreamerV2's max(mean KL, free).  The switch
            reads the unweighted mean, so per-sample weights move the prior wherever the batch's KL is above free
            nats (per-step clipping cuts w_t off from the KL of every step below them).
        kl_scale: DreamerV2 loss setting.
        discount_scale: DreamerV2 loss setting.
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        action_dim: int,
        *,
        deter: int = 200,
        stoch: int = 32,
        classes: int = 0,
        hidden: int = 200,
        min_std: float = 0.1,
        unimix: float = 0.0,
        twohot_bins: int = 0,
        symlog_obs: bool = False,
        depth: int = 48,
        mlp_layers: int = 4,
        mlp_units: int = 400,
        discount_head: bool = False,
        kl_balance: float = 0.8,
        kl_free: float = 0.0,
        kl_free_avg: bool = False,
        kl_scale: float = 1.0,
        obs_scale: float = 1.0,
        reward_scale: float = 1.0,
        discount_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        self.pixels = len(self.obs_shape) == 3
        if symlog_obs and self.pixels:
            raise ValueError("symlog_obs applies to vector observations, not images")
        if self.pixels:
            c, h, w = self.obs_shape
            if h != w:
                raise ValueError(f"square images expected, got {self.obs_shape}")
            self.encoder: nn.Module = ConvEncoder(c, h, depth)
            embed = self.encoder.out_size  # type: ignore[assignment]
        elif len(self.obs_shape) == 1:
            embed = mlp_units
            self.encoder = mlp(self.obs_shape[0], embed, mlp_layers - 1, mlp_units)
        else:
            raise ValueError(f"obs_shape must be (C, H, W) or (O,), got {self.obs_shape}")
        self.rssm = RSSM(embed, action_dim, deter, stoch, classes, hidden, min_std, unimix)
        feat = self.rssm.feat_size
        self.decoder = (
            ConvDecoder(feat, self.obs_shape[0], self.obs_shape[1], depth)
            if self.pixels
            else mlp(feat, self.obs_shape[0], mlp_layers, mlp_units)
        )
        self.reward: nn.Module = (
            TwoHotHead(feat, mlp_layers, mlp_units, twohot_bins) if twohot_bins else mlp(feat, 1, mlp_layers, mlp_units)
        )
        self.discount = mlp(feat, 1, mlp_layers, mlp_units) if discount_head else None
        self.symlog_obs = symlog_obs
        self.kl_balance, self.kl_free, self.kl_scale = kl_balance, kl_free, kl_scale
        self.kl_free_avg = kl_free_avg
        self.obs_scale, self.reward_scale, self.discount_scale = obs_scale, reward_scale, discount_scale

    def forward(
        self, batch: dict[str, Tensor], noise: tuple[Tensor, Tensor] | None = None, state: State | None = None
    ) -> ModelLoss:
        """Same as ``loss`` (so ``torch.func.functional_call`` and ``BilevelUpdate`` can call the model)."""
        return self.loss(batch, noise, state)

    def preprocess(self, obs: Tensor) -> Tensor:
        """uint8 images → float in [−0.5, 0.5]; vectors → float (symlog'd with ``symlog_obs``): what the encoder
        reads and the decoder reconstructs."""
        dtype = next(self.parameters()).dtype
        if self.pixels:
            return obs.to(dtype) / 255.0 - 0.5
        return symlog(obs.to(dtype)) if self.symlog_obs else obs.to(dtype)

    def loss(
        self, batch: dict[str, Tensor], noise: tuple[Tensor, Tensor] | None = None, state: State | None = None
    ) -> ModelLoss:
        """Per-step negative ELBO: ``observe_states`` then ``loss_from_states``.

        Args:
            batch: ``obs`` [B, T, *obs_shape], ``action`` [B, T, A], ``reward`` [B, T], ``is_first`` [B, T] bool,
                and ``discount`` [B, T] when the model has a discount head.
            noise: optional latent noise (see ``RSSM.observe``).
            state: optional state before the first step.

        Returns:
            ``ModelLoss`` with ``loss`` [B, T], ``terms`` (``obs``, ``reward``, ``discount``, ``kl``: [B, T],
            unscaled) and ``states`` (``post``, ``prior``: state dicts [B, T, ...]; ``feat``: posterior features).
        """
        post, prior = self.observe_states(batch, noise, state)
        return self.loss_from_states(batch, post, prior)

    def observe_states(
        self,
        batch: dict[str, Tensor],
        noise: tuple[Tensor, Tensor] | None = None,
        state: State | None = None,
    ) -> tuple[State, State]:
        """The filtering half of ``loss``: encoder and ``RSSM.observe`` → posterior and prior states (dicts of
        [B, T, ...]).  Split out so that a caller can differentiate the states alone (a task loss of the states,
        e.g. V-VAML, never reaches the heads) or compile the parts as separate graphs."""
        embed = self.encoder(self.preprocess(batch["obs"]))
        action, is_first = batch["action"].to(embed.dtype), batch["is_first"].bool()
        return self.rssm.observe(embed, action, is_first, state, noise)

    def loss_from_states(self, batch: dict[str, Tensor], post: State, prior: State) -> ModelLoss:
        """The likelihood half of ``loss``: decoder, reward (and discount) NLLs and the balanced KL of given
        posterior and prior states [B, T, ...] → ``ModelLoss`` (its ``states`` are ``post`` and ``prior``)."""
        obs = self.preprocess(batch["obs"])
        feat = self.rssm.features(post)
        dims = tuple(range(2, obs.dim()))
        terms = {"obs": (0.5 * (self.decoder(feat) - obs) ** 2 + _HALF_LOG_2PI).sum(dims)}
        if isinstance(self.reward, TwoHotHead):  # DreamerV3 eq. 10: cross-entropy against twohot(symlog r)
            terms["reward"] = self.reward.nll(feat, batch["reward"].to(feat.dtype))
        else:
            terms["reward"] = (
                0.5 * (self.reward(feat).squeeze(-1) - batch["reward"].to(feat.dtype)) ** 2 + _HALF_LOG_2PI
            )
        loss = self.obs_scale * terms["obs"] + self.reward_scale * terms["reward"]
        if self.discount is not None:
            terms["discount"] = F.binary_cross_entropy_with_logits(
                self.discount(feat).squeeze(-1), batch["discount"].to(feat.dtype), reduction="none"
            )
            loss = loss + self.discount_scale * terms["discount"]
        if self.kl_free_avg:
            terms["kl"] = free_nats_on_mean(self.rssm.kl(post, prior, self.kl_balance), self.kl_free)
        else:
            terms["kl"] = self.rssm.kl(post, prior, self.kl_balance, self.kl_free)
        loss = loss + self.kl_scale * terms["kl"]
        return ModelLoss(loss=loss, terms=terms, states={"post": post, "prior": prior, "feat": feat})
