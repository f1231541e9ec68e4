"""Bad input gets a clear error and corrupts nothing."""

import gymnasium as gym
import numpy as np
import pytest

import fastvlmrl  # noqa: F401
from fastvlmrl.envs import ENV_IDS, _cards
from fastvlmrl.envs.games import get_game

from .conftest import REFERENCE, VECTOR


@pytest.mark.parametrize(
    "actions, message",
    [
        (np.array([0, 1, 17]), "action 17 for env 2 is out of range"),
        (np.array([0, -1, 3]), "action -1 for env 1 is out of range"),
        (np.array([0.0, 1.0, 2.0]), "must be integers"),
        (np.array([True, False, True]), "must be integers"),
        (np.array([0, 1]), r"shape \(3,\)"),
        (np.zeros((3, 1), np.int64), r"shape \(3,\)"),
        (["a", "b", "c"], "must be integers"),
    ],
)
def test_bad_actions_raise_and_leave_the_batch_intact(actions, message):
    envs = VECTOR["Points24"](3, height=64, width=64)
    refs = [REFERENCE["Points24"](height=64, width=64) for _ in range(3)]
    envs.reset(seed=10)
    for i, ref in enumerate(refs):
        ref.reset(seed=10 + i)
    with pytest.raises(ValueError, match=message):
        envs.step(actions)
    obs, rewards, *_ = envs.step(np.array([14, 14, 14]))
    for i, ref in enumerate(refs):
        ref_obs, ref_reward, *_ = ref.step(14)
        np.testing.assert_array_equal(obs[i], ref_obs)
        np.testing.assert_array_equal(envs.state[i], ref.state_row())


def test_binding_checks_every_buffer():
    batch = _cards.Batch(_cards.NUMBERLINE, 2, 32, 32)
    obs = np.zeros((2, 32, 32, 3), np.uint8)
    state = np.zeros((2, _cards.STATE_DIM), np.int32)
    batch.seed(np.arange(2, dtype=np.uint64))
    batch.reset(None, obs, state)
    good = dict(
        actions=np.zeros(2, np.int64), obs=obs, rewards=np.zeros(2, np.float32), terminated=np.zeros(2, bool),
        truncated=np.zeros(2, bool), state=state,
    )

    def step(**override):
        args = {**good, **override}
        batch.step(args["actions"], args["obs"], args["rewards"], args["terminated"], args["truncated"],
                   args["state"], 0, None, None)

    step()
    with pytest.raises(ValueError, match="obs has the wrong dtype"):
        step(obs=np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="obs has shape"):
        step(obs=np.zeros((2, 32, 31, 3), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        step(obs=np.zeros((2, 32, 64, 3), np.uint8)[:, :, ::2])
    with pytest.raises(ValueError, match="rewards has the wrong dtype"):
        step(rewards=np.zeros(2, np.float64))
    with pytest.raises(ValueError, match="actions has the wrong dtype"):
        step(actions=np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="state must have 2 dimensions"):
        step(state=np.zeros(2 * _cards.STATE_DIM, np.int32))
    with pytest.raises(ValueError, match="writable"):
        ro = np.zeros(2, np.float32)
        ro.flags.writeable = False
        step(rewards=ro)
    with pytest.raises(ValueError, match="must be a C-contiguous"):
        step(terminated=[0, 0])
    with pytest.raises(ValueError, match="unknown autoreset mode"):
        batch.step(good["actions"], obs, good["rewards"], good["terminated"], good["truncated"], state, 7, None, None)
    batch.close()
    with pytest.raises(RuntimeError, match="closed"):
        step()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_envs=0), "num_envs must be at least 1"),
        (dict(height=8), "image size must be between"),
        (dict(width=100000), "image size must be between"),
        (dict(num_threads=0), "num_threads must be at least 1"),
        (dict(autoreset_mode="Sometimes"), "autoreset_mode must be one of"),
        (dict(render_mode="human"), "render_mode must be None or 'rgb_array'"),
    ],
)
def test_bad_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gym.make_vec(ENV_IDS["Blackjack"], **{"num_envs": 2, **kwargs})


def test_closed_or_unstarted_envs_raise():
    envs = gym.make_vec(ENV_IDS["Blackjack"], num_envs=2)
    with pytest.raises(RuntimeError, match="call reset"):
        envs.step(np.array([0, 0]))
    envs.reset(seed=0)
    envs.close()
    with pytest.raises(RuntimeError, match="closed"):
        envs.step(np.array([0, 0]))
    with pytest.raises(RuntimeError, match="closed"):
        envs.reset()
    single = gym.make(ENV_IDS["Blackjack"])
    single.reset(seed=0)
    single.unwrapped.step(0)  # stand: the episode ends
    with pytest.raises(RuntimeError, match="reset"):
        single.unwrapped.step(0)
    single.close()


def test_bad_seeds_and_masks():
    envs = gym.make_vec(ENV_IDS["NumberLine"], num_envs=2)
    with pytest.raises(ValueError, match="seeds must be in"):
        envs.reset(seed=-1)
    with pytest.raises(ValueError, match="2 envs"):
        envs.reset(seed=[1, 2, 3])
    with pytest.raises(ValueError, match="first reset must reset every env"):
        envs.reset(options={"reset_mask": np.array([True, False])})
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="at least one env"):
        envs.reset(options={"reset_mask": np.array([False, False])})
    with pytest.raises(ValueError, match="numpy bool array"):
        envs.reset(options={"reset_mask": [True, False]})
    envs.close()


def test_unknown_game_and_bad_single_actions():
    with pytest.raises(ValueError, match="unknown game 'Chess'"):
        get_game("Chess")
    env = gym.make(ENV_IDS["NumberLine"]).unwrapped
    env.reset(seed=0)
    for bad in (2, -1, 0.5, "+", [0, 1]):
        with pytest.raises(ValueError):
            env.step(bad)
    ref = REFERENCE["NumberLine"]()
    ref.reset(seed=0)
    for bad in (2, -1, 0.5, "+"):
        with pytest.raises(ValueError):
            ref.step(bad)


def test_live_observations_are_read_only():
    envs = VECTOR["NumberLine"](2, copy=False, height=48, width=48)
    obs, _ = envs.reset(seed=0)
    with pytest.raises(ValueError, match="read-only"):
        obs[:] = 0
    envs.close()


def test_a_new_array_at_a_reused_address_is_redrawn_in_full():
    """The binding tracks the array its frames live in, not just an address that may be reused."""
    batch = _cards.Batch(_cards.POINTS24, 1, 48, 48)
    ref = REFERENCE["Points24"](height=48, width=48)
    batch.seed(np.array([3], np.uint64))
    state = np.zeros((1, _cards.STATE_DIM), np.int32)
    batch.reset(None, np.zeros((1, 48, 48, 3), np.uint8), state)
    ref.reset(seed=3)
    scalars = (np.zeros(1, np.float32), np.zeros(1, bool), np.zeros(1, bool))
    for _ in range(10):
        obs = np.full((1, 48, 48, 3), 7, np.uint8)  # often lands where the previous array was
        batch.step(np.array([14]), obs, *scalars, state, 0, None, None)
        ref_obs, *_ = ref.step(14)
        np.testing.assert_array_equal(obs[0], ref_obs)
        del obs
    batch.close()


def test_uninitialised_batch_refuses_work():
    batch = _cards.Batch.__new__(_cards.Batch)
    with pytest.raises(RuntimeError, match="not initialised"):
        batch.reset(None, np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0, _cards.STATE_DIM), np.int32))


def test_threaded_batch_survives_fork():
    import multiprocessing as mp

    envs = VECTOR["Blackjack"](8, num_threads=2, height=32, width=32)
    envs.reset(seed=0)

    def child(queue):
        obs, *_ = envs.step(np.ones(8, np.int64))
        queue.put(int(obs.sum()))

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(queue,))
    proc.start()
    proc.join(timeout=30)
    assert proc.exitcode == 0, "the forked child hung or failed stepping a threaded batch"
    assert queue.get(timeout=5) > 0
    envs.close()
