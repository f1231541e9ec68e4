"""Text -> action: JSON first, RL4VLM's substring rule as fallback, never an exception."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastvlmrl.envs.games import GAMES
from fastvlmrl.envs.parse import ParsedAction, action_char_span, choose_action, parse_action

import numpy as np


@pytest.mark.parametrize(
    "game, text, expected",
    [
        ("NumberLine", '{"current number": "2", "target number": "4", "thoughts": "go up", "action": "+"}', 1),
        ("NumberLine", '```json\n{"thoughts": "x", "action": "-"}\n```', 0),
        ("Blackjack", '{"thoughts": "I have 20", "action": "Stand"}', 0),
        ("Blackjack", '{"thoughts": "I have 12", "action": " hit "}', 1),
        ("Points24", '{"cards": [1, 2, 3, 4], "current formula": "", "thoughts": "..", "action": "10"}', 9),
        ("Points24", '{"action": 7}', 6),
        ("Points24", '{"action": "("}', 14),
        ("EZPoints", '{"action": "="}', 12),
        # JSON broken: the substring rule after the last "action":
        ("Points24", 'thoughts: use 10 "action": "10', 9),
        ("Points24", '"action": "1" ... "action": "+"', 10),
        ("NumberLine", '{"thoughts": "a - b", "action": "+"', 1),
        ("Blackjack", 'I will "action": "hit" now', 1),
        ("Blackjack", '{"action": ["hit"]}', 1),  # not a string: the substring rule still reads it
        # no marker: RL4VLM keeps the last character only
        ("EZPoints", "I choose =", 12),
        ("NumberLine", "+", 1),
    ],
)
def test_legal_outputs(game, text, expected):
    assert parse_action(game, text) == ParsedAction(expected, True)


@pytest.mark.parametrize(
    "game, text",
    [
        ("NumberLine", ""),
        ("NumberLine", '"action": "+ or -"'),
        ("Points24", '"action": "1 or 2"'),
        ("Blackjack", '{"action": "double"}'),
        ("Blackjack", "I am not sure"),
        ("EZPoints", '{"action": null}'),
    ],
)
def test_illegal_outputs(game, text):
    parsed = parse_action(game, text)
    assert parsed.legal is False and parsed.action is None


def test_points24_eleven_falls_back_to_one():
    """'11' is not a Points24 action (J counts 10); RL4VLM's rule reads the '1' in it, once."""
    assert parse_action("Points24", '"action": "11"') == ParsedAction(0, True)


def test_bytes_and_odd_types():
    assert parse_action("Blackjack", b'{"action": "hit"}') == ParsedAction(1, True)
    assert parse_action("Blackjack", b"\xff\xfe\x00 \"action\": \"stand\"") == ParsedAction(0, True)
    assert parse_action("Blackjack", None).legal is False
    assert parse_action("Blackjack", 12345).legal is False


def test_json_action_wins_over_thought_text():
    text = json.dumps({"thoughts": 'I could say "action": "hit" but', "action": "stand"})
    assert parse_action("Blackjack", text) == ParsedAction(0, True)


def test_huge_and_nested_inputs_are_fast_and_safe():
    assert parse_action("Points24", "{" * 200_000).legal is False
    assert parse_action("Points24", "[" * 100_000 + '"action": "+"') == ParsedAction(10, True)
    nested = '{"a": ' * 5000 + '{"action": "hit"}' + "}" * 5000
    assert parse_action("Blackjack", nested).action in (None, 1)
    assert parse_action("NumberLine", "x" * 3_000_000 + '"action": "-"') == ParsedAction(0, True)


def test_action_char_span():
    text = '{"thoughts": "the action is near", "action": "+"}'
    start, end = action_char_span(text)
    assert text[start:end] == '"action": "+"}'
    assert action_char_span("no key") is None


def test_choose_action_policies():
    rng = np.random.default_rng(0)
    assert choose_action(ParsedAction(3, True), 17, rng) == (3, 0.0)
    actions = {choose_action(ParsedAction(None, False), 17, rng)[0] for _ in range(300)}
    assert actions == set(range(17))
    assert choose_action(ParsedAction(None, False), 2, rng, policy="penalty", penalty=-2.0)[1] == -2.0
    with pytest.raises(ValueError, match="policy"):
        choose_action(ParsedAction(None, False), 2, rng, policy="ignore")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(game=st.sampled_from(list(GAMES)), text=st.text(max_size=2000))
def test_fuzz_random_unicode_never_raises(game, text):
    parsed = parse_action(game, text)
    assert parsed.legal == (parsed.action is not None)
    if parsed.legal:
        assert 0 <= parsed.action < GAMES[game].num_actions


@settings(max_examples=200, deadline=None)
@given(game=st.sampled_from(list(GAMES)), value=json_values, action=st.one_of(json_values, st.sampled_from(["+", "hit", "10", "="])))
def test_fuzz_json_objects_never_raise(game, value, action):
    text = json.dumps({"thoughts": value, "action": action}, allow_nan=True)
    parsed = parse_action(game, text)
    if isinstance(action, str) and action.strip().lower() in GAMES[game].actions:
        assert parsed == ParsedAction(GAMES[game].actions.index(action.strip().lower()), True)


@settings(max_examples=100, deadline=None)
@given(game=st.sampled_from(list(GAMES)), data=st.binary(max_size=3000))
def test_fuzz_bytes_never_raise(game, data):
    parse_action(game, data)


@settings(max_examples=100, deadline=None)
@given(game=st.sampled_from(list(GAMES)), picks=st.lists(st.integers(0, 16), min_size=2, max_size=5))
def test_several_distinct_actions_are_illegal(game, picks):
    actions = GAMES[game].actions
    chosen = sorted({actions[p % len(actions)] for p in picks})
    text = '"action": "' + " or ".join(chosen) + '"'
    parsed = parse_action(game, text)
    if len(chosen) > 1 and not (game in ("EZPoints", "Points24") and any("1" in c for c in chosen)):
        assert not parsed.legal


def test_adversarial_json_is_bounded_in_work(monkeypatch):
    """Huge or adversarial outputs cost bounded work: at most _MAX_JSON_STARTS decode attempts,
    each over at most _MAX_JSON_CHARS characters. Counted, not timed (a wall-clock limit fails on
    a loaded machine)."""
    from fastvlmrl.envs import parse

    windows = []
    raw_decode = json.JSONDecoder.raw_decode

    def counted(self, s, idx=0):
        windows.append(len(s) - idx)
        return raw_decode(self, s, idx)

    monkeypatch.setattr(json.JSONDecoder, "raw_decode", counted)
    for text in ['{"a":' * 40 + "[" + "1," * 250_000, '{"a":' * 40 + "[" + "[]," * 250_000]:
        windows.clear()
        assert parse_action("Points24", text).legal in (True, False)
        assert 0 < len(windows) <= parse._MAX_JSON_STARTS
        assert max(windows) <= parse._MAX_JSON_CHARS < len(text) // 10


def test_unreadable_inputs_are_illegal_not_errors():
    view = memoryview(b'{"action": "+"}')
    view.release()
    assert parse_action("EZPoints", view) == ParsedAction(None, False)

    class Sneaky(str):
        def find(self, *args):
            raise RuntimeError("no")

        def lower(self):
            raise RuntimeError("no")

    assert parse_action("NumberLine", Sneaky('{"action": "+"}')) == ParsedAction(1, True)
