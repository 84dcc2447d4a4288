"""Roofline of one Dreamer-family train step: FLOPs per part, the machine's matmul peak, achieved fraction.

For each config, one agent is built from a synthetic batch (as ``benchmarks/tempo_overhead.py`` builds it) and

* **FLOPs** of one train step (matmuls and convolutions, forward and backward) are counted from the operands'
  shapes by torch's own formulas (``torch.utils.flop_counter``) in a dispatch mode.  The actor-critic update's
  FLOPs are split into ``imagination`` (the world model's modules run inside it: RSSM prior, reward and discount
  heads), ``actor`` and ``critic`` (critic and slow critic): forward FLOPs by forward hooks, backward FLOPs by hooks
  on the backward nodes of those modules' outputs (only backward work that runs: dynamics backprop for continuous
  actions, none through the imagination for REINFORCE); ``check`` is the parts' sum over the counted total.
  For TEMPO (``meta_every=1``) ``tempo extra`` is its world-model step minus DreamerV2's;
* **time** of the two separately callable parts (world-model step, actor-critic update) is the median over
  ``--reps`` steps after a warm-up; imagination, actor and critic share the actor-critic's time, so only their FLOPs
  and GEMM-time at peak are given;
* the **peak** is the best of several large square fp32 GEMMs at the same thread count (and bf16 ones where the CPU
  reports bf16 units: ``avx512_bf16`` or ``amx_bf16``; never assumed);
* **aten ops** per train step are counted by a dispatch mode: a high count with a low fraction of peak means the
  step is dispatch-bound, not compute-bound.

Columns: GFLOP per step, seconds, achieved GFLOP/s, % of the fp32 peak, and ``×GEMM`` = measured time / the time the
part's FLOPs would take at the peak (1.0 is the roofline).  ``GEMM kernels s`` is the time spent inside the matmul
and convolution kernels themselves (``PartCounter.gemm_seconds``, each call timed, in the counted step), and
``×GEMM floor`` that time over the time at the peak: the ×GEMM the part would reach if every other op cost nothing,
since the step's GEMMs (batch-16 recurrent steps, 800-row imagination steps) run below the large square GEMM's
peak.  Usage:

    python benchmarks/roofline.py [--configs cpu,cpu-pixels,sheeprl,paper] [--threads 1] [--reps 10]

Writes ``benchmarks/results/roofline.json`` (``--out``) and prints a markdown table (``--md FILE`` writes it too).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tempo_overhead import build  # noqa: E402

#: name → (env, preset, variant overrides, vector sizes for the synthetic batch).  ``sheeprl``: sheeprl 0.8.4's
#: DreamerV2 on gymnasium's vector CartPole-v1 (4 observations, 2 discrete actions: REINFORCE actor gradients) as
#: ``benchmarks/peers/sheeprl_dreamerv2.sh`` runs it: RSSM 200 with 32×32 categorical latents, hidden 200, 4×400
#: MLPs, batch 16×50, imagination from all 800 states, horizon 15.
CONFIGS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "cpu": ("dmc:cartpole_swingup", "cpu", "", {}),
    "cpu-pixels": ("dmc:cartpole_swingup", "cpu", "+pixels=true", {}),
    "sheeprl": (
        "gym:CartPole-v1",
        "paper",
        "+classes=32+stoch=32+deter=200+hidden=200+mlp_layers=4+mlp_units=400+ac_layers=4+ac_units=400"
        "+imag_starts=null+horizon=15+batch_size=16+seq_len=50",
        {"obs_dim": 4, "action_dim": 2, "discrete": True},
    ),
    "paper": ("dmc:cartpole_swingup", "paper", "", {}),
}
# the same under bf16 autocast (world model and actor-critic), judged against the bf16 GEMM peak: where bf16 units exist
for _name in ("cpu", "sheeprl"):
    _env, _preset, _variant, _sizes = CONFIGS[_name]
    CONFIGS[f"{_name}-bf16"] = (_env, _preset, _variant + "+model_precision=bf16+ac_precision=bf16", _sizes)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gemm_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an n×n×n GEMM in ``dtype`` at the current thread count."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _tensors(x: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) tuple/list/dict."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    return []


class PartCounter(TorchDispatchMode):
    """FLOPs of matmuls/convolutions (torch's own formulas, ``torch.utils.flop_counter``) and aten op calls.

    Ops run inside a labelled module's forward (forward hooks on ``parts``' modules) count to that label's
    ``forward``; ops run by the backward nodes that forward created (hooks on those nodes, so only backward
    work that actually runs) count to its ``backward``; ``total`` counts everything, labelled or
    not (a double backward's work, for one, runs outside any node hook's label only when it has no module).
    List every submodule of a part (e.g. ``list(m.modules())``): the innermost module labels its nodes first.
    ``gemm_seconds`` is the wall time spent inside those matmul/convolution calls (each timed; the hooks' and
    the mode's Python overhead falls outside them): the GEMMs' own time at the step's actual shapes.
    """

    def __init__(self, parts: dict[str, list[torch.nn.Module]]) -> None:
        super().__init__()
        self.calls, self.total, self.gemm_seconds = 0, 0, 0.0
        self.forward: dict[str, int] = dict.fromkeys(parts, 0)
        self.backward: dict[str, int] = dict.fromkeys(parts, 0)
        self._stack: list[str] = []  # labels of the modules whose forward is running
        self._bstack: list[str] = []  # labels of the backward nodes running
        self._hooks: list[Any] = []
        self._labelled: set[int] = set()
        self._nodes: list[Any] = []
        for label, mods in parts.items():
            for mod in mods:
                self._hooks.append(mod.register_forward_pre_hook(self._enter(label)))
                self._hooks.append(mod.register_forward_hook(self._leave(label)))

    def _enter(self, label: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            self._stack.append(label)

        return hook

    def _leave(self, label: str) -> Callable[..., None]:
        def hook(_mod: Any, inp: Any, out: Any) -> None:  # returning a value would replace the module's output
            self._stack.pop()
            if torch.is_grad_enabled():
                self._label_nodes(label, inp, out)

        return hook

    def _label_nodes(self, label: str, inp: Any, out: Any) -> None:
        """Hook every backward node the module's forward created: from its outputs' ``grad_fn`` back to (not
        into) its inputs' nodes and the leaves (a 3-D Linear's output node is a view; its matmul node lies behind)."""
        stop = {id(t.grad_fn) for t in _tensors(inp) if t.grad_fn is not None}
        todo = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
        while todo:
            node = todo.pop()
            if node is None or id(node) in stop or id(node) in self._labelled or not node.next_functions:
                continue  # an input's node, one seen already, or a leaf (AccumulateGrad)
            self._labelled.add(id(node))
            self._nodes.append(node)  # keeps ids unique while the counter lives
            node.register_prehook(lambda *_: self._bstack.append(label) and None)  # node hooks must return None
            node.register_hook(lambda *_: self._bstack.pop() and None)
            todo.extend(fn for fn, _ in node.next_functions)

    def __exit__(self, *exc: Any) -> Any:
        for h in self._hooks:
            h.remove()
        self._nodes.clear()  # node hooks stay on a graph still alive, harmless outside the mode
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        formula = flop_registry.get(func._overloadpacket)
        if formula is None:
            out = func(*args, **kwargs)
        else:  # a CPU kernel is synchronous: the call's wall time is the GEMM's own
            t0 = time.perf_counter()
            out = func(*args, **kwargs)
            self.gemm_seconds += time.perf_counter() - t0
        self.calls += 1
        if formula is not None:
            flops = int(formula(*args, **kwargs, out_val=out))
            self.total += flops
            if self._bstack:
                self.backward[self._bstack[-1]] += flops
            elif self._stack and torch.is_grad_enabled():
                self.forward[self._stack[-1]] += flops
        return out


def _parts(agent: Any, step: str) -> dict[str, list[torch.nn.Module]]:
    """Labelled modules of ``step`` (``"wm"`` or ``"ac"``): in the actor-critic update the world model's modules
    are the imagination; in TEMPO's world-model step the critic is its upper loss's value function."""
    # every submodule: the actor-critic calls the RSSM's methods (imagine), not the world model's forward
    parts = {"imagination" if step == "ac" else "world model": list(agent.wm.modules())}
    parts["actor"] = list(agent.ac.actor.modules())
    parts["critic"] = list(agent.ac.critic.modules()) + list(agent.ac.slow_critic.modules())
    if hasattr(agent, "weighter"):
        parts["weighter"] = list(agent.weighter.modules())
    return parts


def _ac_update(agent: Any, out: Any) -> None:
    agent.ac.update(out.states["post"], None)


def measure(name: str, threads: int, reps: int, peak: float) -> dict[str, Any]:
    """Rows of one config (and its TEMPO variant): FLOPs, time, GFLOP/s, fraction of peak."""
    env, preset, sets, sizes = CONFIGS[name]
    rows: dict[str, Any] = {}
    results: dict[str, Any] = {"env": env, "preset": preset, "overrides": sets}
    for recipe in ("dreamerv2", "tempo"):
        variant = recipe + sets + ("+meta_every=1" if recipe == "tempo" else "")
        agent, batch, _ = build(variant, preset, env, **sizes)
        for _ in range(2):  # warm-up (allocator, lazy init)
            agent.train_step(batch)
        wm_count = PartCounter(_parts(agent, "wm"))
        with wm_count:
            _, out = agent.world_model_step(batch)
        ac_count = PartCounter(_parts(agent, "ac"))
        with ac_count:
            _ac_update(agent, out)
        t_wm, t_ac = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            _, out = agent.world_model_step(batch)
            t1 = time.perf_counter()
            _ac_update(agent, out)
            t_wm.append(t1 - t0)
            t_ac.append(time.perf_counter() - t1)
        results[recipe] = {
            "wm_flops": wm_count.total,
            "ac_flops": ac_count.total,
            "ac_parts": {p: [ac_count.forward[p], ac_count.backward[p]] for p in ac_count.forward},
            "wm_parts": {p: [wm_count.forward[p], wm_count.backward[p]] for p in wm_count.forward},
            "wm_s": statistics.median(t_wm),
            "ac_s": statistics.median(t_ac),
            "wm_gemm_s": wm_count.gemm_seconds,
            "ac_gemm_s": ac_count.gemm_seconds,
            "aten_ops": wm_count.calls + ac_count.calls,
        }
        del agent, batch, out
    d, t = results["dreamerv2"], results["tempo"]

    def row(flops: float, seconds: float | None, gemm_s: float | None = None) -> dict[str, Any]:
        r: dict[str, Any] = {"gflop": flops / 1e9, "gemm_s_at_peak": flops / 1e9 / peak}
        if seconds is not None:
            r.update(seconds=seconds, gflops=flops / 1e9 / seconds, pct_peak=100 * flops / 1e9 / seconds / peak)
            r["x_gemm"] = seconds / max(r["gemm_s_at_peak"], 1e-12)
        if gemm_s is not None:  # the GEMM kernels alone: the ×GEMM that zero-cost non-GEMM work would reach
            r.update(gemm_s=gemm_s, x_gemm_floor=gemm_s / max(r["gemm_s_at_peak"], 1e-12))
        return r

    rows["world model"] = row(d["wm_flops"], d["wm_s"], d["wm_gemm_s"])
    for part in ("imagination", "actor", "critic"):
        fwd, bwd = d["ac_parts"][part]
        rows[part] = {**row(fwd + bwd, None), "forward_gflop": fwd / 1e9}
    rows["actor-critic"] = row(d["ac_flops"], d["ac_s"], d["ac_gemm_s"])
    rows["actor-critic"]["check"] = sum(sum(v) for v in d["ac_parts"].values()) / max(d["ac_flops"], 1)
    rows["dreamerv2 step"] = row(d["wm_flops"] + d["ac_flops"], d["wm_s"] + d["ac_s"], d["wm_gemm_s"] + d["ac_gemm_s"])
    rows["tempo extra"] = row(t["wm_flops"] - d["wm_flops"], max(t["wm_s"] - d["wm_s"], 0.0))
    rows["tempo step"] = row(t["wm_flops"] + t["ac_flops"], t["wm_s"] + t["ac_s"], t["wm_gemm_s"] + t["ac_gemm_s"])
    rows["dreamerv2 step"]["aten_ops"] = d["aten_ops"]
    rows["tempo step"]["aten_ops"] = t["aten_ops"]
    results["rows"] = rows
    results["threads"] = threads
    return results


def markdown(table: dict[str, Any]) -> str:
    m = table["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['threads']} torch thread(s); fp32 GEMM peak {m['fp32_peak_gflops']:.1f} GFLOP/s"
        + (f", bf16 {m['bf16_peak_gflops']:.1f}" if m.get("bf16_peak_gflops") else ", no bf16 units"),
        "",
    ]
    for name, res in table["configs"].items():
        lines += [
            f"**{name}** (`{res['env']}`, preset `{res['preset']}`"
            + (f", {res['overrides']})" if res["overrides"] else ")")
            + (" — against the **bf16** peak" if res.get("peak") == "bf16" else ""),
            "",
            "| part | GFLOP | s | GFLOP/s | % peak | ×GEMM | GEMM kernels s | ×GEMM floor | aten ops |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for part, r in res["rows"].items():
            if "seconds" in r:
                cells = f"{r['seconds']:.3f} | {r['gflops']:.1f} | {r['pct_peak']:.0f} | {r['x_gemm']:.1f}"
            else:
                cells = f"– | – | – | ({r['gemm_s_at_peak']:.3f} s at peak)"
            floor = f"{r['gemm_s']:.3f} | {r['x_gemm_floor']:.2f}" if "gemm_s" in r else "| "
            note = f" (parts/counted {r['check']:.2f})" if "check" in r else ""
            lines.append(f"| {part}{note} | {r['gflop']:.3f} | {cells} | {floor} | {r.get('aten_ops', '')} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="cpu,cpu-pixels,sheeprl")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "roofline.json")
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args(argv)
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        ap.error(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    machine: dict[str, Any] = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_units": sorted(flags & {"avx512_bf16", "amx_bf16"}),
        "fp32_peak_gflops": gemm_peak(torch.float32),
    }
    if machine["bf16_units"]:
        machine["bf16_peak_gflops"] = gemm_peak(torch.bfloat16)
    table: dict[str, Any] = {"machine": machine, "configs": {}}
    from recipes.run.precision import AUTO_MIN_SPEEDUP, bf16_speedup

    for name in names:
        bf16 = "_precision=bf16" in CONFIGS[name][2]
        if bf16 and bf16_speedup("cpu") < AUTO_MIN_SPEEDUP:
            print(f"{name}: skipped, a bf16 GEMM is not >= {AUTO_MIN_SPEEDUP}x faster than fp32 on this CPU")
            continue
        if bf16 and "bf16_peak_gflops" not in machine:
            machine["bf16_peak_gflops"] = gemm_peak(torch.bfloat16)
        peak = machine["bf16_peak_gflops"] if bf16 else machine["fp32_peak_gflops"]
        table["configs"][name] = measure(name, args.threads, args.reps, peak) | {"peak": "bf16" if bf16 else "fp32"}
    text = markdown(table)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1))
    if args.md is not None:
        args.md.write_text(text + "\n")
    print(f"wrote {args.out}")
    return table


if __name__ == "__main__":
    main()
