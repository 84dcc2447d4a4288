"""Times sheeprl's DreamerV2 gradient steps from inside its own process; used by ``sheeprl_dreamerv2.sh``.

Two modes:

* ``run`` (in the sheeprl venv): ``python sheeprl_timing.py run --threads N --warmup W --expect S --raw RAW --
  HYDRA_OVERRIDES...`` sets torch's threads, wraps three functions of ``sheeprl.algos.dreamer_v2.dreamer_v2`` (which
  ``main`` looks up as module globals at every call, so replacing the module attributes is enough), then runs
  sheeprl's own CLI (``sheeprl.cli.run``, the ``sheeprl`` console script) with the overrides and writes the raw
  measurements to RAW:

  - ``train`` — one gradient step: world-model loss + update, imagination, actor loss + update, critic loss + update,
    nothing else.  ``time.perf_counter()`` around every call gives ``grad_step_s``; ``torch.get_num_threads()`` is read
    inside it, and its first call records the sizes of the batch and of the models.
  - ``training_timer`` — the context manager of sheeprl's own ``Time/train_time`` timer (the one ``Time/sps_train`` is
    computed from; with ``metric.log_level=0`` sheeprl disables it, so it is re-timed here): per training phase, the
    lazy sampling of the batches from the replay buffer, the target-critic copy every 100 steps and the ``train``
    calls.  ``block_s_per_step`` is sheeprl's definition of seconds per gradient step (1 / ``Time/sps_train``).
  - ``imagine`` — records the shape of the imagination's start states (16 × 50 = 800 expected) and the horizon.

  Peak RSS is the process's ``VmHWM`` (``/proc/self/status``) after the run.
* ``finalize`` (any Python 3): ``python sheeprl_timing.py finalize --raw RAW --out OUT [--time-log FILE]
  [--meta KEY=VALUE ...]`` reduces RAW to the result JSON (the first ``warmup`` gradient steps excluded), adds
  ``/usr/bin/time -v``'s "Maximum resident set size" when given, writes OUT and prints one summary line.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _get(cfg: Any, path: str) -> Any:
    node = cfg
    for key in path.split("."):
        try:
            node = node[key]
        except (KeyError, TypeError):
            return None
    return node


#: Resolved sheeprl settings copied into the result (what the run really used, not what the script asked for).
CFG_KEYS = [
    "env.id",
    "env.num_envs",
    "env.sync_env",
    "algo.mlp_keys.encoder",
    "algo.cnn_keys.encoder",
    "algo.world_model.recurrent_model.recurrent_state_size",
    "algo.world_model.recurrent_model.dense_units",
    "algo.world_model.recurrent_model.layer_norm",
    "algo.world_model.stochastic_size",
    "algo.world_model.discrete_size",
    "algo.world_model.transition_model.hidden_size",
    "algo.world_model.transition_model.layer_norm",
    "algo.world_model.representation_model.hidden_size",
    "algo.world_model.representation_model.layer_norm",
    "algo.world_model.encoder.mlp_layers",
    "algo.world_model.encoder.dense_units",
    "algo.world_model.observation_model.mlp_layers",
    "algo.world_model.observation_model.dense_units",
    "algo.world_model.reward_model.mlp_layers",
    "algo.world_model.reward_model.dense_units",
    "algo.world_model.use_continues",
    "algo.actor.mlp_layers",
    "algo.actor.dense_units",
    "algo.actor.objective_mix",
    "algo.critic.mlp_layers",
    "algo.critic.dense_units",
    "algo.critic.per_rank_target_network_update_freq",
    "algo.layer_norm",
    "algo.horizon",
    "algo.per_rank_batch_size",
    "algo.per_rank_sequence_length",
    "algo.replay_ratio",
    "algo.learning_starts",
    "algo.per_rank_pretrain_steps",
    "algo.total_steps",
    "algo.compile.enabled",
    "fabric.accelerator",
    "fabric.precision",
    "float32_matmul_precision",
    "num_threads",
    "metric.log_level",
    "buffer.memmap",
]


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import sheeprl  # registers the algorithms
    from sheeprl import cli

    m = sys.modules["sheeprl.algos.dreamer_v2.dreamer_v2"]
    rec: dict[str, Any] = {
        "sheeprl_version": sheeprl.__version__,
        "torch_version": torch.__version__,
        "grad_step_s": [],
        "blocks": [],  # [seconds, gradient steps] per training phase (sheeprl's Time/train_time)
        "threads_seen": [],
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
    }
    orig_train, orig_timer, orig_imagine = m.train, m.training_timer, m.imagine
    train_sig = inspect.signature(orig_train)

    def train(*a: Any, **kw: Any) -> Any:
        threads = torch.get_num_threads()
        if threads not in rec["threads_seen"]:
            rec["threads_seen"].append(threads)
        if not rec["grad_step_s"]:
            b = train_sig.bind(*a, **kw).arguments
            rec["rss_mib_at_first_grad_step"] = (_status_kib("VmRSS") or 0) / 1024
            rec["interop_threads"] = torch.get_num_interop_threads()
            rec["batch_shapes"] = {k: list(v.shape) for k, v in b["data"].items()}
            rec["params"] = {
                name: sum(p.numel() for p in b[name].parameters())
                for name in ("world_model", "actor", "critic", "target_critic")
            }
            rec["params"]["rssm"] = sum(p.numel() for p in b["world_model"].rssm.parameters())
            rec["cfg"] = {k: _get(b["cfg"], k) for k in CFG_KEYS}
            rec["world_model_repr"] = repr(b["world_model"])
            rec["actor_repr"] = repr(b["actor"])
            rec["critic_repr"] = repr(b["critic"])
        t0 = time.perf_counter()
        out = orig_train(*a, **kw)
        rec["grad_step_s"].append(time.perf_counter() - t0)
        return out

    @contextlib.contextmanager
    def training_timer(device: Any) -> Any:
        n0, t0 = len(rec["grad_step_s"]), time.perf_counter()
        with orig_timer(device):
            yield
        rec["blocks"].append([time.perf_counter() - t0, len(rec["grad_step_s"]) - n0])

    def imagine(world_model: Any, actor: Any, target_critic: Any, posteriors: Any, *a: Any, **kw: Any) -> Any:
        if "imagination_starts" not in rec:
            rec["imagination_starts"] = int(posteriors.shape[:-2].numel())  # [T, B, stoch, classes]
            rec["imagination_horizon"] = kw.get("horizon")
        return orig_imagine(world_model, actor, target_critic, posteriors, *a, **kw)

    m.train, m.training_timer, m.imagine = train, training_timer, imagine
    sys.argv = ["sheeprl", *args.overrides]
    t0 = time.perf_counter()
    cli.run()  # hydra.main: parses sys.argv
    rec["wall_s"] = time.perf_counter() - t0
    rec["peak_rss_mib"] = (_status_kib("VmHWM") or 0) / 1024
    rec["warmup"], rec["expect"], rec["threads_requested"] = args.warmup, args.expect, args.threads
    Path(args.raw).write_text(json.dumps(rec, indent=1))


def _max_rss_mib(time_log: str | None) -> float | None:
    if not time_log or not Path(time_log).is_file():
        return None
    for line in Path(time_log).read_text().splitlines():
        if "Maximum resident set size" in line:
            return int(line.rsplit(":", 1)[1]) / 1024
    return None


def finalize(args: argparse.Namespace) -> None:
    rec = json.loads(Path(args.raw).read_text())
    w, steps = rec["warmup"], rec["grad_step_s"]
    timed = steps[w:]
    if len(steps) != w + rec["expect"]:
        raise SystemExit(f"expected {w} + {rec['expect']} gradient steps, sheeprl ran {len(steps)}")
    if not timed:
        raise SystemExit("no gradient step left after the warm-up")
    # sheeprl's own boundary: the training phases whose first step comes after the warm-up
    done, blk_s, blk_n = 0, 0.0, 0
    for sec, n in rec["blocks"]:
        if done >= w and n:
            blk_s, blk_n = blk_s + sec, blk_n + n
        done += n
    meta = dict(kv.split("=", 1) for kv in args.meta)
    out = {
        "peer": "sheeprl",
        "algorithm": "dreamer_v2",
        "sheeprl_version": rec["sheeprl_version"],
        "torch_version": rec["torch_version"],
        "s_per_grad_step": statistics.fmean(timed),
        "s_per_grad_step_median": statistics.median(timed),
        "s_per_grad_step_min": min(timed),
        "s_per_grad_step_max": max(timed),
        "s_per_grad_step_stdev": statistics.stdev(timed) if len(timed) > 1 else 0.0,
        "s_per_grad_step_sheeprl_timer": blk_s / blk_n if blk_n else None,
        "grad_steps_timed": len(timed),
        "grad_steps_warmup": w,
        "warmup_grad_step_s": steps[:w],
        "peak_rss_mib": rec["peak_rss_mib"],
        "peak_rss_mib_time_v": _max_rss_mib(args.time_log),
        "rss_mib_at_first_grad_step": rec.get("rss_mib_at_first_grad_step"),
        "threads_requested": rec["threads_requested"],
        "torch_threads_seen": rec["threads_seen"],
        "torch_interop_threads": rec.get("interop_threads"),
        "thread_env": rec["env"],
        "imagination_starts": rec.get("imagination_starts"),
        "imagination_horizon": rec.get("imagination_horizon"),
        "batch_shapes_time_major": rec.get("batch_shapes"),
        "params": rec.get("params"),
        "sheeprl_cfg": rec.get("cfg"),
        "wall_s": rec["wall_s"],
        "timing": "grad_step_s: perf_counter around each call of sheeprl.algos.dreamer_v2.dreamer_v2.train (one "
        "world-model + actor + critic update on a sampled batch); sheeprl_timer: the same steps timed at the "
        "boundary of sheeprl's Time/train_time (adds the batch sampling and target-critic copies)",
        **meta,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    rss_v, blk = out["peak_rss_mib_time_v"], out["s_per_grad_step_sheeprl_timer"]
    print(
        f"sheeprl {out['sheeprl_version']} dreamer_v2 CartPole-v1: {out['s_per_grad_step']:.4f} s/grad step "
        f"(median {out['s_per_grad_step_median']:.4f}, sheeprl timer {blk if blk is None else round(blk, 4)}; "
        f"{len(timed)} steps after {w} warm-up), peak RSS {out['peak_rss_mib']:.0f} MiB"
        + (f" (time -v {rss_v:.0f})" if rss_v else "")
        + f", torch threads {out['torch_threads_seen']} (asked {out['threads_requested']}) -> {args.out}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run")
    r.add_argument("--threads", type=int, required=True)
    r.add_argument("--warmup", type=int, required=True)
    r.add_argument("--expect", type=int, required=True, help="timed gradient steps expected after the warm-up")
    r.add_argument("--raw", required=True)
    r.add_argument("overrides", nargs="*")
    f = sub.add_parser("finalize")
    f.add_argument("--raw", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--time-log", default=None)
    f.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    run(args) if args.mode == "run" else finalize(args)


if __name__ == "__main__":
    main()
