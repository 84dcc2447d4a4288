"""A multi-task environment: one of N environments drawn per episode, the agent not told which.

The setting of "Pre-training world models on related tasks" §4.1 (one DreamerV2 agent trained on a set of
Super Mario Bros levels): every ``MultiTaskEnv.reset`` draws a member (uniformly by default, or by
``weights``) from one seeded generator and plays a whole episode in it.  Observations carry no task identity;
the step dict gains one extra key, ``task`` (int32 scalar, the member's index in the set), which the replay stores
like any extra key — the run loop logs per-task returns from it and ``tempo`` can condition its weighter on it
(``weighter_task``), while the actor and the world model never read it.

Names: a comma list of environment names, ``dmc:walker_stand,dmc:walker_walk,dmc:walker_run``; a member without a
family prefix takes the previous member's (``dmc:walker_stand,walker_walk,walker_run`` is the same set).  All
members must share the family, the observation shape and dtype, the action size and kind, and the action repeat;
a set that does not is refused, naming the member that differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from recipes.envs.base import Env

__all__ = ["MultiTaskEnv", "split_names"]


def split_names(name: str) -> list[str]:
    """``"dmc:a,b,atari:c"`` → ``["dmc:a", "dmc:b", "atari:c"]`` (a member without ``FAMILY:`` takes the previous
    member's family).

    Raises:
        ValueError: for an empty member or a first member without a family.
    """
    out: list[str] = []
    family = ""
    for raw in name.split(","):
        member = raw.strip()
        if not member:
            raise ValueError(f"environment set {name!r}: empty member (expected FAMILY:TASK,FAMILY:TASK,...)")
        if ":" in member:
            family = member.split(":", 1)[0]
        elif family:
            member = f"{family}:{member}"
        else:
            raise ValueError(f"environment set {name!r}: the first member {member!r} needs a family, e.g. dmc:{member}")
        out.append(member)
    return out


class MultiTaskEnv(Env):
    """N member environments behind one ``recipes.envs.base.Env``; a member is drawn at every reset.

    Args:
        members: the member environments (already made; closed with this env).
        seed: seeds the member draw (``np.random.default_rng(seed)``; the members are seeded by their maker).
        weights: draw probabilities per member (normalised); None = uniform.

    Attributes:
        task_names: the members' names, in order (``task`` indexes them).
        task: the index of the member that the current (or last) episode runs in; -1 before the first reset.

    Raises:
        ValueError: for fewer than two members, weights of the wrong length or not positive, or a member whose
            family, observation shape/dtype, action size/kind or action repeat differs from the first one's
            (naming it).
    """

    family = "multi"

    def __init__(self, members: Sequence[Env], *, seed: int, weights: Sequence[float] | None = None) -> None:
        if len(members) < 2:
            raise ValueError("a multi-task environment needs at least two members")
        first = members[0]
        for env in members[1:]:
            for what, a, b in (
                ("family", first.family, env.family),
                ("observation shape", first.obs_shape, env.obs_shape),
                ("observation dtype", first.obs_dtype, env.obs_dtype),
                ("action size", first.action_dim, env.action_dim),
                ("action kind (discrete)", first.discrete, env.discrete),
                ("action repeat", first.action_repeat, env.action_repeat),
            ):
                if a != b:
                    raise ValueError(
                        f"environment set: {env.name!r} has {what} {b}, but {first.name!r} has {a}; "
                        "every member must share the observation and action spaces"
                    )
        if weights is not None:
            p = np.asarray(weights, dtype=np.float64)
            if p.shape != (len(members),) or not (p > 0).all() or not np.isfinite(p).all():
                raise ValueError(
                    f"task_weights: expected {len(members)} positive numbers (one per member), got {list(weights)}"
                )
            self._p: np.ndarray | None = p / p.sum()
        else:
            self._p = None
        self.members = list(members)
        self.task_names = [env.name for env in members]
        self.task = -1
        self._forced: int | None = None
        self._rng = np.random.default_rng(seed)
        self.pixels = first.pixels
        # the Env attributes of the interface, without Env.__init__'s action handling (the members do it)
        self.name = ",".join(self.task_names)
        self.obs_shape = first.obs_shape
        self.obs_dtype = first.obs_dtype
        self.action_dim = first.action_dim
        self.discrete = first.discrete
        self.action_repeat = first.action_repeat
        self.time_limit = first.time_limit

    @property
    def num_tasks(self) -> int:
        """N, the number of members."""
        return len(self.members)

    def set_task(self, index: int | None) -> None:
        """Make every following ``reset`` use member ``index`` (None: draw again); for per-task evaluation."""
        if index is not None and not 0 <= index < self.num_tasks:
            raise ValueError(f"task index {index} outside [0, {self.num_tasks})")
        self._forced = index

    def _tag(self, step: dict[str, Any]) -> dict[str, Any]:
        step["task"] = np.int32(self.task)
        return step

    def reset(self) -> dict[str, Any]:
        if self._forced is not None:
            self.task = self._forced
        else:
            self.task = int(self._rng.choice(self.num_tasks, p=self._p))
        return self._tag(self.members[self.task].reset())

    def step(self, action: np.ndarray) -> dict[str, Any]:
        if self.task < 0:
            raise RuntimeError(f"{self.name}: call reset() before step()")
        return self._tag(self.members[self.task].step(action))

    def render(self) -> np.ndarray:
        return self.members[max(self.task, 0)].render()

    def close(self) -> None:
        for env in self.members:
            env.close()

    def __repr__(self) -> str:
        return f"MultiTaskEnv({self.task_names}, obs_shape={self.obs_shape}, action_dim={self.action_dim})"


def make_multitask(
    name: str, *, seed: int, make: Callable[..., Env], weights: Sequence[float] | None = None, **kwargs: Any
) -> MultiTaskEnv:
    """The ``MultiTaskEnv`` of the comma list ``name``: member i is ``make(member_i, seed=seed + 1000·i,
    **kwargs)``, the member draw is seeded by ``seed``.  Members already made are closed if a later one fails."""
    names = split_names(name)
    if len(set(names)) != len(names):
        raise ValueError(f"environment set {name!r}: a member appears twice")
    members: list[Env] = []
    try:
        for i, member in enumerate(names):
            members.append(make(member, seed=seed + 1000 * i, **kwargs))
        return MultiTaskEnv(members, seed=seed, weights=weights)
    except Exception:
        for env in members:
            env.close()
        raise
