"""Exact solver for the card arithmetic games (EZPoints: 12 from two cards with + and *;
Points24: 24 from four cards with + - * / and parentheses), with rational arithmetic.

Solutions are token sequences as the envs read them (numbers as ints, operators as strings),
written with the fewest parentheses and, for + and * chains, also in every operand order that
gives a different text, so an oracle can follow whatever prefix a formula already has.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from functools import lru_cache

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def _combine(left, right, ops: str):
    """All (value, tokens, top-level operator) of `left op right` for ops, with needed parentheses."""
    out = []
    for lv, lt, lop in left:
        for rv, rt, rop in right:
            for op in ops:
                if op == "/" and rv == 0:
                    continue
                value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else None}[op]
                p = _PRECEDENCE[op]
                # left operand needs parentheses if it binds looser; the right one also when equal
                # precedence would re-associate (a - (b + c), a / (b * c)).
                lneed = lop is not None and _PRECEDENCE[lop] < p
                rneed = rop is not None and (_PRECEDENCE[rop] < p or (_PRECEDENCE[rop] == p and op in "-/"))
                ltoks = ("(",) + lt + (")",) if lneed else lt
                rtoks = ("(",) + rt + (")",) if rneed else rt
                out.append((value, ltoks + (op,) + rtoks, op))
    return out


@lru_cache(maxsize=None)
def _expressions(numbers: tuple[int, ...], ops: str) -> tuple:
    """Every expression over the multiset `numbers` (each used once), as (value, tokens, top op)."""
    if len(numbers) == 1:
        return ((Fraction(numbers[0]), (numbers[0],), None),)
    results = {}
    n = len(numbers)
    # split the multiset into two non-empty ordered parts (by index subsets)
    for mask in range(1, (1 << n) - 1):
        left = tuple(sorted(numbers[i] for i in range(n) if mask >> i & 1))
        right = tuple(sorted(numbers[i] for i in range(n) if not mask >> i & 1))
        for item in _combine(_expressions(left, ops), _expressions(right, ops), ops):
            results[item[1]] = item
    return tuple(results.values())


@lru_cache(maxsize=None)
def solutions(numbers: tuple[int, ...], target: int, ops: str = "+-*/") -> tuple[tuple, ...]:
    """All token sequences that use each number once and equal target exactly, sorted."""
    key = tuple(sorted(numbers))
    found = {toks for value, toks, _ in _expressions(key, ops) if value == target}
    return tuple(sorted(found, key=lambda t: (len(t), [str(x) for x in t])))


@lru_cache(maxsize=None)
def _values(numbers: tuple[int, ...], ops: str) -> frozenset:
    """Every exact value an expression over the multiset `numbers` can take (no texts: fast)."""
    if len(numbers) == 1:
        return frozenset((Fraction(numbers[0]),))
    out = set()
    n = len(numbers)
    for mask in range(1, (1 << n) - 1):
        left = _values(tuple(sorted(numbers[i] for i in range(n) if mask >> i & 1)), ops)
        right = _values(tuple(sorted(numbers[i] for i in range(n) if not mask >> i & 1)), ops)
        for a in left:
            for b in right:
                if "+" in ops:
                    out.add(a + b)
                if "-" in ops:
                    out.add(a - b)
                if "*" in ops:
                    out.add(a * b)
                if "/" in ops and b != 0:
                    out.add(a / b)
    return frozenset(out)


def solvable(numbers, target: int, ops: str = "+-*/") -> bool:
    return target in _values(tuple(sorted(numbers)), ops)


def next_token(numbers, target: int, prefix, ops: str = "+-*/"):
    """(next token, the solution it follows) for a formula prefix, or (None, None) if no solution
    extends the prefix. A complete solution gives the token "=". Blanks in the prefix are ignored."""
    prefix = tuple(t for t in prefix if t != " ")
    for sol in solutions(tuple(numbers), target, ops):
        if sol[: len(prefix)] == prefix:
            return ("=" if len(sol) == len(prefix) else sol[len(prefix)]), sol
    return None, None


def format_tokens(tokens) -> str:
    return " ".join(str(t) for t in tokens)


def solvable_fraction(face_cards_as_10: bool = True, target: int = 24) -> float:
    """Exact probability that a Points24 hand (4 ranks uniform in 1..13) is solvable."""
    hits = 0
    for ranks in itertools.product(range(1, 14), repeat=4):
        values = tuple(min(r, 10) if face_cards_as_10 else r for r in ranks)
        hits += solvable(values, target)
    return hits / 13**4
