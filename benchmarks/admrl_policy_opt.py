"""PPO vs TRPO as AdMRL's VirtualTraining optimiser (issue: "measure which works here").

On ``admrl:halfcheetah-vel`` with a fixed task ψ, per optimiser and seed, the recipe's SLBO iterations from scratch
(cpu-preset sizes): collect ``n_collect`` real steps with the policy (plus noise), refit the ``GaussianEnsemble``,
``virtual_iters`` policy updates on model rollouts (``virtual_envs`` × ``virtual_horizon`` samples each).  Scored by
the *real* return of the deterministic policy (``episode_len`` steps, 3 episodes) every ``--every`` iterations; the
mean virtual return per iteration and the wall time per policy update are reported too.  Same data budget, sizes and
seeds for both.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/admrl_policy_opt.py [--seeds 0,1] [--iters 8] [--psi 0.5]
[--out benchmarks/results/admrl_policy_opt.json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.admrl.admrl import AdmrlTrainer  # noqa: E402
from recipes.admrl.config import AdmrlConfig  # noqa: E402
from recipes.envs import make_env  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="admrl:halfcheetah-vel")
    ap.add_argument("--psi", type=float, nargs="+", default=[0.5])
    ap.add_argument("--iters", type=int, default=8, help="SLBO iterations")
    ap.add_argument("--every", type=int, default=2, help="evaluate every this many iterations")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "admrl_policy_opt.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    psi = np.asarray(args.psi, np.float64)

    cfg = AdmrlConfig(env=args.env, seed=0, initial_psi=list(psi))
    env = make_env(cfg.env, seed=0)
    p = torch.as_tensor(psi, dtype=torch.float32)
    results: dict[str, dict[str, list]] = {}
    for opt in ("ppo", "trpo"):
        results[opt] = {"curves": [], "seconds_per_update": []}
        for seed in seeds:
            torch.manual_seed(seed)
            work = AdmrlTrainer(cfg.model_copy(update={"policy_opt": opt, "seed": seed}), env)
            env.set_task(psi)
            agent = work.new_ppo()
            curve, spent, virtual = [(0, work.evaluate_policy(agent, 3))], 0.0, []
            for i in range(1, args.iters + 1):  # SLBO iterations: collect, fit, optimise inside the model
                work.collect(agent, cfg.n_collect)
                work.fit()
                t = time.perf_counter()
                stats = work.virtual(agent, p, cfg.virtual_iters)
                spent += time.perf_counter() - t
                virtual.append(stats["virtual_return"])
                if i % args.every == 0:
                    curve.append((i, work.evaluate_policy(agent, 3)))
            results[opt]["curves"].append(curve)
            results[opt]["seconds_per_update"].append(spent / (args.iters * cfg.virtual_iters))
            print(
                f"{opt} seed {seed}: real " + ", ".join(f"{i}:{r:.0f}" for i, r in curve)
                + " | virtual " + ", ".join(f"{v:.0f}" for v in virtual),
                flush=True,
            )  # fmt: skip
    summary = {}
    for opt, res in results.items():
        finals = [c[-1][1] for c in res["curves"]]
        summary[opt] = {
            "final_real_return_mean": float(np.mean(finals)),
            "final_real_return_std": float(np.std(finals)),
            "per_seed": finals,
            "ms_per_update": 1e3 * statistics.median(res["seconds_per_update"]),
        }
        print(
            f"{opt}: final real return {summary[opt]['final_real_return_mean']:.1f} ± "
            f"{summary[opt]['final_real_return_std']:.1f} over seeds {seeds}, "
            f"{summary[opt]['ms_per_update']:.0f} ms per update"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "env": args.env,
                "psi": psi.tolist(),
                "slbo_iterations": args.iters,
                "real_steps_per_iteration": cfg.n_collect,
                "policy_updates_per_iteration": cfg.virtual_iters,
                "samples_per_update": cfg.virtual_envs * cfg.virtual_horizon,
                "summary": summary,
                "curves": {k: v["curves"] for k, v in results.items()},
                "machine": platform.processor() or platform.machine(),
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
