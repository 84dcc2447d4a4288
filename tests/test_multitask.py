"""Multi-task pre-training and fine-tuning (issue 13): the per-episode task draw, balanced sampling, ``reweigh
pretrain``, ``--init`` loading exactly what it says and refusing what does not fit, and tempo's task-aware
weighter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rundirs import records
from test_dreamer_run import TINY

from bilevel import MetaWeighter
from recipes.cli import main
from recipes.envs import make_env
from recipes.envs.base import Env
from recipes.envs.multitask import MultiTaskEnv, split_names


class Fake(Env):
    """A vector env whose observation is its own marker, episodes of ``length`` steps."""

    family = "dmc"

    def __init__(self, marker: float, *, obs: int = 3, action: int = 2, length: int = 4) -> None:
        super().__init__(
            f"dmc:fake{marker:g}",
            obs_shape=(obs,),
            obs_dtype=np.float32,
            action_dim=action,
            discrete=False,
            pixels=False,
            action_repeat=2,
            time_limit=None,
            low=-np.ones(action),
            high=np.ones(action),
        )
        self.marker, self.length, self.t = marker, length, 0

    def _reset_inner(self) -> np.ndarray:
        self.t = 0
        return self._observe()

    def _step_inner(self, env_action):
        self.t += 1
        return 1.0, self.t >= self.length, False

    def _observe(self) -> np.ndarray:
        return np.full(self.obs_shape, self.marker, np.float32)


def test_split_names_inherits_the_family():
    assert split_names("dmc:walker_stand,walker_walk, walker_run") == [
        "dmc:walker_stand",
        "dmc:walker_walk",
        "dmc:walker_run",
    ]
    with pytest.raises(ValueError, match="needs a family"):
        split_names("walker_walk,dmc:walker_run")
    with pytest.raises(ValueError, match="empty member"):
        split_names("dmc:walker_walk,,walker_run")


def test_one_task_per_episode_drawn_uniformly_and_tagged():
    env = MultiTaskEnv([Fake(0), Fake(1), Fake(2)], seed=3)
    counts = np.zeros(3)
    for _ in range(1500):
        step = env.reset()
        task = int(step["task"])
        counts[task] += 1
        while not step["is_last"]:  # the whole episode stays in the drawn member
            assert step["obs"][0] == task and int(step["task"]) == task
            step = env.step(np.zeros(2))
        assert step["obs"][0] == task and int(step["task"]) == task
    assert (np.abs(counts / 1500 - 1 / 3) < 0.04).all()
    # the draw is seeded: the same seed, the same sequence of tasks
    a = MultiTaskEnv([Fake(0), Fake(1)], seed=7)
    b = MultiTaskEnv([Fake(0), Fake(1)], seed=7)
    assert [int(a.reset()["task"]) for _ in range(20)] == [int(b.reset()["task"]) for _ in range(20)]
    # weights, and a forced task for evaluation
    w = MultiTaskEnv([Fake(0), Fake(1)], seed=0, weights=[1, 3])
    share = np.mean([int(w.reset()["task"]) for _ in range(2000)])
    assert abs(share - 0.75) < 0.03
    w.set_task(0)
    assert all(int(w.reset()["task"]) == 0 for _ in range(10))
    w.set_task(None)
    with pytest.raises(ValueError, match="task_weights"):
        MultiTaskEnv([Fake(0), Fake(1)], seed=0, weights=[1, 0])


@pytest.mark.parametrize(
    ("other", "what"),
    [(Fake(9, obs=4), "observation shape"), (Fake(9, action=3), "action size")],
)
def test_a_set_whose_spaces_differ_is_refused_naming_the_member(other, what):
    with pytest.raises(ValueError, match=f"'dmc:fake9' has {what}"):
        MultiTaskEnv([Fake(0), Fake(1), other], seed=0)


def test_dmc_set_refuses_a_member_with_other_spaces():
    with pytest.raises(ValueError, match="'dmc:walker_walk' has observation shape"):
        make_env("dmc:cartpole_swingup,walker_walk", seed=0)
    env = make_env("dmc:cartpole_balance,cartpole_swingup", seed=0)
    assert env.task_names == ["dmc:cartpole_balance", "dmc:cartpole_swingup"] and env.obs_shape == (5,)
    env.close()


def _pretrain(logdir: Path, steps: int, envs: str = "dmc:cartpole_balance,cartpole_swingup", *extra: str) -> int:
    argv = ["pretrain", "--envs", envs, "--steps", str(steps), "--logdir", str(logdir), "--no-progress"]
    for item in [*TINY, *extra]:
        argv += ["--set", item]
    return main(argv)


def _finetune(logdir: Path, init: Path | None, *extra: str, env: str = "dmc:cartpole_swingup", steps: int = 200):
    argv = ["run", "dreamerv2", "--env", env, "--steps", str(steps), "--logdir", str(logdir), "--no-progress"]
    argv += ["--init", str(init)] if init is not None else []
    for item in [*TINY, *extra]:
        argv += ["--set", item]
    return main(argv)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("pre") / "run"
    assert _pretrain(logdir, 400) == 0
    return logdir


def test_pretrain_logs_per_task_returns_and_samples_by_episode(pretrained):
    config = json.loads((pretrained / "config.json").read_text())
    assert config["env"] == "dmc:cartpole_balance,dmc:cartpole_swingup" and config["recipe"] == "dreamerv2"
    recs = records(pretrained)
    ev = [r for r in recs if "eval_return" in r]
    assert ev and all("eval_return/dmc:cartpole_balance" in r and "eval_return/dmc:cartpole_swingup" in r for r in ev)
    last = ev[-1]
    mean = (last["eval_return/dmc:cartpole_balance"] + last["eval_return/dmc:cartpole_swingup"]) / 2
    assert last["eval_return"] == pytest.approx(mean)
    trained = {k for r in recs for k in r if k.startswith("train_return/")}
    assert trained <= {"train_return/dmc:cartpole_balance", "train_return/dmc:cartpole_swingup"} and trained
    episodes = [np.load(p) for p in sorted((pretrained / "replay").glob("*.npz"))]
    assert all("task" in ep.files for ep in episodes)
    from recipes.dreamer.dreamerv2 import sample_by
    from recipes.registry import get_recipe

    cfg = get_recipe("dreamerv2").resolve("dmc:cartpole_balance,cartpole_swingup", "cpu", {})
    assert sample_by(cfg) == "episode"
    assert sample_by(get_recipe("dreamerv2").resolve("dmc:cartpole_swingup", "cpu", {})) == "step"


@pytest.mark.parametrize("parts", ["wm", "wm+ac"])
def test_init_loads_exactly_the_parts_it_says(pretrained, tmp_path, parts):
    from recipes.dreamer.dreamerv2 import DreamerAgent, load_init
    from recipes.registry import get_recipe

    source = torch.load(pretrained / "checkpoints" / "latest.pt", weights_only=False)["agent"]
    sets = dict(s.split("=", 1) for s in TINY)
    cfg = get_recipe("dreamerv2").resolve(
        "dmc:cartpole_swingup", "cpu", {**{k: json.loads(v) for k, v in sets.items()}, "init": str(pretrained)}
    )
    cfg = cfg.model_copy(update={"init_parts": parts})
    torch.manual_seed(123)
    agent = DreamerAgent(cfg, (5,), 1, False)
    fresh = {k: v.clone() for k, v in agent.state_dict().items()}
    n = load_init(agent, cfg)
    now = agent.state_dict()
    loaded = {k for k in now if not torch.equal(now[k], fresh[k])}
    for key, value in now.items():
        wanted = key.startswith("wm.") or (parts == "wm+ac" and key.startswith("ac.") and key != "ac.updates")
        if wanted:
            assert torch.equal(value, source[key]), key
        else:
            assert torch.equal(value, fresh[key]), key
    ac = parts == "wm+ac"
    expected = [k for k in now if k.startswith("wm.") or (ac and k.startswith("ac.") and k != "ac.updates")]
    assert n == len(expected)
    loaded_ac = any(k.startswith("ac.") for k in loaded)
    assert any(k.startswith("wm.") for k in loaded) and loaded_ac == (parts == "wm+ac")


def test_finetune_run_starts_from_the_pretrained_world_model(pretrained, tmp_path):
    logdir = tmp_path / "ft"
    assert _finetune(logdir, pretrained, "prefill=200", "eval_every=100") == 0
    config = json.loads((logdir / "config.json").read_text())
    assert config["init"] == str(pretrained.resolve()) and config["init_parts"] == "wm+ac"
    assert not any("task" in np.load(p).files for p in (logdir / "replay").glob("*.npz"))  # replay not carried over
    assert len(list((logdir / "replay").glob("*.npz"))) < len(list((pretrained / "replay").glob("*.npz")))


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (("deter=24",), "dmc:cartpole_swingup", "has shape"),  # another model size
        ((), "dmc:walker_walk", "has shape"),  # other observation/action spaces
        (("twohot_bins=5",), "dmc:cartpole_swingup", "has no wm.reward"),  # another reward head
    ],
)
def test_init_refuses_what_does_not_fit_in_one_line(pretrained, tmp_path, capsys, extra, env, message):
    logdir = tmp_path / "bad"
    assert _finetune(logdir, pretrained, *extra, env=env) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reweigh: error: --init") and message in err and "\n" not in err
    assert not (logdir / "config.json").exists()  # refused before anything was written


def test_init_needs_a_run_directory_and_a_dreamer_recipe(tmp_path, capsys):
    assert _finetune(tmp_path / "x", tmp_path / "nowhere") == 2
    assert "not a run directory" in capsys.readouterr().err
    argv = ["run", "sac", "--env", "gym:Pendulum-v1", "--logdir", str(tmp_path / "s"), "--init", str(tmp_path)]
    assert main(argv) == 2
    assert "cannot start from a checkpoint (dreamerv2 and tempo can)" in capsys.readouterr().err
    assert _pretrain(tmp_path / "one", 100, "dmc:cartpole_swingup") == 2
    assert "at least two" in capsys.readouterr().err


def test_weighter_groups_embed_the_task_and_learn_it():
    """The last feature is a group id, embedded by a learned table: the weights differ per group and the table
    receives gradient (it is a weighter parameter)."""
    torch.manual_seed(0)
    weighter = MetaWeighter(3, layers=1, hidden=8, norm="none", groups=2, group_dim=4)
    x = torch.randn(6, 2)
    w0 = weighter(torch.cat([x, torch.zeros(6, 1)], -1))
    w1 = weighter(torch.cat([x, torch.ones(6, 1)], -1))
    assert not torch.allclose(w0, w1)
    (w0.sum() - w1.sum()).backward()
    assert weighter.group_embedding.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="group ids"):
        weighter(torch.cat([x, torch.full((6, 1), 2.0)], -1))


@pytest.mark.parametrize("mode", ["id", "embedding"])
def test_tempo_weighter_sees_the_task(tmp_path, mode):
    logdir = tmp_path / mode
    argv = ["pretrain", "--recipe", "tempo", "--envs", "dmc:cartpole_balance,cartpole_swingup", "--steps", "300"]
    argv += ["--logdir", str(logdir), "--no-progress"]
    for item in [*TINY, f"weighter_task={mode}", "weighter_layers=1", "weighter_units=8", "meta_every=1"]:
        argv += ["--set", item]
    assert main(argv) == 0
    agent = torch.load(logdir / "checkpoints" / "latest.pt", weights_only=False)["agent"]
    if mode == "embedding":
        assert agent["weighter.group_embedding.weight"].shape == (2, 8)
    else:
        first = next(k for k in agent if k.startswith("weighter.body.0.weight"))
        assert agent[first].shape[1] == 16 + 2 * 4 + 2 + 2  # D + S + V + one-hot of 2 tasks
    assert any("model/weight_mean" in r for r in records(logdir))
    from recipes.dreamer.analysis import inspect_weights

    per_task = inspect_weights(logdir, sequences=8)["per_task"]  # the meta weights' mean per task
    assert per_task and set(per_task) <= {"dmc:cartpole_balance", "dmc:cartpole_swingup"}
    assert all(0.75 < v["mean"] < 1.25 and v["steps"] > 0 for v in per_task.values())


def test_weighter_task_needs_a_set(tmp_path, capsys):
    argv = ["run", "tempo", "--logdir", str(tmp_path / "t"), "--set", "weighter_task=id"]
    assert main(argv) == 2
    assert "weighter_task" in capsys.readouterr().err
