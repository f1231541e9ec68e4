"""The C batch and the Python reference games agree: same seeds and actions give the same frames,
rewards, terminations, truncations, state rows and info dicts, for thousands of steps."""

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from fastvlmrl.envs.games import describe

from .conftest import REFERENCE, VECTOR, fresh_seed


def _assert_same(name, step, i, c_obs, c_row, ref):
    if not np.array_equal(c_obs, ref._frame()):
        diff = np.argwhere((c_obs != ref._frame()).any(axis=2))
        raise AssertionError(f"{name}: frame of env {i} differs at step {step}, {len(diff)} pixels, first {diff[0]}")
    np.testing.assert_array_equal(c_row, ref.state_row(), err_msg=f"{name}: state of env {i} at step {step}")


def drive_in_lockstep(name, num_envs, steps, seed, *, height=300, width=300, num_threads=1, copy=False,
                      face_cards_as_10=True, hit_probability=None):
    kwargs = {} if name != "Points24" else {"face_cards_as_10": face_cards_as_10}
    envs = VECTOR[name](num_envs, height=height, width=width, num_threads=num_threads, copy=copy, **kwargs)
    refs = [REFERENCE[name](height=height, width=width, **kwargs) for _ in range(num_envs)]
    obs, _ = envs.reset(seed=seed)
    for i, ref in enumerate(refs):
        ref_obs, ref_info = ref.reset(seed=seed + i)
        np.testing.assert_array_equal(obs[i], ref_obs)
        assert envs.describe(i) == ref_info
    rng = np.random.default_rng(seed)
    ended = np.zeros(num_envs, bool)
    episodes = 0
    for step in range(steps):
        actions = rng.integers(0, envs.single_action_space.n, num_envs)
        if hit_probability is not None:  # Blackjack: 1 = hit
            actions = (rng.random(num_envs) < hit_probability).astype(np.int64)
        obs, rewards, terminated, truncated, infos = envs.step(actions)
        for i, ref in enumerate(refs):
            if ended[i]:  # next-step autoreset: the batch starts a new episode, ignoring the action
                ref.reset()
                ref_reward, ref_term, ref_trunc = 0.0, False, False
                ref_info = ref._info()
            else:
                _, ref_reward, ref_term, ref_trunc, ref_info = ref.step(int(actions[i]))
            assert (rewards[i], terminated[i], truncated[i]) == (ref_reward, ref_term, ref_trunc), (name, step, i)
            assert describe(envs.game, envs.state[i]) == ref_info
            _assert_same(name, step, i, obs[i], envs.state[i], ref)
        ended = terminated | truncated
        episodes += int(ended.sum())
    envs.close()
    return episodes


@pytest.mark.parametrize("name", list(VECTOR))
def test_c_batch_matches_reference_for_thousands_of_steps(name):
    episodes = drive_in_lockstep(name, num_envs=8, steps=400, seed=fresh_seed() % 2**40)
    assert episodes > 50  # many autoresets were exercised


@pytest.mark.parametrize("name", list(VECTOR))
@pytest.mark.parametrize("size", [(40, 48), (64, 64), (120, 200), (450, 330)])
def test_parity_at_other_image_sizes(name, size):
    drive_in_lockstep(name, num_envs=3, steps=60, seed=fresh_seed() % 2**40, height=size[0], width=size[1])


def test_blackjack_long_hands_redrawn_as_the_reference():
    """Hands of five cards and more (their row fanned to fit the frame) through the incremental
    redraws of a hit and of a new deal, against the reference's full redraw."""
    drive_in_lockstep("Blackjack", num_envs=16, steps=120, seed=fresh_seed() % 2**40, hit_probability=0.95)
    drive_in_lockstep("Blackjack", num_envs=8, steps=60, seed=fresh_seed() % 2**40, hit_probability=0.95,
                      height=64, width=97)


@pytest.mark.parametrize("count", range(2, 12))
def test_blackjack_draws_every_player_card_inside_the_frame(count):
    """RL4VLM's layout put the fifth card at x=301 of a 300-wide frame: the model never saw it."""
    env = REFERENCE["Blackjack"](height=300, width=300)
    env.reset(seed=0)
    env.player = [2 + 13 * (i % 4) for i in range(count)]  # threes of four suits: a hand of `count` cards
    frame = env._frame().astype(int)
    row = frame[151]  # just inside the top edge of every player card
    is_card = (row > 200).all(axis=1)  # card face white
    starts = np.flatnonzero(is_card[1:] & ~is_card[:-1]) + 1  # left edges of visible card faces
    assert len(starts) == count, starts
    right = max(x for x in range(300) if is_card[x])
    assert right < 299  # the last card ends inside the frame, with its edge


def test_parity_with_face_cards_kept():
    drive_in_lockstep("Points24", num_envs=4, steps=150, seed=fresh_seed() % 2**40, face_cards_as_10=False)


@pytest.mark.parametrize("name", list(VECTOR))
def test_threads_and_copies_do_not_change_results(name):
    seed = fresh_seed() % 2**40
    runs = []
    for num_threads, copy in [(1, False), (2, True), (3, False)]:
        envs = VECTOR[name](7, num_threads=num_threads, copy=copy, height=96, width=96)
        obs, _ = envs.reset(seed=seed)
        rng = np.random.default_rng(seed)
        trace = [obs.copy()]
        for _ in range(40):
            out = envs.step(rng.integers(0, envs.single_action_space.n, 7))
            trace += [out[0].copy(), out[1], out[2], out[3], envs.state]
        envs.close()
        runs.append(trace)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


def test_frames_are_redrawn_when_the_buffer_was_written_over():
    """The incremental drawing never trusts a frame it did not draw: a new buffer (copy=True) or a
    render() in between forces a full redraw, and the result equals the reference's full frame."""
    envs = VECTOR["Points24"](4, copy=False)
    refs = [REFERENCE["Points24"]() for _ in range(4)]
    obs, _ = envs.reset(seed=5)
    for i, ref in enumerate(refs):
        ref.reset(seed=5 + i)
    envs.render_mode = "rgb_array"
    actions = np.array([14, 14, 14, 14])  # "(" is always valid
    for _ in range(3):
        envs.render()  # draws into another buffer
        obs, *_ = envs.step(actions)
        for i, ref in enumerate(refs):
            ref.step(14)
            np.testing.assert_array_equal(obs[i], ref._frame())
    envs.close()


@pytest.mark.parametrize("name", list(VECTOR))
def test_same_step_autoreset_reports_the_final_frame(name):
    seed = fresh_seed() % 2**40
    envs = VECTOR[name](5, autoreset_mode=AutoresetMode.SAME_STEP, height=80, width=80)
    refs = [REFERENCE[name](height=80, width=80) for _ in range(5)]
    obs, _ = envs.reset(seed=seed)
    for i, ref in enumerate(refs):
        ref.reset(seed=seed + i)
    rng = np.random.default_rng(seed)
    finals = 0
    for _ in range(80):
        actions = rng.integers(0, envs.single_action_space.n, 5)
        obs, rewards, terminated, truncated, infos = envs.step(actions)
        for i, ref in enumerate(refs):
            ref_obs, ref_reward, ref_term, ref_trunc, ref_info = ref.step(int(actions[i]))
            assert (rewards[i], terminated[i], truncated[i]) == (ref_reward, ref_term, ref_trunc)
            if ref_term or ref_trunc:
                finals += 1
                assert infos["_final_obs"][i]
                np.testing.assert_array_equal(infos["final_obs"][i], ref_obs)
                ref_obs, ref_info = ref.reset()
            else:
                assert "_final_obs" not in infos or not infos["_final_obs"][i]
            np.testing.assert_array_equal(obs[i], ref_obs)
            assert envs.describe(i) == ref_info
    assert finals > 5
    envs.close()
