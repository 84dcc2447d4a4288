"""The ``reweigh`` command line.

* ``reweigh --version``
* ``reweigh check-hypergrad [MODULE:FUNCTION]`` — finite-difference check of every strategy on a user's problem
* ``reweigh noisy-labels`` — Meta-Weight-Net on noisy digits vs ERM (the bundled example of the core)
* ``reweigh run RECIPE --env ENV --steps N --seed S --logdir DIR [--preset cpu|paper] [--set key=value ...]``
* ``reweigh compare --recipes tempo,dreamerv2 --env ENV --seeds 0,1,2 --steps N --logdir DIR`` — curves and
  Welch's t-test (TEMPO §3.1)
* ``reweigh inspect-weights DIR`` — TEMPO Table 2 (meta vs naive weights) for a tempo run's checkpoint
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("reweigh")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0+unknown"


def load_target(spec: str) -> Any:
    """Resolve ``module.path:function`` or ``file.py:function`` to the callable."""
    if ":" not in spec:
        raise ValueError(f"target {spec!r} must look like 'package.module:function' or 'file.py:function'")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ValueError(f"no such file: {where}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    if not hasattr(module, name):
        raise ValueError(f"{where} has no attribute {name!r}")
    return getattr(module, name)


def _strategies(names: str, lr: float, cg_iters: int, damping: float) -> list[Any]:
    from bilevel import make_strategy

    out = [make_strategy(name, lr=lr, iters=cg_iters, damping=damping) for name in names.split(",")]
    for name, strategy in zip(names.split(","), out, strict=True):
        if not strategy.trains_weighter:
            raise ValueError(
                f"strategy {name.strip()!r} computes no hypergradient; check same_state, lookaheadK, "
                "implicit or implicit_normal"
            )
    return out


def cmd_check_hypergrad(args: argparse.Namespace) -> int:
    from bilevel import check_hypergradient, format_report

    if args.target is None:
        from recipes.examples.check_demo import problem

        print(
            "checking the built-in demo problem (recipes/examples/check_demo.py: GRU sequence model, "
            "VAML-like upper loss)"
        )
        spec = problem()
    else:
        spec = load_target(args.target)()
    if isinstance(spec, (tuple, list)):
        spec = dict(zip(("per_sample_loss", "upper_loss", "params", "weights"), spec, strict=True))
    missing = {"per_sample_loss", "upper_loss", "params", "weights"} - set(spec)
    if missing:
        raise ValueError(f"target must return per_sample_loss, upper_loss, params, weights; missing {sorted(missing)}")
    strategies = _strategies(args.strategies, args.lr, args.cg_iters, args.damping)
    rows = check_hypergradient(
        spec["per_sample_loss"],
        spec["upper_loss"],
        spec["params"],
        spec["weights"],
        strategies,
        directions=args.directions,
    )
    print(format_report(rows))
    dtype = spec["weights"].dtype
    if str(dtype) != "torch.float64":
        print(f"note: weights are {dtype}; float64 gives far tighter agreement")
    return 0 if all(r.passed for r in rows) else 1


def cmd_noisy_labels(args: argparse.Namespace) -> int:
    from recipes.examples.noisy_labels import compare

    seeds = [int(s) for s in args.seeds.split(",")]
    overrides = {"epochs": args.epochs} if args.epochs else {}
    compare(seeds, args.strategy, Path(args.out) if args.out else None, **overrides)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from recipes.envs import make_env
    from recipes.registry import get_recipe
    from recipes.run.config import parse_sets

    recipe = get_recipe(args.recipe)
    cfg = recipe.resolve(args.env, args.preset, parse_sets(args.set), steps=args.steps, seed=args.seed)
    make_env(cfg.env, seed=cfg.seed, **cfg.env_kwargs()).close()  # validate before writing
    summary = recipe.run(cfg, Path(args.logdir), force=args.force, progress=not args.no_progress)
    print(
        f"done: {summary['env_steps']} env steps, {summary['updates']} updates, "
        f"final eval return {summary['eval_return']:.1f} -> {args.logdir}"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from recipes.compare import Variant, compare

    variants = [Variant.parse(x) for x in args.recipes.split(",") if x.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    compare(
        variants,
        seeds,
        env=args.env,
        steps=args.steps,
        logdir=Path(args.logdir),
        preset=args.preset,
        sets=args.set or [],
        jobs=args.jobs,
        threads=args.threads,
        run=not args.no_run,
        name=args.name,
    )
    return 0


def cmd_inspect_weights(args: argparse.Namespace) -> int:
    from recipes.dreamer.tempo import inspect_weights

    inspect_weights(Path(args.logdir), sequences=args.sequences, show=args.show, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reweigh", description="Task-aware model learning by bi-level reweighting")
    parser.add_argument("--version", action="version", version=f"reweigh {_version()}")
    sub = parser.add_subparsers(dest="command")

    chk = sub.add_parser("check-hypergrad", help="check hypergradients of your losses against finite differences")
    chk.add_argument(
        "target",
        nargs="?",
        help="'module:function' or 'file.py:function' returning a dict with "
        "per_sample_loss, upper_loss, params, weights (default: a built-in demo)",
    )
    chk.add_argument(
        "--strategies",
        default="same_state,lookahead1,lookahead3,implicit",
        help="comma list of same_state, lookaheadK, implicit, implicit_normal",
    )
    chk.add_argument("--lr", type=float, default=0.1, help="η of SameState/Lookahead (default 0.1)")
    chk.add_argument("--cg-iters", type=int, default=200)
    chk.add_argument(
        "--damping",
        type=float,
        default=1.0,
        help="λ of the implicit strategies (default 1.0: the proximal lower problem, well posed even "
        "where the Hessian is singular or indefinite)",
    )
    chk.add_argument(
        "--directions",
        type=int,
        default=None,
        help="random directions to check (default: all coordinates when N <= 32)",
    )
    chk.set_defaults(func=cmd_check_hypergrad)

    noisy = sub.add_parser("noisy-labels", help="Meta-Weight-Net on digits with 40%% label noise vs ERM")
    noisy.add_argument("--seeds", default="0,1,2")
    noisy.add_argument("--strategy", default="lookahead", choices=["lookahead", "same_state", "implicit"])
    noisy.add_argument("--epochs", type=int, default=None)
    noisy.add_argument("--out", default=None, help="write results JSON here")
    noisy.set_defaults(func=cmd_noisy_labels)

    run = sub.add_parser("run", help="train (or resume) a recipe in a run directory")
    from recipes.registry import RECIPES

    run.add_argument("recipe", help="; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values()))
    run.add_argument(
        "--env", default="dmc:cartpole_swingup", help="dmc:DOMAIN_TASK, atari:GAME, gym:ID, meta:FAMILY or admrl:FAMILY"
    )
    run.add_argument("--steps", type=int, default=100_000, help="environment steps (agent steps × action repeat)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--logdir", required=True)
    run.add_argument("--preset", default="cpu", help="cpu (default) or paper")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    run.add_argument("--force", action="store_true", help="resume even if the config changed")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=cmd_run)

    cmp = sub.add_parser("compare", help="run or reuse several recipes over seeds; curves and Welch's t-test")
    cmp.add_argument(
        "--recipes",
        default="tempo,dreamerv2",
        help="comma list of RECIPE or RECIPE+key=value+...; the first is tested against the second",
    )
    cmp.add_argument("--env", default="dmc:cartpole_swingup")
    cmp.add_argument("--seeds", default="0,1,2")
    cmp.add_argument("--steps", type=int, default=100_000)
    cmp.add_argument("--logdir", required=True)
    cmp.add_argument("--preset", default="cpu")
    cmp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every run (repeatable)")
    cmp.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2: one per core here)")
    cmp.add_argument("--threads", type=int, default=1, help="torch threads per run")
    cmp.add_argument("--no-run", action="store_true", help="only summarise the runs already in --logdir")
    cmp.add_argument("--name", default="compare", help="basename of the .png/.json/.md written in --logdir")
    cmp.set_defaults(func=cmd_compare)

    ins = sub.add_parser("inspect-weights", help="TEMPO Table 2: meta vs naive weights of a tempo checkpoint")
    ins.add_argument("logdir")
    ins.add_argument("--sequences", type=int, default=4)
    ins.add_argument("--show", type=int, default=8, help="weights printed per sequence")
    ins.add_argument("--seed", type=int, default=0)
    ins.set_defaults(func=cmd_inspect_weights)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except ValueError as err:
        print(f"reweigh: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as err:
        print(f"reweigh: failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
