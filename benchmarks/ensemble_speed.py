"""Time one training step of ``worldmodels.GaussianEnsemble`` against mbrl-lib's ``GaussianMLP`` ensemble.

One training step = forward of all members + Gaussian NLL (with the log-variance bound penalty) + backward + one
Adam step, float32 on the CPU with ONE torch thread, at MBPO's size as mbrl-lib ships it for HalfCheetah: 7 members,
4 hidden layers of 200 SiLU units, obs 17, action 6, reward learned (D = 18), 256 samples per member.

* ours: ``GaussianEnsemble(17, 6)`` (defaults), a batch of 256 transitions shared by the members with per-member
  bootstrap multiplicities ``bootstrap`` [7, 256] (``worldmodels.bootstrap_counts``); the step is
  ``model.loss(batch).loss.mean()``, ``backward()``, ``Adam.step()``.
* mbrl: ``mbrl==0.2.0``'s ``OneDTransitionRewardModel(GaussianMLP(23, 18, num_layers=4, ensemble_size=7,
  hid_size=200, learn_logvar_bounds=True, SiLU), target_is_delta=True, normalize=True, learned_rewards=True)``
  fed a per-member batch [7, 256, ...] as its ``BootstrapIterator`` yields (numpy arrays); the step is
  ``model.loss(batch)`` (input normalisation, Δ-targets, ``GaussianMLP._nll_loss`` including the bound penalty
  0.01 (Σ max_logvar − Σ min_logvar)), ``backward()``, ``Adam.step()``.  ``learn_logvar_bounds=True`` makes the
  bounds trainable as ours are (PETS App. A.1; mbrl-lib's MBPO config leaves them fixed).
  Extra row ``mbrl update()``: mbrl's own ``Model.update`` (the same plus its grad-norm metadata and ``.item()``).
* Extra row ``ours BilevelUpdate``: ours trained through ``bilevel.BilevelUpdate`` with ``Uniform()`` weights, the
  path the ``mbpo``/``m3po`` recipes use.

Both sides use ``torch.optim.Adam(lr=1e-3, weight_decay=5e-5)`` (``--optimizer adam-fused``: ``fused=True`` on
both) and cycle through the same 8 pre-drawn minibatches.  mbrl-lib 0.2.0 pins an old gymnasium and hydra, so it
runs in its own scratch venv outside the repository (``--venv``, default ``~/.cache/reweigh-bench/mbrl-venv``),
created on first use: ``torch==2.13.0`` first (the CPU wheel; the script refuses a CUDA build), then
``mbrl==0.2.0 --no-deps`` and only what ``import mbrl.models`` needs: numpy, hydra-core (current: 1.0.3 does not
import on Python 3.11), gymnasium==0.26.3, termcolor, tqdm.  The mbrl side runs in a persistent subprocess; rounds
interleave the variants (alternating order) and the median seconds/step over rounds is reported.

Usage:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ensemble_speed.py [--rounds 15] [--steps 20] [--profile]

Rows with ``bf16`` (added where a bf16 GEMM measures >= 2x faster than fp32, e.g. Intel AMX; ``--bf16 on|off``
forces them): ours under ``torch.autocast(bfloat16)`` as ``model_precision=bf16`` runs it (plain and through
``BilevelUpdate``), mbrl-lib's same step under the same autocast, and the bf16 GEMM floor.

Writes ``benchmarks/results/ensemble_speed.json``.  Row ``GEMM floor``: the step's 14 batched matrix products
alone (``gemm_floor``), a lower bound for any fp32 implementation of the same step — the script prints whether
0.7 × mbrl is below it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bilevel  # noqa: E402
from recipes.run.precision import AUTO_MIN_SPEEDUP, autocast, autocast_fn, bf16_speedup  # noqa: E402
from recipes.run.rundir import cpu_name  # noqa: E402
from worldmodels import GaussianEnsemble, bootstrap_counts  # noqa: E402

TORCH_PIN = "torch==2.13.0"
MBRL_PIN = "mbrl==0.2.0"
# What `import mbrl.models` needs (mbrl/models/__init__ imports model_env -> gymnasium, gaussian_mlp -> hydra and
# omegaconf, model_trainer -> tqdm and mbrl.util.logger -> termcolor).  hydra-core brings omegaconf.
MBRL_IMPORT_DEPS = ["numpy", "hydra-core", "gymnasium==0.26.3", "termcolor", "tqdm"]
DEFAULT_VENV = Path.home() / ".cache" / "reweigh-bench" / "mbrl-venv"
POOL = 8  # pre-drawn minibatches cycled through by both sides

WORKER = r"""
import json, sys, time
import numpy as np
import torch
torch.set_num_threads(1)
from mbrl.models import GaussianMLP, OneDTransitionRewardModel
from mbrl.types import TransitionBatch

cfg = json.loads(sys.argv[1])
E, B, O, A, L, H = cfg["members"], cfg["batch"], cfg["obs"], cfg["act"], cfg["layers"], cfg["units"]
torch.manual_seed(cfg["seed"])
rng = np.random.default_rng(cfg["seed"])
net = GaussianMLP(O + A, O + 1, "cpu", num_layers=L, ensemble_size=E, hid_size=H, learn_logvar_bounds=True,
                  activation_fn_cfg={"_target_": "torch.nn.SiLU"})
model = OneDTransitionRewardModel(net, target_is_delta=True, normalize=True, learned_rewards=True)
n = cfg["data"]
obs = rng.standard_normal((n, O), dtype=np.float32)
act = rng.uniform(-1, 1, (n, A)).astype(np.float32)
nxt = (obs + 0.1 * np.tanh(obs + act.sum(1, keepdims=True)) + 0.01 * rng.standard_normal((n, O))).astype(np.float32)
rew = (obs[:, 0] - 0.1 * (act ** 2).sum(1)).astype(np.float32)
model.update_normalizer(TransitionBatch(obs, act, nxt, rew, None, None))
# per-member bootstrap minibatches [E, B, ...], as mbrl's BootstrapIterator yields them
batches = []
for _ in range(cfg["pool"]):
    idx = rng.integers(0, n, (E, B))
    batches.append(TransitionBatch(obs[idx], act[idx], nxt[idx], rew[idx], None, None))
opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=5e-5, fused=cfg["fused"])

def loss_step(batch):
    loss, _ = model.loss(batch)
    opt.zero_grad()
    loss.backward()
    opt.step()

def update_step(batch):
    model.update(batch, opt)

def bf16_step(batch):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.loss(batch)
    opt.zero_grad()
    loss.backward()
    opt.step()

steps = {"mbrl": loss_step, "mbrl update()": update_step, "mbrl bf16 autocast": bf16_step}
count = [0]
def run(name, k):
    f = steps[name]
    t = time.perf_counter()
    for _ in range(k):
        f(batches[count[0] % len(batches)])
        count[0] += 1
    return (time.perf_counter() - t) / k

for name in steps:
    run(name, 5)
params = sum(p.numel() for p in net.parameters())
print(json.dumps({"ready": True, "params": params, "torch": torch.__version__, "cuda": torch.version.cuda,
                  "threads": torch.get_num_threads(), "model": repr(net).replace("\n", " ")}), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == "quit":
        break
    name, k = " ".join(cmd[1:-1]), int(cmd[-1])
    print(json.dumps({"seconds": run(name, k)}), flush=True)
"""


# -- the scratch venv --------------------------------------------------------------------------------------------------
def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def _probe(python: Path) -> dict[str, Any] | None:
    """Versions in the venv, or None if mbrl cannot be imported there."""
    code = (
        "import json, torch, mbrl, mbrl.models; "
        "print(json.dumps([torch.__version__, torch.version.cuda, mbrl.__version__]))"
    )
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    torch_version, cuda, mbrl_version = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"torch": torch_version, "cuda": cuda, "mbrl": mbrl_version}


def ensure_venv(venv: Path) -> Path:
    """Create (once) a venv with CPU torch and mbrl 0.2.0; return its python."""
    python = venv / "bin" / "python"
    if python.exists() and (found := _probe(python)) is not None:
        if found["cuda"] is not None:
            raise RuntimeError(f"{venv} has a CUDA torch build ({found['torch']}); delete it and rerun")
        return python
    print(f"setting up the mbrl-lib venv in {venv} (once) ...", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        _run([sys.executable if sys.prefix == sys.base_prefix else _base_python(), "-m", "venv", str(venv)])
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, TORCH_PIN])  # first, alone: an unpinned torch (pulled by a dependency) would be a CUDA build
    version = _run([str(python), "-c", "import torch; print(torch.__version__, torch.version.cuda)"]).split()
    if version[1] != "None":
        raise RuntimeError(f"pip installed a CUDA torch ({version[0]}) in {venv}; install a CPU wheel there first")
    _run([*pip, "--no-deps", MBRL_PIN])  # its pins (gymnasium 0.26.3, hydra-core 1.0.3, jupyter, ...) conflict
    _run([*pip, *MBRL_IMPORT_DEPS])
    found = _probe(python)
    if found is None or found["cuda"] is not None:
        raise RuntimeError(f"mbrl-lib does not import with a CPU torch in {venv}: {found}")
    return python


def _base_python() -> str:
    """The interpreter this venv was made from (``python3 -m venv`` from inside a venv would nest its packages)."""
    base = getattr(sys, "_base_executable", None)
    return base if base and Path(base).exists() else "python3"


# -- ours --------------------------------------------------------------------------------------------------------------
def our_steps(cfg: dict[str, Any]) -> dict[str, Any]:
    """Builds our ensemble and returns the timed step functions (and the model, for profiling)."""
    e, b, o, a = cfg["members"], cfg["batch"], cfg["obs"], cfg["act"]
    torch.manual_seed(cfg["seed"])
    model = GaussianEnsemble(o, a, members=e, elites=5, layers=cfg["layers"], units=cfg["units"])
    g = torch.Generator().manual_seed(cfg["seed"])
    n = cfg["data"]
    obs = torch.randn(n, o, generator=g)
    act = torch.rand(n, a, generator=g) * 2 - 1
    nxt = obs + 0.1 * torch.tanh(obs + act.sum(1, keepdim=True)) + 0.01 * torch.randn(n, o, generator=g)
    rew = obs[:, 0] - 0.1 * (act**2).sum(1)
    data = {"obs": obs, "action": act, "next_obs": nxt, "reward": rew}
    model.update_normalizer(data)
    counts = bootstrap_counts(e, n, generator=g)
    batches = []
    for _ in range(POOL):
        idx = torch.randint(n, (b,), generator=g)
        batches.append({**{k: v[idx] for k, v in data.items()}, "bootstrap": counts[:, idx]})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-5, fused=cfg["fused"])
    update = bilevel.BilevelUpdate(model, opt, bilevel.Uniform())
    count = [0]

    def next_batch() -> dict[str, torch.Tensor]:
        count[0] += 1
        return batches[count[0] % POOL]

    def plain() -> None:
        loss = model.loss(next_batch()).loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def through_bilevel() -> None:
        batch = next_batch()
        update.step(lambda fn: bilevel.LevelOutputs(loss=fn(batch).loss))

    def plain_bf16() -> None:
        with autocast("cpu", torch.bfloat16):
            loss = model.loss(next_batch()).loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def through_bilevel_bf16() -> None:
        # the recipes' path with model_precision=bf16: the forward closure under autocast (recipes.m3po)
        batch = next_batch()
        forward = autocast_fn(lambda fn: bilevel.LevelOutputs(loss=fn(batch).loss), "cpu", torch.bfloat16)
        update.step(forward)

    params = sum(p.numel() for p in model.parameters())
    steps = {
        "ours": plain,
        "ours BilevelUpdate": through_bilevel,
        "ours bf16": plain_bf16,
        "ours BilevelUpdate bf16": through_bilevel_bf16,
    }
    return {"steps": steps, "params": params, "model": model}


def gemm_floor(cfg: dict[str, Any], dtype: torch.dtype = torch.float32) -> tuple[Any, float]:
    """The step's batched matrix products alone, on fixed random tensors of the same shapes: per layer one forward
    ``bmm`` and the weight-gradient ``bmm``, and the input-gradient ``bmm`` for every layer but the first — 14 at
    MBPO's size.  No activation, loss, normalisation or optimiser: a lower bound for *any* fp32 implementation of
    the same step (in ``dtype``: the bf16 floor bounds the bf16 autocast rows).  Returns the step function and its
    FLOPs."""
    e, b = cfg["members"], cfg["batch"]
    widths = [cfg["obs"] + cfg["act"], *([cfg["units"]] * cfg["layers"]), 2 * (cfg["obs"] + 1)]
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(e, b, w, generator=g).to(dtype) for w in widths[:-1]]
    ws = [(torch.randn(e, i, o, generator=g) / i**0.5).to(dtype) for i, o in itertools.pairwise(widths)]
    dys = [torch.randn(e, b, o, generator=g).to(dtype) for o in widths[1:]]
    flops = 0.0
    for i, (inp, out) in enumerate(itertools.pairwise(widths)):
        flops += 2 * e * b * inp * out * (2 if i == 0 else 3)

    def step() -> None:
        for i, (x, w, dy) in enumerate(zip(xs, ws, dys, strict=True)):
            torch.bmm(x, w)
            torch.bmm(x.transpose(1, 2), dy)
            if i:
                torch.bmm(dy, w.transpose(1, 2))

    return step, flops


def time_local(f: Any, k: int) -> float:
    t = time.perf_counter()
    for _ in range(k):
        f()
    return (time.perf_counter() - t) / k


def profile_ours(step: Any, k: int = 10) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(k):
            step()
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=28, max_shapes_column_width=60
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (median over them)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per variant per round")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="scratch venv for mbrl-lib (outside the repo)")
    parser.add_argument("--optimizer", choices=["adam", "adam-fused"], default="adam", help="same on both sides")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of our step")
    parser.add_argument(
        "--bf16",
        choices=["auto", "on", "off"],
        default="auto",
        help="also time bf16 autocast rows (ours with model_precision=bf16, mbrl under torch.autocast); auto: where a "
        "bf16 GEMM measures >= 2x faster than fp32 (recipes.run.precision)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ensemble_speed.json")
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    cfg = {
        "members": 7,
        "batch": 256,
        "obs": 17,
        "act": 6,
        "layers": 4,
        "units": 200,
        "seed": 0,
        "data": 4096,
        "pool": POOL,
        "fused": args.optimizer == "adam-fused",
    }
    python = ensure_venv(args.venv)
    worker = subprocess.Popen(
        [str(python), "-c", WORKER, json.dumps(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    assert worker.stdin is not None and worker.stdout is not None
    info = json.loads(worker.stdout.readline())
    ours = our_steps(cfg)
    if info["params"] != ours["params"]:
        raise RuntimeError(f"parameter counts differ: ours {ours['params']}, mbrl {info['params']}")

    def remote(name: str, k: int) -> float:
        worker.stdin.write(f"run {name} {k}\n")  # type: ignore[union-attr]
        worker.stdin.flush()  # type: ignore[union-attr]
        return float(json.loads(worker.stdout.readline())["seconds"])  # type: ignore[union-attr]

    local = dict(ours["steps"])
    floor_step, floor_flops = gemm_floor(cfg)
    local["GEMM floor"] = floor_step
    for f in local.values():
        time_local(f, 5)
    names = ["ours", "mbrl", "ours BilevelUpdate", "mbrl update()", "GEMM floor"]
    speedup = bf16_speedup("cpu")
    with_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and speedup >= AUTO_MIN_SPEEDUP)
    print(f"bf16/fp32 GEMM speed here: {speedup:.2f}x -> bf16 rows {'on' if with_bf16 else 'off'}")
    if with_bf16:
        names += ["ours bf16", "mbrl bf16 autocast", "ours BilevelUpdate bf16", "GEMM floor bf16"]
        local["GEMM floor bf16"] = gemm_floor(cfg, torch.bfloat16)[0]
        time_local(local["GEMM floor bf16"], 5)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            sec = time_local(local[name], args.steps) if name in local else remote(name, args.steps)
            times[name].append(sec)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {1e3 * times[n][-1]:.2f} ms" for n in names))
    worker.stdin.write("quit\n")
    worker.stdin.flush()
    worker.wait(timeout=60)

    median = {n: statistics.median(v) for n, v in times.items()}
    ratios = [o / m for o, m in zip(times["ours"], times["mbrl"], strict=True)]
    ratio = median["ours"] / median["mbrl"]
    print()
    print(
        f"one training step, {cfg['members']} members x {cfg['layers']}x{cfg['units']} SiLU, obs {cfg['obs']}, "
        f"act {cfg['act']}, batch {cfg['batch']}/member, float32, 1 thread, optimizer {args.optimizer}"
    )
    print(f"{'variant':<22} {'median ms/step':>15} {'min':>8} {'max':>8}")
    for n in names:
        print(f"{n:<22} {1e3 * median[n]:15.2f} {1e3 * min(times[n]):8.2f} {1e3 * max(times[n]):8.2f}")
    print(f"ratio ours/mbrl: {ratio:.3f} (median of per-round ratios {statistics.median(ratios):.3f}; target <= 0.7)")
    bf16_ratios = {}
    if with_bf16:
        for ours_name, ref in (
            ("ours bf16", "mbrl"),
            ("ours bf16", "mbrl bf16 autocast"),
            ("ours BilevelUpdate bf16", "mbrl"),
        ):
            bf16_ratios[f"{ours_name} / {ref}"] = median[ours_name] / median[ref]
            print(f"ratio {ours_name} / {ref}: {median[ours_name] / median[ref]:.3f}")
    floor = median["GEMM floor"]
    print(
        f"GEMM floor: {1e3 * floor:.2f} ms for {floor_flops / 1e9:.2f} GFLOP "
        f"({floor_flops / floor / 1e9:.1f} GFLOP/s); "
        f"ours spends {floor / median['ours']:.0%} of its step in these products; the target 0.7 x mbrl = "
        f"{0.7e3 * median['mbrl']:.2f} ms is {'below' if 0.7 * median['mbrl'] < floor else 'above'} the floor"
    )
    profile = None
    if args.profile:
        profile = profile_ours(local["ours"])
        print(profile)

    result = {
        "config": {**cfg, "optimizer": args.optimizer, "rounds": args.rounds, "steps_per_round": args.steps},
        "median_seconds_per_step": median,
        "seconds_per_step": times,
        "ratio_ours_over_mbrl": ratio,
        "median_round_ratio": statistics.median(ratios),
        "target_ratio": 0.7,
        "bf16_gemm_speedup": speedup,
        "bf16_ratios": bf16_ratios,
        "gemm_floor": {"seconds": floor, "flops": floor_flops, "gflops_per_s": floor_flops / floor / 1e9},
        "params": ours["params"],
        "ours": {"torch": torch.__version__, "threads": torch.get_num_threads()},
        "mbrl": {k: info[k] for k in ("torch", "cuda", "threads", "model")} | {"version": MBRL_PIN},
        "machine": {"processor": cpu_name(), "python": platform.python_version()},
        "profile_ours": profile,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
