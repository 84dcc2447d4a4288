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

    def act(self, step: dict[str, Any], state: Any, *, explore: bool) -> tuple[np.ndarray, Any]:
        self.policy_episodes += bool(explore and step["is_first"])
        return np.zeros(1, np.float32), None

    def random_action(self, rng: np.random.Generator, env: Any) -> np.ndarray:
        self.random_actions += 1
        return super().random_action(rng, env)

    def observe(self, step: dict[str, Any]) -> None:
        pass

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
    if share == 0.0:
        assert not random_returns
    elif share == 1.0:
        assert not policy_returns
    else:
        assert 10 <= len(random_returns) <= 30  # Binomial(40, 0.5): outside this with probability < 0.002


def test_the_setting_is_checked(tmp_path):
    with pytest.raises(ValueError, match="random_episodes"):
        resolve("dmc:cartpole_swingup", "cpu", {"random_episodes": 1.5}, steps=10)
