from fastvlmrl.rl.token_weights import action_token_weights


class WordTokenizer:
    """A test double: each id is a word piece; id 0 is EOS (a special token)."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids if not (skip_special_tokens and i == 0))


def test_thought_tokens_get_lambda_and_action_tokens_one():
    pieces = ["<eos>", '{"thoughts": "', "go", " up", '", "', "act", 'ion": "', "+", '"}']
    tok = WordTokenizer(pieces)
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 0]
    w = action_token_weights(tok, ids, 0.5)
    # '", "' holds the key's opening quote, so the action starts there; EOS past the text is action
    assert w == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_a_token_straddling_the_key_counts_as_action():
    tok = WordTokenizer(["<eos>", '{"thoughts": "x', '", "ac', 'tion": "-"}'])
    assert action_token_weights(tok, [1, 2, 3], 0.2) == [0.2, 1.0, 1.0]


def test_the_last_action_key_is_the_split_and_no_key_is_all_thought():
    tok = WordTokenizer(["<eos>", '"action": "+" was wrong, ', '"action": "-"'])
    assert action_token_weights(tok, [1, 2, 0], 0.5) == [0.5, 1.0, 1.0]
    tok = WordTokenizer(["<eos>", "I cannot decide"])
    assert action_token_weights(tok, [1, 0], 0.5) == [0.5, 0.5]


def _rule(tokenizer, ids):
    """The rule itself, one prefix decode per token: the action is every token whose decoded
    prefix reaches past the last action key."""
    from fastvlmrl.envs.parse import action_char_span
    from fastvlmrl.rl.token_weights import token_char_ends

    span = action_char_span(tokenizer.decode(ids, skip_special_tokens=True))
    return [False] * len(ids) if span is None else [e > span[0] for e in token_char_ends(tokenizer, ids)]


def _replies(rng, count):
    words = ["go", "up", " ", "3 < 5", "é", "日本", "🙂", '"', "\\n", "action", '"action": "+"', "{", "}"]
    for _ in range(count):
        thought = "".join(rng.choice(words) for _ in range(int(rng.integers(0, 30))))
        action = rng.choice(["+", "-", "10", "stand", "é🙂"])
        yield rng.choice([f'{{"thoughts": "{thought}", "action": "{action}"}}', thought, f'"action": "{action}" {thought}'])


def test_bisection_gives_the_rules_split_for_any_tokenizer(helpers):
    import numpy as np

    from fastvlmrl.models import CharTokenizer
    from fastvlmrl.rl.token_weights import action_token_mask

    rng = np.random.default_rng(0)
    byte_level, chars = helpers.qwen_tokenizer(), CharTokenizer()
    for reply in _replies(rng, 300):
        ids = byte_level.encode(reply, add_special_tokens=False) + [byte_level.eos_token_id]
        assert action_token_mask(byte_level, ids) == _rule(byte_level, ids), reply  # multi-byte chars split
        ids = chars.encode(reply.encode("ascii", "replace").decode(), add_special_tokens=False) + [chars.eos_token_id]
        assert action_token_mask(chars, ids) == _rule(chars, ids), reply


def test_the_split_takes_logarithmically_many_decodes():
    from fastvlmrl.models import CharTokenizer
    from fastvlmrl.rl.token_weights import action_token_mask

    class Counting(CharTokenizer):
        decodes = 0

        def decode(self, *args, **kwargs):
            Counting.decodes += 1
            return super().decode(*args, **kwargs)

    tok = Counting()
    reply = '{"thoughts": "' + "the current number is 3 and the target is 5, " * 6 + '", "action": "+"}'
    ids = tok.encode(reply, add_special_tokens=False) + [tok.eos_token_id]
    mask = action_token_mask(tok, ids)
    assert len(ids) > 250 and mask.index(True) == reply.rindex('"action"')  # one token per character
    assert Counting.decodes <= 2 * (len(ids).bit_length() + 2)
