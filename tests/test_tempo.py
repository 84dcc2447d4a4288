"""Recipe ``tempo``: the meta-weighted RSSM step, its options, and ``reweigh run tempo``."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from rundirs import TINY_AGENT

import bilevel as B
from recipes.cli import main
from recipes.dreamer.analysis import inspect_weights, training_history, weights_by_reward
from recipes.dreamer.fast import DreamerCompiled, Eager, TempoCompiled
from recipes.dreamer.tempo import TempoAgent
from recipes.registry import resolve
from recipes.run.strategy import strategy_from_config

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "deter": 12,
    "stoch": 3,
    "hidden": 12,
    "mlp_layers": 1,
    "mlp_units": 12,
    "ac_layers": 1,
    "ac_units": 12,
    "batch_size": 3,
    "seq_len": 5,
    "horizon": 3,
    "weighter_layers": 2,
    "weighter_units": 8,
    "imag_starts": None,
}


def _agent(seed: int = 0, dtype: torch.dtype = torch.float32, **over):
    """A tiny TempoAgent and a batch of 3 × 5 steps; ``pixels=True`` (with ``image_size``/``depth``): uint8 images."""
    torch.manual_seed(seed)
    cfg = resolve("dmc:cartpole_swingup", "cpu", {**TINY, **over}, recipe="tempo")
    obs_shape = (3, cfg.image_size, cfg.image_size) if cfg.pixels else (5,)
    agent = TempoAgent(cfg, obs_shape, 1, False).to(dtype)
    b, t = cfg.batch_size, cfg.seq_len
    gen = torch.Generator().manual_seed(seed + 1)
    batch = {
        "obs": (
            torch.randint(0, 256, (b, t, *obs_shape), generator=gen, dtype=torch.uint8)
            if cfg.pixels
            else torch.randn(b, t, 5, generator=gen, dtype=dtype)
        ),
        "action": torch.rand(b, t, 1, generator=gen, dtype=dtype) * 2 - 1,
        "reward": torch.rand(b, t, generator=gen, dtype=dtype),
        "is_first": torch.zeros(b, t, dtype=torch.bool),
    }
    batch["is_first"][:, 0] = True
    return agent, batch


def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


@pytest.mark.parametrize(
    ("strategy", "v3"),
    [("same_state", False), ("lookahead", False), ("same_state", True), ("lookahead", True), ("same_state", "avg")],
)
def test_whole_tempo_step_hypergradient_matches_finite_differences(strategy, v3):
    """dL_up/dw of the real TEMPO step (RSSM ELBO per step, V-VAML through the slow critic, batch-normalised
    values) against central differences of the function the strategy differentiates, in float64.  ``v3``: with
    DreamerV3's two-hot reward head and critic (the reward term a per-step cross-entropy, V through the two-hot
    slow critic) and symlog observations; ``avg``: free nats on the batch mean (above them, some steps below)."""
    over = {"kl_free_avg": True, "kl_free": 1.5} if v3 == "avg" else {}
    v3 = v3 is True
    if v3:
        over = {"twohot_bins": 31, "symlog_obs": True}
    agent, batch = _agent(dtype=torch.float64, strategy=strategy, **over)
    if v3:  # two-hot heads start at zero (constant V, zero upper loss): give them weights
        with torch.no_grad():
            for head in (agent.wm.reward.net[-1], agent.ac.critic.net[-1], agent.ac.slow_critic.net[-1]):
                head.weight.normal_(0.0, 0.3)
        batch["obs"] = 30.0 * batch["obs"]  # magnitudes where symlog matters
    forward = agent.world_model_forward(batch)  # latent noise fixed inside
    upd = agent.update
    out = forward(agent.wm)
    weights = agent.weighter(out.features).detach()
    params = dict(agent.wm.named_parameters())
    rows = B.check_hypergradient(
        lambda p: forward(upd.view(p)).loss,
        lambda p: forward(upd.view(p)).upper.mean(),
        params,
        weights,
        [strategy_from_config(agent.cfg)],
        directions=6,
    )
    assert len(rows) == 1 and rows[0].fd_norm > 0
    assert rows[0].passed, B.format_report(rows)


@pytest.mark.parametrize("classes", [0, 4])
def test_jvp_mixed_term_equals_double_backward_on_the_tempo_step(classes):
    """SameState's two exact routes to (1/N)·J·∇θL_up agree on the real step (float64), balanced KL included;
    which is faster is measured in benchmarks/tempo_overhead.py (the double backward: the default)."""
    agent, batch = _agent(dtype=torch.float64, classes=classes)
    forward = agent.world_model_forward(batch)
    out = forward(agent.wm)
    w = agent.weighter(out.features).detach()
    params = dict(agent.wm.named_parameters())
    grads = [
        B.hypergradient(
            B.SameState(1e-3, method=m),
            lambda p: forward(agent.update.view(p)).loss,
            lambda p: forward(agent.update.view(p)).upper.mean(),
            params,
            w,
        )
        for m in ("double_backward", "jvp")
    ]
    assert grads[0].norm() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)


def _record_updates(agent: TempoAgent) -> dict[str, list]:
    """Record each weighter update's hypergradient (``g``) and each step's world-model gradient (``model``, a list
    of the parameters' gradients) instead of stepping the world model's optimiser: every step at the same θ."""
    rec: dict[str, list] = {"g": [], "model": []}
    compute = agent.update.strategy.compute

    def record(problem, weights):
        result = compute(problem, weights)
        rec["g"].append(result.hypergradient)
        return result

    agent.update.strategy.compute = record
    agent.model_opt.step = lambda: rec["model"].append([p.grad.clone() for p in agent.wm.parameters()])
    return rec


@pytest.mark.parametrize("pixels", [False, True, "free_avg", "categorical"])
def test_compiled_tempo_step_equals_the_eager_double_backward(pixels):
    """compile=true: the forward at θ is the compiled world-model loss and (1/N) J a a forward-mode pass of the
    filtering alone, dotted per step with the lower backward's state cotangents (``bilevel.FactoredJvp``; no double
    backward, no decoder JVP); hypergradient and model gradient equal the eager double backward's, over two steps
    (the second from the compiled cache), with no silent eager fallback.  With pixels the conv encoder's tangent
    comes from the forward's activations (``ConvEncoder.tangent``).  ``free_avg``: free nats on the batch mean, set
    where the mean is above them and some steps below (the switch is a tensor condition inside the graphs).
    ``categorical``: categorical latents (the weighter reads their logits)."""
    free_avg, categorical = pixels == "free_avg", pixels == "categorical"
    pixels = pixels is True
    image = {"pixels": True, "image_size": 32, "depth": 2} if pixels else {}
    if free_avg:
        image = {"kl_free_avg": True, "kl_free": 1.5}
    if categorical:
        image = {"classes": 4}
    got = {}
    # (compile, compile_jvp, compile_chunk): eager; compiled forward + compiled JVP with the filtering loop unrolled
    # (0) or in compiled chunks of 2 steps (5 = 2 + 2 + 1); compiled forward in chunks + eager JVP
    compiled_keys = (
        ((True, True, 2), (True, False, 2)) if pixels else ((True, True, 0), (True, True, 2), (True, False, 2))
    )
    if free_avg or categorical:
        compiled_keys = ((True, True, 2),)
    for key in ((False, None, 0), *compiled_keys):
        compile, compile_jvp, chunk = key
        agent, batch = _agent(
            compile=compile, compile_jvp=compile_jvp, compile_chunk=chunk, same_state_method="auto", **image
        )
        tangent_calls = []
        fast = agent.backend
        if compile and fast.encoder_tangent is not None:
            inner = fast.encoder_tangent
            fast.encoder_tangent = lambda *a, inner=inner, calls=tangent_calls: calls.append(1) or inner(*a)
        got[key] = _record_updates(agent)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="torch.compile of")  # a fallback would make this vacuous
            for _ in range(2):
                torch.manual_seed(1)
                agent.world_model_step(batch)
        assert isinstance(fast, TempoCompiled) == compile
        if compile:
            assert (fast.states_jvp.compiled is not None) == compile_jvp
            parts = (
                [fast.observe_chunk.compiled, fast.upper, fast.likelihood]
                if chunk
                else [fast.filter_and_upper, fast.likelihood]
            )
            assert all(part.compiled is not None for part in parts)
            # the filtering's JVP: whole (chunk 0) or the encoder's and one chunk graph (chunk > 0)
            assert (fast.chunk_jvp is not None) == bool(chunk)
            if chunk:
                assert (fast.chunk_jvp.compiled is not None) == compile_jvp
            # pixels: the conv encoder's tangent from the forward's activations, once per weighter update
            assert tangent_calls == ([1, 1] if pixels else [])
            assert fast.encoder_acts is None
    eager = got[False, None, 0]
    for key in compiled_keys:
        for step in range(2):
            assert eager["g"][step].norm() > 0
            torch.testing.assert_close(got[key]["g"][step], eager["g"][step], rtol=1e-4, atol=1e-9)
            for a, b in zip(got[key]["model"][step], eager["model"][step], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk", [0, 2])
def test_compiled_tempo_weighter_update_after_a_plain_step(chunk):
    """A compiled TEMPO whose first step is not a weighter update (a run resumed between two, at meta_every > 1):
    the first backward through the forward's graphs then runs once, without retain_graph; the weighter update's
    a = ∇θ L_up (retain_graph=True) must still go through, by the forward-mode J a (no fallback), and give the
    eager agent's hypergradient — no graph of the forward may have overwritten what a second backward reads.  Fresh
    graphs: dynamo reset, AOT autograd's and inductor's caches off (a cached graph compiled under retain_graph hid
    the refusal of a's backward before ``retained_backward``)."""
    got = {}
    for compile in (False, True):
        torch._dynamo.reset()
        with (
            torch._functorch.config.patch(enable_autograd_cache=False),
            torch._inductor.config.patch(fx_graph_cache=False),
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("error", message="torch.compile of")
            agent, batch = _agent(compile=compile, compile_chunk=chunk, meta_every=2, same_state_method="jvp")
            agent.ac.updates.fill_(1)
            rec = got[compile] = {**_record_updates(agent), "meta": []}
            for _ in range(2):
                rec["meta"].append(agent.meta_due())
                torch.manual_seed(1)
                agent.train_step(batch)
    torch._dynamo.reset()
    assert got[True]["meta"] == got[False]["meta"] == [False, True]
    assert len(got[True]["g"]) == len(got[False]["g"]) == 1 and got[False]["g"][0].norm() > 0
    torch.testing.assert_close(got[True]["g"][0], got[False]["g"][0], rtol=1e-4, atol=1e-9)
    for a, b in zip(got[True]["model"][-1], got[False]["model"][-1], strict=True):  # θ's backward after a's
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compiled_dreamerv2_world_model_step_in_chunks_equals_eager():
    """dreamerv2 with compile=true: the ELBO by the filtering loop in compiled chunks (5 steps = 2 + 2 + 1) and the
    compiled likelihood graph gives the eager loss and model gradient, the chunks' graphs actually compiled.
    Categorical latents (TEMPO's tests cover Gaussian ones through the same graphs)."""
    from recipes.dreamer.dreamerv2 import DreamerAgent

    dreamer_tiny = {k: v for k, v in TINY.items() if not k.startswith("weighter")}
    got = []
    for compile in (False, True):
        torch.manual_seed(0)
        over = {**dreamer_tiny, "compile": compile, "compile_chunk": 2, "classes": 4}
        agent = DreamerAgent(resolve("dmc:cartpole_swingup", "cpu", over, recipe="dreamerv2"), (5,), 1, False)
        _, batch = _agent()
        grads = []
        agent.model_opt.step = lambda agent=agent, grads=grads: grads.append(
            [p.grad.clone() for p in agent.wm.parameters()]
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="torch.compile of")
            torch.manual_seed(1)
            _, out = agent.world_model_step(batch)
        got.append((out.loss.detach(), grads[0]))
        assert isinstance(agent.backend, DreamerCompiled) == compile
        if compile:
            assert agent.backend.observe_chunk.compiled.compiled is not None
            assert agent.backend.likelihood.compiled is not None
    torch.testing.assert_close(got[1][0], got[0][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(got[1][1], got[0][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_tempo_with_uniform_weights_is_dreamerv2():
    """tempo+strategy=uniform, the control of every TEMPO comparison, is DreamerV2 step for step: given the same
    weights, latent noise and random stream, three train steps leave equal world models, actor-critics and losses
    (the upper loss and values it also computes change nothing)."""
    from recipes.dreamer.dreamerv2 import DreamerAgent

    dreamer_tiny = {k: v for k, v in TINY.items() if not k.startswith("weighter")}
    dreamer = DreamerAgent(resolve("dmc:cartpole_swingup", "cpu", dreamer_tiny, recipe="dreamerv2"), (5,), 1, False)
    tempo, batch = _agent(strategy="uniform", meta_every=1)
    tempo.wm.load_state_dict(dreamer.wm.state_dict())
    tempo.ac.load_state_dict(dreamer.ac.state_dict())
    torch.manual_seed(5)
    noise = tempo._noise(batch)  # DreamerV2 draws its latent noise inside the filtering loop: give both this one
    observe = dreamer.wm.forward
    dreamer.wm.forward = lambda b, n=None, s=None: observe(b, noise if n is None else n, s)
    tempo._noise = lambda b: noise
    before = _snapshot(dreamer.wm) + _snapshot(dreamer.ac)
    got = []
    for agent in (dreamer, tempo):
        torch.manual_seed(1)
        metrics = [agent.train_step(batch) for _ in range(3)]
        got.append((metrics, [p.detach().clone() for p in [*agent.wm.parameters(), *agent.ac.parameters()]]))
    (m_dreamer, p_dreamer), (m_tempo, p_tempo) = got
    for a, b in zip(p_dreamer, p_tempo, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(m_dreamer, m_tempo, strict=True):
        assert all(a[k] == b[k] for k in ("model/lower_loss", "model/kl", "agent/actor_loss", "agent/critic_loss"))
    assert any(not torch.equal(a, b) for a, b in zip(before, p_dreamer, strict=True))  # the steps did train


def test_compiled_acting_equals_eager():
    """dreamerv2 with compile=true acts through one compiled graph per ``explore`` value: the same actions (the
    explored ones drawn from the same random stream) and posterior states as the eager step, across an episode
    reset, the graph actually compiled."""
    import numpy as np

    from recipes.dreamer.dreamerv2 import DreamerAgent

    dreamer_tiny = {k: v for k, v in TINY.items() if not k.startswith("weighter")}
    rng = np.random.default_rng(0)
    steps = [
        {"obs": rng.normal(size=5).astype(np.float32), "action": rng.uniform(-1, 1, 1), "is_first": i in (0, 3)}
        for i in range(6)
    ]
    got = {}
    for compile in (False, True):
        torch.manual_seed(0)
        over = {**dreamer_tiny, "compile": compile, "expl_noise": 0.3}
        agent = DreamerAgent(resolve("dmc:cartpole_swingup", "cpu", over, recipe="dreamerv2"), (5,), 1, False)
        torch.manual_seed(1)
        out, state = [], None
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="torch.compile of")
            for i, step in enumerate(steps):
                action, state = agent.act(step, state, explore=i % 2 == 0)
                out.append((torch.as_tensor(action), state))
        assert isinstance(agent.backend, DreamerCompiled) == compile
        if compile:
            assert agent.backend.act_step.compiled is not None
        got[compile] = out
    for (a_c, s_c), (a_e, s_e) in zip(got[True], got[False], strict=True):
        torch.testing.assert_close(a_c, a_e, rtol=1e-5, atol=1e-6)
        for key in s_e:
            torch.testing.assert_close(s_c[key], s_e[key], rtol=1e-5, atol=1e-6)
    assert not torch.equal(got[False][0][0], got[False][1][0])


@pytest.mark.parametrize(
    ("meta_every", "compile_jvp", "compiled"),
    [(1, None, True), (16, None, True), (32, None, True), (33, None, False), (33, True, True), (1, False, False)],
)
def test_compile_jvp_compiles_the_jvp_graph_only_where_weighter_updates_amortise_it(meta_every, compile_jvp, compiled):
    agent, _ = _agent(compile=True, meta_every=meta_every, compile_jvp=compile_jvp)
    assert agent.backend.states_jvp is not None  # the forward-mode route either way, never a double backward
    assert (agent.backend.states_jvp.compiled is not None) == compiled
    agent, _ = _agent(compile=False, meta_every=meta_every, compile_jvp=compile_jvp)
    assert type(agent.backend) is Eager  # eager: SameState's double backward through the eager forward


@pytest.mark.parametrize("strategy", ["same_state", "lookahead", "implicit"])
def test_weighter_strategies_train_the_weighter_and_weight_the_model(strategy):
    agent, batch = _agent(strategy=strategy)
    w_before, m_before = _snapshot(agent.weighter), _snapshot(agent.wm)
    metrics = agent.train_step(batch)
    assert _changed(w_before, agent.weighter) and _changed(m_before, agent.wm)
    for key in (
        "model/lower_loss",
        "model/lower_loss_unweighted",
        "model/upper_loss",
        "model/weight_mean",
        "model/weight_std",
        "model/weight_min",
        "model/weight_max",
        "model/hypergrad_norm",
        "tempo/value_post",
        "tempo/value_prior",
    ):
        assert key in metrics and metrics[key] == metrics[key], key
    assert 0.75 <= metrics["model/weight_min"] < metrics["model/weight_max"] <= 1.25


def test_naive_and_uniform_leave_the_weighter_untouched():
    agent, batch = _agent(strategy="naive")
    before = _snapshot(agent.weighter)
    metrics = agent.train_step(batch)
    assert not _changed(before, agent.weighter)
    assert metrics["model/weight_std"] > 0  # 1 + normalised per-step V-VAML
    agent, batch = _agent(strategy="uniform")
    metrics = agent.train_step(batch)
    assert metrics["model/weight_std"] == 0 and metrics["model/weight_mean"] == 1


def test_official_convention_flips_the_hypergradient():
    grads = {}
    for convention in ("correct", "official"):
        agent, batch = _agent(dtype=torch.float64, convention=convention)
        torch.manual_seed(5)  # the same latent noise for both agents
        forward = agent.world_model_forward(batch)
        out = forward(agent.wm)
        w = agent.weighter(out.features).detach()
        params = dict(agent.wm.named_parameters())
        grads[convention] = B.hypergradient(
            agent.update.strategy,
            lambda p, f=forward, a=agent: f(a.update.view(p)).loss,
            lambda p, f=forward, a=agent: f(a.update.view(p)).upper.mean(),
            params,
            w,
        )
    eta = _agent()[0].cfg.model_lr
    torch.testing.assert_close(grads["official"], -grads["correct"] / eta)


def test_meta_every_updates_the_weighter_only_every_kth_step():
    agent, batch = _agent(meta_every=3)
    changes = []
    for _ in range(6):
        before = _snapshot(agent.weighter)
        metrics = agent.train_step(batch)
        changes.append(_changed(before, agent.weighter))
        assert metrics["model/weight_std"] > 0  # the weights are applied at every step
    assert changes == [True, False, False, True, False, False]


@pytest.mark.parametrize(("inputs", "size"), [("DSV", 12 + 6 + 2), ("D", 12), ("S", 6), ("V", 2), ("SV", 8)])
def test_weighter_inputs_select_the_features(inputs, size):
    agent, batch = _agent(weighter_inputs=inputs)
    forward = agent.world_model_forward(batch)
    out = forward(agent.wm)
    assert out.features.shape == (3, 5, size) and not out.features.requires_grad
    assert out.loss.shape == out.upper.shape == (3, 5)
    agent.train_step(batch)


def test_categorical_latents_feed_logits_and_step():
    agent, batch = _agent(classes=4, weighter_inputs="S")
    forward = agent.world_model_forward(batch)
    assert forward(agent.wm).features.shape == (3, 5, 2 * 3 * 4)
    agent.train_step(batch)


@pytest.mark.parametrize("name", ["vaml", "vagram"])
def test_task_loss_by_registry_name(name):
    agent, batch = _agent(task_loss=name)
    assert type(agent.task_loss).__name__.lower() == name
    metrics = agent.train_step(batch)
    assert metrics["model/upper_loss"] >= 0


def test_moving_normalizer_is_checkpointed():
    agent, batch = _agent(normalizer="moving")
    agent.train_step(batch)
    state = agent.state_dict()
    assert any(k.startswith("task_loss.") and k.endswith("var") for k in state)
    assert "weighter_opt" in agent.optimizers()


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"weighter_inputs": "DX"}, "weighter_inputs"),
        ({"weighter_inputs": "DD"}, "weighter_inputs"),
        ({"task_loss": "nope"}, "task_loss"),
        ({"strategy": "magic"}, "strategy"),
        ({"meta_every": 0}, "meta_every"),
    ],
)
def test_bad_tempo_config_names_the_field(over, field):
    with pytest.raises(ValueError, match=field):
        resolve("dmc:cartpole_swingup", "cpu", over, recipe="tempo")


def test_finite_difference_mixed_term_is_refused_because_kl_balancing_is_a_surrogate_gradient():
    """FD of ℓ's values along ∇θL_up is not autograd's (KL-balanced) J·a: the recipe must not offer it."""
    with pytest.raises(ValueError, match="same_state_method"):
        resolve("dmc:cartpole_swingup", "cpu", {"same_state_method": "finite_difference"}, recipe="tempo")
    agent, batch = _agent(dtype=torch.float64)
    forward = agent.world_model_forward(batch)
    out = forward(agent.wm)
    w = agent.weighter(out.features).detach()
    params = dict(agent.wm.named_parameters())

    def psl(p):
        return forward(agent.update.view(p)).loss

    def up(p):
        return forward(agent.update.view(p)).upper.mean()

    exact = B.hypergradient(B.SameState(1e-3, method="double_backward"), psl, up, params, w)
    fd = B.hypergradient(B.SameState(1e-3, method="finite_difference", fd_eps=1e-4), psl, up, params, w)
    assert float((fd - exact).norm() / exact.norm()) > 0.1
    agent.wm.kl_scale = 0.0  # positive control: without the balanced KL term the two agree
    exact = B.hypergradient(B.SameState(1e-3, method="double_backward"), psl, up, params, w)
    fd = B.hypergradient(B.SameState(1e-3, method="finite_difference", fd_eps=1e-4), psl, up, params, w)
    assert float((fd - exact).norm() / exact.norm()) < 1e-5


def test_dreamerv2_refuses_tempo_keys():
    with pytest.raises(ValueError, match="meta_every"):
        resolve("dmc:cartpole_swingup", "cpu", {"meta_every": 2})


def test_paper_preset_is_tempo_table_1():
    cfg = resolve("dmc:cartpole_swingup", "paper", recipe="tempo")
    # "a 5-layer dense network": 4 hidden layers and the output layer, as the official MLP_meta
    assert (cfg.weighter_layers, cfg.weighter_units, cfg.weighter_activation, cfg.weighter_norm) == (
        4,
        400,
        "elu",
        "batch",
    )
    assert cfg.weighter_output_norm and cfg.hypergradient_scale == "unit_norm"
    assert (cfg.weighter_lr, cfg.weighter_eps, cfg.weighter_clip, cfg.weighter_wd) == (1e-4, 1e-5, 100.0, 1e-6)
    assert cfg.strategy == "same_state" and cfg.meta_every == 1 and cfg.weighter_inputs == "DSV"
    assert (cfg.deter, cfg.stoch, cfg.model_lr, cfg.kl_scale) == (200, 32, 3e-4, 1.0)


CLI_TINY = [
    *TINY_AGENT,
    "prefill=100",
    "train_every=20",
    "eval_every=200",
    "log_every=100",
    "checkpoint_every=100",
    "time_limit=100",
    "weighter_layers=2",
    "weighter_units=16",
    "eval_episodes=1",
]


def _cli(logdir: Path, steps: int) -> list[str]:
    out = ["run", "tempo", "--steps", str(steps), "--logdir", str(logdir), "--no-progress"]
    for item in CLI_TINY:
        out += ["--set", item]
    return out


def test_run_tempo_writes_metrics_and_resumes(tmp_path):
    logdir = tmp_path / "tempo"
    assert main(_cli(logdir, 300)) == 0
    config = json.loads((logdir / "config.json").read_text())
    assert config["recipe"] == "tempo" and config["strategy"] == "same_state"
    records = [json.loads(x) for x in (logdir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "model/upper_loss" in r]
    assert logged and all("model/weight_mean" in r and "tempo/value_post" in r for r in logged)
    # the last weighter update's effective step reaches every record, also between weighter updates (meta_every 16)
    assert all(r["model/weighter_step_vs_lr"] > 0 and "model/weighter_step" in r for r in logged)
    ckpt = torch.load(logdir / "checkpoints" / "latest.pt", weights_only=False)
    assert "weighter_opt" in ckpt and any(k.startswith("weighter.") for k in ckpt["agent"])
    assert main(_cli(logdir, 400)) == 0
    evals = [json.loads(x)["step"] for x in (logdir / "metrics.jsonl").read_text().splitlines() if "eval_return" in x]
    assert evals == [200, 300, 400]
    assert (logdir / "diagnostics.png").stat().st_size > 0  # TEMPO Fig. 9


def test_weights_are_held_against_the_value_gradient():
    """‖∂V/∂s‖ per step by the slow critic, against a central difference along each feature; the train step reports
    the weights' correlation with it."""
    agent, batch = _agent(dtype=torch.float64)
    feat = torch.randn(2, 3, agent.wm.rssm.feat_size, dtype=torch.float64)
    norm = agent.value_gradient_norm(feat)
    assert norm.shape == (2, 3)
    eps, grads = 1e-6, []
    for i in range(feat.shape[-1]):
        e = torch.zeros_like(feat)
        e[..., i] = eps
        with torch.no_grad():
            grads.append((agent.value(feat + e) - agent.value(feat - e)) / (2 * eps))
    torch.testing.assert_close(norm.double(), torch.stack(grads, -1).norm(dim=-1), rtol=1e-5, atol=1e-8)
    first = agent.train_step(batch)["model/weight_corr/value_grad_norm"]  # a weighter update (the first)
    assert -1 <= first <= 1
    # computed on weighter updates alone, and carried to the steps between them
    assert agent.cfg.meta_every > 1 and agent.train_step(batch)["model/weight_corr/value_grad_norm"] == first


def test_inspect_weights_prints_table_2(tmp_path, capsys):
    logdir = tmp_path / "tempo"
    assert main(_cli(logdir, 200)) == 0
    capsys.readouterr()
    assert main(["inspect-weights", str(logdir), "--sequences", "3", "--show", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    meta = [x for x in lines if " meta " in x]
    naive = [x for x in lines if " naive " in x]
    assert len(meta) == 3 and len(naive) == 3
    for line in meta:
        r = float(line.split()[-1])
        assert -1.0 <= r <= 1.0
        weights = [float(x) for x in line.split("[")[1].split("...")[0].split()]
        assert len(weights) == 4 and all(0.75 <= w <= 1.25 for w in weights)
    assert len([x for x in lines if x.startswith("meta weights over ")]) == 1
    assert len([x for x in lines if x.startswith("meta weight vs reward: Pearson r ")]) == 1
    assert any(x.startswith("over training (from metrics.jsonl)") for x in lines)
    assert main(["inspect-weights", str(logdir), "--sequences", "3", "--gain", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    gains = [x for x in lines if x.startswith(("  meta ", "  naive "))]
    assert len(gains) == 2 and all(len(x.split("|")) == 4 for x in gains)
    assert main(["inspect-weights", str(logdir), "--gain", "1"]) == 2
    assert "gain: the number of batches must be 0 (off) or >= 2, got 1" in capsys.readouterr().err
    # a weighter pushed to its upper bound (output bias +50) reads as all weights there
    ckpt_path = logdir / "checkpoints" / "latest.pt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    ckpt["agent"]["weighter.head.bias"].fill_(50.0)
    torch.save(ckpt, ckpt_path)
    rows = inspect_weights(logdir, sequences=3)
    assert rows["summary"]["share_near_high"] == 1.0 and rows["summary"]["share_near_low"] == 0.0
    assert rows["summary"]["q05_q50_q95"][0] > 1.24
    # constant weights choose no sample: no alignment, and shuffling them changes nothing
    gain = inspect_weights(logdir, sequences=3, gain=2)["gain"]
    assert gain["meta"]["alignment"]["values"] == [0.0, 0.0]
    assert gain["meta"]["shuffled_gain"]["values"] == pytest.approx(gain["meta"]["gain"]["values"], rel=1e-9)
    assert gain["meta"]["step_gain"]["values"] == gain["naive"]["step_gain"]["values"]


def test_training_history_summarises_spans_of_the_run(tmp_path):
    records = [{"step": 500, "train_return": 1.0}]  # a record without weights is skipped
    for i in range(10):  # weighter updates logged at 1k ... 10k; the step logged only on the odd ones
        r = {"step": 1000 * (i + 1), "model/weight_std": 0.01 * (i + 1), "model/upper_loss": 1.0}
        if i % 2:
            r.update({"model/weighter_step": 1e-3 * i, "model/weighter_step_vs_lr": 0.1 * i})
        records.append(r)
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    rows = training_history(tmp_path, spans=2)
    assert [(r["start"], r["end"]) for r in rows] == [(1000, 5000), (6000, 10000)]
    assert rows[0]["weight_std"] == pytest.approx(0.03) and rows[1]["weight_std"] == pytest.approx(0.08)
    assert rows[0]["weighter_step_vs_lr"] == pytest.approx(0.2)  # median of 0.1, 0.3
    assert rows[1]["weighter_step_vs_lr"] == pytest.approx(0.7)  # median of 0.5, 0.7, 0.9
    assert rows[1]["weighter_step"] == pytest.approx(7e-3) and rows[0]["upper_loss"] == 1.0
    (tmp_path / "empty").mkdir()
    assert training_history(tmp_path / "empty") == []
    with pytest.raises(ValueError, match="spans"):
        training_history(tmp_path, spans=0)


def test_weights_by_reward_on_a_sparse_reward():
    reward = torch.zeros(4, 10)
    reward[0, 3] = reward[2, 7] = 1.0  # two rewarded steps of 40
    up = 1.0 + 0.2 * reward  # a weighter that up-weights exactly the rewarded steps
    s = weights_by_reward(up, reward)
    assert s["pearson"] == pytest.approx(1.0) and s["spearman"] == pytest.approx(1.0)
    assert s["mean_rewarded"] == pytest.approx(1.2) and s["mean_unrewarded"] == pytest.approx(1.0)
    assert s["share_rewarded"] == pytest.approx(0.05)
    down = weights_by_reward(1.0 - 0.2 * reward + 0.01 * torch.rand(4, 10), reward)
    assert down["pearson"] < -0.9 and down["mean_rewarded"] < down["mean_unrewarded"]
    flat = weights_by_reward(torch.ones(4, 10), reward)  # a constant side has no correlation
    assert math.isnan(flat["pearson"]) and math.isnan(flat["spearman"]) and flat["mean_rewarded"] == 1.0
    assert math.isnan(weights_by_reward(up, torch.zeros(4, 10))["mean_rewarded"])  # no rewarded step
    with pytest.raises(ValueError, match="same shape"):
        weights_by_reward(up, reward[:, :5])


def test_inspect_weights_refuses_a_dreamerv2_run(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"recipe": "dreamerv2"}))
    assert main(["inspect-weights", str(tmp_path)]) == 2
    assert "is a dreamerv2 run, not a tempo run" in capsys.readouterr().err
    assert main(["inspect-weights", str(tmp_path / "none")]) == 2
    assert "no config.json in" in capsys.readouterr().err


def test_sub_modules_take_every_number_from_the_config():
    """The world model and the actor-critic are built by ``config_kwargs``: a config value reaches the module, a
    constructor argument without a config field is an error rather than its own default, and so is a given
    argument the constructor does not take."""
    from recipes.agents.dreamer_ac import ActorCritic
    from recipes.run.config import config_kwargs
    from worldmodels import RSSMWorldModel

    agent, _ = _agent(min_std=0.25, ac_layers=1, ac_units=12, model_clip=7.0, horizon=2)
    assert agent.wm.rssm.min_std == 0.25 and agent.ac.clip == 7.0 and agent.ac.horizon == 2
    cfg = agent.cfg
    given = {"units": 5, "eps": 1e-3, "clip": 1.0, "weight_decay": 0.0, "autocast_dtype": None}
    kwargs = config_kwargs(cfg, ActorCritic, {"layers": "ac_layers"}, **given)
    assert kwargs["layers"] == 1 and kwargs["units"] == 5 and kwargs["horizon"] == 2
    with pytest.raises(TypeError, match=r"no field for ActorCritic's \['layers', 'units', 'eps'"):
        config_kwargs(cfg, ActorCritic)
    with pytest.raises(TypeError, match="takes no argument"):
        config_kwargs(cfg, RSSMWorldModel, wings=2)
