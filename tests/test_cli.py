"""The reweigh command line: version, check-hypergrad on the demo and on user targets, usage errors."""

import subprocess
import sys
import textwrap

import pytest

from recipes.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.startswith("reweigh ")


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "recipes.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "reweigh" in out.stdout


def test_check_hypergrad_demo_passes(capsys):
    rc = main(["check-hypergrad", "--strategies", "same_state,lookahead1,lookahead2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count(" ok ") == 3


USER_PROBLEM = textwrap.dedent("""
    import torch

    def make(bad=False):
        torch.manual_seed(0)
        x = torch.randn(12, 3, dtype=torch.float64)
        y = torch.randn(12, dtype=torch.float64)
        theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)

        def per_sample_loss(p):
            noise = torch.randn(12, dtype=torch.float64) if bad else 0.0
            return (x @ p["theta"] - y) ** 2 + noise

        def upper_loss(p):
            return (x[:4] @ p["theta"]).pow(2).mean()

        return {"per_sample_loss": per_sample_loss, "upper_loss": upper_loss,
                "params": {"theta": theta}, "weights": torch.ones(12, dtype=torch.float64)}

    def noisy():
        return make(bad=True)
""")


def test_check_hypergrad_user_file(tmp_path, capsys):
    f = tmp_path / "my_loss.py"
    f.write_text(USER_PROBLEM)
    assert (
        main(["check-hypergrad", f"{f}:make", "--strategies", "same_state,lookahead3,implicit", "--damping", "0"]) == 0
    )
    out = capsys.readouterr().out
    assert out.count(" ok ") == 3, out


def test_check_hypergrad_usage_errors(tmp_path, capsys):
    f = tmp_path / "my_loss.py"
    f.write_text(USER_PROBLEM)
    assert main(["check-hypergrad", f"{f}:noisy"]) == 2
    assert "not deterministic" in capsys.readouterr().err
    assert main(["check-hypergrad", "no_colon_here"]) == 2
    assert main(["check-hypergrad", f"{f}:missing"]) == 2
    assert main(["check-hypergrad", "--strategies", "magic"]) == 2
    assert main([]) == 2


def test_every_registered_recipe_resolves_its_presets_and_is_listed_in_help(capsys):
    from recipes.registry import RECIPES, get_recipe

    for name, recipe in RECIPES.items():
        for preset in recipe.presets[0]:
            cfg = recipe.resolve(recipe.config().env, preset, steps=10, seed=3)
            assert isinstance(cfg, recipe.config) and cfg.steps == 10 and cfg.preset == preset
        assert get_recipe(name) is recipe
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in RECIPES)


def test_run_recipe_help_lists_the_recipes_settings_as_env_and_preset_resolve_them(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "tempo", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("usage: reweigh run") and "settings of tempo with --env dmc:cartpole_swingup --preset cpu" in out
    )
    assert "  meta_every = 16  (default 1)" in out  # the cpu preset's value, and the field's default
    assert "  hypergradient_scale = 'unit_norm'\n" in out and "the same direction at unit norm" in out
    with pytest.raises(SystemExit):
        main(["run", "tempo", "--preset", "paper", "--help"])
    assert "  meta_every = 1\n" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--help"])  # no recipe named: the generic help only
    assert "settings of" not in capsys.readouterr().out
