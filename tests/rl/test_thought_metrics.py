"""The thought-collapse metrics on inputs whose values are known by hand (and nltk's self-BLEU,
which GTR's metric.py calls: method-1 smoothing, 2-gram)."""

import math

import pytest

from fastvlmrl.rl.thought_metrics import distinct_n, self_bleu, thought_summary


def test_distinct_n():
    assert distinct_n(["a b a", "a c"], 1) == pytest.approx(3 / 5)  # a, b, c of a b a a c
    assert distinct_n(["a b a", "a c"], 2) == pytest.approx(3 / 3)  # (a b) (b a) (a c)
    assert distinct_n(["same words here"] * 4, 2) == pytest.approx(2 / 8)
    assert math.isnan(distinct_n([], 1)) and math.isnan(distinct_n(["one"], 2))


def test_self_bleu_by_hand():
    assert self_bleu(["the cat sat"] * 3) == pytest.approx(1.0)  # collapsed: every thought the same
    assert self_bleu(["a b", "c d"]) == 0.0  # no word in common
    # "a b" vs "a c": unigram precision 1/2, bigram 0/1 smoothed to 0.1/1, equal lengths
    assert self_bleu(["a b", "a c"]) == pytest.approx(math.sqrt(0.5 * 0.1))
    # "a b c" vs ref "a b": precisions 2/3 and 1/2, longer than its reference (no brevity penalty);
    # "a b" vs ref "a b c": 1 and 1, brevity penalty exp(1 - 3/2)
    assert self_bleu(["a b c", "a b"]) == pytest.approx((math.sqrt(2 / 3 * 1 / 2) + math.exp(1 - 3 / 2)) / 2)
    # a one-word thought has no bigram: 0 of 1, smoothed
    assert self_bleu(["x", "x y"]) == pytest.approx((math.sqrt(1 * 0.1) * math.exp(1 - 2) + math.sqrt(0.5 * 0.1)) / 2)
    assert math.isnan(self_bleu(["alone"])) and self_bleu(["", "a"]) == pytest.approx((0 + 0) / 2)


def test_self_bleu_against_nltk():
    nltk = pytest.importorskip("nltk.translate.bleu_score")
    import random

    random.seed(0)
    words = "a b c d the is 3 4 + append".split()
    smooth = nltk.SmoothingFunction().method1
    for _ in range(200):
        texts = [" ".join(random.choice(words) for _ in range(random.randint(1, 10))) for _ in range(random.randint(2, 6))]
        scores = [nltk.sentence_bleu([t.split() for j, t in enumerate(texts) if j != k], text.split(), weights=(0.5, 0.5),
                                     smoothing_function=smooth) for k, text in enumerate(texts)]
        assert self_bleu(texts) == pytest.approx(sum(scores) / len(scores), abs=1e-12)


def test_thought_summary():
    summary = thought_summary(["I add one", "I add two"])
    assert summary["thought/length_words"] == 3 and summary["thought/distinct_1"] == pytest.approx(4 / 6)
    assert all(math.isnan(v) for v in thought_summary([]).values())


def test_self_bleu_of_many_thoughts_samples_them_evenly():
    from fastvlmrl.rl import thought_metrics

    texts = ["same thought"] * 300 + [f"w{k} v{k}" for k in range(300)]  # then thoughts sharing no word
    # the first 256 alone would all be the same thought (1.0); an even subsample holds both halves
    assert self_bleu(texts) == pytest.approx(0.5, abs=0.01)
    assert len(texts[:: -(-len(texts) // thought_metrics.SELF_BLEU_MAX_THOUGHTS)]) <= thought_metrics.SELF_BLEU_MAX_THOUGHTS
