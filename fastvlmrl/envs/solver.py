"""Exact solver for the card arithmetic games (EZPoints: 12 from two cards with + and *;
Points24: 24 from four cards with + - * / and parentheses), with rational arithmetic.

Solutions are token sequences as the envs read them (numbers as ints, operators as strings),
written with the fewest parentheses, in every operand order, so that an oracle can follow
whatever prefix a formula already has.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from functools import lru_cache

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def _splits(numbers: tuple[int, ...]):
    """Every ordered split of a multiset into two non-empty sorted parts."""
    n = len(numbers)
    for mask in range(1, (1 << n) - 1):
        left = tuple(sorted(numbers[i] for i in range(n) if mask >> i & 1))
        right = tuple(sorted(numbers[i] for i in range(n) if not mask >> i & 1))
        yield left, right


@lru_cache(maxsize=None)
def _values(numbers: tuple[int, ...], ops: str) -> frozenset:
    """Every exact value an expression over the multiset `numbers` can take (no texts: fast)."""
    if len(numbers) == 1:
        return frozenset((Fraction(numbers[0]),))
    out = set()
    for left, right in _splits(numbers):
        for a in _values(left, ops):
            for b in _values(right, ops):
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
    return Fraction(target) in _values(tuple(sorted(int(n) for n in numbers)), ops)


def _wrap(tokens: tuple, top: str | None, op: str, right_side: bool) -> tuple:
    """Parenthesise an operand of `op` if it binds looser, or equally on the right of - and /."""
    if top is None:
        return tokens
    p, q = _PRECEDENCE[top], _PRECEDENCE[op]
    if p < q or (right_side and p == q and op in "-/"):
        return ("(",) + tokens + (")",)
    return tokens


def _right_operand(a: Fraction, op: str, value: Fraction) -> Fraction | None:
    """The b with `a op b == value`, or None if there is none."""
    if op == "+":
        return value - a
    if op == "-":
        return a - value
    if op == "*":
        return value / a if a != 0 else None
    return a / value if value != 0 else None


@lru_cache(maxsize=None)
def _build(numbers: tuple[int, ...], value: Fraction, ops: str) -> tuple:
    """Every (tokens, top operator) of an expression over the multiset `numbers` equal to value.

    Goal-directed: for each split and operator the right operand's value follows from the left
    one's, so only expressions that reach `value` are ever written out."""
    if len(numbers) == 1:
        return (((numbers[0],), None),) if Fraction(numbers[0]) == value else ()
    out = {}
    for left, right in _splits(numbers):
        right_values = _values(right, ops)
        for a in _values(left, ops):
            for op in ops:
                b = _right_operand(a, op, value)
                if b is None or b not in right_values or (op == "/" and b == 0):
                    continue
                for lt, ltop in _build(left, a, ops):
                    for rt, rtop in _build(right, b, ops):
                        tokens = _wrap(lt, ltop, op, False) + (op,) + _wrap(rt, rtop, op, True)
                        out[tokens] = (tokens, op)
    return tuple(out.values())


@lru_cache(maxsize=None)
def solutions(numbers: tuple[int, ...], target: int, ops: str = "+-*/") -> tuple[tuple, ...]:
    """All token sequences that use each number once and equal target exactly, shortest first."""
    key = tuple(sorted(int(n) for n in numbers))
    if not solvable(key, target, ops):
        return ()
    found = {tokens for tokens, _ in _build(key, Fraction(target), ops)}
    return tuple(sorted(found, key=lambda t: (len(t), [str(x) for x in t])))


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
