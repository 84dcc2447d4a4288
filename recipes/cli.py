"""The ``reweigh`` command line.

* ``reweigh --version``
* ``reweigh check-hypergrad [MODULE:FUNCTION]`` — finite-difference check of every strategy on a user's problem
* ``reweigh noisy-labels`` — Meta-Weight-Net on noisy digits vs ERM (the bundled example of the core)
* ``reweigh run RECIPE --env ENV --steps N --seed S --logdir DIR [--preset cpu|paper] [--set key=value ...]``
* ``reweigh compare --recipes tempo,dreamerv2 --env ENV --seeds 0,1,2 --steps N --logdir DIR`` — curves and
  Welch's t-test (TEMPO §3.1); ``--backend ray`` runs the missing runs on Ray
* ``reweigh sweep SWEEP.yaml [--address ADDR]`` — recipes × envs × seeds × overrides, each trial a run directory,
  on Ray (a private local one, or a cluster), summarised per env as by ``compare``
* ``reweigh inspect-weights DIR`` — TEMPO Table 2 (meta vs naive weights) for a tempo run's checkpoint
* ``reweigh inspect-actor DIR`` — a dreamerv2/tempo run's actor: saturation, deterministic vs sampled returns
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import sys
import time
import traceback
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
    """Resolve ``module.path:function`` or ``file.py:function`` to the callable.

    Raises:
        ValueError: naming ``spec`` and what was expected: a malformed spec, a missing file or module, a syntax
            error in the file, a missing attribute, or one that is not callable with no arguments.
    """
    if ":" not in spec:
        raise ValueError(f"target {spec!r} must look like 'package.module:function' or 'file.py:function'")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ValueError(f"target {spec!r}: no such file: {where}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except SyntaxError as err:
            raise ValueError(f"target {spec!r}: {where} line {err.lineno}: {err.msg}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as err:
            raise ValueError(
                f"target {spec!r}: no module named {err.name!r} (expected an importable 'package.module:function' "
                "or a path 'file.py:function')"
            ) from None
    if not hasattr(module, name):
        raise ValueError(f"target {spec!r}: {where} has no attribute {name!r}")
    fn = getattr(module, name)
    if not callable(fn):
        raise ValueError(f"target {spec!r}: {name} is a {type(fn).__name__}, expected a function of no arguments")
    try:
        inspect.signature(fn).bind()
    except TypeError:
        raise ValueError(
            f"target {spec!r}: {name}{inspect.signature(fn)} needs arguments; expected a function of no arguments"
        ) from None
    except ValueError:  # no signature (a builtin): let the call tell
        pass
    return fn


#: what a check-hypergrad target returns, in order (a dict with these keys, or a 4-tuple).
PROBLEM_KEYS = ("per_sample_loss", "upper_loss", "params", "weights")


def check_problem(spec: Any, where: str) -> dict[str, Any]:
    """Validate what a check-hypergrad target returned; the problem as a dict of ``PROBLEM_KEYS``.

    Raises:
        ValueError: naming ``where`` and the first item that is not what ``bilevel.check_hypergradient``
            expects (arity, keys, types, shapes).
    """
    import torch

    expected = "a dict with keys " + ", ".join(PROBLEM_KEYS) + " (or a tuple of these 4 in this order)"
    if isinstance(spec, (tuple, list)):
        if len(spec) != len(PROBLEM_KEYS):
            raise ValueError(f"{where} returned {len(spec)} values; expected 4: {', '.join(PROBLEM_KEYS)}")
        spec = dict(zip(PROBLEM_KEYS, spec, strict=True))
    if not isinstance(spec, dict):
        raise ValueError(f"{where} returned a {type(spec).__name__}; expected {expected}")
    missing = [k for k in PROBLEM_KEYS if k not in spec]
    if missing:
        unknown = sorted(set(spec) - set(PROBLEM_KEYS))
        extra = f" (it has {', '.join(map(str, unknown))})" if unknown else ""
        raise ValueError(f"{where} returned a dict without {', '.join(missing)}{extra}; expected {expected}")
    for key, what in (
        ("per_sample_loss", "a function params -> per-sample losses [N]"),
        ("upper_loss", "a function params -> the scalar upper loss"),
    ):
        if not callable(spec[key]):
            raise ValueError(f"{where}: {key} is a {type(spec[key]).__name__}; expected {what}")
    params = spec["params"]
    if not isinstance(params, dict) or not params:
        raise ValueError(
            f"{where}: params is a {type(params).__name__}; expected a non-empty dict name -> tensor (θ, the "
            "lower-level parameters)"
        )
    for name, value in params.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            kind = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
            raise ValueError(f"{where}: params[{name!r}] is {kind}; expected a floating-point tensor")
    weights = spec["weights"]
    if not isinstance(weights, torch.Tensor) or not weights.is_floating_point() or weights.dim() == 0:
        kind = (
            f"a {weights.dtype} tensor of shape {list(weights.shape)}"
            if isinstance(weights, torch.Tensor)
            else f"a {type(weights).__name__}"
        )
        raise ValueError(
            f"{where}: weights is {kind}; expected a floating-point tensor of one weight per sample, the shape of "
            "per_sample_loss's output (e.g. [N] or [B, T])"
        )
    return spec


def _int_list(text: str, option: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``.

    Raises:
        ValueError: naming ``option``, for anything but a comma list of integers.
    """
    try:
        out = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        out = []
    if not out:
        raise ValueError(f"{option}: expected comma-separated integers such as 0,1,2, got {text!r}")
    return out


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
        spec = check_problem(problem(), "the demo problem")
    else:
        spec = check_problem(load_target(args.target)(), f"target {args.target!r}")
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

    seeds = _int_list(args.seeds, "--seeds")
    overrides = {"epochs": args.epochs} if args.epochs else {}
    compare(seeds, args.strategy, Path(args.out) if args.out else None, **overrides)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from recipes.envs import make_env
    from recipes.registry import RECIPES, get_recipe
    from recipes.run.config import parse_sets

    recipe = get_recipe(args.recipe)
    sets = parse_sets(args.set)
    if getattr(args, "init", None) is not None or getattr(args, "init_parts", None) is not None:
        if "init" not in recipe.config.model_fields:
            can = " and ".join(r.name for r in RECIPES.values() if "init" in r.config.model_fields)
            raise ValueError(f"--init: recipe {recipe.name!r} cannot start from a checkpoint ({can} can)")
        if args.init is None:
            raise ValueError("--init-parts: give --init RUN_DIR too (the run to start from)")
        init = Path(args.init)
        if not (init / "checkpoints").is_dir():
            raise ValueError(f"--init {args.init}: not a run directory (expected {init / 'checkpoints'}/)")
        sets["init"] = str(init.resolve())
        if args.init_parts is not None:
            sets["init_parts"] = args.init_parts
    cfg = recipe.resolve(args.env, args.preset, sets, steps=args.steps, seed=args.seed)
    if Path(args.logdir).exists() and not Path(args.logdir).is_dir():
        raise ValueError(f"--logdir {args.logdir}: a file, not a directory")
    make_env(cfg.env, seed=cfg.seed, **cfg.env_kwargs()).close()  # validate before writing
    summary = recipe.run(cfg, Path(args.logdir), force=args.force, progress=not args.no_progress)
    print(
        f"done: {summary['env_steps']} env steps, {summary['updates']} updates, "
        f"final eval return {summary['eval_return']:.1f} -> {args.logdir}"
    )
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """``reweigh pretrain``: a run of ``--recipe`` on the set ``--envs`` (an ordinary run directory)."""
    from recipes.envs.multitask import split_names

    members = split_names(args.envs)
    if len(members) < 2:
        raise ValueError(f"--envs {args.envs!r}: pre-training needs at least two environments (a comma list)")
    args.env, args.init, args.init_parts = ",".join(members), None, None
    return cmd_run(args)


def _check_variants(variants: Sequence[Any], env: str, preset: str, sets: list[str], steps: int) -> None:
    """Resolve every variant's config before any run starts (a typo fails here, not in a subprocess's log).

    Raises:
        ValueError: naming the variant and the offending setting.
    """
    from recipes.registry import get_recipe
    from recipes.run.config import parse_sets

    for v in variants:
        try:
            get_recipe(v.recipe).resolve(env, preset, parse_sets([*sets, *v.sets]), steps=steps)
        except ValueError as err:
            raise ValueError(f"--recipes {v.label!r}: {err}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    from recipes.compare import Variant, compare

    variants = [Variant.parse(x) for x in args.recipes.split(",") if x.strip()]
    seeds = _int_list(args.seeds, "--seeds")
    _check_variants(variants, args.env, args.preset, args.set or [], args.steps)
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
        backend=args.backend,
        address=args.address,
    )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from recipes.sweep import run_sweep

    run_sweep(
        args.sweep,
        backend=args.backend,
        address=args.address,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        dry_run=args.dry_run,
    )
    return 0


def cmd_tool(args: argparse.Namespace) -> int:
    """``reweigh inspect-weights DIR``, ``reweigh inspect-actor DIR``: the after-run subcommand of the recipe that
    ``DIR/config.json`` names (``recipes.registry.Recipe.tools``)."""
    import json

    from recipes.registry import RECIPES
    from recipes.run.rundir import read_config

    logdir = Path(args.logdir)
    name = read_config(logdir).get("recipe")
    if name not in RECIPES:
        have = " or ".join(r.name for r in RECIPES.values() if args.command in r.tools)
        raise ValueError(f"logdir: {logdir} is not a {have} run (its config.json names no recipe)")
    tool = RECIPES[name].tool(args.command, logdir)
    result, lines = tool.run(logdir, vars(args))
    print("\n".join(lines))
    if getattr(args, "out", None):
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from recipes.envs.registry import env_usage

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

    run = sub.add_parser("run", help="train (or resume) a recipe in a run directory", add_help=False)
    from recipes.registry import RECIPES

    run.add_argument(
        "-h",
        "--help",
        action=_RecipeHelp,
        nargs=0,
        help="show this help; after RECIPE also the recipe's settings (the --set keys) as --env and --preset resolve "
        "them, e.g. reweigh run tempo --help",
    )

    run.add_argument("recipe", help="; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values()))
    run.add_argument(
        "--env", default="dmc:cartpole_swingup", help=f"{env_usage()}, or a comma list of them (one drawn per episode)"
    )
    run.add_argument("--steps", type=int, default=100_000, help="environment steps (agent steps × action repeat)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--logdir", required=True)
    run.add_argument("--preset", default="cpu", help="cpu (default) or paper")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    run.add_argument("--force", action="store_true", help="resume even if the config changed")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument(
        "--init", metavar="RUN_DIR", help="start from this run's checkpoint (e.g. of reweigh pretrain): fine-tuning"
    )
    run.add_argument(
        "--init-parts",
        choices=["wm", "wm+ac"],
        metavar="PARTS",
        help="what --init loads: wm (the world model) or wm+ac (and the actor-critic; default)",
    )
    run.set_defaults(func=cmd_run)

    pre = sub.add_parser(
        "pretrain",
        help="pre-train one agent on a set of environments (one drawn per episode); fine-tune with run --init",
    )
    pre.add_argument("--envs", required=True, help="comma list sharing spaces, e.g. dmc:walker_stand,walker_walk")
    pre.add_argument("--recipe", default="dreamerv2", help="dreamerv2 (default) or tempo")
    pre.add_argument("--steps", type=int, default=100_000, help="environment steps over all tasks together")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--logdir", required=True)
    pre.add_argument("--preset", default="cpu", help="cpu (default) or paper")
    pre.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    pre.add_argument("--force", action="store_true", help="resume even if the config changed")
    pre.add_argument("--no-progress", action="store_true")
    pre.set_defaults(func=cmd_pretrain)

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
    cmp.add_argument(
        "--backend", default="local", choices=["local", "ray"], help="run missing runs here (default) or on Ray"
    )
    cmp.add_argument("--address", default=None, help="Ray cluster address for --backend ray (default: a local Ray)")
    cmp.set_defaults(func=cmd_compare)

    swp = sub.add_parser("sweep", help="recipes × envs × seeds × overrides from a YAML file, each trial on Ray")
    swp.add_argument("sweep", help="the sweep file (YAML; docs/sweeps.md)")
    swp.add_argument(
        "--address",
        default=None,
        help="a running Ray cluster (HOST:PORT, or auto on a cluster node); default: a local Ray for this sweep only",
    )
    swp.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: this machine's)")
    swp.add_argument("--num-gpus", type=float, default=None, help="GPUs of the local Ray (default: detected)")
    swp.add_argument(
        "--backend", default="ray", choices=["ray", "local"], help="ray (default) or local subprocesses (jobs:)"
    )
    swp.add_argument("--dry-run", action="store_true", help="print the trials and their commands; run nothing")
    swp.set_defaults(func=cmd_sweep)

    ins = sub.add_parser("inspect-weights", help="TEMPO Table 2: meta vs naive weights of a tempo checkpoint")
    ins.add_argument("logdir")
    ins.add_argument("--sequences", type=int, default=4)
    ins.add_argument("--show", type=int, default=8, help="weights printed per sequence")
    ins.add_argument("--seed", type=int, default=0)
    ins.add_argument(
        "--gain",
        type=int,
        default=0,
        help="also the weights' gain in upper loss after one virtual step, over this many replayed batches (≥ 2)",
    )
    ins.set_defaults(func=cmd_tool)
    act = sub.add_parser(
        "inspect-actor", help="a dreamerv2/tempo checkpoint's actor: saturation, deterministic vs sampled returns"
    )
    act.add_argument("logdir")
    act.add_argument("--episodes", type=int, default=5, help="episodes per evaluation mode")
    act.add_argument("--sequences", type=int, default=16, help="replayed sequences for the saturation statistics")
    act.add_argument("--seed", type=int, default=777, help="the evaluation episodes' seed")
    act.add_argument("--out", default=None, help="also write the numbers as JSON here")
    act.set_defaults(func=cmd_tool)
    return parser


class _RecipeHelp(argparse.Action):
    """``reweigh run [RECIPE] --help``: the ``run`` help, then, when a recipe was named before it, that recipe's
    settings (``recipes.registry.settings_help``) under the ``--env`` and ``--preset`` given before it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, *_: Any) -> None:
        from recipes.registry import RECIPES, settings_help

        parser.print_help()
        recipe = getattr(namespace, "recipe", None)
        if recipe in RECIPES:
            print()
            print(settings_help(recipe, getattr(namespace, "env", None), getattr(namespace, "preset", "cpu")))
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from recipes.run.stop import Interrupted

    try:
        return int(args.func(args))
    except ValueError as err:
        print(f"reweigh: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as err:  # SIGINT or SIGTERM: the run wrote a checkpoint first
        print(f"reweigh: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # a second signal, or one outside a run
        print("reweigh: interrupted (no checkpoint written)", file=sys.stderr)
        return 130
    except RuntimeError as err:
        where = _save_traceback(getattr(args, "logdir", None), sys.argv[1:] if argv is None else argv)
        print(f"reweigh: failed: {err}" + (f" (traceback: {where})" if where else ""), file=sys.stderr)
        return 1


def _save_traceback(logdir: str | None, argv: Sequence[str]) -> Path | None:
    """Append the exception being handled, with its traceback, the time and the command's arguments ``argv``, to
    ``<logdir>/error.log`` when the run directory exists (the one-line message alone does not say where a failure
    came from); None otherwise."""
    if logdir is None or not Path(logdir).is_dir():
        return None
    path = Path(logdir) / "error.log"
    try:
        with path.open("a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: reweigh {' '.join(argv)}\n")
            f.write(traceback.format_exc())
    except OSError:  # a full disk must not hide the failure itself
        return None
    return path


if __name__ == "__main__":
    sys.exit(main())
