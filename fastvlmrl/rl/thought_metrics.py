"""How varied the rollout's thoughts are, the signs of GTR's thought collapse (templated thoughts
that no longer depend on the frame): distinct-n (the share of n-grams that are unique over all
thoughts, Li et al. 2016) and self-BLEU (each thought's 2-gram BLEU against all the others, as
GTR's metric.py computes it with nltk's smoothing method 1; high means alike), over whitespace
words. Logged every update for PPO and GTR alike (`thought/*` in metrics.jsonl)."""

from __future__ import annotations

import math
from collections import Counter

# self-BLEU compares every thought with every other: above this many, an even subsample is used
SELF_BLEU_MAX_THOUGHTS = 256
_SMOOTHING_EPSILON = 0.1  # nltk SmoothingFunction().method1


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams over all n-grams of the texts (NaN when they hold none)."""
    grams = [g for text in texts for g in ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def self_bleu(texts: list[str], max_order: int = 2) -> float:
    """The mean BLEU (up to `max_order`-grams, uniform weights, smoothing method 1, brevity penalty
    against the closest reference length) of each text against all the others as references;
    NaN with fewer than two texts. Of more than SELF_BLEU_MAX_THOUGHTS texts, every k-th is compared
    (at most that many)."""
    stride = max(1, -(-len(texts) // SELF_BLEU_MAX_THOUGHTS))  # evenly over the rollout (and over ranks), not its start
    words = [text.split() for text in texts[::stride]]
    if len(words) < 2:
        return float("nan")
    counts = [[Counter(ngrams(w, n)) for n in range(1, max_order + 1)] for w in words]
    # per n-gram: the largest count of any text, how many texts have it, and the second largest,
    # so that the largest count among the *other* texts is known in O(1)
    best: list[dict] = []
    for order in range(max_order):
        top: dict[tuple, list[int]] = {}
        for per_text in counts:
            for gram, c in per_text[order].items():
                first, ties, second = top.get(gram, (0, 0, 0))
                if c > first:
                    top[gram] = [c, 1, first]
                elif c == first:
                    top[gram] = [first, ties + 1, second]
                else:
                    top[gram] = [first, ties, max(second, c)]
        best.append(top)
    lengths = [len(w) for w in words]
    scores = []
    for k, w in enumerate(words):
        log_precision = 0.0
        for order in range(max_order):
            own = counts[k][order]
            total = sum(own.values())
            if order == 0 and total == 0:  # an empty thought
                log_precision = -math.inf
                break
            clipped = 0
            for gram, c in own.items():
                first, ties, second = best[order][gram]
                others = first if (c < first or ties > 1) else second
                clipped += min(c, others)
            if clipped == 0 and order == 0:  # no word in common: BLEU is 0 (as nltk)
                log_precision = -math.inf
                break
            # (a thought shorter than the order has no such n-grams: nltk counts 0 of 1, smoothed)
            log_precision += math.log((clipped or _SMOOTHING_EPSILON) / max(total, 1)) / max_order
        if log_precision == -math.inf:
            scores.append(0.0)
            continue
        c = lengths[k]
        reference = min((lengths[j] for j in range(len(words)) if j != k), key=lambda r: (abs(r - c), r))
        penalty = 1.0 if c > reference else math.exp(1 - reference / c)
        scores.append(penalty * math.exp(log_precision))
    return sum(scores) / len(scores)


def thought_summary(thoughts: list[str]) -> dict[str, float]:
    """The thought metrics of a rollout's thoughts (the "thoughts" strings of its valid replies)."""
    return {
        "thought/distinct_1": distinct_n(thoughts, 1),
        "thought/distinct_2": distinct_n(thoughts, 2),
        "thought/self_bleu": self_bleu(thoughts),
        "thought/length_words": sum(len(t.split()) for t in thoughts) / len(thoughts) if thoughts else float("nan"),
    }
