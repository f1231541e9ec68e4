"""The games' ids and state row layouts come from the C binding (`_cards.GAME_IDS`,
`_cards.LAYOUTS`): every game has both, and the fields fit the row without overlapping."""

import pytest

from fastvlmrl.envs import _cards
from fastvlmrl.envs.games import GAMES
from fastvlmrl.envs.play import play
from fastvlmrl.envs.vector import make_batch


def test_every_game_has_its_c_id_and_layout():
    assert list(_cards.GAME_IDS) == list(GAMES) == list(_cards.LAYOUTS)
    for name, game_id in _cards.GAME_IDS.items():
        assert GAMES[name].game_id == game_id == getattr(_cards, name.upper())


@pytest.mark.parametrize("name", list(GAMES))
def test_layout_fields_fit_the_row_and_do_not_overlap(name):
    used = set()
    for start, length in _cards.LAYOUTS[name].values():
        columns = set(range(start, start + length))
        assert length >= 1 and columns <= set(range(_cards.STATE_DIM)) and not columns & used
        used |= columns


def test_play_needs_a_same_step_batch():
    envs = make_batch("NumberLine", 2, height=32, width=32)
    with pytest.raises(ValueError, match="SameStep"):
        play(envs, lambda game, info: 0, 1)
    envs.close()


FORMULA_ROW = {"cards": (0, 4), "numbers": (4, 4), "num_cards": (8, 1), "formula_len": (9, 1),
               "numbers_used": (10, 1), "steps": (11, 1), "formula": (12, 24)}


def test_layouts_are_the_documented_rows():
    """Pinned by hand: the C games, their Python modules and the reference games all read the
    exported layout, so only a fixed copy catches a change that moves all three together."""
    assert _cards.LAYOUTS == {
        "NumberLine": {"target": (0, 1), "current": (1, 1), "steps": (2, 1)},
        "EZPoints": FORMULA_ROW,
        "Points24": FORMULA_ROW,
        "Blackjack": {"dealer_count": (0, 1), "player_count": (1, 1), "steps": (2, 1), "dealer_cards": (3, 12),
                      "player_cards": (15, 22)},
    }
    assert _cards.STATE_DIM == 48


def test_numberline_start_states_are_covered_once_each():
    from fastvlmrl.envs.play import start_state_seeds

    seeds = start_state_seeds("NumberLine")
    envs = make_batch("NumberLine", len(seeds), height=32, width=32)
    envs.reset(seed=seeds)
    starts = {(info["Target"], info["Current"]) for info in (envs.describe(i) for i in range(len(seeds)))}
    envs.close()
    assert len(seeds) == len(starts) == 30 and all(t != c for t, c in starts)
    assert start_state_seeds("EZPoints") is None  # thousands of hands: no exact evaluation
