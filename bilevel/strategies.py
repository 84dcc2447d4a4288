"""Hypergradient strategies: every strategy is one way to get g = dL_up/dw ∈ R^N.

The bi-level problem (TEMPO eq. 6; Meta-Weight-Net; Learning-to-Reweight):

    min_α  L_up(θ*(w)),   w = N_α(features),
    θ*(w) ≈ argmin_θ  L_low(θ, w) = (1/N) Σ_i w_i ℓ_i(θ)

is split into "how does the upper loss change with each weight" (this module: ``g = dL_up/dw``, shape of w) and
"how do the weights change with α" (ordinary backprop through the weighter: ``w.backward(g)``).  A strategy
therefore works for any weighter and any model.

=============  ==============================================================  ===============================
strategy       computes                                                        exact for
=============  ==============================================================  ===============================
SameState      g_i = −(η/N) ⟨∇θL_up(θ), ∇θℓ_i(θ)⟩  (TEMPO eq. 9)                 d/dw of the first-order
                                                                               Taylor model of L_up(θ'(w))
Lookahead      g = dL_up(θ_K)/dw, θ_{k+1} = θ_k − η ∇θ L_low(θ_k, w)           K plain SGD steps (TEMPO eq. 8
                                                                               for K = 1, Ren et al. 2018)
Implicit       g_i = −(1/N) ⟨(H + λI)⁻¹ ∇θL_up(θ*), ∇θℓ_i(θ*)⟩                  θ* a minimiser of L_low (IFT)
Naive          no hypergradient: w_i = 1 + (u_i − mean(u)) / std(u)            — (TEMPO §3.4 baseline)
Uniform        no hypergradient: w = 1                                        — (maximum likelihood)
=============  ==============================================================  ===============================
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from bilevel import _autodiff as ad
from bilevel.normalizers import make_normalizer

PerSampleLoss = Callable[[dict[str, Tensor]], Tensor]
UpperLoss = Callable[[dict[str, Tensor]], Tensor]
#: ``(params, tangents) -> (ℓ(θ), J·v)``: the per-sample losses at ``params`` (all of θ, by name) and their
#: directional derivatives along ``tangents`` (a subset of the names; the other parameters held constant), e.g.
#: ``torch.func.jvp`` of a ``per_sample_loss`` that the caller compiled.
PerSampleJvp = Callable[[dict[str, Tensor], dict[str, Tensor]], tuple[Tensor, Tensor]]


@dataclass
class BilevelProblem:
    """The two levels as closures of θ, plus the point θ at which a hypergradient is wanted.

    Args:
        per_sample_loss: ``params -> Tensor[N]`` (any shape equal to the weights'): unweighted lower-level losses
            ℓ_i(θ) (negative ELBO terms, NLLs, ...).  Must be a deterministic function of ``params`` for the
            finite-difference checks (fix latent noise / dropout masks outside the closure).
        upper_loss: ``params -> Tensor[]`` scalar task-aware loss L_up(θ) (a per-sample tensor is averaged).
        params: θ, name → tensor, e.g. ``dict(model.named_parameters())``.  Tensors that should be treated as
            constants may be passed with ``requires_grad=False``.
        loss: optional ℓ(θ) already computed from exactly these ``params`` tensors with its autograd graph (the
            bi-level update passes the forward it ran anyway, so no strategy repeats it).
        upper: optional L_up(θ) likewise.
        per_sample_jvp: optional ``(params, tangents) -> (ℓ(θ), J·v)`` with J = ∂ℓ/∂θ, the same function as
            ``torch.func.jvp`` of ``per_sample_loss`` (e.g. a ``torch.compile``-d one, which removes the
            thousands of small aten calls an eager forward-mode pass makes); ``SameState`` then takes the JVP route
            under ``method="auto"``.
    """

    per_sample_loss: PerSampleLoss
    upper_loss: UpperLoss
    params: dict[str, Tensor]
    loss: Tensor | None = None
    upper: Tensor | None = None
    per_sample_jvp: PerSampleJvp | None = None
    names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.names = list(self.params)

    @property
    def tensors(self) -> list[Tensor]:
        return [self.params[k] for k in self.names]

    def as_dict(self, tensors: list[Tensor]) -> dict[str, Tensor]:
        return dict(zip(self.names, tensors, strict=True))

    def loss_at(self, tensors: list[Tensor] | None = None) -> Tensor:
        """ℓ at θ (``tensors=None``: the problem's own point, reusing ``loss`` when given)."""
        if tensors is None:
            if self.loss is None:
                self.loss = self.per_sample_loss(self.params)
            return self.loss
        return self.per_sample_loss(self.as_dict(tensors))

    def upper_at(self, tensors: list[Tensor] | None = None) -> Tensor:
        """L_up at θ as a scalar (mean of a per-sample upper loss)."""
        if tensors is None:
            if self.upper is None:
                self.upper = self.upper_loss(self.params)
            value = self.upper
        else:
            value = self.upper_loss(self.as_dict(tensors))
        return value if value.dim() == 0 else value.mean()


@dataclass
class HypergradientResult:
    """What a strategy hands back: g = dL_up/dw and by-products the bi-level update reuses.

    Attributes:
        hypergradient: g, same shape as the weights, detached.
        lower_grad: ∇θ L_low(θ, w) at the problem's θ if the strategy computed it (list aligned with
            ``problem.names``), else ``None``; the update feeds it to the model optimiser instead of running a
            second backward pass.
        upper: L_up(θ) value (detached) if it was computed at θ.
    """

    hypergradient: Tensor
    lower_grad: list[Tensor] | None = None
    upper: Tensor | None = None


class Strategy(abc.ABC):
    """How to obtain dL_up/dw.  Subclasses implement ``compute`` and ``objective``."""

    #: False for strategies that set the weights by a rule instead of training a weighter.
    trains_weighter: ClassVar[bool] = True
    #: Whether rule weights need the per-sample upper loss at θ (``Naive``).
    needs_upper: ClassVar[bool] = False

    @abc.abstractmethod
    def compute(self, problem: BilevelProblem, weights: Tensor) -> HypergradientResult:
        """Hypergradient at ``problem.params`` for ``weights`` (shape of ℓ)."""

    @abc.abstractmethod
    def objective(self, problem: BilevelProblem, weights: Tensor) -> Tensor:
        """The scalar function of w whose exact gradient ``compute`` returns, evaluated with first-order
        autograd only (no ``create_graph``).  Finite differences of it verify ``compute``."""

    def rule_weights(self, loss: Tensor, per_sample_upper: Tensor | None) -> Tensor | None:
        """Weights set by a rule (``Naive``, ``Uniform``) for per-sample lower losses ``loss`` and per-sample upper
        losses (shape of ``loss``, or None); ``None`` for strategies that train a weighter."""
        return None


def _leaf(weights: Tensor) -> Tensor:
    return weights.detach().clone().requires_grad_(True)


def _check_lr(lr: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")


class SameState(Strategy):
    """TEMPO's approximation (eq. 9): the virtual step's upper gradient is taken at θ instead of θ'.

    With θ' = θ − η ∇θ L_low(θ, w) (eq. 7, written as descent on L_low = −weighted ELBO) and L_up(θ') ≈
    L_up(θ) + ⟨∇θL_up(θ), θ' − θ⟩:

        g_i = dL_up/dw_i = −(η/N) ⟨∇θ L_up(θ), ∇θ ℓ_i(θ)⟩

    All N values come from one mixed product along ``a = ∇θ L_up(θ)``: a double backward through the lower
    gradient (``method="double_backward"``: reuses an existing forward and yields the model's own gradient as a
    by-product) or a forward-mode JVP of θ ↦ ℓ(θ) (``method="jvp"``: a forward with dual numbers and no lower
    backward at all; needs a closure that torch.func can transform).  ``method="auto"`` (default) takes the
    double backward when the forward at θ was already run (``BilevelUpdate``, where the model needs ∇θ L_low
    anyway, unless the problem brings its own ``per_sample_jvp``, e.g. a compiled one) and the JVP otherwise (the
    functional ``bilevel.hypergradient``), falling back to the double
    backward if the closure cannot be transformed (with a warning, once, naming the error).
    ``method="finite_difference"`` approximates the mixed product by central differences of the per-sample losses
    along a (as DARTS does, Liu et al. 2019, eq. 8):
    (1/N) J a ≈ (ℓ(θ + εâ) − ℓ(θ − εâ)) / (2ε) · ‖a‖ / N with â = a/‖a‖ and ε = ``fd_eps`` — two forwards without
    graphs instead of a double backward, O(ε²) truncation error; the cheapest option when a backward through
    the model costs far more than a forward (recurrent models).  It differentiates the loss *values*: where a
    model trains with a surrogate gradient (KL balancing, straight-through samples) it is not the derivative of
    the model's actual update, which the other methods follow.  Measured choices: ``benchmarks/hypergrad.py``,
    ``benchmarks/tempo_overhead.py``.

    Args:
        lr: η, the model's learning rate in the virtual step (only scales g).
        method: ``"auto"``, ``"double_backward"``, ``"jvp"`` or ``"finite_difference"``.
        fd_eps: ε, the norm of the parameter perturbation of ``"finite_difference"`` (in units of θ).
        convention: ``"correct"`` (the sign above, proven by finite differences) or ``"official"``: the sign and
            scale of the official TEMPO code, which descends α on +∂/∂α ⟨∇θ L_loss, ∇θ L_up⟩ with
            L_loss = −ELBO, i.e. ``g_i = +(1/N) ⟨∇θ ℓ_i, ∇θ L_up⟩`` — the opposite direction, without η.
            Offered to reproduce that code's results only.

    Raises:
        ValueError: on a non-positive ``lr`` or an unknown option.
    """

    def __init__(
        self,
        lr: float,
        *,
        method: Literal["auto", "double_backward", "jvp", "finite_difference"] = "auto",
        convention: Literal["correct", "official"] = "correct",
        fd_eps: float = 1e-2,
    ) -> None:
        _check_lr(lr)
        if method not in ("auto", "double_backward", "jvp", "finite_difference"):
            raise ValueError(f"method must be 'auto', 'double_backward', 'jvp' or 'finite_difference', got {method!r}")
        if convention not in ("correct", "official"):
            raise ValueError(f"convention must be 'correct' or 'official', got {convention!r}")
        if not fd_eps > 0:
            raise ValueError(f"fd_eps must be positive, got {fd_eps}")
        self.lr, self.method, self.convention, self.fd_eps = lr, method, convention, fd_eps
        self._warned_fallback = False

    def __repr__(self) -> str:
        extra = f", fd_eps={self.fd_eps}" if self.method == "finite_difference" else ""
        return f"SameState(lr={self.lr}, method={self.method!r}, convention={self.convention!r}{extra})"

    def _scale(self) -> float:
        # TEMPO eq. 9: g = −η · (1/N) J a; official code: +(1/N) J a.
        return -self.lr if self.convention == "correct" else 1.0

    def compute(self, problem: BilevelProblem, weights: Tensor) -> HypergradientResult:
        w = _leaf(weights)
        theta = problem.tensors
        method = self.method
        if method == "auto":
            method = "double_backward" if problem.loss is not None and problem.per_sample_jvp is None else "jvp"
        if method == "jvp":
            try:
                return self._compute_jvp(problem, weights)
            except RuntimeError as err:
                if self.method == "jvp":
                    raise
                if not self._warned_fallback:  # said once: the fallback may hide a real failure of the JVP path
                    self._warned_fallback = True
                    warnings.warn(
                        f"SameState(method='auto'): the forward-mode J a failed, falling back to the double "
                        f"backward (method='jvp' raises instead): {err!r:.500}",
                        stacklevel=2,
                    )
        if method == "finite_difference":
            return self._compute_fd(problem, weights)
        upper = problem.upper_at()
        point = ad.LowerPoint(theta, problem.loss_at(), w)
        a, used = ad.grads_used(upper, theta, retain_graph=True)
        lower_grad = [g.detach() for g in point.grad]
        # (1/N) J a over the parameters L_up depends on: the others' components of a are zero by structure (a
        # world model's decoder and reward head under a value-based upper loss), so the double backward skips the
        # nodes that computed their gradients
        mixed = point.mixed([x if u else None for x, u in zip(a, used, strict=True)], retain_graph=False)
        return HypergradientResult(self._scale() * mixed.detach(), lower_grad, upper.detach())

    def _compute_jvp(self, problem: BilevelProblem, weights: Tensor) -> HypergradientResult:
        """(1/N) J a by forward-mode AD of θ ↦ ℓ(θ) along a = ∇θ L_up(θ) (torch.func.jvp, or the problem's own
        ``per_sample_jvp``).  Only the parameters L_up depends on carry tangents; the others (a = 0 there by
        structure: a world model's decoder and reward head under a value-based upper loss) enter as constants, so
        their layers propagate the input's tangent only (one product per layer instead of two)."""
        theta = problem.tensors
        upper = problem.upper_at()
        # keep the graph at θ when the caller still backpropagates L_low through it (BilevelUpdate)
        a, used = ad.grads_used(upper, theta, retain_graph=True)
        names = problem.names
        params = {n: t.detach() for n, t in zip(names, theta, strict=True)}
        tangents = {n: x.detach() for n, x, u in zip(names, a, used, strict=True) if u}
        if not tangents:  # L_up does not depend on θ: J a = 0
            return HypergradientResult(torch.zeros_like(weights), None, upper.detach())
        if problem.per_sample_jvp is not None:
            _, jv = problem.per_sample_jvp(params, tangents)
        else:

            def f(p: dict[str, Tensor]) -> Tensor:
                return problem.per_sample_loss({**params, **p})

            _, jv = torch.func.jvp(f, ({n: params[n] for n in tangents},), (tangents,))
        ad.lower_objective(jv, weights)  # shape check only
        return HypergradientResult(self._scale() * jv.detach() / jv.numel(), None, upper.detach())

    def _compute_fd(self, problem: BilevelProblem, weights: Tensor) -> HypergradientResult:
        """(1/N) J a by central differences of ℓ along â = a/‖a‖ (no graph through the two extra forwards)."""
        theta = problem.tensors
        upper = problem.upper_at()
        # keep the graph at θ: the caller (BilevelUpdate) still backpropagates L_low through it
        a = [x.detach() for x in ad.grads(upper, theta, retain_graph=problem.loss is not None)]
        norm = torch.sqrt(sum(x.pow(2).sum() for x in a))
        if float(norm) == 0.0:
            return HypergradientResult(torch.zeros_like(weights), None, upper.detach())
        step = [self.fd_eps * x / norm for x in a]
        names = problem.names
        with torch.no_grad():
            plus = problem.per_sample_loss({n: t.detach() + d for n, t, d in zip(names, theta, step, strict=True)})
            minus = problem.per_sample_loss({n: t.detach() - d for n, t, d in zip(names, theta, step, strict=True)})
        ad.lower_objective(plus, weights)  # shape check only
        jv = (plus - minus) * (norm / (2 * self.fd_eps))
        return HypergradientResult(self._scale() * jv.detach() / jv.numel(), None, upper.detach())

    def objective(self, problem: BilevelProblem, weights: Tensor) -> Tensor:
        theta = problem.tensors  # fresh evaluations: the cached graphs at θ belong to compute()
        a = [x.detach() for x in ad.grads(problem.upper_at(theta), theta)]
        low = ad.lower_objective(problem.loss_at(theta), weights)
        g = ad.grads(low, theta)
        # Linearised upper loss at θ' = θ − η∇θL_low (constant term dropped); official: ⟨a, ∇θ L_low⟩.
        return self._scale() * ad.dot(a, g).detach()


class Lookahead(Strategy):
    """Exact unrolled hypergradient through K plain SGD steps on L_low (TEMPO eq. 8 for K = 1).

    θ_0 = θ, θ_{k+1} = θ_k − η ∇θ L_low(θ_k, w), g = dL_up(θ_K)/dw — the Learning-to-Reweight (Ren et al. 2018)
    and Meta-Weight-Net (Shu et al. 2019) hypergradient.  Computed in reverse mode with an explicit adjoint
    a_K = ∇L_up(θ_K), a_k = a_{k+1} − η H_k a_{k+1}, g = −η Σ_k (1/N) J_k a_{k+1}: one double backward per
    step, the Hessian product skipped at k = 0.  Cost and memory grow linearly in K.

    The virtual steps are plain SGD whatever the real optimiser is (as in the papers above); BatchNorm running
    statistics are not touched by them when used through ``bilevel.BilevelUpdate``.

    Args:
        lr: η of the virtual steps.
        steps: K ≥ 1.
    """

    def __init__(self, lr: float, steps: int = 1) -> None:
        _check_lr(lr)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.lr, self.steps = lr, int(steps)

    def __repr__(self) -> str:
        return f"Lookahead(lr={self.lr}, steps={self.steps})"

    def _step(self, theta: list[Tensor], grad: list[Tensor], problem: BilevelProblem) -> list[Tensor]:
        base = problem.tensors
        return [
            (t - self.lr * g).detach().requires_grad_(True) if p.requires_grad else t
            for t, g, p in zip(theta, grad, base, strict=True)
        ]

    def compute(self, problem: BilevelProblem, weights: Tensor) -> HypergradientResult:
        w = _leaf(weights)
        theta = problem.tensors
        points: list[ad.LowerPoint] = []
        lower_grad: list[Tensor] | None = None
        upper0 = problem.upper.detach() if problem.upper is not None else None
        for k in range(self.steps):
            point = ad.LowerPoint(theta, problem.loss_at(None if k == 0 else theta), w)
            if k == 0:
                lower_grad = [g.detach() for g in point.grad]
            points.append(point)
            theta = self._step(theta, point.grad, problem)
        a = ad.grads(problem.upper_at(theta), theta)
        g = torch.zeros_like(w)
        for k in reversed(range(self.steps)):
            dw, ha = points[k].products(a, hvp=k > 0, retain_graph=False)
            g = g - self.lr * dw
            if k > 0:
                a = ad.axpy(-self.lr, ha, a)
            points.pop()
        return HypergradientResult(g.detach(), lower_grad, upper0)

    def objective(self, problem: BilevelProblem, weights: Tensor) -> Tensor:
        theta = [t.detach().requires_grad_(t.requires_grad) for t in problem.tensors]
        for _ in range(self.steps):
            low = ad.lower_objective(problem.loss_at(theta), weights)
            theta = self._step(theta, ad.grads(low, theta), problem)
        return problem.upper_at(theta).detach()


class Implicit(Strategy):
    """Implicit-function-theorem hypergradient at a (approximate) minimiser ``θ*`` of L_low.

    ``∇θ L_low(θ*(w), w) = 0`` gives ``dθ*/dw_i = −H⁻¹ ∇θℓ_i/N`` with H = ∇²θ L_low, hence:

        g_i = −(1/N) ⟨(H + λI)⁻¹ ∇θ L_up(θ*), ∇θ ℓ_i(θ*)⟩

    (Lorraine et al. 2020; AdMRL, Lin et al. 2020, Sec. 4.2).  The linear system is solved matrix-free from
    Hessian-vector products: conjugate gradients (``solver="cg"``) or a truncated Neumann series
    (``solver="neumann"``, step ``alpha``).  ``normal_equations=True`` solves (H+λI)ᵀ(H+λI) x = (H+λI)ᵀ b instead,
    which stays positive semi-definite when H is indefinite (what AdMRL does).

    The damping λ is exactly the IFT derivative of the proximal lower problem
    ``argmin_θ L_low(θ, w) + (λ/2)‖θ − θ*‖²``, which is what ``objective`` solves.

    Args:
        solver: ``"cg"`` or ``"neumann"``.
        iters: number of CG iterations / Neumann terms.
        damping: λ ≥ 0.
        normal_equations: solve the normal equations (two HVPs per iteration).
        alpha: Neumann step size (must satisfy α < 2/λ_max(H)); ignored by CG.
        tol: CG relative residual at which to stop early.
        inner_iters: L-BFGS iterations before the Newton polish when ``objective`` re-solves the lower
            problem (checks only).
    """

    def __init__(
        self,
        solver: Literal["cg", "neumann"] = "cg",
        iters: int = 20,
        damping: float = 0.0,
        normal_equations: bool = False,
        *,
        alpha: float = 0.01,
        tol: float = 1e-10,
        inner_iters: int = 300,
    ) -> None:
        if solver not in ("cg", "neumann"):
            raise ValueError(f"solver must be 'cg' or 'neumann', got {solver!r}")
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        if solver == "neumann" and not alpha > 0:
            raise ValueError(f"alpha must be > 0 for the Neumann solver, got {alpha}")
        self.solver, self.iters, self.damping = solver, int(iters), float(damping)
        self.normal_equations, self.alpha, self.tol, self.inner_iters = normal_equations, alpha, tol, inner_iters

    def __repr__(self) -> str:
        return (
            f"Implicit(solver={self.solver!r}, iters={self.iters}, damping={self.damping}, "
            f"normal_equations={self.normal_equations})"
        )

    def compute(self, problem: BilevelProblem, weights: Tensor) -> HypergradientResult:
        w = _leaf(weights)
        theta = problem.tensors
        train = [t for t in theta if t.requires_grad]
        point = ad.LowerPoint(train, problem.loss_at(), w)
        upper = problem.upper_at()
        b = ad.flatten(ad.grads(upper, train, retain_graph=True)).detach()

        def h(v: Tensor) -> Tensor:
            return ad.flatten(point.hvp(ad.unflatten(v, train))).detach() + self.damping * v

        matvec, rhs = h, b
        if self.normal_equations:
            matvec, rhs = (lambda v: h(h(v))), h(b)
        if self.solver == "cg":
            x = ad.conjugate_gradient(matvec, rhs, iters=self.iters, tol=self.tol)
        else:
            x = ad.neumann(matvec, rhs, iters=self.iters, alpha=self.alpha)
        mixed = point.mixed(ad.unflatten(x, train), retain_graph=False)
        lower_grad = _scatter([g.detach() for g in point.grad], theta)
        return HypergradientResult(-mixed.detach(), lower_grad, upper.detach())

    def objective(self, problem: BilevelProblem, weights: Tensor, start: list[Tensor] | None = None) -> Tensor:
        """L_up(θ̂(w)) with θ̂ from ``solve`` (anchored at ``problem.params``)."""
        return problem.upper_at(self.solve(problem, weights, start)).detach()

    def solve(self, problem: BilevelProblem, weights: Tensor, start: list[Tensor] | None = None) -> list[Tensor]:
        """θ̂(w) = argmin_θ L_low(θ, w) + (λ/2)‖θ − θ_0‖², θ_0 = ``problem.params``, from ``start`` (default θ_0).

        Tensors are aligned with ``problem.names``; frozen tensors stay put.  The IFT derivative of θ̂ at its own
        solution is exactly what ``compute`` returns there with the same damping λ.  Used for checks, not for
        training.
        """
        theta0 = [t.detach() for t in problem.tensors]
        mask = [p.requires_grad for p in problem.tensors]
        anchor = [t for t, m in zip(theta0, mask, strict=True) if m]
        init = anchor if start is None else [t.detach() for t, m in zip(start, mask, strict=True) if m]

        def assemble(free: list[Tensor]) -> list[Tensor]:
            it = iter(free)
            return [next(it) if m else t for t, m in zip(theta0, mask, strict=True)]

        def f(free: list[Tensor]) -> Tensor:
            value = ad.lower_objective(problem.loss_at(assemble(free)), weights.detach())
            if self.damping:
                value = value + 0.5 * self.damping * sum(
                    ((x - a) ** 2).sum() for x, a in zip(free, anchor, strict=True)
                )
            return value

        return assemble(ad.minimize(f, init, iters=self.inner_iters))


def _scatter(grads: list[Tensor], theta: list[Tensor]) -> list[Tensor]:
    """Place gradients of the trainable subset back into a list aligned with all of θ (zeros elsewhere)."""
    it = iter(grads)
    return [next(it) if t.requires_grad else torch.zeros_like(t) for t in theta]


class Naive(Strategy):
    """TEMPO §3.4 baseline: no weighter; w_i = 1 + normalised per-sample upper loss u_i.

    ``w_i = 1 + (u_i − mean) / std`` with batch statistics (``normalizer="batch"``, default) or moving statistics
    (``"moving"``, the paper's text).  Samples with large task-aware loss get weight above 1.  Weights may be
    negative for outliers below the mean by more than one standard deviation; ``floor`` clamps them.
    """

    trains_weighter: ClassVar[bool] = False
    needs_upper: ClassVar[bool] = True

    def __init__(
        self, normalizer: Literal["batch", "moving"] = "batch", *, momentum: float = 0.01, floor: float | None = None
    ) -> None:
        self.normalizer = make_normalizer(normalizer, momentum=momentum)
        self.floor = floor

    def __repr__(self) -> str:
        return f"Naive(normalizer={self.normalizer!r}, floor={self.floor})"

    def rule_weights(self, loss: Tensor, per_sample_upper: Tensor | None) -> Tensor:
        if per_sample_upper is None or per_sample_upper.shape != loss.shape:
            got = None if per_sample_upper is None else tuple(per_sample_upper.shape)
            raise ValueError(
                f"Naive weights need a per-sample upper loss of the lower loss's shape {tuple(loss.shape)}, got {got}"
            )
        w = 1.0 + self.normalizer(per_sample_upper.detach())
        return w if self.floor is None else w.clamp_min(self.floor)

    def compute(self, problem: BilevelProblem, weights: Tensor) -> HypergradientResult:
        return HypergradientResult(torch.zeros_like(weights))

    def objective(self, problem: BilevelProblem, weights: Tensor) -> Tensor:
        return torch.zeros((), dtype=weights.dtype, device=weights.device)


class Uniform(Strategy):
    """Plain maximum likelihood: w = 1 and no weighter — the baseline every comparison needs."""

    trains_weighter: ClassVar[bool] = False

    def __repr__(self) -> str:
        return "Uniform()"

    def rule_weights(self, loss: Tensor, per_sample_upper: Tensor | None) -> Tensor:
        return torch.ones_like(loss)

    def compute(self, problem: BilevelProblem, weights: Tensor) -> HypergradientResult:
        return HypergradientResult(torch.zeros_like(weights))

    def objective(self, problem: BilevelProblem, weights: Tensor) -> Tensor:
        return torch.zeros((), dtype=weights.dtype, device=weights.device)


#: Names ``make_strategy`` accepts (``lookaheadK`` means ``lookahead`` with ``steps=K``, e.g. ``lookahead3``).
STRATEGY_NAMES = ("same_state", "lookahead", "implicit", "implicit_normal", "naive", "uniform")


def make_strategy(
    name: str,
    *,
    lr: float | None = None,
    steps: int = 1,
    method: Literal["auto", "double_backward", "jvp", "finite_difference"] = "auto",
    convention: Literal["correct", "official"] = "correct",
    fd_eps: float = 1e-2,
    solver: Literal["cg", "neumann"] = "cg",
    iters: int = 20,
    damping: float = 0.0,
    normalizer: Literal["batch", "moving"] = "batch",
) -> Strategy:
    """Build a strategy by name: the one factory behind every config field and CLI flag that selects a strategy.

    Args:
        name: one of ``STRATEGY_NAMES``, or ``lookaheadK`` (K look-ahead steps, overriding ``steps``).
        lr: η of ``same_state`` and ``lookahead`` (required by them, ignored by the others).
        steps: K of ``lookahead``.
        method: of ``SameState``.
        convention: of ``SameState``.
        fd_eps: of ``SameState``.
        solver: of ``Implicit`` (``implicit_normal`` solves the normal equations).
        iters: of ``Implicit``.
        damping: of ``Implicit``.
        normalizer: of ``Naive``.

    Raises:
        ValueError: on an unknown name (listing the known ones), a missing ``lr`` where one is needed, or a bad
            option of the strategy itself.
    """
    key = name.strip()
    if key.startswith("lookahead") and key[len("lookahead") :].isdigit():
        key, steps = "lookahead", int(key[len("lookahead") :])
    if key not in STRATEGY_NAMES:
        raise ValueError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGY_NAMES)} (or lookaheadK)")
    if key in ("same_state", "lookahead") and lr is None:
        raise ValueError(f"strategy {key!r} needs a learning rate lr (its η)")
    if key == "same_state":
        assert lr is not None
        return SameState(lr, method=method, convention=convention, fd_eps=fd_eps)
    if key == "lookahead":
        assert lr is not None
        return Lookahead(lr, steps)
    if key in ("implicit", "implicit_normal"):
        return Implicit(solver, iters=iters, damping=damping, normal_equations=key == "implicit_normal")
    if key == "naive":
        return Naive(normalizer)
    return Uniform()
