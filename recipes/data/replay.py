"""Episode replay of the Dreamer/TEMPO recipes: on-disk episodes, sequence sampling, absorbing padding.

DreamerV2-style replay (Hafner et al. 2021) with the absorbing-state padding of "Pre-training world models on
related tasks" §5.2: a sequence that runs past the end of an episode continues in the episode's absorbing state
instead of discarding episodes shorter than the sequence length.

**Data convention** (DreamerV2's, as in ``worldmodels.rssm``): one dict per environment step with ``obs``
(uint8 [C, H, W] or float32 [O]), ``action`` (float32 [A], the action a_{t−1} that *led to* this obs; zeros at the
first step; one-hot for discrete actions), ``reward`` (float32, received on arrival), ``discount`` (float32, 0 after
a true terminal), ``is_first``, ``is_last``, ``is_terminal`` (bool).  Extra keys are stored and sampled too.

**Storage.**  Every finished episode is one ``np.savez_compressed`` file in ``directory`` named
``{index:09d}-{length:06d}-{UTC time}-{uuid}.npz``; ``index`` is a counter over the directory and fixes the order.
A file is written under a temporary name (``.<name>.tmp``, same directory), fsynced and moved into place with
``os.replace``, so a killed process leaves at most a stray ``*.tmp`` file, which loading ignores (and leaves
alone).  A file with a valid name that cannot be read is skipped with a warning.  The replay on disk *is* the
replay: the constructor loads every stored episode in index order, so a resumed run sees the same episodes in the
same order, and with ``Replay.load_state_dict`` the same random stream.  In memory an episode is a dict of
read-only numpy arrays [L, ...].

**Unfinished episodes.**  ``Replay.add`` collects the steps of each worker; an ``is_last`` step closes the
episode, which is written and becomes sampleable.  ``Replay.flush`` (call it before a checkpoint) closes the
unfinished episode of every worker as a *segment* whose last step has ``is_last=False``: it is written and becomes
sampleable at once, exactly as it will be after a reload; later steps of that worker form a new segment (its first
step keeps ``is_first=False``).  Segments are never merged.  A step with ``is_first=True`` arriving while a worker
still holds steps closes those steps as a segment the same way.

**Capacity.**  With ``capacity_steps``, after every insertion the oldest episodes are dropped (from memory and
their files from disk) while the stored steps exceed the capacity; the newest episode is always kept, even if it
alone is larger.  Loading takes the newest episodes that fit the same rule and never deletes files: older files
stay on disk unloaded.

**Sampling** (``sample(B)`` → arrays [B, T, ...], T = ``seq_len``, dtypes as stored):

1. Each of the B sequences draws a stored step uniformly among all stored steps, i.e. an episode with probability
   proportional to its length and then a start index uniformly among its L steps (every step, the last one
   included, can start a sequence).  With ``sample_by="episode"`` it draws an episode uniformly among the stored
   episodes (segments count as episodes) and then a start uniformly among its steps: with one task drawn per
   episode (``recipes.envs.multitask``), tasks whose episodes are short keep their share of the batch.
2. The sequence takes the next min(T, L − start) consecutive steps of that episode.
3. If it is not yet T steps long, it continues according to ``boundary``:

   * ``"absorbing"`` (default), after an episode that ended by a *true termination* (its last step has
     ``is_last=True`` and ``is_terminal=True``): the remaining steps are the
     absorbing state of §5.2 — ``obs`` (and every extra key) repeats the last step's value, ``reward`` 0,
     ``discount`` 0, ``is_first`` False, ``is_last`` False, ``is_terminal`` True, and ``action`` is drawn at
     random per padded step (``action_sampler``; by default uniform in [-1, 1]^A for continuous actions, a
     uniformly random one-hot for discrete ones).  The real last step is left as recorded (``is_last`` True);
     ``is_last`` stays False on the padding so that every episode has exactly one ``is_last`` and its position
     marks where the real data ends.  An episode cut by a time limit (``is_last`` without ``is_terminal``) is
     *not* padded: the state after it is not absorbing, and padding would teach the model a termination that did
     not happen; it continues as in ``"concat"``.  (The paper pads every short episode; its Mario episodes end
     by death or the flag, i.e. by termination.)  An episode stored without an ``is_terminal`` key counts as
     terminated when its last ``discount`` is 0.
   * ``"concat"``, and in both modes after a time-limit end or a segment that has no ``is_last`` at its end (a
     flushed chunk: its episode did not end there, so absorbing padding would invent a terminal): the sequence
     continues at step 0
     of an episode drawn uniformly among the stored episodes whose first step has ``is_first=True`` (it may be
     the same episode; if there is none, among all episodes), and ``is_first`` is set True at that position so
     the world model resets its state exactly there.  This repeats until T steps are filled, so episodes shorter
     than T are usable in both modes.

The only randomness is one ``np.random.Generator`` seeded by ``seed`` (PCG64); the starts, the continuation
episodes (drawn in batch order) and then the padding actions (in row-major order of the padded positions) all
come from it; ``Replay.state_dict`` / ``Replay.load_state_dict`` save and restore it.  ``action_sampler``
receives that generator and returns one action [A]; it is called once per padded step, whereas the built-in
samplers draw all padded actions in one vectorised call.  Without a sampler the action type is inferred from the
stored actions that are not at an ``is_first`` step: discrete if all of them are one-hot rows (and at least one
exists), else continuous.

Sampling copies one slice per key per episode touched (a Python loop over the B sequences, never over steps), so
a batch costs about one copy of its bytes.  Not thread safe; one ``Replay`` per directory.
"""

from __future__ import annotations

import os
import re
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["Replay"]

Episode = dict[str, np.ndarray]
ActionSampler = Callable[[np.random.Generator], np.ndarray]

#: canonical dtypes of the standard keys; ``obs`` and extra keys keep the dtype they arrive with
DTYPES: dict[str, np.dtype] = {
    "action": np.dtype(np.float32),
    "reward": np.dtype(np.float32),
    "discount": np.dtype(np.float32),
    "is_first": np.dtype(bool),
    "is_last": np.dtype(bool),
    "is_terminal": np.dtype(bool),
}
_NAME = re.compile(r"^(\d+)-(\d+)-(\d{8}T\d{6})-([0-9a-f]+)\.npz$")


def _is_onehot(rows: np.ndarray) -> np.ndarray:
    """Per row [N, A]: exactly one entry 1 and the others 0."""
    return ((rows == 0) | (rows == 1)).all(-1) & (rows.sum(-1) == 1)


class Replay:
    """Episode replay stored as one compressed ``.npz`` per episode; see the module docstring for the rules.

    Args:
        directory: where the episodes live; created if missing; every episode already there is loaded.
        seq_len: T, the length of the sampled sequences.
        capacity_steps: most steps kept (oldest episodes dropped from memory and disk); None = unbounded.
        seed: seed of the sampling generator.
        action_sampler: ``rng -> action [A]`` for the absorbing padding; None infers continuous/discrete.
        boundary: ``"absorbing"`` pads past an episode's true termination, ``"concat"`` continues into another
            episode.
        sample_by: ``"step"`` draws sequence starts uniformly over stored steps, ``"episode"`` an episode
            uniformly and then a start in it.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        seq_len: int,
        capacity_steps: int | None = None,
        seed: int = 0,
        action_sampler: ActionSampler | None = None,
        boundary: Literal["absorbing", "concat"] = "absorbing",
        sample_by: Literal["step", "episode"] = "step",
    ) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if capacity_steps is not None and capacity_steps < 1:
            raise ValueError(f"capacity_steps must be >= 1 or None, got {capacity_steps}")
        if boundary not in ("absorbing", "concat"):
            raise ValueError(f"boundary must be 'absorbing' or 'concat', got {boundary!r}")
        if sample_by not in ("step", "episode"):
            raise ValueError(f"sample_by must be 'step' or 'episode', got {sample_by!r}")
        self.sample_by = sample_by
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.seq_len = int(seq_len)
        self.capacity_steps = capacity_steps
        self.boundary = boundary
        self.action_sampler = action_sampler
        self._rng = np.random.default_rng(seed)
        self._episodes: list[Episode] = []
        self._paths: list[Path] = []
        self._lengths: list[int] = []
        self._starts_first: list[bool] = []  # first step has is_first
        self._ends_terminal: list[bool] = []  # last step is_last and a true termination (absorbing padding applies)
        self._action_kind: list[tuple[bool, bool]] = []  # (has one-hot rows, has other rows), is_first rows excluded
        self._pending: dict[int, list[dict[str, np.ndarray]]] = {}
        self._steps = 0
        self._added = 0
        self._next_index = 0
        self._cache: dict[str, Any] | None = None
        self._load()

    # ------------------------------------------------------------------ statistics

    @property
    def num_episodes(self) -> int:
        """Stored (sampleable) episodes and segments."""
        return len(self._episodes)

    @property
    def num_steps(self) -> int:
        """Stored (sampleable) steps; unfinished steps held by ``add`` are not counted."""
        return self._steps

    @property
    def steps_added(self) -> int:
        """Steps passed to ``add`` since this object was constructed."""
        return self._added

    @property
    def num_pending(self) -> int:
        """Steps of unfinished episodes, not yet stored (see ``flush``)."""
        return sum(len(v) for v in self._pending.values())

    @property
    def stats(self) -> dict[str, int]:
        """``episodes``, ``steps`` (stored), ``added`` (this session), ``pending`` (unfinished)."""
        return {
            "episodes": self.num_episodes,
            "steps": self.num_steps,
            "added": self.steps_added,
            "pending": self.num_pending,
        }

    @property
    def episodes(self) -> tuple[Episode, ...]:
        """The stored episodes, oldest first (dicts of read-only arrays [L, ...])."""
        return tuple(self._episodes)

    def __len__(self) -> int:
        return self._steps

    def __repr__(self) -> str:
        return (
            f"Replay({str(self.directory)!r}, seq_len={self.seq_len}, boundary={self.boundary!r}, "
            f"episodes={self.num_episodes}, steps={self.num_steps})"
        )

    # ------------------------------------------------------------------ random state

    def state_dict(self) -> dict[str, Any]:
        """The sampling generator's state (plain Python ints and strings; picklable and JSON-able)."""
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the generator saved by ``state_dict``, so sampling continues the same random stream."""
        self._rng.bit_generator.state = dict(state["rng"])

    # ------------------------------------------------------------------ adding

    def add(self, step: Mapping[str, Any], worker: int = 0) -> None:
        """Append one step to ``worker``'s current episode; an ``is_last`` step stores the episode."""
        pending = self._pending.setdefault(worker, [])
        if pending and bool(step["is_first"]):
            self._store(self._stack(pending))
            pending.clear()
        if pending and step.keys() != pending[0].keys():
            raise KeyError(f"step keys {sorted(step)} differ from the episode's {sorted(pending[0])}")
        pending.append({k: np.array(v) for k, v in step.items()})  # copies: env buffers may be reused
        self._added += 1
        if bool(step["is_last"]):
            self._store(self._stack(pending))
            pending.clear()

    def flush(self) -> None:
        """Store the unfinished episode of every worker as a segment (``is_last`` False at its end).

        The segment is written and sampleable at once; the worker's later steps start a new segment.
        """
        for worker in sorted(self._pending):
            if self._pending[worker]:
                self._store(self._stack(self._pending[worker]))
                self._pending[worker].clear()

    @staticmethod
    def _stack(steps: list[dict[str, np.ndarray]]) -> Episode:
        episode = {k: np.stack([s[k] for s in steps]) for k in steps[0]}
        return {k: v.astype(DTYPES[k], copy=False) if k in DTYPES else v for k, v in episode.items()}

    def _store(self, episode: Episode) -> None:
        name = (
            f"{self._next_index:09d}-{len(episode['is_first']):06d}-"
            f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}.npz"
        )
        self._next_index += 1
        path = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **episode)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._fsync_dir()
        self._insert(episode, path)
        self._evict()

    def _fsync_dir(self) -> None:
        if os.name != "posix":  # pragma: no cover - directories cannot be opened on Windows
            return
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ memory

    def _insert(self, episode: Episode, path: Path) -> None:
        if self._episodes:
            ref = self._episodes[0]
            if episode.keys() != ref.keys() or any(episode[k].shape[1:] != ref[k].shape[1:] for k in ref):
                raise ValueError(
                    f"episode {path.name} has keys/shapes "
                    f"{ {k: v.shape[1:] for k, v in episode.items()} }, the replay holds "
                    f"{ {k: v.shape[1:] for k, v in ref.items()} }"
                )
        for arr in episode.values():
            arr.flags.writeable = False
        first = episode["is_first"]
        rows = episode["action"][~first] if "action" in episode else np.zeros((0, 1))
        onehot = _is_onehot(rows.reshape(len(rows), -1)) if rows.size else np.zeros(0, bool)
        self._episodes.append(episode)
        self._paths.append(path)
        self._lengths.append(len(first))
        self._starts_first.append(bool(first[0]))
        terminal = episode["is_terminal"][-1] if "is_terminal" in episode else episode.get("discount", [1.0])[-1] == 0
        self._ends_terminal.append(bool(episode["is_last"][-1]) and bool(terminal))
        self._action_kind.append((bool(onehot.any()), bool((~onehot).any())))
        self._steps += len(first)
        self._cache = None

    def _evict(self) -> None:
        while self.capacity_steps is not None and self._steps > self.capacity_steps and len(self._episodes) > 1:
            self._paths[0].unlink(missing_ok=True)
            self._steps -= self._lengths[0]
            for seq in (
                self._episodes,
                self._paths,
                self._lengths,
                self._starts_first,
                self._ends_terminal,
                self._action_kind,
            ):
                del seq[0]
            self._cache = None

    def _load(self) -> None:
        found = []
        for path in self.directory.iterdir():
            m = _NAME.match(path.name)
            if m and path.is_file():
                found.append((int(m.group(1)), path.name, int(m.group(2)), path))
        found.sort()
        if found:
            self._next_index = found[-1][0] + 1
        keep, total = [], 0  # the newest episodes within capacity (the rule of _evict)
        for _, _, length, path in reversed(found):
            if self.capacity_steps is not None and keep and total + length > self.capacity_steps:
                break
            keep.append((path, length))
            total += length
        for path, length in reversed(keep):
            try:
                with np.load(path, allow_pickle=False) as data:
                    episode = {k: data[k] for k in data.files}
            except Exception as err:  # a damaged file must not stop a resume
                warnings.warn(f"replay: skipping unreadable episode {path.name}: {err!r}", stacklevel=3)
                continue
            if (
                "is_first" not in episode
                or "is_last" not in episode
                or any(len(v) != length for v in episode.values())
                or length == 0
            ):
                warnings.warn(f"replay: skipping inconsistent episode {path.name}", stacklevel=3)
                continue
            self._insert(episode, path)

    # ------------------------------------------------------------------ sampling

    def _refresh(self) -> dict[str, Any]:
        if self._cache is None:
            starts_first = np.flatnonzero(self._starts_first)
            has_onehot = any(a for a, _ in self._action_kind)
            has_other = any(b for _, b in self._action_kind)
            self._cache = {
                "cum": np.concatenate([[0], np.cumsum(self._lengths)]),
                "continue_into": starts_first if len(starts_first) else np.arange(len(self._episodes)),
                "discrete": has_onehot and not has_other,
            }
        return self._cache

    @property
    def discrete_actions(self) -> bool:
        """Whether the stored actions look one-hot (what the default absorbing action sampler uses)."""
        return bool(self._refresh()["discrete"])

    def _random_actions(self, n: int, dim: int, dtype: np.dtype) -> np.ndarray:
        if self.action_sampler is not None:
            return np.stack([np.asarray(self.action_sampler(self._rng), dtype=dtype) for _ in range(n)])
        if self._refresh()["discrete"]:
            return np.eye(dim, dtype=dtype)[self._rng.integers(0, dim, size=n)]
        return self._rng.uniform(-1.0, 1.0, size=(n, dim)).astype(dtype)

    def sample(self, batch: int) -> dict[str, np.ndarray]:
        """``batch`` sequences of ``seq_len`` steps: a dict of arrays [B, T, ...] with the keys of the steps."""
        if not self._episodes:
            raise RuntimeError("replay is empty: no stored episode yet (finish one with is_last or call flush())")
        cache = self._refresh()
        cum, continue_into = cache["cum"], cache["continue_into"]
        T, eps, lengths, ends_terminal = self.seq_len, self._episodes, self._lengths, self._ends_terminal
        absorbing = self.boundary == "absorbing"
        if self.sample_by == "episode":
            which = self._rng.integers(0, len(eps), size=batch)
            offsets = np.floor(self._rng.random(batch) * np.asarray(lengths)[which]).astype(np.int64)
        else:
            u = self._rng.integers(0, cum[-1], size=batch)
            which = np.searchsorted(cum, u, side="right") - 1
            offsets = u - cum[which]
        out = {k: np.empty((batch, T, *v.shape[1:]), v.dtype) for k, v in eps[0].items()}
        items = list(out.items())
        padded = np.zeros((batch, T), bool)
        for b in range(batch):
            i, s, t = int(which[b]), int(offsets[b]), 0
            while True:
                ep = eps[i]
                n = min(T - t, lengths[i] - s)
                for k, arr in items:
                    arr[b, t : t + n] = ep[k][s : s + n]
                if s == 0 and t > 0:
                    out["is_first"][b, t] = True
                t += n
                if t == T:
                    break
                if absorbing and ends_terminal[i]:
                    for k, arr in items:
                        arr[b, t:] = ep[k][-1]
                    padded[b, t:] = True
                    break
                i, s = int(continue_into[self._rng.integers(0, len(continue_into))]), 0
        if padded.any():
            for key, value in (
                ("reward", 0),
                ("discount", 0),
                ("is_first", False),
                ("is_last", False),
                ("is_terminal", True),
            ):
                if key in out:
                    out[key][padded] = value
            if "action" in out:
                act = out["action"]
                out["action"][padded] = self._random_actions(
                    int(padded.sum()), int(np.prod(act.shape[2:])), act.dtype
                ).reshape(-1, *act.shape[2:])
        return out
