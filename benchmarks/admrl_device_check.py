"""The AdMRL trainer on any torch device: one SLBO iteration, the zero-shot adaptation and the task gradient at a
preset's sizes on ``admrl:halfcheetah-vel``, every tensor checked to live on the device, seconds per part printed
and written as JSON.

    python benchmarks/admrl_device_check.py --device cuda --preset cpu --out admrl_device.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.admrl.admrl import AdmrlTrainer  # noqa: E402
from recipes.envs import make_env  # noqa: E402
from recipes.registry import get_recipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = get_recipe("admrl").resolve(
        "admrl:halfcheetah-vel", args.preset, {"device": args.device, "initial_psi": [0.5]}, steps=1, seed=0
    )
    env = make_env(cfg.env, seed=0)
    trainer = AdmrlTrainer(cfg, env)
    env.set_task(trainer.psi)
    device = torch.device(args.device)
    timings: dict[str, float] = {}

    def timed(name: str, fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings[name] = time.perf_counter() - t
        print(f"{name:<28} {timings[name]:8.2f} s", flush=True)
        return out

    agent = trainer.new_ppo()
    psi = trainer.psi_tensor()
    timed("collect (real)", lambda: trainer.collect(agent, cfg.n_collect))
    timed("fit model", trainer.fit)
    timed("virtual training", lambda: trainer.virtual(agent, psi, cfg.virtual_iters))
    zero = trainer.new_ppo()
    timed("zero-shot adaptation", lambda: trainer.virtual(zero, psi, cfg.zeroshot_iters))
    grad, info = timed("task gradient", lambda: trainer.task_gradient(zero, agent))
    timed("evaluate policy", lambda: trainer.evaluate_policy(agent, cfg.eval_episodes))
    tensors = {
        "model": next(trainer.model.parameters()),
        "policy": next(agent.policy.parameters()),
        "value": next(agent.value.parameters()),
        "data": trainer.data.obs,  # type: ignore[union-attr]
    }
    where = {k: str(v.device) for k, v in tensors.items()}
    assert all(v.device.type == device.type for v in tensors.values()), where
    result = {
        "device": args.device,
        "name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "preset": args.preset,
        "threads": args.threads,
        "seconds": timings,
        "task_grad": grad.tolist(),
        "tensors": where,
        **info,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
