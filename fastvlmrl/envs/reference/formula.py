"""EZPoints and Points24 in plain Python (rules as csrc/games/formula.h, evaluation with Fraction)."""

from __future__ import annotations

from fractions import Fraction

from fastvlmrl.envs.games import BLANK, GAMES, SUIT_LETTERS, RANK_NAMES, formula_text, get_game, token_text
from fastvlmrl.envs.games.base import state_fields
from fastvlmrl.envs.reference.base import ReferenceGame
from fastvlmrl.envs.reference.draw import FELT, WHITE

PLUS, MINUS, TIMES, DIVIDE, LPAREN, RPAREN, EQUALS = -1, -2, -3, -4, -5, -6, -8
_F = state_fields("EZPoints")  # Points24's is the same


def evaluate(tokens) -> Fraction | None:
    """Exact value of a formula of token codes, or None if it is malformed or divides by zero.

    Grammar (blanks skipped): expr = term (('+'|'-') term)*; term = unary (('*'|'/') unary)*;
    unary = ('+'|'-') unary | number | '(' expr ')'. Adjacent numbers do not concatenate.
    """
    toks = [int(t) for t in tokens if int(t) != BLANK]
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else 0

    def unary():
        nonlocal pos
        t = peek()
        if t in (PLUS, MINUS):
            pos += 1
            v = unary()
            return -v if t == MINUS else v
        if t >= 1:
            pos += 1
            return Fraction(t)
        if t == LPAREN:
            pos += 1
            v = expr()
            if peek() != RPAREN:
                raise ValueError("unbalanced parenthesis")
            pos += 1
            return v
        raise ValueError("expected a number")

    def term():
        nonlocal pos
        v = unary()
        while peek() in (TIMES, DIVIDE):
            op = peek()
            pos += 1
            r = unary()
            v = v * r if op == TIMES else v / r
        return v

    def expr():
        nonlocal pos
        v = term()
        while peek() in (PLUS, MINUS):
            op = peek()
            pos += 1
            r = term()
            v = v + r if op == PLUS else v - r
        return v

    try:
        value = expr()
    except (ValueError, ZeroDivisionError):
        return None
    return value if pos == len(toks) else None


class _FormulaGame(ReferenceGame):
    target: int
    max_len: int
    operators: tuple[int, ...]

    def _num_numbers(self) -> int:
        return self.game.num_actions - len(self.operators)

    def _play(self, action, rng):
        self.steps += 1
        if len(self.tokens) > self.max_len:  # a rule of the game (terminated), not a time limit
            return -1.0, True, False
        n = self._num_numbers()
        tok = action + 1 if action < n else self.operators[action - n]
        if tok >= 1 and self.tokens.count(tok) + 1 > self.values.count(tok):
            self.tokens.append(BLANK)
            return -1.0, False, False
        if tok == EQUALS:
            used = sum(1 for t in self.tokens if t >= 1)
            ok = evaluate(self.tokens) == self.target and used == len(self.values)
            return (10.0 if ok else -1.0), True, False
        self.tokens.append(tok)
        return 0.0, False, False

    def _info(self):
        return {
            "Cards": [SUIT_LETTERS[s] + RANK_NAMES[r] for r, s in zip(self.ranks, self.suits)],
            "Numbers": list(self.values),
            "Formula": [token_text(t) for t in self.tokens],
        }

    def _state_row(self, row):
        k = len(self.ranks)
        cards, numbers, formula = row[_F["cards"]], row[_F["numbers"]], row[_F["formula"]]  # views
        cards[:] = -1
        cards[:k] = [(r - 1) * 4 + s for r, s in zip(self.ranks, self.suits)]
        numbers[:k] = self.values
        row[_F["num_cards"]], row[_F["formula_len"]] = k, len(self.tokens)
        row[_F["numbers_used"]], row[_F["steps"]] = sum(1 for t in self.tokens if t >= 1), self.steps
        formula[: len(self.tokens)] = self.tokens


class EZPoints(_FormulaGame):
    game = GAMES["EZPoints"]
    target, max_len, operators = 12, 5, (PLUS, TIMES, EQUALS)

    def _deal(self, rng):
        rank0 = 2 + rng.below(12)
        suit0 = rng.below(4)
        v = min(rank0, 10)
        second = 12 // v if (v in (2, 3, 4, 6) and rng.below(2) == 0) else 12 - v
        suit1 = rng.below(4)
        self.ranks, self.suits = [rank0, second], [suit0, suit1]
        if rng.below(2) == 0:
            self.ranks.reverse()
            self.suits.reverse()
        self.values = [min(r, 10) for r in self.ranks]
        self.tokens, self.steps = [], 0

    def _draw(self, c):
        c.fill(FELT)
        for i, x in enumerate((5, 153)):
            c.card(c.x(x), c.y(55), c.x(135), c.y(189), self.ranks[i], self.suits[i])
        s, x = c.scale(2), c.x(10)
        c.wrapped(x, c.y(258), "Formula: " + formula_text(self.tokens), (c.w - x) // (6 * s), s, WHITE)


class Points24(_FormulaGame):
    game = GAMES["Points24"]
    target, max_len, operators = 24, 20, (PLUS, MINUS, TIMES, DIVIDE, LPAREN, RPAREN, EQUALS)

    def __init__(self, height: int = 300, width: int = 300, render_mode=None, face_cards_as_10: bool = True):
        self.face_cards_as_10 = bool(face_cards_as_10)
        self.game = get_game("Points24", self.face_cards_as_10)
        super().__init__(height, width, render_mode)

    def _deal(self, rng):
        self.ranks, self.suits = [], []
        for _ in range(4):
            self.ranks.append(1 + rng.below(13))
            self.suits.append(rng.below(4))
        self.values = [min(r, 10) if self.face_cards_as_10 else r for r in self.ranks]
        self.tokens, self.steps = [], 0

    def _draw(self, c):
        c.fill(FELT)
        for i, x in enumerate((5, 78, 152, 226)):
            c.card(c.x(x), c.y(103), c.x(67), c.y(93), self.ranks[i], self.suits[i])
        s, x = c.scale(2), c.x(10)
        c.text(x, c.y(210), "Formula:", s, WHITE)
        c.wrapped(x, c.y(240), formula_text(self.tokens), (c.w - x) // (6 * s), s, WHITE)
