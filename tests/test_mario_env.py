"""recipes.envs.mario: Super Mario Bros levels (mario:WORLD-STAGE) with DreamerV2's step dict.

The first tests need neither nes-py nor gym-super-mario-bros (the numpy-2 header fix, names, the missing-package
error); the rest skip unless ``pip install 'reweigh[mario]'`` put both in.
"""

import subprocess
import sys

import numpy as np
import pytest

from recipes.envs import make_env, mario

KEYS = {"obs", "action", "reward", "discount", "is_first", "is_last", "is_terminal"}
NUMPY2 = int(np.__version__.split(".")[0]) >= 2


def _synthetic_header(prg_banks: int = 2, chr_banks: int = 1, flags6: int = 0x01, flags7: int = 0x00) -> bytes:
    """A 16-byte iNES header: magic, PRG banks (16 KiB), CHR banks (8 KiB), flags 6 and 7, zeros."""
    return b"NES\x1a" + bytes([prg_banks, chr_banks, flags6, flags7]) + bytes(8)


def test_ines_header_is_int64_so_nes_py_size_arithmetic_holds_under_numpy2():
    raw = np.frombuffer(_synthetic_header(prg_banks=2, chr_banks=1, flags6=0x11, flags7=0x20), np.uint8)
    header = mario.ines_header(raw)
    assert header.dtype == np.int64 and header.shape == (16,)
    assert bytes(header[:4].tolist()) == b"NES\x1a"
    # nes-py's ROM properties, as it computes them: prg_rom_size (KB) * 2**10, chr_rom_size (KB) * 2**10, mapper
    assert 16 * header[4] * 2**10 == 32768 and 8 * header[5] * 2**10 == 8192
    flags6, flags7 = f"{header[6]:08b}", f"{header[7]:08b}"
    assert int(flags7[:4] + flags6[:4], 2) == 0x21
    if NUMPY2:  # the bug being fixed: the raw uint8 header byte times 1024 raises under NEP 50
        with pytest.raises(OverflowError, match="out of bounds for uint8"):
            _ = 16 * raw[4] * 2**10
    with pytest.raises(ValueError, match="16-byte header"):
        mario.ines_header(raw[:8])


def test_level_names_actions_and_buttons():
    assert mario.parse_level("1-1") == (1, 1) and mario.parse_level("8-4") == (8, 4)
    for bad in ("0-1", "9-1", "1-0", "1-5", "1", "a-b", "1-1-1", "-1-1", ""):
        with pytest.raises(ValueError, match="unknown environment"):
            mario.parse_level(bad)
    with pytest.raises(ValueError, match=r"unknown environment 'mario:9-9'"):
        make_env("mario:9-9", seed=0)  # refused before the emulator packages are imported
    assert len(mario.MARIO_ACTIONS) == 12
    bytes_ = [mario.button_byte(b) for b in mario.MARIO_ACTIONS]
    assert bytes_ == [0x00, 0x80, 0x81, 0x82, 0x83, 0x01, 0x40, 0x41, 0x42, 0x43, 0x20, 0x10]


def test_importing_recipes_envs_does_not_import_the_emulator():
    code = "import sys, recipes.envs; bad = {'nes_py', 'gym', 'gym_super_mario_bros'} & set(sys.modules); print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "set()"


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(mario, "_BACKEND", None)
    monkeypatch.setitem(sys.modules, "gym_super_mario_bros.smb_env", None)  # import of it raises ImportError
    with pytest.raises(ImportError, match=r"reweigh\[mario\]"):
        make_env("mario:1-1", seed=0)


# -- with the packages ---------------------------------------------------------------------------------------


@pytest.fixture
def backend():
    pytest.importorskip("nes_py")
    pytest.importorskip("gym_super_mario_bros")
    return mario._backend()


def _check(step: dict, env, *, first: bool) -> None:
    assert set(step) == KEYS
    assert step["obs"].shape == env.obs_shape and step["obs"].dtype == env.obs_dtype
    assert step["action"].shape == (12,) and step["action"].dtype == np.float32
    assert isinstance(step["reward"], np.float32) and isinstance(step["discount"], np.float32)
    assert all(isinstance(step[k], bool) for k in ("is_first", "is_last", "is_terminal"))
    assert step["is_first"] is first
    if first:
        assert not step["action"].any() and step["reward"] == 0.0 and step["discount"] == 1.0


def test_fixed_rom_class_parses_a_synthetic_rom(backend, tmp_path):
    nes_env, rom_cls, _ = backend
    path = tmp_path / "blank.nes"
    path.write_bytes(_synthetic_header(prg_banks=2, chr_banks=1) + bytes(32768 + 8192))
    rom = rom_cls(str(path))
    assert rom.prg_rom_size == 32 and len(rom.prg_rom) == 32768 and len(rom.chr_rom) == 8192
    assert rom.mapper == 0 and rom.is_vertical_mirroring and not rom.has_trainer
    if NUMPY2:  # nes-py 8.2.1's own class: the overflow this module works around
        with pytest.raises(OverflowError):
            _ = nes_env.ROM(str(path)).prg_rom
    from gym_super_mario_bros.actions import COMPLEX_MOVEMENT

    assert [tuple(a) for a in COMPLEX_MOVEMENT] == list(mario.MARIO_ACTIONS)


def test_step_dicts_death_is_terminal_and_reset_after_it(backend):
    with make_env("mario:1-1", seed=0) as env:
        assert env.obs_shape == (1, 64, 64) and env.action_dim == 12 and env.discrete
        assert env.action_repeat == 4 and env.time_limit == mario.MARIO_TIME_LIMIT
        first = env.reset()
        _check(first, env, first=True)
        assert first["obs"].std() > 0  # a real frame, not a blank screen
        right = np.eye(12, dtype=np.float32)[1]
        step, n = env.step(right), 1
        _check(step, env, first=False)
        np.testing.assert_array_equal(step["action"], right)
        progress = 0.0
        while not step["is_last"]:  # holding right walks into the first Goomba
            progress += float(step["reward"])
            step, n = env.step(1), n + 1
            assert n < 200
        assert progress > 0  # running right pays more than the clock costs
        _check(step, env, first=False)
        assert step["is_terminal"] and step["discount"] == 0.0 and not env.info["flag_get"]
        assert step["reward"] < 0  # the death penalty
        with pytest.raises(RuntimeError, match="reset"):
            env.step(0)
        again = env.reset()
        _check(again, env, first=True)
        np.testing.assert_array_equal(again["obs"], first["obs"])  # every episode starts from the level's start
        assert env.render().shape == (240, 256, 3)


def test_time_limit_truncates_with_discount_one_and_ram_observations(backend):
    with make_env("mario:3-2", seed=0, pixels=False, time_limit=5) as env:
        assert env.obs_shape == (2048,)
        _check(env.reset(), env, first=True)
        steps = [env.step(0) for _ in range(5)]
        assert [s["is_last"] for s in steps] == [False] * 4 + [True]
        assert not steps[-1]["is_terminal"] and steps[-1]["discount"] == 1.0
        assert steps[-1]["obs"].dtype == np.float32


def test_same_seed_same_episodes(backend):
    actions = np.random.default_rng(0).integers(0, 12, size=60)

    def run(seed: int) -> tuple[np.ndarray, np.ndarray]:
        with make_env("mario:1-1", seed=seed, size=32) as env:
            steps = [env.reset()]
            for a in actions:
                steps.append(env.step(int(a)) if not steps[-1]["is_last"] else env.reset())
            return np.stack([s["obs"] for s in steps]), np.array([s["reward"] for s in steps])

    obs_a, rew_a = run(3)
    obs_b, rew_b = run(3)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rew_a, rew_b)
    assert obs_a.shape == (61, 1, 32, 32)
