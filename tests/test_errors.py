"""Bad user input at every entry point: one line on stderr, exit 2, saying what was expected and where."""

from __future__ import annotations

import textwrap

import pytest

from recipes.cli import main

PROBLEM = textwrap.dedent("""
    import torch

    x = torch.randn(6, 2, dtype=torch.float64)
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)

    def psl(p):
        return (x @ p["theta"]) ** 2

    def up(p):
        return (x @ p["theta"]).mean()

    def three():
        return psl, up, {"theta": theta}

    def text():
        return "per_sample_loss"

    def typo():
        return {"per_sample_loss": psl, "upper_loss": up, "params": {"theta": theta}, "weight": torch.ones(6)}

    def tensor_params():
        return psl, up, theta, torch.ones(6, dtype=torch.float64)

    def int_params():
        return psl, up, {"theta": torch.zeros(2, dtype=torch.long)}, torch.ones(6)

    def scalar_weights():
        return psl, up, {"theta": theta}, torch.tensor(1.0, dtype=torch.float64)

    def loss_not_callable():
        return 1.0, up, {"theta": theta}, torch.ones(6, dtype=torch.float64)

    def needs_args(n):
        return None

    constant = 3
""")


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("reweigh: error: "), err
    return err.removeprefix("reweigh: error: ")


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        ("three", "returned 3 values; expected 4: per_sample_loss, upper_loss, params, weights"),
        ("text", "returned a str; expected a dict with keys per_sample_loss, upper_loss, params, weights"),
        ("typo", "returned a dict without weights (it has weight); expected a dict with keys"),
        ("tensor_params", "params is a Tensor; expected a non-empty dict name -> tensor"),
        ("int_params", "params['theta'] is a torch.int64 tensor; expected a floating-point tensor"),
        ("scalar_weights", "weights is a torch.float64 tensor of shape []; expected a floating-point tensor of one"),
        ("loss_not_callable", "per_sample_loss is a float; expected a function params -> per-sample losses [N]"),
        ("needs_args", "needs_args(n) needs arguments; expected a function of no arguments"),
        ("constant", "constant is a int, expected a function of no arguments"),
        ("missing", "has no attribute 'missing'"),
    ],
)
def test_check_hypergrad_target_errors_say_what_was_expected(tmp_path, capsys, fn, expected):
    f = tmp_path / "prob.py"
    f.write_text(PROBLEM)
    err = _error(capsys, ["check-hypergrad", f"{f}:{fn}"])
    assert err.startswith(f"target '{f}:{fn}'") and expected in err


def test_check_hypergrad_unloadable_targets(tmp_path, capsys):
    assert "no module named 'no_such_pkg'" in _error(capsys, ["check-hypergrad", "no_such_pkg.mod:fn"])
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n    pass\n")
    assert f"{bad} line 1: " in _error(capsys, ["check-hypergrad", f"{bad}:f"])
    assert "no such file" in _error(capsys, ["check-hypergrad", f"{tmp_path / 'nope.py'}:f"])


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["=3"], "--set '=3': expected KEY=VALUE, e.g. --set batch_size=16"),
        (["batch_size"], "--set 'batch_size': expected KEY=VALUE"),
        (["batch_sise=8"], "batch_sise: unknown setting; did you mean batch_size? (the settings are the fields of"),
        (["batch_size=many"], "batch_size: expected a valid integer, unable to parse string as an integer, got 'many'"),
        (["steps=-3"], "steps: expected a number greater than or equal to 1, got -3"),
        (["image_size=48"], "image_size: expected 32 or 64, got 48"),
        (["max_nonfinite=0"], "max_nonfinite: expected a number greater than or equal to 1, got 0"),
    ],
)
def test_run_set_errors_name_the_key_the_expectation_and_the_value(tmp_path, capsys, sets, expected):
    argv = ["run", "dreamerv2", "--steps", "100", "--logdir", str(tmp_path / "run")]
    for item in sets:
        argv += ["--set", item]
    assert expected in _error(capsys, argv)
    assert not (tmp_path / "run").exists()


def test_a_damaged_config_json_is_named(tmp_path, capsys):
    logdir = tmp_path / "run"
    logdir.mkdir()
    (logdir / "config.json").write_text('{"recipe": "dreamerv2", ')
    err = _error(capsys, ["run", "dreamerv2", "--steps", "100", "--logdir", str(logdir)])
    assert err.startswith(f"{logdir / 'config.json'} is not a JSON object of config values")
    assert "config.json: not a JSON config" in _error(capsys, ["inspect-weights", str(logdir)])
    (logdir / "config.json").write_text("[1, 2]")
    assert "is not a JSON object" in _error(capsys, ["run", "dreamerv2", "--steps", "100", "--logdir", str(logdir)])
    assert "config.json: not a JSON object of config values" in _error(capsys, ["inspect-weights", str(logdir)])
    (logdir / "config.json").write_text('{"recipe": "tempo", "stepz": 3}')
    assert "config.json: stepz: unknown setting; did you mean steps?" in _error(
        capsys, ["inspect-weights", str(logdir)]
    )


def test_compare_checks_every_variant_before_running_any(tmp_path, capsys):
    err = _error(
        capsys, ["compare", "--recipes", "tempo+strategy=lookahed,dreamerv2", "--logdir", str(tmp_path), "--seeds", "0"]
    )
    assert err.startswith("--recipes 'tempo+strategy=lookahed': strategy: expected ")
    assert "got 'lookahed'" in err
    err = _error(capsys, ["compare", "--recipes", "tempo,dreamer", "--logdir", str(tmp_path)])
    assert "unknown recipe 'dreamer'" in err and "expected RECIPE or RECIPE+key=value" in err
    err = _error(capsys, ["compare", "--recipes", "tempo,dreamerv2", "--seeds", "0,one", "--logdir", str(tmp_path)])
    assert err == "--seeds: expected comma-separated integers such as 0,1,2, got '0,one'"
    assert not list(tmp_path.iterdir())  # nothing started


def test_noisy_labels_seeds(capsys):
    assert _error(capsys, ["noisy-labels", "--seeds", "a"]).startswith("--seeds: expected comma-separated integers")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "tempoo", "--env", "dmc:cartpole_swingup"], "recipe: unknown 'tempoo'; did you mean tempo"),
        (
            ["run", "tempo", "--env", "dmcc:cartpole_swingup"],
            "env: unknown family 'dmcc' in 'dmcc:cartpole_swingup'; did you mean dmc?",
        ),
        (
            ["run", "tempo", "--env", "dmc:cartpole_swingupp"],
            "unknown environment 'dmc:cartpole_swingupp'; did you mean cartpole_swingup",
        ),
        (
            ["run", "sac", "--env", "meta:halfcheetah-fwd-bwdd"],
            "'meta:halfcheetah-fwd-bwdd'; did you mean halfcheetah-fwd-bwd",
        ),
    ],
)
def test_misspelt_names_get_a_did_you_mean(tmp_path, capsys, argv, expected):
    assert main([*argv, "--logdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
