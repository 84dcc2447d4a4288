"""Recipe ``tempo``: TEMPO (Deng et al., NeurIPS 2023) — DreamerV2 with a meta-weighted world model.

One train step (TEMPO Algorithm 1 with eq. 9; docs/recipe-tempo.md):

    batch → RSSM.observe (one pass, fixed latent noise) → ℓ[B,T] (every ELBO term), h, s_post, s_prior
          → V(s_post), V(s_prior) by the slow critic → Norm → L_up[B,T] = |V̄_post − V̄_prior|²   (eq. 4)
          → w[B,T] = N_α(detach(h, stats(s_post), stats(s_prior), V̄_post, V̄_prior))          (eq. 5)
          → model step on mean(w·ℓ); weighter step on g = dL_up/dw by the strategy         (eq. 7, 9)
          → actor-critic in imagination from the detached posteriors                      (DreamerV2, unchanged)

The upper loss reads the states of the lower loss's observe pass (the official code runs a second observe pass
with other latent samples; we do not).  Gaussian latents feed the weighter the posterior and prior *means*,
categorical latents their logits, as the official code does.  Every number lives in
``recipes.dreamer.config.TempoConfig``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from bilevel import (
    BatchNormalizer,
    BilevelUpdate,
    FactoredJvp,
    LevelOutputs,
    MetaWeighter,
    Naive,
    SameState,
    Strategy,
    Uniform,
)
from bilevel import make_strategy as _make_strategy
from recipes.agents.compile import MaybeCompiled, retained_backward
from recipes.agents.optim import adamw
from recipes.dreamer import dreamerv2
from recipes.dreamer.config import TempoConfig
from recipes.run import loop, rundir
from recipes.run.config import explain
from recipes.run.precision import autocast_fn
from tasklosses import make_task_loss
from worldmodels import ConvEncoder, ModelLoss


def make_strategy(cfg: TempoConfig) -> Strategy:
    """The hypergradient strategy named by ``cfg.strategy`` (``bilevel.make_strategy``; η = ``meta_lr`` or the
    model's learning rate)."""
    return _make_strategy(
        cfg.strategy,
        lr=cfg.meta_lr if cfg.meta_lr is not None else cfg.model_lr,
        steps=cfg.lookahead_steps,
        method=cfg.same_state_method,
        convention=cfg.convention,
        fd_eps=cfg.fd_eps,
        iters=cfg.implicit_iters,
        damping=cfg.implicit_damping,
        normalizer=cfg.normalizer,
    )


#: ``compile_jvp=None`` compiles the weighter update's JVP graphs when ``meta_every`` is at most this: the compiled
#: JVP's cold compile pays back within a 100k-step ``cpu`` run only where weighter updates are that frequent
#: (measured in docs/performance.md).
COMPILE_JVP_MAX_EVERY = 32


#: Metrics of ``bilevel.BilevelUpdate.step`` that only weighter updates produce.
WEIGHTER_METRICS = ("hypergrad_norm", "weighter_grad_norm", "weighter_step", "weighter_step_vs_lr")


class _Call(nn.Module):
    """``fn(inner, *args)`` as a module's forward, so that ``torch.func.functional_call`` (which calls ``forward``)
    runs any part of ``inner`` at given parameters (named ``inner.<name>``)."""

    def __init__(self, inner: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.inner, self.fn = inner, fn

    def forward(self, *args: Any) -> Any:
        return self.fn(self.inner, *args)


def _flat_states(post: dict[str, Tensor], prior: dict[str, Tensor]) -> dict[str, Tensor]:
    """Posterior and prior states as one dict, ``post/<key>`` and ``prior/<key>``."""
    return {**{f"post/{k}": v for k, v in post.items()}, **{f"prior/{k}": v for k, v in prior.items()}}


class TempoAgent(dreamerv2.DreamerAgent):
    """DreamerV2's agent plus a meta weighter N_α, a task-aware upper loss and a hypergradient strategy.

    Args:
        cfg: a ``TempoConfig``.
        obs_shape, action_dim, discrete: the environment's spaces.

    ``compile=True`` also compiles the world-model forward at θ wherever the step needs only first-order derivatives
    through it (compiled graphs support no double backward): steps without a weighter update, and weighter updates by
    ``SameState`` with ``same_state_method`` ``auto``/``jvp``/``finite_difference``, whose mixed product (1/N) J a
    then comes from a forward-mode pass of the filtering alone (``loss_jvp``, a ``bilevel.FactoredJvp``;
    compiled per ``compile_jvp``) instead of a double backward.  Other strategies keep the eager forward on weighter
    updates.
    """

    # a = ∇θ L_up backpropagates with retain_graph=True through the encoder's and the filtering chunks' graphs and
    # θ's gradient again (and, where some w_i is 0, Σ ℓ_i's through the likelihood's first: bilevel.FactoredJvpAt),
    # so they are compiled without donated buffers.  AOT autograd drops a graph's donated buffers only when its lazily
    # compiled backward first runs under retain_graph=True: a run resumed on a step without a weighter update kept
    # them and refused a's backward (and with the refusal silenced, θ's gradient came out wrong).
    backward_twice: ClassVar[bool] = True

    def __init__(self, cfg: TempoConfig, obs_shape: tuple[int, ...], action_dim: int, discrete: bool) -> None:
        super().__init__(cfg, obs_shape, action_dim, discrete, Uniform())
        self.cfg: TempoConfig = cfg
        kwargs = dict(cfg.task_loss_kwargs)
        if cfg.task_loss == "vvaml":
            kwargs.setdefault("normalizer", cfg.normalizer)
        self.task_loss = make_task_loss(cfg.task_loss, **kwargs)
        rssm = self.wm.rssm
        stats = rssm.stoch_size  # Gaussian: the mean (S); categorical: the logits (S·C)
        sizes = {"D": rssm.deter_size, "S": 2 * stats, "V": 2}
        task_features = {"none": 0, "id": cfg.num_tasks, "embedding": 1}[cfg.weighter_task]
        self.weighter = MetaWeighter(
            sum(sizes[k] for k in cfg.weighter_inputs) + task_features,
            layers=cfg.weighter_layers,
            hidden=cfg.weighter_units,
            activation=cfg.weighter_activation,
            norm=cfg.weighter_norm,
            output_norm=cfg.weighter_output_norm,
            groups=cfg.num_tasks if cfg.weighter_task == "embedding" else 0,
            group_dim=cfg.task_embed_dim,
        )
        self.weighter_opt = adamw(
            self.weighter.parameters(), cfg.weighter_lr, eps=cfg.weighter_eps, weight_decay=cfg.weighter_wd
        )
        strategy = make_strategy(cfg)
        # the hypergradient needs no second derivative through the forward at θ: it may be a compiled graph
        self._first_order_meta = not strategy.trains_weighter or (
            isinstance(strategy, SameState) and strategy.method in ("auto", "jvp", "finite_difference")
        )
        # the forward at θ as two compiled graphs, filtering + upper level (encoder, RSSM, slow-critic values, task
        # loss, weighter features) and likelihood (heads, KL): the upper loss's gradient runs the first's backward
        # (with compile_chunk > 0: the filtering loop in compiled chunks, the upper level as its own graph)
        self._compiled_upper: MaybeCompiled[Any] | None = None
        self._compiled_halves: tuple[Callable[..., Any], Callable[..., ModelLoss]] | None = None
        if cfg.compile and cfg.compile_chunk > 0:
            # the upper level's graph: a's backward keeps the graph (backward_twice covers the encoder's, the
            # filtering chunks' and the likelihood's)
            self._compiled_upper = MaybeCompiled(
                self.upper_parts, "TEMPO's upper level (values, task loss, features)", retain_graph=True
            )
            assert self._compiled_likelihood is not None
            self._compiled_halves = (self._chunked_filter_and_upper, self._compiled_likelihood)
        elif cfg.compile:
            self._compiled_halves = (
                MaybeCompiled(
                    self._filter_and_upper, "the world model's filtering pass and the upper loss", retain_graph=True
                ),
                MaybeCompiled(self.wm.loss_from_states, "the world model's likelihood terms", retain_graph=True),
            )
        # SameState's mixed product by forward mode on the compiled forward's steps; the JVP graph itself is compiled
        # only where enough weighter updates amortise its compile time (compile_jvp)
        compile_jvp = cfg.compile_jvp if cfg.compile_jvp is not None else cfg.meta_every <= COMPILE_JVP_MAX_EVERY
        # parts of the world model at given parameters (a plain dict: no second registration of its parameters)
        self._calls = {
            "states": _Call(self.wm, lambda wm, batch, noise: _flat_states(*wm.observe_states(batch, noise))),
            "embed": _Call(self.wm, lambda wm, obs: wm.encoder(wm.preprocess(obs))),
            "chunk": _Call(self.wm, lambda wm, *args: wm.rssm.observe_chunk(*args)),
        }
        self._compiled_jvp: MaybeCompiled[Any] | None = None
        self._compiled_chunk_jvp: MaybeCompiled[Any] | None = None
        self._compiled_encoder_tangent: MaybeCompiled[Tensor] | None = None
        if cfg.compile and isinstance(strategy, SameState) and strategy.method in ("auto", "jvp"):
            # with compile_chunk: the encoder's JVP over the sequence, then one K-step filtering JVP graph reused
            # along it, the state's tangent carried across (as the forward's chunks); else the filtering whole
            whole = self._embed_jvp if cfg.compile_chunk > 0 else self._states_jvp
            self._compiled_jvp = MaybeCompiled(
                autocast_fn(whole, *self.autocast), "TEMPO's filtering JVP", enabled=compile_jvp
            )
            if cfg.compile_chunk > 0:
                self._compiled_chunk_jvp = MaybeCompiled(
                    autocast_fn(self._chunk_jvp, *self.autocast), "TEMPO's filtering-chunk JVP", enabled=compile_jvp
                )
            if cfg.compile_chunk > 0 and isinstance(self.wm.encoder, ConvEncoder):
                # a conv encoder's tangent from the forward's activations (no primal recompute)
                self._compiled_encoder_tangent = MaybeCompiled(
                    autocast_fn(self._encoder_tangent, *self.autocast), "TEMPO's encoder tangent", enabled=compile_jvp
                )
        self._last_meta: dict[str, float] = {}  # WEIGHTER_METRICS of the last weighter update
        # the conv encoder's activations of the last forward at θ (obs, ELU outputs), for its tangent
        self._encoder_acts: tuple[Tensor, list[Tensor]] | None = None
        self.update = BilevelUpdate(
            self.wm,
            self.model_opt,
            strategy,
            self.weighter if strategy.trains_weighter else None,
            self.weighter_opt if strategy.trains_weighter else None,
            grad_clip=cfg.model_clip,
            weighter_grad_clip=cfg.weighter_clip,
            hypergradient_scale=cfg.hypergradient_scale,
        )

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super().optimizers(), "weighter_opt": self.weighter_opt}

    def value(self, feat: Tensor) -> Tensor:
        """V(features) by the slow (target) critic: the value the upper loss uses (TEMPO §2.2)."""
        return self.ac.value(feat, slow=True)

    def _noise(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Latent noise for one step, drawn once so that virtual passes (Lookahead) see the same samples."""
        rssm, obs = self.wm.rssm, batch["obs"]
        shape = rssm.noise_shape(*obs.shape[:2])
        dtype = next(self.wm.parameters()).dtype
        draw = torch.rand if rssm.classes else torch.randn
        return draw(shape, device=obs.device, dtype=dtype), draw(shape, device=obs.device, dtype=dtype)

    def level_outputs(self, out: ModelLoss, task: Tensor | None = None) -> LevelOutputs:
        """ℓ, weighter features and the per-step upper loss from one observe pass; ``aux`` holds the pass's
        ``worldmodels.ModelLoss`` and the raw values (for logging).  ``task``: the batch's task ids [B, T]
        (int) for ``weighter_task``."""
        upper, features, values = self.upper_parts(out.states["post"], out.states["prior"], task)
        return LevelOutputs(loss=out.loss, features=features, upper=upper, aux=(out, values))

    def upper_parts(
        self, post: dict[str, Tensor], prior: dict[str, Tensor], task: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """What the upper level reads of the posterior and prior states (dicts of [B, T, ...]): the per-step upper
        loss [B, T] (TEMPO eq. 4), the weighter's features [B, T, F] (eq. 5, detached) and the raw values
        ``value_post``/``value_prior`` [B, T] by the slow critic.

        Raises:
            ValueError: ``weighter_task`` is set but ``task`` is None.
        """
        rssm = self.wm.rssm
        feat_post, feat_prior = rssm.features(post), rssm.features(prior)
        v_post, v_prior = self.value(feat_post), self.value(feat_prior)
        value_loss = getattr(self.task_loss, "value_loss", None)
        if value_loss is not None:  # a loss of the values alone (V-VAML, TEMPO eq. 4): reuse V_post, V_prior
            upper, n_post, n_prior = value_loss(v_post, v_prior)
        else:
            upper = self.task_loss(feat_prior, feat_post, self.value)
            with torch.no_grad():  # Algorithm 1, line 5, for the weighter's inputs only
                n_post, n_prior = BatchNormalizer()(torch.stack([v_post, v_prior]))
        key = "logits" if rssm.classes else "mean"
        parts = {
            "D": [post["deter"]],
            "S": [post[key].flatten(2), prior[key].flatten(2)],
            "V": [n_post.unsqueeze(-1), n_prior.unsqueeze(-1)],
        }
        inputs = [x.detach() for k in self.cfg.weighter_inputs for x in parts[k]]
        if self.cfg.weighter_task != "none":
            if task is None:
                raise ValueError("weighter_task: the batch has no 'task' key (the env is not a set of environments)")
            if self.cfg.weighter_task == "id":
                inputs.append(torch.nn.functional.one_hot(task.long(), self.cfg.num_tasks).to(inputs[0].dtype))
            else:  # the id itself, embedded by the weighter (MetaWeighter groups)
                inputs.append(task.to(inputs[0].dtype).unsqueeze(-1))
        return upper, torch.cat(inputs, -1), {"value_post": v_post, "value_prior": v_prior}

    def _filter_and_upper(
        self, batch: dict[str, Tensor], noise: tuple[Tensor, Tensor], task: Tensor | None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], tuple[Tensor, Tensor, dict[str, Tensor]]]:
        """The first compiled graph of the forward at θ: filtering (encoder, RSSM) and ``upper_parts``, so the
        upper loss's gradient runs one compiled backward that never reaches the likelihood heads."""
        post, prior = self.wm.observe_states(batch, noise)
        return post, prior, self.upper_parts(post, prior, task)

    def _chunked_filter_and_upper(
        self, batch: dict[str, Tensor], noise: tuple[Tensor, Tensor], task: Tensor | None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], tuple[Tensor, Tensor, dict[str, Tensor]]]:
        """``_filter_and_upper`` by compiled parts: the filtering loop in chunks (``compile_chunk``), then
        ``upper_parts`` as one graph."""
        assert self._compiled_upper is not None
        post, prior, acts = self.observe_compiled_with_activations(batch, noise)
        if acts and self._compiled_encoder_tangent is not None:
            self._encoder_acts = (batch["obs"], [a.detach() for a in acts])
        return post, prior, self._compiled_upper(post, prior, task)

    def world_model_forward(
        self, batch: dict[str, Tensor], noise: tuple[Tensor, Tensor] | None = None, *, compiled: bool = False
    ) -> Callable[[Any], LevelOutputs]:
        """The ``forward`` closure of the bi-level update: ℓ, weighter features and the upper loss of one observe
        pass with latent ``noise`` (drawn here when None).  ``compiled``: the pass at the real θ runs the compiled
        world-model loss (first-order graphs only; virtual θ' stay eager)."""
        noise = self._noise(batch) if noise is None else noise
        task = batch.get("task")
        halves = self._compiled_halves if compiled else None

        def forward(fn: Any) -> LevelOutputs:
            if halves is not None and fn is self.wm:
                post, prior, (upper, features, values) = halves[0](batch, noise, task)
                heads = halves[1](batch, post, prior)
                states = {"post": post, "prior": prior, "feat": self.wm.rssm.features(post)}
                out = ModelLoss(loss=heads.loss, terms=heads.terms, states=states)
                return LevelOutputs(loss=out.loss, features=features, upper=upper, aux=(out, values))
            return self.level_outputs(fn(batch, noise), task)

        return forward

    def _call(self, part: str, params: dict[str, Tensor], *args: Any) -> Any:
        """Part ``part`` of ``_calls`` at ``params`` (the world model's parameters by name)."""
        return torch.func.functional_call(self._calls[part], {f"inner.{n}": t for n, t in params.items()}, args)

    def _states_jvp(
        self,
        params: dict[str, Tensor],
        tangents: dict[str, Tensor],
        batch: dict[str, Tensor],
        noise: tuple[Tensor, Tensor],
    ) -> dict[str, Tensor]:
        """∂s/∂θ · v of the filtering pass (encoder, RSSM; posterior and prior states [B, T, ...] as
        ``post/<key>``, ``prior/<key>``) at ``params`` along ``tangents`` (a subset of the names, the rest held
        constant), by forward mode (``torch.func.jvp``), with the forward's latent ``noise``."""

        def states(p: dict[str, Tensor]) -> dict[str, Tensor]:
            return self._call("states", {**params, **p}, batch, noise)

        return torch.func.jvp(states, ({n: params[n] for n in tangents},), (tangents,))[1]

    def _embed_jvp(self, params: dict[str, Tensor], tangents: dict[str, Tensor], obs: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's embedding [B, T, E] of ``obs`` and its tangent along ``tangents``."""

        def embed(p: dict[str, Tensor]) -> Tensor:
            return self._call("embed", {**params, **p}, obs)

        return torch.func.jvp(embed, ({n: params[n] for n in tangents},), (tangents,))

    def _encoder_tangent(
        self, params: dict[str, Tensor], tangents: dict[str, Tensor], obs: Tensor, acts: list[Tensor]
    ) -> Tensor:
        """The conv encoder's embedding tangent [B, T, E] along ``tangents`` from the forward's ELU outputs
        ``acts`` (``worldmodels.ConvEncoder.tangent``)."""
        encoder = self.wm.encoder
        assert isinstance(encoder, ConvEncoder)
        strip = lambda d: {n[len("encoder.") :]: v for n, v in d.items() if n.startswith("encoder.")}  # noqa: E731
        return encoder.tangent(self.wm.preprocess(obs), acts, strip(params), strip(tangents))

    def _chunk_jvp(
        self,
        params: dict[str, Tensor],
        tangents: dict[str, Tensor],
        state: dict[str, Tensor],
        state_tangent: dict[str, Tensor],
        embed: Tensor,
        embed_tangent: Tensor,
        action: Tensor,
        is_first: Tensor,
        noise: tuple[Tensor, Tensor],
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """One K-step chunk of the filtering loop (``worldmodels.RSSM.observe_chunk``) by forward mode from
        ``state`` and its tangent: the last state, its tangent, and the chunk's state tangents (``post/<key>``,
        ``prior/<key>``, [B, K, ...])."""

        def chunk(p: dict[str, Tensor], s: dict[str, Tensor], e: Tensor) -> Any:
            return self._call("chunk", {**params, **p}, s, e, action, is_first, noise)

        primals = ({n: params[n] for n in tangents}, state, embed)
        (last, _, _), (last_t, post_t, prior_t) = torch.func.jvp(
            chunk, primals, (tangents, state_tangent, embed_tangent)
        )
        return last, last_t, _flat_states(post_t, prior_t)

    def _chunked_states_jvp(
        self,
        params: dict[str, Tensor],
        tangents: dict[str, Tensor],
        batch: dict[str, Tensor],
        noise: tuple[Tensor, Tensor],
    ) -> dict[str, Tensor]:
        """``_states_jvp`` by compiled parts: the encoder's tangent (a conv encoder's from the forward's
        activations, ``_encoder_tangent``; otherwise its JVP), then the filtering loop's JVP in chunks of
        ``compile_chunk`` steps, the state and its tangent carried across (contiguous: one graph for every chunk)."""
        assert self._compiled_jvp is not None and self._compiled_chunk_jvp is not None
        saved, self._encoder_acts = self._encoder_acts, None
        if saved is not None and saved[0] is batch["obs"] and self._compiled_encoder_tangent is not None:
            acts = saved[1]  # the forward's: the embedding is the last, its tangent needs no primal pass
            embed = acts[-1].reshape(*batch["obs"].shape[:2], -1)
            embed_t = self._compiled_encoder_tangent(params, tangents, batch["obs"], acts)
        else:
            embed, embed_t = self._compiled_jvp(params, tangents, batch["obs"])
        action, is_first = batch["action"].to(embed.dtype), batch["is_first"].bool()
        b, t = embed.shape[:2]
        state = self.wm.rssm.initial(b, embed.device, embed.dtype)
        state_t = {k: torch.zeros_like(v) for k, v in state.items()}
        k = self.cfg.compile_chunk
        parts = []
        for i in range(0, t, k):
            part = slice(i, i + k)
            state, state_t, tangent = self._compiled_chunk_jvp(
                params,
                tangents,
                {n: v.contiguous() for n, v in state.items()},
                {n: v.contiguous() for n, v in state_t.items()},
                embed[:, part],
                embed_t[:, part],
                action[:, part],
                is_first[:, part],
                (noise[0][:, part], noise[1][:, part]),
            )
            parts.append(tangent)
        return {n: torch.cat([p[n] for p in parts], 1) for n in parts[0]}

    def loss_jvp(self, batch: dict[str, Tensor], noise: tuple[Tensor, Tensor], levels: LevelOutputs) -> FactoredJvp:
        """The mixed product's forward-mode pass for ``bilevel.BilevelUpdate`` (``jvp=``) as a
        ``bilevel.FactoredJvp`` through the posterior and prior states of ``levels`` (the forward at θ): the
        upper loss depends on the filtering (encoder, RSSM) alone, and ℓ_{b,t} reads the states only at (b, t) (the
        decoder, heads and KL act per step), so only the filtering runs in forward mode — no decoder pass."""
        states = levels.aux[0].states
        fn = self._chunked_states_jvp if self._compiled_chunk_jvp is not None else self._compiled_jvp
        assert fn is not None

        def tangents(params: dict[str, Tensor], tangents: dict[str, Tensor]) -> dict[str, Tensor]:
            heads = [n for n in tangents if not n.startswith(("encoder.", "rssm."))]
            if heads:  # the upper loss reads the states alone (upper_parts), so this cannot happen; if it did, ℓ's
                # direct dependence on these would be missing from J a
                raise RuntimeError(f"the upper loss depends on the world model's {heads}: J a needs the full JVP")
            return fn(params, tangents, batch, noise)

        return FactoredJvp(_flat_states(states["post"], states["prior"]), tangents)

    def meta_due(self) -> bool:
        return int(self.ac.updates) % self.cfg.meta_every == 0  # one actor-critic update per model update

    def world_model_step(self, batch: dict[str, Tensor]) -> tuple[dict[str, float], ModelLoss]:
        meta, noise = self.meta_due(), self._noise(batch)
        compiled = not meta or self._first_order_meta
        forward = autocast_fn(self.world_model_forward(batch, noise, compiled=compiled), *self.autocast)
        levels = forward(self.wm)  # the real forward at θ, reused by the update
        jvp = self.loss_jvp(batch, noise, levels) if meta and self._compiled_jvp is not None else None
        # a weighter update backpropagates through the forward's compiled graphs twice (a, then θ's gradient)
        with retained_backward() if meta else contextlib.nullcontext():
            result = self.update.step(forward, outputs=levels, meta=meta, jvp=jvp)
        if meta:  # carried to the steps between weighter updates, so that every logged record shows the last one
            self._last_meta = {k: v for k, v in result.items() if k in WEIGHTER_METRICS}
        metrics = {f"model/{k}": v for k, v in {**self._last_meta, **result}.items()}
        self._encoder_acts = None  # not held past the step (non-meta steps keep them otherwise)
        out, values = levels.aux
        for name, v in values.items():
            metrics[f"tempo/{name}"] = float(v.detach().mean())
        return metrics, out


def train(
    cfg: TempoConfig, logdir: Path, *, force: bool = False, progress: bool = True, recipe: str = "tempo"
) -> dict[str, Any]:
    """Train (or resume) a ``tempo`` run in ``logdir`` (``recipes.run.loop.train``); at the end also
    ``diagnostics.png`` (``plot_diagnostics``)."""
    dreamerv2.check_init(cfg, logdir, TempoAgent)
    result = loop.train(
        cfg,
        logdir,
        partial(dreamerv2.make_learner, agent_cls=TempoAgent),
        recipe=recipe,
        force=force,
        progress=progress,
    )
    path = logdir / "diagnostics.png"
    loop.optional(path, plot_diagnostics, [logdir], path, f"tempo on {cfg.env} (seed {cfg.seed})")
    return result


#: TEMPO Fig. 9's panels (plus the weights): (title, metric keys of ``metrics.jsonl``).
DIAGNOSTICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("value estimates", ("tempo/value_post", "tempo/value_prior")),
    ("upper objective (task loss)", ("model/upper_loss",)),
    ("lower objective", ("model/lower_loss", "model/lower_loss_unweighted")),
    ("meta weights", ("model/weight_mean", "model/weight_min", "model/weight_max")),
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
    ("model/weighter_step", "median"),
    ("model/weighter_step_vs_lr", "median"),
    ("model/upper_loss", "mean"),
)


def training_history(logdir: Path, spans: int = 5) -> list[dict[str, float]]:
    """How the weights and the weighter moved over a run, from its ``metrics.jsonl``: the logged records split into
    ``spans`` equal spans of environment steps, and per span ``start``/``end`` (env steps) and each key of
    ``HISTORY_KEYS`` (without its ``model/`` prefix) that was logged there — the weights' std (batch spread),
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


def _print_history(rows: list[dict[str, float]]) -> None:
    """The table of ``training_history``."""
    print("over training (from metrics.jsonl): env steps | weights' std | weighter step ‖Δα‖/‖α‖ | ‖Δα‖/(lr·√P)")
    for row in rows:
        cells = [f"{row[k]:.3g}" if k in row else "-" for k in ("weight_std", "weighter_step", "weighter_step_vs_lr")]
        print(f"  {row['start']:>9.0f}–{row['end']:<9.0f} | {' | '.join(cells)}")


def _weight_summary(meta: Tensor, weighter: MetaWeighter) -> dict[str, Any]:
    """The meta weights of all replayed steps against the weighter's bounds (shift, shift + scale), printed: a
    batch's min and max reach the bounds long before most weights do, so the share near each bound is what tells."""
    lo, hi = weighter.shift, weighter.shift + weighter.scale
    flat, near = meta.flatten().float(), 0.02 * weighter.scale
    q05, q50, q95 = torch.quantile(flat, torch.tensor([0.05, 0.5, 0.95])).tolist()
    summary = {
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "q05_q50_q95": [q05, q50, q95],
        "share_near_low": float((flat < lo + near).float().mean()),
        "share_near_high": float((flat > hi - near).float().mean()),
    }
    print(
        f"meta weights over {flat.numel()} steps: mean {summary['mean']:.3f} ± {summary['std']:.3f}, "
        f"5/50/95% {q05:.3f}/{q50:.3f}/{q95:.3f}; within {near:.2f} of a bound: "
        f"{summary['share_near_low']:.1%} near {lo:g}, {summary['share_near_high']:.1%} near {hi:g}"
    )
    return summary


def inspect_weights(logdir: Path, *, sequences: int = 4, show: int = 8, seed: int = 0) -> dict[str, Any]:
    """TEMPO Table 2 for a run's latest checkpoint: meta and naive weights of a few replayed sequences.

    Meta weights come from the weighter in eval mode (BatchNorm running statistics); naive weights are
    1 + the per-step upper loss normalised over the sampled sequences (TEMPO §3.4).  Pearson's r is computed per
    sequence over all its T steps.

    Returns:
        ``{"meta": [[T] per sequence], "naive": [...], "pearson": [r per sequence], "summary": {mean, std,
        q05_q50_q95, share_near_low, share_near_high}, "by_reward": ..., "history": ...}`` — the shares of all steps'
        weights within 2% of the weighter's range of its lower and upper bound; ``by_reward``:
        ``weights_by_reward`` of all steps; ``history``: ``training_history`` of the run.

    Raises:
        ValueError: if ``logdir`` holds no ``tempo`` run or no checkpoint.
    """
    from scipy.stats import pearsonr

    from recipes.envs import make_env

    config_path = logdir / "config.json"
    if not config_path.exists():
        raise ValueError(f"logdir: no config.json in {logdir}")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise ValueError(f"{config_path}: not a JSON config ({err})") from None
    if not isinstance(config, dict) or config.pop("recipe", None) != "tempo":
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
    replay = dreamerv2.make_replay(cfg, logdir, seed=seed)
    batch = {k: torch.as_tensor(v) for k, v in replay.sample(sequences).items()}
    torch.manual_seed(seed)
    with torch.no_grad():
        forward = agent.world_model_forward(batch)
        levels = forward(agent.wm)
        meta = agent.weighter(levels.features)
        assert levels.upper is not None
        naive = Naive("batch").rule_weights(levels.loss, levels.upper)
    rows = {
        "meta": meta.tolist(),
        "naive": naive.tolist(),
        "pearson": [float(pearsonr(m, n).statistic) for m, n in zip(meta.numpy(), naive.numpy(), strict=True)],
    }
    print(f"{'set':>3}  {'type':<5}  weights (w_1:{show} of {cfg.seq_len})" + " " * max(0, 6 * show - 24) + "  r")
    for i in range(sequences):
        for kind in ("meta", "naive"):
            values = " ".join(f"{x:5.2f}" for x in rows[kind][i][:show])
            r = f"{rows['pearson'][i]:+.2f}" if kind == "meta" else ""
            print(f"{i + 1 if kind == 'meta' else '':>3}  {kind:<5}  [{values} ...]  {r}")
    rows["summary"] = _weight_summary(meta, agent.weighter)
    by_reward = rows["by_reward"] = weights_by_reward(meta, batch["reward"])
    print(
        f"meta weight vs reward: Pearson r {by_reward['pearson']:+.3f}, Spearman {by_reward['spearman']:+.3f}; "
        f"mean {by_reward['mean_rewarded']:.3f} where r > 0 ({by_reward['share_rewarded']:.1%} of steps), "
        f"{by_reward['mean_unrewarded']:.3f} where r <= 0"
    )
    rows["history"] = training_history(logdir)
    if rows["history"]:
        _print_history(rows["history"])
    if "task" in batch:  # a set of environments: the meta weights' mean and spread per task
        task = batch["task"].long()
        rows["per_task"] = {}
        from recipes.envs.multitask import split_names

        for i, name in enumerate(split_names(cfg.env)):
            w = meta[task == i]
            if w.numel():
                rows["per_task"][name] = {"mean": float(w.mean()), "std": float(w.std()), "steps": int(w.numel())}
                print(f"task {name}: meta weight {w.mean():.3f} ± {w.std():.3f} over {w.numel()} steps")
    return rows
