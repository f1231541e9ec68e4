"""get_state / set_state: a restored batch continues exactly where the snapshot was taken (the
trainer's resume depends on it), and a snapshot that does not fit is refused with a clear error."""

import numpy as np
import pytest

from fastvlmrl.envs.vector import make_batch


def _play(envs, rng, steps):
    out = []
    for _ in range(steps):
        obs, rewards, terminated, truncated, _ = envs.step(rng.integers(envs.game.num_actions, size=envs.num_envs))
        out.append((obs.copy(), rewards, terminated, truncated,
                    [envs.describe(i) for i in range(envs.num_envs)]))
    return out


@pytest.mark.parametrize("threads", [1, 2])
def test_restored_batch_continues_the_same_episodes(game_name, threads):
    kwargs = dict(height=48, width=64, autoreset_mode="SameStep")
    original = make_batch(game_name, 6, num_threads=threads, **kwargs)
    original.reset(seed=7)
    _play(original, np.random.default_rng(0), 9)
    snapshot = original.get_state()
    restored = make_batch(game_name, 6, num_threads=threads, **kwargs)  # never reset: set_state starts it
    obs, infos = restored.set_state(snapshot)
    assert np.array_equal(obs, original._obs)
    assert [restored.describe(i) for i in range(6)] == [original.describe(i) for i in range(6)]
    a = _play(original, np.random.default_rng(1), 40)
    b = _play(restored, np.random.default_rng(1), 40)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert np.array_equal(u, v) if isinstance(u, np.ndarray) else u == v
    original.close()
    restored.close()


def test_snapshot_of_another_batch_is_refused():
    envs = make_batch("EZPoints", 4, height=48, width=48)
    envs.reset(seed=0)
    snapshot = envs.get_state()
    for other, match in [
        (make_batch("Points24", 4, height=48, width=48), "EZPoints at 48x48, this batch is Points24"),
        (make_batch("EZPoints", 5, height=48, width=48), "another number of envs"),
        (make_batch("EZPoints", 4, height=48, width=64), "48x48, this batch is EZPoints at 48x64"),
    ]:
        with pytest.raises(ValueError, match=match):
            other.set_state(snapshot)
    with pytest.raises(ValueError, match="truncated"):
        envs.set_state({**snapshot, "batch": snapshot["batch"][:-3]})
    with pytest.raises(ValueError, match="not an env snapshot"):
        envs.set_state({**snapshot, "batch": b"\0" * len(snapshot["batch"])})
    with pytest.raises(RuntimeError, match="reset"):
        make_batch("EZPoints", 4, height=48, width=48).get_state()


def test_points24_options_must_match():
    a = make_batch("Points24", 2, height=48, width=48, face_cards_as_10=True)
    a.reset(seed=0)
    b = make_batch("Points24", 2, height=48, width=48, face_cards_as_10=False)
    with pytest.raises(ValueError, match="game options"):
        b.set_state(a.get_state())


@pytest.mark.parametrize("game", ["NumberLine", "EZPoints", "Blackjack"])
def test_damaged_snapshot_is_refused_and_the_batch_is_unchanged(game):
    """Impossible values (a damaged file) give an error before any env is replaced."""
    envs = make_batch(game, 3, height=48, width=48)
    envs.reset(seed=0)
    good = envs.get_state()
    before = [envs.describe(i) for i in range(3)]
    header = 36  # 9 uint32
    env_size = (len(good["batch"]) - header) // 3
    damaged = bytearray(good["batch"])
    # the last env's game fields start after its RNG (16 bytes) and two ints: fill them with 0x7f
    start = header + 2 * env_size + 24
    damaged[start:start + 16] = b"\x7f" * 16
    with pytest.raises(ValueError, match="env 2 of the snapshot holds impossible values"):
        envs.set_state({**good, "batch": bytes(damaged)})
    assert [envs.describe(i) for i in range(3)] == before
    envs.set_state(good)


@pytest.mark.parametrize("field", [6, 7, 8])  # the header's layout words: Rng size, game offset, game struct size
def test_snapshot_from_another_struct_layout_is_refused(field):
    """A build whose structs differ (a game's struct grew, say) wrote a snapshot this build
    cannot read field by field: refused, even when the env's total size is the same."""
    envs = make_batch("NumberLine", 2, height=48, width=48)
    envs.reset(seed=0)
    snapshot = envs.get_state()
    changed = bytearray(snapshot["batch"])
    word = int.from_bytes(changed[4 * field: 4 * field + 4], "little")
    changed[4 * field: 4 * field + 4] = (word + 4).to_bytes(4, "little")
    with pytest.raises(ValueError, match="another version"):
        envs.set_state({**snapshot, "batch": bytes(changed)})


def test_header_records_each_games_own_struct_size():
    """Not the size of the union of all games (the same for every game): a change to a game
    smaller than the largest must change its snapshots' header too."""
    sizes = {}
    for name in ("NumberLine", "EZPoints", "Blackjack"):
        envs = make_batch(name, 1, height=32, width=32)
        envs.reset(seed=0)
        sizes[name] = int.from_bytes(envs.get_state()["batch"][32:36], "little")
    assert len(set(sizes.values())) == 3, sizes
