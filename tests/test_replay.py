"""Episode replay: storage, crash safety, resume, capacity, concat boundaries and absorbing padding."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from recipes.data import replay as replay_module
from recipes.data.replay import Replay

KEYS = ("obs", "action", "reward", "discount", "is_first", "is_last", "is_terminal")
A = 3


def episode(
    ep_id: int,
    length: int,
    *,
    last: bool = True,
    terminal: bool = True,
    discrete: bool = False,
    pixels: bool = False,
    first: bool = True,
    seed: int = 0,
) -> list[dict]:
    """Steps whose obs encode (episode id, step index); rewards are nonzero so padding is recognisable."""
    rng = np.random.default_rng(1000 * ep_id + seed)
    steps = []
    for t in range(length):
        if t == 0 and first:
            action = np.zeros(A, np.float32)
        elif discrete:
            action = np.eye(A, dtype=np.float32)[rng.integers(A)]
        else:
            action = rng.uniform(-1, 1, A).astype(np.float32)
        obs = (
            np.stack([np.full((4, 4), ep_id), np.full((4, 4), t)]).astype(np.uint8)
            if pixels
            else np.array([ep_id, t], np.float32)
        )
        end = last and t == length - 1
        steps.append(
            {
                "obs": obs,
                "action": action,
                "reward": float(t + 1),
                "discount": 0.0 if end and terminal else 1.0,
                "is_first": t == 0 and first,
                "is_last": end,
                "is_terminal": end and terminal,
            }
        )
    return steps


def fill(replay: Replay, lengths, **kw) -> None:
    for i, n in enumerate(lengths):
        for step in episode(i, n, **kw):
            replay.add(step)


def ids(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """(episode id, step index) of every sampled step, [B, T] each."""
    obs = batch["obs"]
    if obs.ndim == 5:
        return obs[:, :, 0, 0, 0].astype(int), obs[:, :, 1, 0, 0].astype(int)
    return obs[..., 0].astype(int), obs[..., 1].astype(int)


def npz_files(path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.endswith(".npz"))


@pytest.mark.parametrize("boundary", ["absorbing", "concat"])
@pytest.mark.parametrize("pixels", [False, True])
def test_shapes_and_dtypes(tmp_path, boundary, pixels):
    r = Replay(tmp_path, seq_len=7, boundary=boundary)
    fill(r, [12, 5, 9], pixels=pixels)
    b = r.sample(4)
    assert set(b) == set(KEYS)
    obs_shape = (2, 4, 4) if pixels else (2,)
    assert b["obs"].shape == (4, 7, *obs_shape)
    assert b["obs"].dtype == (np.uint8 if pixels else np.float32)
    assert b["action"].shape == (4, 7, A) and b["action"].dtype == np.float32
    for k in ("reward", "discount"):
        assert b[k].shape == (4, 7) and b[k].dtype == np.float32
    for k in ("is_first", "is_last", "is_terminal"):
        assert b[k].shape == (4, 7) and b[k].dtype == np.bool_
    b["obs"][:] = 0  # samples are writable copies; the stored episodes are untouched
    assert r.episodes[0]["obs"][3].any()
    assert not r.episodes[0]["obs"].flags.writeable


def test_sequence_within_one_episode_is_the_stored_slice(tmp_path):
    r = Replay(tmp_path, seq_len=5)
    fill(r, [40, 30])
    b = r.sample(64)
    e, k = ids(b)
    inside = k[:, 0] + 5 <= np.array([40, 30])[e[:, 0]]
    assert inside.any()
    for row in np.flatnonzero(inside):
        ep = r.episodes[e[row, 0]]
        s = k[row, 0]
        for key in KEYS:
            np.testing.assert_array_equal(b[key][row], ep[key][s : s + 5])


def test_concat_crosses_boundaries_with_is_first_exactly_there(tmp_path):
    lengths = [3, 9, 1, 6, 4]
    r = Replay(tmp_path, seq_len=20, boundary="concat", seed=3)
    fill(r, lengths)
    b = r.sample(64)
    e, k = ids(b)
    np.testing.assert_array_equal(b["is_first"], k == 0)  # is_first exactly at every episode start
    crossings = 0
    for row in range(64):
        for t in range(1, 20):
            if k[row, t] == 0:  # boundary: previous step is the real last step of its episode
                crossings += 1
                assert k[row, t - 1] == lengths[e[row, t - 1]] - 1 and b["is_last"][row, t - 1]
                np.testing.assert_array_equal(b["action"][row, t], 0)
            else:  # otherwise the next step of the same episode
                assert e[row, t] == e[row, t - 1] and k[row, t] == k[row, t - 1] + 1
    assert crossings >= 64  # every sequence is longer than every episode
    assert not (b["discount"][~b["is_last"]] == 0).any()  # no padding in concat mode


def test_concat_continues_only_into_episode_starts(tmp_path):
    r = Replay(tmp_path, seq_len=12, boundary="concat", seed=8)
    for step in episode(0, 3, first=False) + episode(1, 2) + episode(2, 4, first=False):
        r.add(step)  # episodes 0 and 2 are continuation segments (no is_first at their start)
    e, k = ids(r.sample(64))
    after = k[:, 1:] == 0
    assert after.any() and (e[:, 1:][after] == 1).all()  # a boundary always enters the episode that has is_first
    r2 = Replay(tmp_path / "segments", seq_len=12, boundary="concat", seed=8)
    for step in episode(0, 3, first=False) + episode(1, 4, first=False):
        r2.add(step)  # no episode start stored at all: any episode, is_first still set at the boundary
    b = r2.sample(32)
    e, k = ids(b)
    assert not b["is_first"][:, 0].any()
    np.testing.assert_array_equal(b["is_first"][:, 1:], k[:, 1:] == 0)
    assert set(e[:, 1:][k[:, 1:] == 0].tolist()) == {0, 1}


def test_absorbing_padding_is_exact(tmp_path):
    lengths = [2, 5, 1, 4]
    r = Replay(tmp_path, seq_len=10, seed=1)
    fill(r, lengths)
    assert not r.discrete_actions
    b = r.sample(64)
    e, k = ids(b)
    for row in range(64):
        last = int(np.flatnonzero(b["is_last"][row])[0])  # every episode is shorter than T
        assert b["is_last"][row].sum() == 1
        ep = r.episodes[e[row, 0]]
        assert k[row, last] == lengths[e[row, 0]] - 1
        for key in KEYS:  # real part = the stored slice
            np.testing.assert_array_equal(b[key][row, : last + 1], ep[key][k[row, 0] :])
        pad = slice(last + 1, None)
        np.testing.assert_array_equal(b["obs"][row, pad], np.broadcast_to(ep["obs"][-1], b["obs"][row, pad].shape))
        assert (b["reward"][row, pad] == 0).all() and (b["discount"][row, pad] == 0).all()
        assert not b["is_first"][row, pad].any() and not b["is_last"][row, pad].any()
        assert b["is_terminal"][row, pad].all()
        act = b["action"][row, pad]
        assert (act >= -1).all() and (act <= 1).all()
    padded = np.cumsum(b["is_last"], 1) - b["is_last"] > 0
    acts = b["action"][padded]
    assert len(acts) > 100 and np.unique(acts).size > 0.99 * acts.size  # fresh uniform draws, not zeros/repeats
    assert abs(acts.mean()) < 0.15 and acts.min() < -0.8 and acts.max() > 0.8


def test_absorbing_padding_discrete_one_hot(tmp_path):
    r = Replay(tmp_path, seq_len=12, seed=2)
    fill(r, [3, 4, 2], discrete=True)
    assert r.discrete_actions
    b = r.sample(32)
    padded = np.cumsum(b["is_last"], 1) - b["is_last"] > 0
    acts = b["action"][padded]
    assert set(np.unique(acts)) == {0.0, 1.0} and (acts.sum(-1) == 1).all()
    assert len(np.unique(acts.argmax(-1))) == A


def test_custom_action_sampler(tmp_path):
    calls = []

    def sampler(rng):
        calls.append(1)
        return np.full(A, rng.uniform(0.25, 0.5))

    r = Replay(tmp_path, seq_len=6, action_sampler=sampler)
    fill(r, [2])
    b = r.sample(4)
    padded = np.cumsum(b["is_last"], 1) - b["is_last"] > 0
    assert len(calls) == padded.sum() > 0
    acts = b["action"][padded]
    assert ((acts >= 0.25) & (acts <= 0.5)).all() and acts.dtype == np.float32


@pytest.mark.parametrize("boundary", ["absorbing", "concat"])
def test_short_episodes_are_sampled(tmp_path, boundary):
    lengths = [1, 3, 2]
    r = Replay(tmp_path, seq_len=8, boundary=boundary)
    fill(r, lengths)
    e, k = ids(r.sample(300))
    starts = set(zip(e[:, 0].tolist(), k[:, 0].tolist(), strict=True))
    assert starts == {(i, t) for i, n in enumerate(lengths) for t in range(n)}  # every step can start a sequence


def test_start_is_uniform_over_steps(tmp_path):
    r = Replay(tmp_path, seq_len=4)
    fill(r, [10, 30])
    e, k = ids(r.sample(8000))
    assert abs((e[:, 0] == 0).mean() - 0.25) < 0.03  # episode ∝ length
    counts = np.bincount(k[e[:, 0] == 1, 0], minlength=30)
    assert counts.min() > 0.5 * counts.mean()  # start uniform within the episode


def test_reload_reproduces_episodes_and_samples(tmp_path):
    r = Replay(tmp_path, seq_len=6, seed=7)
    fill(r, [5, 8, 3, 11])
    r.sample(10)  # advance the stream
    state = pickle.loads(pickle.dumps(r.state_dict()))
    expected = r.sample(16)
    r2 = Replay(tmp_path, seq_len=6, seed=123)
    assert len(r2) == len(r) == 27 and r2.num_episodes == 4
    for a, b in zip(r.episodes, r2.episodes, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key])
    r2.load_state_dict(state)
    got = r2.sample(16)
    for key in KEYS:
        np.testing.assert_array_equal(got[key], expected[key])


def test_interleaved_workers_keep_their_episodes(tmp_path):
    r = Replay(tmp_path, seq_len=4)
    a, b = episode(0, 4), episode(1, 6)
    for t in range(6):
        if t < 4:
            r.add(a[t], worker=0)
        r.add(b[t], worker=1)
    assert [len(ep["reward"]) for ep in r.episodes] == [4, 6]
    np.testing.assert_array_equal(r.episodes[1]["obs"][:, 0], 1)
    assert len(Replay(tmp_path, seq_len=4).episodes) == 2


def test_killed_write_leaves_only_an_ignored_temp_file(tmp_path, monkeypatch):
    r = Replay(tmp_path, seq_len=4)
    fill(r, [5])

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies between writing the temp file and renaming it

    monkeypatch.setattr(replay_module.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        fill(r, [7])
    monkeypatch.undo()
    tmp = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(tmp) == 1 and len(npz_files(tmp_path)) == 1
    with open(tmp[0], "r+b") as f:  # and it is half-written
        f.truncate(os.path.getsize(tmp[0]) // 2)
    (tmp_path / ".000000007-000009-20240101T000000-abc.npz.tmp").write_bytes(b"PK\x03\x04garbage")
    r2 = Replay(tmp_path, seq_len=4)
    assert r2.num_episodes == 1 and len(r2) == 5
    fill(r2, [3])  # the next index does not collide with anything left behind
    assert len(npz_files(tmp_path)) == 2 and Replay(tmp_path, seq_len=4).num_episodes == 2


def test_unreadable_episode_file_is_skipped_with_warning(tmp_path):
    fill(Replay(tmp_path, seq_len=4), [5, 6])
    (tmp_path / "000000002-000004-20240101T000000-deadbeef.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.warns(UserWarning, match="unreadable"):
        r = Replay(tmp_path, seq_len=4)
    assert [len(ep["reward"]) for ep in r.episodes] == [5, 6]


def test_flush_and_reload_keep_unfinished_steps(tmp_path):
    r = Replay(tmp_path, seq_len=4)
    fill(r, [6])
    w0, w1 = episode(1, 9), episode(2, 7)
    for step in w0[:5]:
        r.add(step, worker=0)
    for step in w1[:3]:
        r.add(step, worker=1)
    assert len(r) == 6 and r.num_pending == 8 and r.steps_added == 14
    r.flush()
    assert len(r) == 14 and r.num_pending == 0 and r.num_episodes == 3  # sampleable at once
    r2 = Replay(tmp_path, seq_len=4)
    assert [len(ep["reward"]) for ep in r2.episodes] == [6, 5, 3]
    for ep, src in zip(r2.episodes[1:], (w0[:5], w1[:3]), strict=True):
        np.testing.assert_array_equal(ep["obs"], np.stack([s["obs"] for s in src]))
        assert ep["is_first"][0] and not ep["is_last"].any()
    for step in w0[5:]:  # worker 0 goes on: a new segment that ends the episode
        r.add(step, worker=0)
    seg = r.episodes[-1]
    assert len(seg["reward"]) == 4 and not seg["is_first"].any() and seg["is_last"][-1]
    assert [len(ep["reward"]) for ep in Replay(tmp_path, seq_len=4).episodes] == [6, 5, 3, 4]


def test_flushed_chunk_end_is_not_padded_as_terminal(tmp_path):
    r = Replay(tmp_path, seq_len=6, seed=4)
    for step in episode(0, 3, last=False):
        r.add(step)
    r.flush()
    b = r.sample(16)
    assert (b["discount"] == 1).all() and not b["is_terminal"].any()  # no invented terminal
    _, k = ids(b)
    np.testing.assert_array_equal(b["is_first"], k == 0)  # continues with a reset, as in concat mode


def test_is_first_closes_a_pending_episode(tmp_path):
    r = Replay(tmp_path, seq_len=4)
    for step in episode(0, 4, last=False) + episode(1, 3):
        r.add(step)
    assert [len(ep["reward"]) for ep in r.episodes] == [4, 3]
    assert not r.episodes[0]["is_last"].any()


def test_capacity_evicts_oldest_from_memory_and_disk(tmp_path):
    r = Replay(tmp_path, seq_len=4, capacity_steps=25)
    fill(r, [10, 10, 10])
    assert len(r) == 20 and r.num_episodes == 2
    assert [int(ep["obs"][0, 0]) for ep in r.episodes] == [1, 2]
    files = npz_files(tmp_path)
    assert len(files) == 2 and files[0].startswith("000000001-000010-")
    for step in episode(3, 40):  # larger than the capacity alone: the newest episode is kept
        r.add(step)
    assert r.num_episodes == 1 and len(r) == 40 and len(npz_files(tmp_path)) == 1
    e, _ = ids(r.sample(8))
    assert (e == 3).all()
    fill(r, [5])
    assert [len(ep["reward"]) for ep in r.episodes] == [5]


def test_load_respects_capacity_without_deleting(tmp_path):
    fill(Replay(tmp_path, seq_len=4), [10, 10, 10, 10])
    r = Replay(tmp_path, seq_len=4, capacity_steps=25)
    assert [int(ep["obs"][0, 0]) for ep in r.episodes] == [2, 3]
    assert len(npz_files(tmp_path)) == 4
    assert Replay(tmp_path, seq_len=4).num_episodes == 4


@pytest.mark.parametrize("boundary", ["absorbing", "concat"])
def test_determinism_under_seed(tmp_path, boundary):
    lengths = [4, 9, 2, 15]
    r1 = Replay(tmp_path / "a", seq_len=10, seed=5, boundary=boundary)
    r2 = Replay(tmp_path / "b", seq_len=10, seed=5, boundary=boundary)
    r3 = Replay(tmp_path / "c", seq_len=10, seed=6, boundary=boundary)
    for r in (r1, r2, r3):
        fill(r, lengths)
    for _ in range(3):
        b1, b2, b3 = r1.sample(8), r2.sample(8), r3.sample(8)
        for key in KEYS:
            np.testing.assert_array_equal(b1[key], b2[key])
        assert not np.array_equal(b1["obs"], b3["obs"])
    state = r1.state_dict()
    again = r1.sample(8)
    r1.load_state_dict(state)
    np.testing.assert_array_equal(r1.sample(8)["action"], again["action"])


def test_stats_len_and_dtypes_of_python_scalars(tmp_path):
    r = Replay(tmp_path, seq_len=4)
    with pytest.raises(RuntimeError, match="empty"):
        r.sample(2)
    fill(r, [3, 4])
    for step in episode(5, 2, last=False):
        r.add(step)
    assert r.stats == {"episodes": 2, "steps": 7, "added": 9, "pending": 2}
    assert len(r) == r.num_steps == 7
    ep = r.episodes[0]
    assert ep["reward"].dtype == np.float32 and ep["is_first"].dtype == np.bool_
    r2 = Replay(tmp_path, seq_len=4)
    assert r2.stats == {"episodes": 2, "steps": 7, "added": 0, "pending": 0}
    with pytest.raises(ValueError):
        Replay(tmp_path, seq_len=0)
    with pytest.raises(ValueError):
        Replay(tmp_path, seq_len=4, boundary="wrap")  # type: ignore[arg-type]


def test_time_limit_end_is_not_padded_termination_is(tmp_path):
    """Absorbing padding (§5.2) applies to true terminations only: a truncated episode continues into an episode
    start instead, with no invented terminal; a terminated one is padded."""
    r = Replay(tmp_path / "trunc", seq_len=8, seed=2)
    fill(r, [3, 3], terminal=False)  # is_last by time limit: discount 1, is_terminal False
    b = r.sample(64)
    assert (b["discount"] == 1).all() and not b["is_terminal"].any() and (b["reward"] > 0).all()
    _, k = ids(b)
    np.testing.assert_array_equal(b["is_first"][:, 1:], k[:, 1:] == 0)  # a reset exactly at each boundary

    r = Replay(tmp_path / "term", seq_len=8, seed=2)
    fill(r, [3, 3], terminal=True)
    b = r.sample(64)
    last = np.argmax(b["is_last"], 1)
    for row in range(64):
        pad = slice(int(last[row]) + 1, None)
        assert (b["discount"][row, pad] == 0).all() and b["is_terminal"][row, pad].all()
        assert (b["reward"][row, pad] == 0).all() and not b["is_first"][row, pad].any()


def test_sample_by_episode_balances_short_episodes(tmp_path):
    """One long and nine short episodes: by step the long one starts ~90% of the sequences (its share of steps),
    by episode ~10% (its share of episodes)."""
    lengths = [900] + [10] * 9
    by_step = Replay(tmp_path / "a", seq_len=4, seed=0)
    by_episode = Replay(tmp_path / "b", seq_len=4, seed=0, sample_by="episode")
    fill(by_step, lengths)
    fill(by_episode, lengths)
    e_step, _ = ids(by_step.sample(4000))
    e_ep, k_ep = ids(by_episode.sample(4000))
    assert abs((e_step[:, 0] == 0).mean() - 0.9) < 0.03
    assert abs((e_ep[:, 0] == 0).mean() - 0.1) < 0.03
    starts = k_ep[e_ep[:, 0] == 0, 0]  # a start uniformly within the drawn episode
    assert starts.min() < 50 and starts.max() > 850
    with pytest.raises(ValueError, match="sample_by"):
        Replay(tmp_path / "c", seq_len=4, sample_by="task")
