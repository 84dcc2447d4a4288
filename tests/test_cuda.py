"""Every recipe runs on ``cuda`` unchanged (`--set device=cuda`): tiny end-to-end runs, skipped without a GPU."""

from __future__ import annotations

import json

import pytest
import test_admrl_run
import test_dreamer_run
import test_m3po_run
import torch

from recipes.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _argv(recipe: str, logdir) -> list[str]:
    if recipe in ("dreamerv2", "tempo"):
        argv = test_dreamer_run._args(logdir, 200)
        argv[1] = recipe
    elif recipe in ("m3po", "mbpo", "sac"):
        argv = test_m3po_run._args(logdir, 200, recipe)
    else:
        argv = test_admrl_run._args(logdir, recipe)
    return [*argv, "--set", "device=cuda"]


@pytest.mark.parametrize("recipe", ["dreamerv2", "tempo", "m3po", "mbpo", "sac", "admrl", "mb-unif", "mb-gauss"])
def test_recipe_runs_on_cuda(tmp_path, recipe):
    logdir = tmp_path / recipe
    assert main(_argv(recipe, logdir)) == 0
    assert json.loads((logdir / "config.json").read_text())["device"] == "cuda"
    assert (logdir / "metrics.jsonl").stat().st_size > 0
