"""The run loop's ``random_episodes``: a share of the episodes after prefill acted by the uniform random policy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from rundirs import records

from recipes.registry import resolve
from recipes.run import loop


class _Recorder(loop.Learner):
    """Acts with zeros; counts the episodes it acted in and the actions ``random_action`` drew."""

    def __init__(self) -> None:
        self.policy_episodes, self.random_actions = 0, 0
        self.flags: list[list[float]] = []  # per episode, the random_policy flag of each observed step

    def act(self, step: dict[str, Any], state: Any, *, explore: bool) -> tuple[np.ndarray, Any]:
        self.policy_episodes += bool(explore and step["is_first"])
        return np.zeros(1, np.float32), None

    def random_action(self, rng: np.random.Generator, env: Any) -> np.ndarray:
        self.random_actions += 1
        return super().random_action(rng, env)

    def observe(self, step: dict[str, Any]) -> None:
        if step["is_first"]:
            self.flags.append([])
        if "random_policy" in step:
            self.flags[-1].append(float(step["random_policy"]))

    def train(self, env_steps: int) -> tuple[int, dict[str, float]]:
        return 1, {"loss": 1.0}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_a_share_of_episodes_is_random_and_logged_apart(tmp_path, share):
    overrides = {"prefill": 0, "time_limit": 5, "eval_every": 10**6, "video": False, "random_episodes": share}
    cfg = resolve("dmc:cartpole_swingup", "cpu", overrides, steps=400)  # 40 episodes of 5 agent steps
    learner = _Recorder()
    loop.train(cfg, tmp_path, lambda cfg, env, logdir: learner, recipe="test", progress=False)
    recs = records(tmp_path)
    random_returns = [r for r in recs if "random_return" in r]
    policy_returns = [r for r in recs if "train_return" in r]
    assert len(random_returns) + len(policy_returns) == 40
    assert learner.random_actions == 5 * len(random_returns) and learner.policy_episodes == len(policy_returns)
    # every step of an episode carries its mode, 1.0 random and 0.0 the agent's, for the replay and the weights
    if share > 0:
        assert [set(f) for f in learner.flags] == [{float(f[0])} for f in learner.flags]
        assert sum(f[0] for f in learner.flags) == len(random_returns)
    if share == 0.0:
        assert all(f == [] for f in learner.flags)  # no key at all
        assert not random_returns
    elif share == 1.0:
        assert not policy_returns
    else:
        assert 10 <= len(random_returns) <= 30  # Binomial(40, 0.5): outside this with probability < 0.002


def test_the_setting_is_checked(tmp_path):
    with pytest.raises(ValueError, match="random_episodes"):
        resolve("dmc:cartpole_swingup", "cpu", {"random_episodes": 1.5}, steps=10)


def test_tempo_holds_its_weights_against_the_random_policys_data():
    import torch

    from recipes.dreamer.tempo import TempoAgent

    tiny = {"deter": 8, "stoch": 3, "hidden": 8, "mlp_units": 8, "ac_units": 8, "batch_size": 2, "seq_len": 4}
    cfg = resolve("dmc:cartpole_swingup", "cpu", {**tiny, "random_episodes": 0.5}, recipe="tempo")
    torch.manual_seed(0)
    agent = TempoAgent(cfg, (5,), 1, False)
    batch = {
        "obs": torch.randn(2, 4, 5),
        "action": torch.rand(2, 4, 1) * 2 - 1,
        "reward": torch.rand(2, 4),
        "is_first": torch.tensor([[True, False, False, False]] * 2),
        "random_policy": torch.tensor([[1.0] * 4, [0.0] * 4]),
    }
    metrics = agent.train_step(batch)
    assert -1 <= metrics["model/weight_corr/random_policy"] <= 1 and "model/weight_corr/reward" in metrics
