"""The fast backend of the Dreamer recipes: compiled graphs, chunked filtering, forward-mode tangents.

``DreamerAgent`` (dreamerv2.py) and ``TempoAgent`` (tempo.py) hold the reference step, eager and readable top to
bottom.  Their ``backend`` — ``Eager`` for ``compile=false``, else ``DreamerCompiled`` or ``TempoCompiled`` — sees
only the reference's ``forward(fn) -> LevelOutputs`` closure (the one ``bilevel.BilevelUpdate`` takes) and
replaces the pass at the real θ by compiled graphs; virtual passes (Lookahead's θ', finite differences) run the
reference unchanged.  For TEMPO it also supplies SameState's mixed product (1/N) J a as a forward-mode pass of the
filtering alone (``bilevel.FactoredJvp``) instead of a double backward.  tests/test_fast.py holds each backend
equal to the reference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from bilevel import FactoredJvp, LevelOutputs, SameState, Strategy
from recipes.agents.compile import MaybeCompiled, retained_backward
from recipes.run.precision import autocast_fn
from worldmodels import ConvEncoder, ModelLoss
from worldmodels.rssm import ObserveChunk

if TYPE_CHECKING:
    from recipes.agents.dreamer_ac import ActorCritic
    from recipes.dreamer.dreamerv2 import DreamerAgent
    from recipes.dreamer.tempo import TempoAgent

Forward = Callable[[Any], LevelOutputs]
States = dict[str, Tensor]

#: ``compile_jvp=None`` compiles the weighter update's JVP graphs when ``meta_every`` is at most this: the compiled
#: JVP's cold compile pays back within a 100k-step ``cpu`` run only where weighter updates are that frequent
#: (measured in docs/results.md).
COMPILE_JVP_MAX_EVERY = 32


def observe_in_chunks(
    chunk_fn: ObserveChunk,
    state: States,
    embed: Tensor,
    action: Tensor,
    is_first: Tensor,
    noise: tuple[Tensor, Tensor] | None,
    chunk: int,
) -> tuple[States, States]:
    """``worldmodels.RSSM.observe`` as consecutive chunks of ``chunk`` steps, each by ``chunk_fn`` (a compiled
    ``RSSM.observe_chunk``: one graph of ``chunk`` steps reused along the sequence compiles ~T/chunk times faster
    than the unrolled sequence), the state carried across.  Shapes as ``observe``'s; the same results.

    Raises:
        ValueError: ``chunk`` < 1.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if chunk >= embed.shape[1]:
        return chunk_fn(state, embed, action, is_first, noise)[1:]
    posts, priors = [], []
    for i in range(0, embed.shape[1], chunk):
        part = slice(i, i + chunk)
        step_noise = None if noise is None else (noise[0][:, part], noise[1][:, part])
        state, post, prior = chunk_fn(state, embed[:, part], action[:, part], is_first[:, part], step_noise)
        posts.append(post)
        priors.append(prior)
    cat = lambda xs: {k: torch.cat([x[k] for x in xs], 1) for k in xs[0]}  # noqa: E731
    return cat(posts), cat(priors)


class CompiledObserveChunk:
    """``worldmodels.RSSM.observe_chunk`` compiled (``recipes.agents.compile.MaybeCompiled``), for
    ``observe_in_chunks``.

    A carried-in state that needs no gradient (the zero initial state of the first chunk) is passed as a leaf that
    requires one, and a carried state is made contiguous (its statistics are views of wider tensors), so that every
    chunk hits the same graph: dynamo specialises on ``requires_grad`` and on strides, and the first chunk would
    otherwise compile a second graph of its own.  The zero state's gradient is computed and dropped (nothing reads
    it).  ``retain_graph``: as ``MaybeCompiled``'s, for callers whose backward runs through the chunks more than
    once (TEMPO's a = ∇θ L_up, then θ's gradient)."""

    def __init__(self, rssm: Any, *, retain_graph: bool = False) -> None:
        self.compiled = MaybeCompiled(rssm.observe_chunk, "the RSSM's filtering chunk", retain_graph=retain_graph)

    def __call__(
        self,
        state: States,
        embed: Tensor,
        action: Tensor,
        is_first: Tensor,
        noise: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[States, States, States]:
        if torch.is_grad_enabled() and not any(v.requires_grad for v in state.values()):
            state = {k: v.detach().requires_grad_() for k, v in state.items()}
        else:  # a carried state's statistics are views of wider tensors: one layout for every chunk
            state = {k: v.clone(memory_format=torch.contiguous_format) for k, v in state.items()}
        return self.compiled(state, embed, action, is_first, noise)


class CompiledImagination:
    """``compile=true`` for the actor-critic: ``ActorCritic.losses`` (the imagined rollout and DreamerV2's actor
    and critic losses) by compiled graphs, installed as the actor-critic's ``loss_fn``.

    With 0 < ``imag_chunk`` < horizon the rollout is one graph of ``imag_chunk`` imagination steps run
    ⌈horizon/imag_chunk⌉ times (the state carried across) and the losses another: the graphs to compile are
    ~horizon/imag_chunk times smaller, which shortens the cold compile.  Otherwise the rollout and the losses are
    one graph unrolled over the horizon.  The same update either way (the same random draws, rounding aside).

    Raises:
        ValueError: ``imag_chunk`` < 0.
    """

    def __init__(self, ac: ActorCritic, imag_chunk: int) -> None:
        if imag_chunk < 0:
            raise ValueError(f"imag_chunk must be >= 0, got {imag_chunk}")
        self.ac, self.chunk = ac, imag_chunk
        self.chunked = 0 < imag_chunk < ac.horizon
        if self.chunked:
            self.rollout_chunk = MaybeCompiled(self._rollout_chunk, "the actor-critic's imagination chunk")
            self.losses = MaybeCompiled(ac.rollout_losses, "the actor-critic losses")
        else:
            self.losses = MaybeCompiled(ac.losses, "the actor-critic losses")

    def _rollout_chunk(self, state: States, steps: int) -> tuple[States, Tensor, Tensor, Tensor, Tensor | None]:
        """``worldmodels.RSSM.imagine`` for ``steps`` steps from ``state`` ([N, ·]): the state reached, and the
        features [K, N, F] of the K states the actor read, its log-probabilities, entropies [K, N] and mean
        penalties [K, N] (None without a mean bound)."""
        logps: list[Tensor] = []
        ents: list[Tensor] = []
        penalties: list[Tensor] = []
        rssm = self.ac.rssm
        states, _ = rssm.imagine(self.ac.imagination_policy(logps, ents, penalties), state, steps)  # [K+1, N, ·]
        penalty = torch.stack(penalties, 0) if penalties else None
        last = {k: v[-1] for k, v in states.items()}
        return last, rssm.features(states)[:-1], torch.stack(logps, 0), torch.stack(ents, 0), penalty

    def __call__(self, start: States, is_terminal: Tensor | None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``ActorCritic.losses(start, is_terminal)`` by the compiled graphs."""
        if not self.chunked:
            return self.losses(start, is_terminal)
        if self.ac.actor_grad == "dynamics":
            # the chunks after the first get states that require grad (dynamics backprop through the actions);
            # the (detached) start states do too, so that every chunk runs the same compiled graph, not two
            start = {k: v.detach().requires_grad_() for k, v in start.items()}
        state, feats, logps, ents, penalties = start, [], [], [], []
        horizon = self.ac.horizon
        for i in range(0, horizon, self.chunk):
            state, feat, logp, ent, penalty = self.rollout_chunk(state, min(self.chunk, horizon - i))
            feats.append(feat)
            logps.append(logp)
            ents.append(ent)
            if penalty is not None:
                penalties.append(penalty)
        feats.append(self.ac.rssm.features(state)[None])
        penalty = torch.cat(penalties, 0) if penalties else None
        return self.losses(torch.cat(feats, 0), torch.cat(logps, 0), torch.cat(ents, 0), penalty, is_terminal)


class Eager:
    """The reference itself (``compile=false``): every pass eager, SameState's mixed product by double backward."""

    def __init__(self, agent: DreamerAgent) -> None:
        self.agent = agent

    def forward(self, reference: Forward, batch: States, noise: Any = None, meta: bool = True) -> Forward:
        """The ``forward`` closure the bi-level update runs: here ``reference`` itself."""
        return reference

    def jvp(self, batch: States, noise: Any, levels: LevelOutputs, meta: bool) -> FactoredJvp | None:
        """The mixed product's forward-mode pass for ``bilevel.BilevelUpdate.step`` (``jvp=``); None: none."""
        return None

    def backward(self, meta: bool) -> contextlib.AbstractContextManager[Any]:
        """The context of the update's backward passes."""
        return contextlib.nullcontext()

    def act(
        self, obs: Tensor, prev_action: Tensor, is_first: Tensor, state: States, explore: bool
    ) -> tuple[Tensor, States]:
        """One acting step (``DreamerAgent.act_tensors``)."""
        return self.agent.act_tensors(obs, prev_action, is_first, state, explore)


class DreamerCompiled(Eager):
    """``compile=true`` for ``dreamerv2``: the ELBO at θ by compiled graphs and acting by one.

    With ``compile_chunk`` > 0 the encoder is one graph, the filtering loop one graph of ``compile_chunk`` steps
    reused along the sequence and the likelihood terms another; with 0 the whole loss is one graph.  Acting: one
    environment step's filtering and action as one graph (at batch 1 the eager step is ~40 dispatched ops, each
    paying the dispatcher's overhead; docs/results.md).  The actor-critic's imagination and losses by
    ``CompiledImagination``."""

    #: the forward's graphs may be backpropagated more than once (``MaybeCompiled(retain_graph=True)``): set by
    #: backends whose update does so (TEMPO's)
    retain_graph: ClassVar[bool] = False

    def __init__(self, agent: DreamerAgent) -> None:
        super().__init__(agent)
        cfg, self.wm, twice = agent.cfg, agent.wm, self.retain_graph
        self.chunk: int = cfg.compile_chunk
        # every graph compiles on its first call: those the chunking does not use (the whole loss with
        # compile_chunk > 0, the chunk graphs with 0) cost nothing
        self.observe_chunk = CompiledObserveChunk(self.wm.rssm, retain_graph=twice)
        self.encode = MaybeCompiled(self._encode, "the world model's encoder", retain_graph=twice)
        self.likelihood = MaybeCompiled(
            self.wm.loss_from_states, "the world model's likelihood terms", retain_graph=twice
        )
        self.whole_loss = MaybeCompiled(self.wm.loss, "the world-model loss")
        self.act_step = MaybeCompiled(agent.act_tensors, "the acting step")
        agent.ac.loss_fn = CompiledImagination(agent.ac, cfg.imag_chunk)

    def _encode(self, obs: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The encoder's embedding [B, T, E] of ``obs`` and, for a conv encoder, its ELU outputs
        (``worldmodels.ConvEncoder.forward_with_activations``; [] otherwise)."""
        x = self.wm.preprocess(obs)
        if isinstance(self.wm.encoder, ConvEncoder):
            return self.wm.encoder.forward_with_activations(x)
        return self.wm.encoder(x), []

    def observe(self, batch: States, noise: tuple[Tensor, Tensor] | None = None) -> tuple[States, States, list[Tensor]]:
        """``worldmodels.RSSMWorldModel.observe_states`` by compiled parts (``compile_chunk`` > 0): the encoder,
        then the filtering loop in chunks.  Returns (post, prior, the conv encoder's ELU outputs or [])."""
        embed, acts = self.encode(batch["obs"])
        action, is_first = batch["action"].to(embed.dtype), batch["is_first"].bool()
        state = self.wm.rssm.initial(embed.shape[0], embed.device, embed.dtype)
        post, prior = observe_in_chunks(self.observe_chunk, state, embed, action, is_first, noise, self.chunk)
        return post, prior, acts

    def loss(self, batch: States, noise: tuple[Tensor, Tensor] | None = None) -> ModelLoss:
        """``worldmodels.RSSMWorldModel.loss`` at θ by compiled graphs."""
        if self.chunk == 0:
            return self.whole_loss(batch, noise)
        post, prior, _ = self.observe(batch, noise)
        return self.likelihood(batch, post, prior)

    def forward(self, reference: Forward, batch: States, noise: Any = None, meta: bool = True) -> Forward:
        def forward(fn: Any) -> LevelOutputs:
            return self.agent.level_outputs(self.loss(batch, noise)) if fn is self.wm else reference(fn)

        return forward

    def act(
        self, obs: Tensor, prev_action: Tensor, is_first: Tensor, state: States, explore: bool
    ) -> tuple[Tensor, States]:
        # standard strides: the posterior's statistics are views of one output (their strides differ from the zero
        # state's even at batch 1, where .contiguous() is a no-op); the compiled step would recompile
        state = {k: v.clone(memory_format=torch.contiguous_format) for k, v in state.items()}
        return self.act_step(obs, prev_action, is_first, state, explore)


class _Call(nn.Module):
    """``fn(inner, *args)`` as a module's forward, so that ``torch.func.functional_call`` (which calls ``forward``)
    runs any part of ``inner`` at given parameters (named ``inner.<name>``)."""

    def __init__(self, inner: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.inner, self.fn = inner, fn

    def forward(self, *args: Any) -> Any:
        return self.fn(self.inner, *args)


def flat_states(post: States, prior: States) -> States:
    """Posterior and prior states as one dict, ``post/<key>`` and ``prior/<key>``."""
    return {**{f"post/{k}": v for k, v in post.items()}, **{f"prior/{k}": v for k, v in prior.items()}}


def first_order(strategy: Strategy) -> bool:
    """Whether ``strategy``'s hypergradient needs no second derivative through the forward at θ (so that it may be
    a compiled graph): no weighter, or ``SameState`` by forward mode or finite differences."""
    return not strategy.trains_weighter or (
        isinstance(strategy, SameState) and strategy.method in ("auto", "jvp", "finite_difference")
    )


class TempoCompiled(DreamerCompiled):
    """``compile=true`` for ``tempo``: the forward at θ as two compiled graphs wherever the step needs only first-order
    derivatives through it (``first_order``), and SameState's (1/N) J a by forward mode (``jvp``).

    The two graphs are filtering + upper level (encoder, RSSM, slow-critic values, task loss, weighter features;
    with ``compile_chunk`` > 0 the filtering loop in chunks and the upper level as its own graph) and the likelihood
    (heads, KL): the upper loss's gradient runs the first's backward alone.  The JVP graphs are compiled per
    ``compile_jvp`` (None: where ``meta_every`` ≤ ``COMPILE_JVP_MAX_EVERY``).

    a = ∇θ L_up backpropagates with retain_graph=True through the encoder's and the filtering chunks' graphs and θ's
    gradient again (and, where some w_i is 0, Σ ℓ_i's through the likelihood's first: ``bilevel.FactoredJvpAt``),
    so they are compiled without donated buffers.  AOT autograd drops a graph's donated buffers only when its lazily
    compiled backward first runs under retain_graph=True: a run resumed on a step without a weighter update kept
    them and refused a's backward (and with the refusal silenced, θ's gradient came out wrong).
    """

    retain_graph: ClassVar[bool] = True

    def __init__(self, agent: TempoAgent, strategy: Strategy) -> None:
        super().__init__(agent)
        self.tempo = agent
        self.first_order_meta = first_order(strategy)
        if self.chunk > 0:
            self.upper = MaybeCompiled(
                agent.upper_parts, "TEMPO's upper level (values, task loss, features)", retain_graph=True
            )
            self.filter_and_upper: Callable[..., Any] = self._chunked_filter_and_upper
        else:
            self.filter_and_upper = MaybeCompiled(
                self._filter_and_upper, "the world model's filtering pass and the upper loss", retain_graph=True
            )
        # parts of the world model at given parameters (a plain dict: no second registration of its parameters)
        self.calls = {
            "states": _Call(self.wm, lambda wm, batch, noise: flat_states(*wm.observe_states(batch, noise))),
            "embed": _Call(self.wm, lambda wm, obs: wm.encoder(wm.preprocess(obs))),
            "chunk": _Call(self.wm, lambda wm, *args: wm.rssm.observe_chunk(*args)),
        }
        self.states_jvp: MaybeCompiled[Any] | None = None
        self.chunk_jvp: MaybeCompiled[Any] | None = None
        self.encoder_tangent: MaybeCompiled[Tensor] | None = None
        if isinstance(strategy, SameState) and strategy.method in ("auto", "jvp"):
            self._jvp_graphs(agent)
        # the conv encoder's activations of the last forward at θ (obs, ELU outputs), for its tangent
        self.encoder_acts: tuple[Tensor, list[Tensor]] | None = None

    def _jvp_graphs(self, agent: TempoAgent) -> None:
        """The filtering's JVP graphs: with ``compile_chunk``, the encoder's JVP over the sequence, then one K-step
        filtering JVP graph reused along it, the state's tangent carried across (as the forward's chunks), and a conv
        encoder's tangent from the forward's activations (no primal recompute); else the filtering whole."""
        cfg = agent.cfg
        enabled = cfg.compile_jvp if cfg.compile_jvp is not None else cfg.meta_every <= COMPILE_JVP_MAX_EVERY
        whole = self._embed_jvp if self.chunk > 0 else self._whole_states_jvp
        self.states_jvp = MaybeCompiled(autocast_fn(whole, *agent.autocast), "TEMPO's filtering JVP", enabled=enabled)
        if self.chunk > 0:
            self.chunk_jvp = MaybeCompiled(
                autocast_fn(self._chunk_jvp, *agent.autocast), "TEMPO's filtering-chunk JVP", enabled=enabled
            )
        if self.chunk > 0 and isinstance(self.wm.encoder, ConvEncoder):
            self.encoder_tangent = MaybeCompiled(
                autocast_fn(self._encoder_tangent, *agent.autocast), "TEMPO's encoder tangent", enabled=enabled
            )

    # -- the forward at θ ------------------------------------------------------------------------------------
    def _filter_and_upper(
        self, batch: States, noise: tuple[Tensor, Tensor], task: Tensor | None
    ) -> tuple[States, States, tuple[Tensor, Tensor, States]]:
        """The first graph of the forward at θ: filtering (encoder, RSSM) and ``TempoAgent.upper_parts``, so the
        upper loss's gradient runs one compiled backward that never reaches the likelihood heads."""
        post, prior = self.wm.observe_states(batch, noise)
        return post, prior, self.tempo.upper_parts(post, prior, task)

    def _chunked_filter_and_upper(
        self, batch: States, noise: tuple[Tensor, Tensor], task: Tensor | None
    ) -> tuple[States, States, tuple[Tensor, Tensor, States]]:
        """``_filter_and_upper`` by compiled parts: the filtering loop in chunks, then the upper level's graph."""
        post, prior, acts = self.observe(batch, noise)
        if acts and self.encoder_tangent is not None:
            self.encoder_acts = (batch["obs"], [a.detach() for a in acts])
        return post, prior, self.upper(post, prior, task)

    def forward(self, reference: Forward, batch: States, noise: Any = None, meta: bool = True) -> Forward:
        if meta and not self.first_order_meta:
            return reference  # the hypergradient differentiates the forward at θ twice: eager
        task = batch.get("task")

        def forward(fn: Any) -> LevelOutputs:
            if fn is not self.wm:
                return reference(fn)
            post, prior, (upper, features, values) = self.filter_and_upper(batch, noise, task)
            heads = self.likelihood(batch, post, prior)
            states = {"post": post, "prior": prior, "feat": self.wm.rssm.features(post)}
            out = ModelLoss(loss=heads.loss, terms=heads.terms, states=states)
            return LevelOutputs(loss=out.loss, features=features, upper=upper, aux=(out, values))

        return forward

    @contextlib.contextmanager
    def backward(self, meta: bool) -> Iterator[None]:  # type: ignore[override]
        try:  # a weighter update backpropagates through the forward's compiled graphs twice (a, then θ's gradient)
            with retained_backward() if meta else contextlib.nullcontext():
                yield
        finally:
            self.encoder_acts = None  # not held past the step

    # -- the mixed product by forward mode -------------------------------------------------------------------
    def jvp(self, batch: States, noise: Any, levels: LevelOutputs, meta: bool) -> FactoredJvp | None:
        """(1/N) J a as a ``bilevel.FactoredJvp`` through the posterior and prior states of ``levels`` (the forward
        at θ): the upper loss depends on the filtering (encoder, RSSM) alone, and ℓ_{b,t} reads the states only at
        (b, t) (the decoder, heads and KL act per step), so only the filtering runs in forward mode."""
        if not meta or self.states_jvp is None:
            return None
        states = levels.aux[0].states
        fn = self._chunked_states_jvp if self.chunk_jvp is not None else self.states_jvp

        def tangents(params: States, tangents: States) -> States:
            heads = [n for n in tangents if not n.startswith(("encoder.", "rssm."))]
            if heads:  # the upper loss reads the states alone (upper_parts), so this cannot happen; if it did, ℓ's
                # direct dependence on these would be missing from J a
                raise RuntimeError(f"the upper loss depends on the world model's {heads}: J a needs the full JVP")
            return fn(params, tangents, batch, noise)

        return FactoredJvp(flat_states(states["post"], states["prior"]), tangents)

    def _call(self, part: str, params: States, *args: Any) -> Any:
        """Part ``part`` of ``calls`` at ``params`` (the world model's parameters by name)."""
        return torch.func.functional_call(self.calls[part], {f"inner.{n}": t for n, t in params.items()}, args)

    def _whole_states_jvp(
        self, params: States, tangents: States, batch: States, noise: tuple[Tensor, Tensor]
    ) -> States:
        """∂s/∂θ · v of the filtering pass (posterior and prior states [B, T, ...] as ``post/<key>``,
        ``prior/<key>``) at ``params`` along ``tangents`` (a subset of the names, the rest held constant), by
        ``torch.func.jvp``, with the forward's latent ``noise``."""

        def states(p: States) -> States:
            return self._call("states", {**params, **p}, batch, noise)

        return torch.func.jvp(states, ({n: params[n] for n in tangents},), (tangents,))[1]

    def _embed_jvp(self, params: States, tangents: States, obs: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's embedding [B, T, E] of ``obs`` and its tangent along ``tangents``."""

        def embed(p: States) -> Tensor:
            return self._call("embed", {**params, **p}, obs)

        return torch.func.jvp(embed, ({n: params[n] for n in tangents},), (tangents,))

    def _encoder_tangent(self, params: States, tangents: States, obs: Tensor, acts: list[Tensor]) -> Tensor:
        """The conv encoder's embedding tangent [B, T, E] along ``tangents`` from the forward's ELU outputs
        ``acts`` (``worldmodels.ConvEncoder.tangent``)."""
        encoder = self.wm.encoder
        assert isinstance(encoder, ConvEncoder)
        strip = lambda d: {n[len("encoder.") :]: v for n, v in d.items() if n.startswith("encoder.")}  # noqa: E731
        return encoder.tangent(self.wm.preprocess(obs), acts, strip(params), strip(tangents))

    def _chunk_jvp(
        self,
        params: States,
        tangents: States,
        state: States,
        state_tangent: States,
        embed: Tensor,
        embed_tangent: Tensor,
        action: Tensor,
        is_first: Tensor,
        noise: tuple[Tensor, Tensor],
    ) -> tuple[States, States, States]:
        """One K-step chunk of the filtering loop (``worldmodels.RSSM.observe_chunk``) by forward mode from
        ``state`` and its tangent: the last state, its tangent, and the chunk's state tangents (``post/<key>``,
        ``prior/<key>``, [B, K, ...])."""

        def chunk(p: States, s: States, e: Tensor) -> Any:
            return self._call("chunk", {**params, **p}, s, e, action, is_first, noise)

        primals = ({n: params[n] for n in tangents}, state, embed)
        (last, _, _), (last_t, post_t, prior_t) = torch.func.jvp(
            chunk, primals, (tangents, state_tangent, embed_tangent)
        )
        return last, last_t, flat_states(post_t, prior_t)

    def _chunked_states_jvp(
        self, params: States, tangents: States, batch: States, noise: tuple[Tensor, Tensor]
    ) -> States:
        """``_whole_states_jvp`` by compiled parts: the encoder's tangent (a conv encoder's from the forward's
        activations; otherwise its JVP), then the filtering loop's JVP in chunks of ``compile_chunk`` steps, the
        state and its tangent carried across (contiguous: one graph for every chunk)."""
        assert self.states_jvp is not None and self.chunk_jvp is not None
        saved, self.encoder_acts = self.encoder_acts, None
        if saved is not None and saved[0] is batch["obs"] and self.encoder_tangent is not None:
            acts = saved[1]  # the forward's: the embedding is the last, its tangent needs no primal pass
            embed = acts[-1].reshape(*batch["obs"].shape[:2], -1)
            embed_t = self.encoder_tangent(params, tangents, batch["obs"], acts)
        else:
            embed, embed_t = self.states_jvp(params, tangents, batch["obs"])
        action, is_first = batch["action"].to(embed.dtype), batch["is_first"].bool()
        state = self.wm.rssm.initial(embed.shape[0], embed.device, embed.dtype)
        state_t = {k: torch.zeros_like(v) for k, v in state.items()}
        parts = []
        for i in range(0, embed.shape[1], self.chunk):
            part = slice(i, i + self.chunk)
            state, state_t, tangent = self.chunk_jvp(
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
