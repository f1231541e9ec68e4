"""What EZPoints and Points24 share: a hand of cards, a formula built one token per action (rules
in csrc/games/formula.h), and so the same state, info dict, prompt, oracle and parsing quirk.

Info dict `{"Cards": [...], "Numbers": [...], "Formula": [...]}`. The oracle follows an exact
solution that extends the current formula (solver.py); "=" when the formula is complete, or when
no solution extends it (ending at once costs least).
"""

from __future__ import annotations

import re
from typing import ClassVar

from fastvlmrl.envs import solver
from fastvlmrl.envs.games.base import Game, card_name, state_fields

# Formula token codes (csrc/games/formula.h): 1..13 are numbers.
TOKEN_TEXT = {-1: "+", -2: "-", -3: "*", -4: "/", -5: "(", -6: ")", -7: " ", -8: "="}
TOKEN_OF_TEXT = {text: code for code, text in TOKEN_TEXT.items() if text != " "}
BLANK = -7

NUMBERS_10 = tuple(str(n) for n in range(1, 11))
NUMBERS_13 = tuple(str(n) for n in range(1, 14))

_F = state_fields("EZPoints")
assert state_fields("Points24") == _F, "the formula games share one state layout"


def token_text(code: int) -> str:
    code = int(code)
    return str(code) if code >= 1 else TOKEN_TEXT[code]


def formula_text(tokens) -> str:
    """The formula as the frame shows it: tokens joined by single spaces."""
    return " ".join(token_text(t) for t in tokens)


def formula_string(info: dict) -> str:
    """The current formula of an info dict as the frame writes it (tokens joined by spaces)."""
    return " ".join(info.get("Formula", []))


class FormulaGame(Game):
    target: ClassVar[int]  # the value the formula must make
    solver_ops: ClassVar[str]  # the arithmetic operators, for the solver
    whole_actions = ("10",)
    short_keys = ("cards", "current formula")

    def named_state(self, state):
        k = self.num_cards
        return {
            "cards": state[:, _F["cards"]][:, :k],
            "numbers": state[:, _F["numbers"]][:, :k],
            "formula_len": state[:, _F["formula_len"]],
            "numbers_used": state[:, _F["numbers_used"]],
            "steps": state[:, _F["steps"]],
            "formula": state[:, _F["formula"]],
        }

    def longest_info(self, info):
        longest = _F["formula"].stop - _F["formula"].start  # past it the episode ends (csrc: MAX_FORMULA)
        return {**info, "Formula": ["10"] * longest}

    def describe(self, row):
        row = [int(v) for v in row]
        k = self.num_cards
        return {
            "Cards": [card_name(c) for c in row[_F["cards"]][:k]],
            "Numbers": row[_F["numbers"]][:k],
            "Formula": [token_text(t) for t in row[_F["formula"]][: row[_F["formula_len"]]]],
        }

    def thought_decision(self, thoughts):
        appended = list(re.finditer(r"append '([^']+)'", thoughts))
        ends = max(thoughts.rfind("is complete"), thoughts.rfind("so I end"))
        if appended and appended[-1].start() > ends:
            return appended[-1].group(1).strip()
        return "=" if ends >= 0 else None

    def _prefix(self, info):
        return tuple(int(t) if t.isdigit() else t for t in info["Formula"] if t != " ")

    def right_decision(self, info, action):
        if action is None:
            return None
        numbers, prefix = [int(n) for n in info["Numbers"]], self._prefix(info)
        token = int(action) if action.isascii() and action.isdigit() else action
        extending = [s for s in solver.solutions(tuple(numbers), self.target, self.solver_ops) if s[: len(prefix)] == prefix]
        if action == "=":  # complete, or nothing left to win (ending at once costs least)
            return not extending or any(len(s) == len(prefix) for s in extending)
        return any(len(s) > len(prefix) and s[len(prefix)] == token for s in extending)

    def solvable(self, info):
        return solver.solvable([int(n) for n in info["Numbers"]], self.target, self.solver_ops)

    def on_path(self, info):
        return solver.next_token([int(n) for n in info["Numbers"]], self.target, self._prefix(info),
                                 self.solver_ops)[0] is not None

    def assess(self, info, reply):
        numbers = sorted(int(n) for n in info["Numbers"])
        try:
            cards = sorted(int(c) for c in reply["cards"]) == numbers
        except (TypeError, ValueError, OverflowError):  # (JSON's Infinity and 1e400 reach int() as floats)
            cards = False
        except KeyError:
            cards = None
        formula = reply.get("current formula")
        current = None if formula is None else str(formula).split() == formula_string(info).split()
        return {"cards": cards, "current_formula": current,
                "proposed_formula": self._proposal_right(info, str(reply.get("thoughts", ""))),
                **super().assess(info, reply)}

    def _proposal_right(self, info, thoughts: str) -> bool | None:
        """A formula the thought proposes ("<formula> = <target> uses every card"): it must use
        every card once, equal the target exactly and extend the current formula; None if none."""
        found = re.search(r"([0-9+\-*/() ]+?)\s*=\s*(\d+) uses every card", thoughts)
        if found is None:
            return None
        tokens = tuple(int(t) if t.isdigit() else t for t in re.findall(r"\d+|[+\-*/()]", found.group(1)))
        numbers = sorted(int(n) for n in info["Numbers"])
        used = sorted(t for t in tokens if isinstance(t, int))
        prefix = self._prefix(info)
        from fastvlmrl.envs.reference.formula import evaluate  # the games' own rules, exactly

        codes = [t if isinstance(t, int) else TOKEN_OF_TEXT[t] for t in tokens]
        return (used == numbers and tokens[: len(prefix)] == prefix and int(found.group(2)) == self.target
                and evaluate(codes) == self.target)

    def judge(self, info, reply):
        try:
            cards = [int(c) for c in reply["cards"]]
            formula = str(reply["current formula"])
        except (KeyError, TypeError, ValueError, OverflowError):
            return None, None
        seen = sorted(cards) == sorted(int(n) for n in info["Numbers"]) and formula.split() == formula_string(info).split()
        if len(cards) != self.num_cards:
            return seen, None
        stated = {"Numbers": cards, "Formula": formula.split()}
        try:
            expected = self.oracle(stated)[1]
        except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
            return seen, None
        return seen, str(reply["action"]).strip() == expected

    def _face_card_rule(self) -> str:
        if "13" in self.actions:
            return "Note that 'J', 'Q', and 'K' count as '11', '12' and '13' and 'A' counts as '1'."
        return "Note that 'J', 'Q', and 'K' count as '10' and 'A' counts as '1'."

    def prompt_parts(self, info):
        n_cards, target = self.num_cards, self.target
        formula = formula_string(info)
        card_words = "two cards" if n_cards == 2 else "four cards"
        head = (
            f"You are an expert card game player. You are observing {card_words} in the image. "
            f"You are observing the current formula: '{formula}'. You can choose between {self.actions_text()}. "
            "The number or operator you choose will be appended to the current formula. "
            f"{self._face_card_rule()} "
            f"Your goal is to output a formula that evaluates to {target}, using each card exactly once."
        )
        letters = ", ".join("x y z w".split()[:n_cards])
        fields = [
            ("cards", f"[{letters}]"),
            ("current formula", f'"{formula}"'),
            (
                "thoughts",
                f'"{{first check whether the current formula equals {target} and uses every card; if so choose \'=\', '
                f'otherwise think about which number or operator to append}}"',
            ),
        ]
        return head, fields, '"{number}" or "{operator}"'

    def short_state(self, info):
        return f" Formula: '{formula_string(info)}'."

    def oracle(self, info):
        numbers = [int(n) for n in info["Numbers"]]
        target, ops = self.target, self.solver_ops
        formula = formula_string(info)
        prefix = [int(t) if t.isdigit() else t for t in info["Formula"] if t != " "]
        token, solution = solver.next_token(numbers, target, prefix, ops)
        shown = formula if formula.strip() else "empty"
        if token == "=":
            thoughts = f"The current formula '{formula}' equals {target} and uses every card, so it is complete."
        elif token is not None:
            thoughts = (
                f"The cards are {numbers}. The current formula is {shown} and not complete. "
                f"{solver.format_tokens(solution)} = {target} uses every card, so I append '{token}'."
            )
        elif not solver.solvable(numbers, target, ops):
            token = "="
            thoughts = f"The cards are {numbers}. No formula with these cards makes {target}, so I end the game."
        else:
            token = "="
            thoughts = f"The current formula '{formula}' cannot be completed to make {target}, so I end it."
        return {"cards": numbers, "current formula": formula}, str(token), thoughts

    def reasoned(self, info, action):
        fields, expert, thoughts = self.oracle(info)
        if action == expert:
            return fields, action, thoughts
        shown = fields["current formula"] if fields["current formula"].strip() else "empty"
        seen = f"The cards are {fields['cards']}. The current formula is {shown}"
        decision = ", so I end it." if action == "=" else f" and not complete, so I append '{action}'."
        return fields, action, seen + decision
