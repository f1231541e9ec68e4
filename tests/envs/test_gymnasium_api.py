"""Registration, the single env through gymnasium's checker, the vector env's contract."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode, VectorEnv

import fastvlmrl  # noqa: F401
from fastvlmrl.envs import ENV_IDS

from .conftest import GAME_NAMES, REFERENCE, fresh_seed

ACTIONS = {"NumberLine": 2, "EZPoints": 13, "Points24": 17, "Blackjack": 2}


@pytest.mark.parametrize("name", GAME_NAMES)
def test_ids_are_registered_and_single_env_passes_check_env(name):
    assert ENV_IDS[name] == f"fastvlmrl/{name}-v0"
    env = gym.make(ENV_IDS[name])
    check_env(env.unwrapped, skip_render_check=True)
    env.close()
    env = gym.make(ENV_IDS[name], render_mode="rgb_array", height=100, width=120)
    check_env(env.unwrapped)
    obs, info = env.reset(seed=3)
    assert obs.shape == (100, 120, 3) and obs.dtype == np.uint8
    np.testing.assert_array_equal(env.render(), obs)
    env.close()


@pytest.mark.parametrize("name", GAME_NAMES)
def test_reference_games_pass_check_env(name):
    check_env(REFERENCE[name](height=64, width=64, render_mode="rgb_array"))


@pytest.mark.parametrize("name", GAME_NAMES)
def test_make_vec_gives_the_c_batch(name):
    envs = gym.make_vec(ENV_IDS[name], num_envs=6)
    assert isinstance(envs, VectorEnv) and envs.num_envs == 6
    assert type(envs.unwrapped).__name__ == f"{name}VectorEnv"
    assert envs.single_observation_space == gym.spaces.Box(0, 255, (300, 300, 3), np.uint8)
    assert envs.single_action_space == gym.spaces.Discrete(ACTIONS[name])
    assert envs.observation_space.shape == (6, 300, 300, 3)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, infos = envs.reset(seed=1)
    assert envs.observation_space.contains(obs)
    for key, value in infos.items():
        if not key.startswith("_"):
            assert len(value) == 6 and infos["_" + key].all()
    obs, rewards, terminated, truncated, infos = envs.step(envs.action_space.sample())
    assert rewards.dtype == np.float32 and terminated.dtype == np.bool_ and truncated.shape == (6,)
    envs.close()


@pytest.mark.parametrize("name", GAME_NAMES)
def test_sync_vectorization_of_single_envs_equals_the_c_batch(name):
    seed = fresh_seed() % 2**40
    fast = gym.make_vec(ENV_IDS[name], num_envs=3, height=64, width=64)
    slow = gym.make_vec(ENV_IDS[name], num_envs=3, vectorization_mode="sync", height=64, width=64)
    a, _ = fast.reset(seed=seed)
    b, _ = slow.reset(seed=seed)
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(seed)
    for _ in range(60):
        actions = rng.integers(0, ACTIONS[name], 3)
        for x, y in zip(fast.step(actions)[:4], slow.step(actions)[:4]):
            np.testing.assert_array_equal(x, y)
    fast.close()
    slow.close()


def test_same_seed_same_run_different_seed_different_run(game_name):
    def run(seed):
        envs = gym.make_vec(ENV_IDS[game_name], num_envs=16, height=48, width=48)
        obs, _ = envs.reset(seed=seed)
        out = [obs]
        rng = np.random.default_rng(0)
        for _ in range(10):
            out += list(envs.step(rng.integers(0, ACTIONS[game_name], 16))[:2])
        envs.close()
        return np.concatenate([x.ravel().astype(np.float64) for x in out])

    np.testing.assert_array_equal(run(11), run(11))
    assert not np.array_equal(run(11), run(12))


def test_seed_sequence_and_unseeded_reset():
    envs = gym.make_vec(ENV_IDS["Points24"], num_envs=3, height=48, width=48)
    by_list, _ = envs.reset(seed=[7, 8, 9])
    by_int, _ = envs.reset(seed=7)
    np.testing.assert_array_equal(by_list, by_int)
    other, _ = envs.reset(seed=[9, 8, 7])
    np.testing.assert_array_equal(other[0], by_int[2])
    envs.close()
    a = gym.make_vec(ENV_IDS["Points24"], num_envs=8, height=48, width=48)
    b = gym.make_vec(ENV_IDS["Points24"], num_envs=8, height=48, width=48)
    assert not np.array_equal(a.reset()[1]["cards"], b.reset()[1]["cards"])  # fresh entropy each


def test_next_step_autoreset_ignores_the_action_and_starts_a_new_episode():
    envs = gym.make_vec(ENV_IDS["EZPoints"], num_envs=2, height=48, width=48)
    envs.reset(seed=0)
    _, rewards, terminated, _, _ = envs.step(np.array([12, 0]))  # env 0 presses "=" at once
    assert terminated[0] and rewards[0] == -1
    obs, rewards, terminated, truncated, infos = envs.step(np.array([0, 0]))
    assert rewards[0] == 0 and not terminated[0] and not truncated[0]
    assert infos["formula_len"][0] == 0 and infos["numbers_used"][0] == 0
    assert envs.unwrapped.describe(0)["Formula"] == []  # the info text matches the fresh frame
    envs.close()


def test_disabled_autoreset_with_reset_mask():
    envs = gym.make_vec(ENV_IDS["EZPoints"], num_envs=3, autoreset_mode=AutoresetMode.DISABLED, height=48, width=48)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.DISABLED
    envs.reset(seed=0)
    envs.step(np.array([12, 10, 10]))
    with pytest.raises(RuntimeError, match="env 0 has ended"):
        envs.step(np.array([10, 10, 10]))
    before = envs.unwrapped.state
    obs, infos = envs.reset(options={"reset_mask": np.array([True, False, False])})
    after = envs.unwrapped.state
    np.testing.assert_array_equal(before[1:], after[1:])
    assert after[0, 9] == 0
    envs.step(np.array([10, 10, 10]))
    envs.close()


def test_copy_false_returns_the_live_buffer():
    envs = gym.make_vec(ENV_IDS["NumberLine"], num_envs=2, copy=False, height=48, width=48)
    obs, _ = envs.reset(seed=0)
    obs2, *_ = envs.step(np.array([0, 1]))
    assert obs2 is obs or np.shares_memory(obs, obs2)
    copied = gym.make_vec(ENV_IDS["NumberLine"], num_envs=2, height=48, width=48)
    c1, _ = copied.reset(seed=0)
    c2, *_ = copied.step(np.array([0, 1]))
    assert not np.shares_memory(c1, c2)
    envs.close()
    copied.close()
