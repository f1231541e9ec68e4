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
