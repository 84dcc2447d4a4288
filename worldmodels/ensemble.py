"""Probabilistic ensembles of Gaussian MLPs (PETS/MBPO) and M3PO's history-conditioned meta-model.

``GaussianEnsemble`` is the probabilistic ensemble of PETS (Chua et al. 2018, "Deep Reinforcement Learning in a
Handful of Trials using Probabilistic Dynamics Models", §4 and App. A.1) as MBPO uses it (Janner et al. 2019, "When
to Trust Your Model", §5 and App. C) and mbrl-lib ships it (``GaussianMLP``, ``conf/dynamics_model/
gaussian_mlp_ensemble.yaml``: 7 members, 5 elites, 4 hidden layers of 200 SiLU units).  Every member e predicts a
diagonal Gaussian over the target y = (Δo, r) = (o' − o, r) given the input x = (o, a) [, z]:

    y ~ N(μ_e(x), diag σ²_e(x)),   log σ²_e = soft-bounded raw output (PETS App. A.1)

All members run in one batched matmul per layer (``torch.baddbmm`` over weights [E, in, out]); no Python loop over
members.  Inputs and targets are standardised by running statistics of all data seen (``RunningNormalizer``);
the network reads normalised inputs, predicts normalised targets, and the NLL is taken in that normalised space.

``HistoryEnsemble`` is M3PO's meta-model p_θ(o', r | o, a, h) (Hiraoka et al. 2021, §6, Figure 5 and
Algorithm 2, line 3): the same ensemble with z = a GRU code of the last L steps of the episode as its context.

Per-sample losses.  ``GaussianEnsemble.loss`` returns ℓ[N], one value per transition, averaged over members —
the quantity ``bilevel.BilevelUpdate`` weights (L_low = (1/N) Σ_i w_i ℓ_i).  Bootstrap resampling (PETS §4.1:
each member trains on its own resample of the data) is expressed as per-member sample multiplicities c[E, N]
(``bootstrap_counts``) so that all members still share one batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodels.base import ModelLoss
from worldmodels.history import HistoryEncoder, history_dim

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_MIN_STD = 1e-6

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
    "elu": F.elu,
    "tanh": torch.tanh,
    "leaky_relu": F.leaky_relu,
    "gelu": F.gelu,
}


def bootstrap_counts(members: int, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Per-member multiplicities of a bootstrap resample of n samples.

    Member e draws n indices uniformly with replacement from {0, …, n − 1}; ``counts[e, i]`` is how often it drew
    i (a bincount), so every row sums to n.  Passing the counts as ``batch["bootstrap"]`` to
    ``GaussianEnsemble.loss`` (sliced with the minibatch's indices, ``counts[:, idx]``) makes member e's loss
    Σ_i c_{e,i} NLL_{e,i}: member e trains on its own bootstrap resample, exactly as mbrl-lib's
    ``BootstrapIterator`` does by indexing, while all members keep one shared batch (and one batched forward).

    Args:
        members: E ≥ 1.
        n: the number of samples N ≥ 0.
        generator: optional RNG; the counts live on its device (CPU by default).

    Returns:
        ``[E, N]`` counts as floats of the default dtype.
    """
    if members < 1 or n < 0:
        raise ValueError(f"bootstrap_counts: need members >= 1 and n >= 0, got members={members}, n={n}")
    device = generator.device if generator is not None else None
    idx = torch.randint(n, (members, n), generator=generator, device=device) if n else torch.zeros(members, 0)
    offset = torch.arange(members, device=idx.device).unsqueeze(1) * n
    counts = torch.bincount((idx.long() + offset).flatten(), minlength=members * n)
    return counts.view(members, n).to(torch.get_default_dtype())


class RunningNormalizer(nn.Module):
    """Exact running mean and standard deviation of all data seen, for standardising x ↦ (x − μ) / σ.

    Batches are merged with the pairwise update of Chan, Golub & LeVeque (1979): with counts n_a, n_b, means μ_a,
    μ_b and sums of squared deviations M_a, M_b, the union has μ = μ_a + δ n_b / n, M = M_a + M_b + δ² n_a n_b / n
    (δ = μ_b − μ_a, n = n_a + n_b), computed in float64.  σ is the sample standard deviation √(M / (n − 1)) of
    everything seen (Bessel-corrected, like mbrl-lib's ``Normalizer``: ``data.std(0)``); dimensions whose σ is
    below 1e-6 (constant so far, e.g. a reward that has always been 0) get σ = 1 instead, as MBPO's original code
    does, so that a later non-constant value is not blown up by 10⁶.  Before any data: μ = 0, σ = 1.

    Buffers (checkpointed): ``mean`` [D], ``std`` [D], ``m2`` [D], ``count`` [] (int64).

    Shapes: ``update(x[N, D])``; ``normalize(x[..., D])``, ``denormalize(x[..., D])``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("m2", torch.zeros(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Merge the rows of ``x`` [N, D] into the statistics."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"RunningNormalizer({self.dim}).update expects [N, {self.dim}], got {tuple(x.shape)}")
        n_b = x.shape[0]
        if n_b == 0:
            return
        x = x.detach().to(torch.float64)
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n_a = int(self.count)
        mean_a, m2_a = self.mean.to(torch.float64), self.m2.to(torch.float64)
        n = n_a + n_b
        delta = mean_b - mean_a
        mean = mean_a + delta * (n_b / n)
        m2 = m2_a + m2_b + delta**2 * (n_a * n_b / n)
        std = (m2 / (n - 1)).sqrt() if n > 1 else torch.zeros_like(m2)
        std = torch.where(std < _MIN_STD, torch.ones_like(std), std)
        self.mean.copy_(mean)
        self.m2.copy_(m2)
        self.std.copy_(std)
        self.count.fill_(n)

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def denormalize(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class EnsembleLinear(nn.Module):
    """E independent dense layers evaluated as one batched matmul: ``y[E, N, out] = b[E, 1, out] + x[E, N, in] W``.

    Initialisation (mbrl-lib's ``truncated_normal_init``, from MBPO's TensorFlow code): W ~ N(0, σ²) truncated to
    ±2σ with σ = 1 / (2 √in), per member; b = 0.

    Parameters: ``weight`` [E, in, out], ``bias`` [E, 1, out].
    """

    def __init__(self, members: int, inp: int, out: int) -> None:
        super().__init__()
        self.members, self.inp, self.out = members, inp, out
        std = 1.0 / (2.0 * math.sqrt(inp))
        self.weight = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(members, inp, out), std=std, a=-2 * std, b=2 * std)
        )
        self.bias = nn.Parameter(torch.zeros(members, 1, out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"members={self.members}, in={self.inp}, out={self.out}"


class GaussianEnsemble(nn.Module):
    """PETS/MBPO probabilistic ensemble of E diagonal-Gaussian MLPs over y = (Δo, r) given x = (o, a) [, z].

    Member e: ``layers`` hidden ``EnsembleLinear`` layers of ``units`` with ``activation``, and a linear head
    giving the normalised mean μ̃_e and a raw log-variance, which is soft-bounded by learned parameters (PETS,
    App. A.1):

        logvar = max_logvar − softplus(max_logvar − raw);   logvar = min_logvar + softplus(logvar − min_logvar)

    Per-sample loss (in normalised target space ỹ = (y − μ_y) / σ_y, optional bootstrap multiplicities c[E, N]):

        NLL_{e,i} = Σ_d ½ (ỹ_{i,d} − μ̃_{e,i,d})² e^{−logvar_{e,i,d}} + ½ logvar_{e,i,d} + ½ log 2π
        ℓ_i       = (1/E) Σ_e c_{e,i} NLL_{e,i} + 0.01 (Σ max_logvar − Σ min_logvar)

    mbrl-lib instead averages over samples and dims and sums over members (``GaussianMLP._nll_loss``, without the
    ½ and the constant); the minimiser is the same, the scale differs.

    Args:
        obs_dim: O; action_dim: A.
        members: E (MBPO/mbrl-lib: 7).
        elites: how many members ``sample`` draws from after ``select_elites`` (5).
        layers: hidden layers (4; mbrl-lib's ``num_layers``: 4 hidden layers and an output layer).
        units: hidden width (200).
        activation: ``silu`` (MBPO's swish), ``relu``, ``elu``, ``tanh``, ``leaky_relu`` or ``gelu``.
        context_dim: size of an extra input z appended to the normalised (o, a) — used as is, not normalised
            (``HistoryEnsemble`` feeds its history code here).  0 for none.
        learn_reward: predict (Δo, r) (D = O + 1) or only Δo (D = O).

    Buffers: ``input_norm`` over (o, a) [O + A], ``target_norm`` over y [D] (``RunningNormalizer``, updated by
    ``update_normalizer``), ``elite_idx`` [elites] (int64; members 0…elites−1 until ``select_elites``).

    Raises:
        ValueError: on non-positive sizes, ``elites`` outside [1, members] or an unknown activation.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        members: int = 7,
        elites: int = 5,
        layers: int = 4,
        units: int = 200,
        activation: str = "silu",
        context_dim: int = 0,
        learn_reward: bool = True,
    ) -> None:
        super().__init__()
        if obs_dim < 1 or action_dim < 0 or members < 1 or layers < 0 or units < 1 or context_dim < 0:
            raise ValueError(
                "GaussianEnsemble: need obs_dim >= 1, action_dim >= 0, members >= 1, layers >= 0, units >= 1, "
                f"context_dim >= 0; got {obs_dim}, {action_dim}, {members}, {layers}, {units}, {context_dim}"
            )
        if not 1 <= elites <= members:
            raise ValueError(f"elites must be in [1, members={members}], got {elites}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
        self.obs_dim, self.action_dim, self.context_dim = obs_dim, action_dim, context_dim
        self.members, self.num_elites, self.learn_reward = members, elites, learn_reward
        self.activation = activation
        self._act = _ACTIVATIONS[activation]
        self.out_dim = obs_dim + 1 if learn_reward else obs_dim
        self.in_dim = obs_dim + action_dim
        width = self.in_dim + context_dim
        hidden: list[nn.Module] = []
        for _ in range(layers):
            hidden.append(EnsembleLinear(members, width, units))
            width = units
        self.hidden = nn.ModuleList(hidden)
        self.head = EnsembleLinear(members, width, 2 * self.out_dim)
        self.max_logvar = nn.Parameter(torch.full((1, 1, self.out_dim), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1, 1, self.out_dim), -10.0))
        self.input_norm = RunningNormalizer(self.in_dim)
        self.target_norm = RunningNormalizer(self.out_dim)
        self.register_buffer("elite_idx", torch.arange(elites))

    # -- data ----------------------------------------------------------------------------------------------------
    def _dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def _targets(self, batch: dict[str, Tensor]) -> Tensor:
        """y = (o' − o, r) [N, D] (or Δo alone without a reward head), in the model's dtype."""
        dtype = self._dtype()
        delta = batch["next_obs"].to(dtype) - batch["obs"].to(dtype)
        if not self.learn_reward:
            return delta
        return torch.cat([delta, batch["reward"].to(dtype).reshape(-1, 1)], -1)

    def _raw_inputs(self, obs: Tensor, action: Tensor) -> Tensor:
        dtype = self._dtype()
        return torch.cat([obs.to(dtype), action.to(dtype)], -1)

    @torch.no_grad()
    def update_normalizer(self, batch: dict[str, Tensor]) -> None:
        """Merge a batch (``obs``, ``action``, ``next_obs``, ``reward``: [N, ...]) into the input/target statistics.

        Feed every transition once (e.g. each new row of the replay buffer before a fit): the statistics are the
        exact mean/std over all data ever passed here.
        """
        self.input_norm.update(self._raw_inputs(batch["obs"], batch["action"]))
        self.target_norm.update(self._targets(batch))

    def _context(self, batch: dict[str, Tensor]) -> Tensor | None:
        """The context z [N, context_dim] of a batch (``batch["context"]``), or None without one."""
        if self.context_dim == 0:
            return None
        if "context" not in batch:
            raise ValueError(f"this ensemble has context_dim={self.context_dim}: the batch needs 'context'")
        return batch["context"]

    # -- network -------------------------------------------------------------------------------------------------
    def _network(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """All members on normalised inputs ``x`` [N, O + A] (and z [N, C]): normalised mean and bounded logvar,
        each [E, N, D]."""
        if context is not None:
            x = torch.cat([x, context.to(x.dtype)], -1)
        h = x.unsqueeze(0).expand(self.members, *x.shape)
        for layer in self.hidden:
            h = self._act(layer(h))
        # .to(x.dtype): under bf16 autocast the head's product comes out in bf16; the NLL and the log-variance
        # bounds stay in the model's dtype (a no-op otherwise)
        mean, raw = self.head(h).to(x.dtype).split(self.out_dim, -1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def _bound_penalty(self) -> Tensor:
        """PETS App. A.1: 0.01 (Σ max_logvar − Σ min_logvar), keeps the learned bounds tight."""
        return 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())

    def forward(self, batch: dict[str, Tensor]) -> ModelLoss:
        """Same as ``loss`` (so ``torch.func.functional_call`` and ``BilevelUpdate`` can call the model)."""
        return self.loss(batch)

    def loss(self, batch: dict[str, Tensor]) -> ModelLoss:
        """Per-sample Gaussian NLL, averaged over members, and the predictions it was computed from.

        Args:
            batch: ``obs`` [N, O], ``action`` [N, A], ``reward`` [N], ``next_obs`` [N, O]; optional ``bootstrap``
                [E, N] (per-member multiplicities, ``bootstrap_counts``); ``context`` [N, C] when
                ``context_dim > 0``.

        Returns:
            ``ModelLoss`` with ``loss`` ℓ[N] (see the class docstring; the bound penalty is added to every
            sample), ``terms``: ``nll`` [N] (ℓ without the penalty) and ``mse`` [N] (squared error of the mean in
            normalised space, averaged over members and dims, unweighted); ``states``: ``next_obs_mean`` [E, N, O]
            (o + denormalised mean of Δo, differentiable in θ), ``next_obs_std`` [E, N, O], ``reward_mean`` [E, N]
            (with a reward head), ``mean``/``logvar`` [E, N, D] (normalised space), ``member_nll`` [E, N]
            (unweighted), ``inputs`` [N, O + A] (normalised (o, a)) and ``targets`` [N, D] (normalised y).
        """
        x = self.input_norm.normalize(self._raw_inputs(batch["obs"], batch["action"]))
        target = self.target_norm.normalize(self._targets(batch))
        mean, logvar = self._network(x, self._context(batch))
        err2 = (mean - target) ** 2
        member_nll = 0.5 * (err2 * torch.exp(-logvar) + logvar).sum(-1) + self.out_dim * _HALF_LOG_2PI  # [E, N]
        counts = batch.get("bootstrap")
        weighted = member_nll if counts is None else counts.to(member_nll.dtype) * member_nll
        nll = weighted.mean(0)
        loss = nll + self._bound_penalty()
        o = self.obs_dim
        obs = batch["obs"].to(mean.dtype)
        std_y, mean_y = self.target_norm.std, self.target_norm.mean
        states: dict[str, Tensor] = {
            "next_obs_mean": obs + mean[..., :o] * std_y[:o] + mean_y[:o],
            "next_obs_std": torch.exp(0.5 * logvar[..., :o]) * std_y[:o],
            "mean": mean,
            "logvar": logvar,
            "member_nll": member_nll,
            "inputs": x,
            "targets": target,
        }
        if self.learn_reward:
            states["reward_mean"] = mean[..., o] * std_y[o] + mean_y[o]
        return ModelLoss(loss=loss, terms={"nll": nll, "mse": err2.mean((0, 2))}, states=states)

    # -- evaluation and prediction --------------------------------------------------------------------------------
    @torch.no_grad()
    def holdout_loss(self, batch: dict[str, Tensor], *, per_dim: bool = False) -> Tensor:
        """Per-member MSE of the predicted mean against the target in normalised space, no grad.

        mbrl-lib's ``ModelTrainer`` scores members by this MSE on a validation split for early stopping and
        elite selection (MBPO App. C).

        Args:
            batch: as for ``loss`` (``bootstrap`` is ignored).
            per_dim: keep the output dimensions apart (e.g. to see which part of the state a model fits).

        Returns:
            ``[E]``: mean over samples and output dims; with ``per_dim`` ``[E, D]`` (Δs dims, then the reward's).
        """
        x = self.input_norm.normalize(self._raw_inputs(batch["obs"], batch["action"]))
        target = self.target_norm.normalize(self._targets(batch))
        mean, _ = self._network(x, self._context(batch))
        error = ((mean - target) ** 2).mean(1)
        return error if per_dim else error.mean(1)

    @torch.no_grad()
    def select_elites(self, holdout: Tensor) -> None:
        """Store in ``elite_idx`` the ``elites`` members with the lowest hold-out loss ``holdout`` [E] (best first)."""
        if holdout.shape != (self.members,):
            raise ValueError(f"select_elites expects a hold-out loss of shape [{self.members}], got {holdout.shape}")
        best = torch.argsort(holdout.detach(), stable=True)[: self.num_elites]
        self.elite_idx.copy_(best.to(self.elite_idx.device))

    def _predict(self, obs: Tensor, action: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x = self.input_norm.normalize(self._raw_inputs(obs, action))
        if self.context_dim and context is None:
            raise ValueError(f"this ensemble has context_dim={self.context_dim}: pass a context")
        mean, logvar = self._network(x, context if self.context_dim else None)
        std_y = self.target_norm.std
        return self.target_norm.denormalize(mean), torch.exp(0.5 * logvar) * std_y

    def predict(self, obs: Tensor, action: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Every member's Gaussian over y = (Δo, r), denormalised.

        Args:
            obs: [N, O]; action: [N, A]; context: [N, C] when ``context_dim > 0``.

        Returns:
            ``(mean, std)``, each [E, N, D].
        """
        return self._predict(obs, action, context)

    def _sample_from(
        self,
        obs: Tensor,
        mean: Tensor,
        std: Tensor,
        generator: torch.Generator | None,
        deterministic: bool,
    ) -> tuple[Tensor, Tensor]:
        n = obs.shape[0]
        gen_device = generator.device if generator is not None else mean.device
        pick = torch.randint(self.num_elites, (n,), generator=generator, device=gen_device).to(mean.device)
        member = self.elite_idx[pick]
        rows = torch.arange(n, device=mean.device)
        y = mean[member, rows]
        if not deterministic:
            noise = torch.randn(y.shape, generator=generator, device=gen_device, dtype=y.dtype).to(y.device)
            y = y + std[member, rows] * noise
        next_obs = obs.to(y.dtype) + y[:, : self.obs_dim]
        reward = y[:, self.obs_dim] if self.learn_reward else y.new_zeros(n)
        return next_obs, reward

    @torch.no_grad()
    def sample(
        self,
        obs: Tensor,
        action: Tensor,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """One model step: per sample a uniformly drawn *elite* member (MBPO §5 / M3PO §6), y ~ N(μ, σ²).

        Args:
            obs: [N, O]; action: [N, A]; context: [N, C] when ``context_dim > 0``.
            generator: RNG for the member choice and the noise (its device; results are moved to the model's).
            deterministic: use the chosen member's mean instead of a sample.

        Returns:
            ``(next_obs [N, O], reward [N])`` with next_obs = o + Δo (reward 0 without a reward head).
        """
        mean, std = self._predict(obs, action, context)
        return self._sample_from(obs, mean, std, generator, deterministic)

    def extra_repr(self) -> str:
        return (
            f"obs_dim={self.obs_dim}, action_dim={self.action_dim}, members={self.members}, elites={self.num_elites}, "
            f"activation={self.activation!r}, context_dim={self.context_dim}, learn_reward={self.learn_reward}"
        )


class HistoryEnsemble(GaussianEnsemble):
    """M3PO's meta-model p_θ(o', r | o, a, h_{L:t}): a ``GaussianEnsemble`` conditioned on a history code z.

    Hiraoka et al. 2021, §6 and Figure 5: an RNN reads the last L steps of the current episode and its hidden output
    z is fed to the ensemble's FFNN together with (o, a).  Here z = ``worldmodels.history.HistoryEncoder``
    (a GRU, exactly independent of left padding) of the window ``history`` [N, L, O + A + 1] with ``history_mask``
    [N, L] (layout in ``worldmodels.history``).

    Choices.
    * ONE encoder is shared by all members (the paper's Figure 5 draws one RNN feeding the ensemble's B heads): it
      costs one GRU pass per batch instead of E, and the members still differ through their own MLPs, their
      initialisations and their bootstrap resamples.  Its parameters train on the member-averaged loss.
    * The encoder reads *normalised* history steps: a separate ``RunningNormalizer`` ``history_norm`` over
      (o, a, r) [O + A + 1], updated with the same transitions in ``update_normalizer`` (separate from
      ``input_norm`` because it also covers the reward, which ``target_norm`` lacks without a reward head).
      Padding slots are zeroed again after normalisation (the encoder ignores them anyway).
    * ``history_len = 0`` builds exactly a ``GaussianEnsemble`` (no encoder, no ``history_norm``, the same
      parameters in the same order and the same random initialisation), and the history arguments are ignored.

    Args:
        obs_dim: O.
        action_dim: A.
        history_len: L ≥ 0, the window length the data carries (0: MBPO's memoryless model).
        history_hidden: size of z (the GRU's hidden size).
        **ensemble_kwargs: ``GaussianEnsemble``'s keyword arguments except ``context_dim``.

    Batch keys (for ``loss``/``holdout_loss``): those of ``GaussianEnsemble`` plus ``history``
    [N, L, O + A + 1] and ``history_mask`` [N, L] when L > 0.

    Raises:
        ValueError: for ``history_len < 0``, ``history_hidden < 1`` or a ``context_dim`` argument.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        history_len: int,
        history_hidden: int = 64,
        **ensemble_kwargs: object,
    ) -> None:
        if history_len < 0:
            raise ValueError(f"history_len must be >= 0, got {history_len}")
        if history_hidden < 1:
            raise ValueError(f"history_hidden must be >= 1, got {history_hidden}")
        if "context_dim" in ensemble_kwargs:
            raise ValueError("HistoryEnsemble sets context_dim itself (= history_hidden when history_len > 0)")
        context = history_hidden if history_len > 0 else 0
        super().__init__(obs_dim, action_dim, context_dim=context, **ensemble_kwargs)  # type: ignore[arg-type]
        self.history_len, self.history_hidden = history_len, history_hidden
        self.encoder: HistoryEncoder | None = None
        self.history_norm: RunningNormalizer | None = None
        if history_len > 0:
            width = history_dim(obs_dim, action_dim)
            self.encoder = HistoryEncoder(width, history_hidden)
            self.history_norm = RunningNormalizer(width)

    @torch.no_grad()
    def update_normalizer(self, batch: dict[str, Tensor]) -> None:
        """As ``GaussianEnsemble.update_normalizer``, and the history normaliser over (o, a, r)."""
        super().update_normalizer(batch)
        if self.history_norm is not None:
            dtype = self._dtype()
            reward = batch["reward"].to(dtype).reshape(-1, 1)
            self.history_norm.update(torch.cat([self._raw_inputs(batch["obs"], batch["action"]), reward], -1))

    def encode(self, history: Tensor | None, mask: Tensor | None) -> Tensor | None:
        """z [N, history_hidden] of windows ``history`` [N, L, O + A + 1] with ``mask`` [N, L]; None when L = 0."""
        if self.encoder is None or self.history_norm is None:
            return None
        if history is None or mask is None:
            raise ValueError(f"history_len={self.history_len}: pass the history window and its mask")
        if history.shape[1:] != (self.history_len, self.encoder.in_dim) or mask.shape != history.shape[:2]:
            raise ValueError(
                f"history must be [N, {self.history_len}, {self.encoder.in_dim}] with mask [N, {self.history_len}], "
                f"got {tuple(history.shape)} and {tuple(mask.shape)}"
            )
        dtype = self._dtype()
        mask = mask.to(dtype)
        steps = self.history_norm.normalize(history.to(dtype)) * mask.unsqueeze(-1)
        return self.encoder(steps, mask)

    def _context(self, batch: dict[str, Tensor]) -> Tensor | None:
        if self.encoder is None:
            return None
        return self.encode(batch.get("history"), batch.get("history_mask"))

    def predict(  # type: ignore[override]
        self, obs: Tensor, action: Tensor, history: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Every member's denormalised Gaussian over y: ``(mean, std)``, each [E, N, D] (history ignored if L = 0)."""
        return self._predict(obs, action, self.encode(history, mask))

    @torch.no_grad()
    def sample(  # type: ignore[override]
        self,
        obs: Tensor,
        action: Tensor,
        history: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """One meta-model step from (o, a, h): ``(next_obs [N, O], reward [N])``, a random elite member per sample
        (M3PO Algorithm 2, line 8; see ``GaussianEnsemble.sample``)."""
        mean, std = self._predict(obs, action, self.encode(history, mask))
        return self._sample_from(obs, mean, std, generator, deterministic)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, history_len={self.history_len}, history_hidden={self.history_hidden}"
