"""Blackjack: hit or stand against the dealer (rules in csrc/games/blackjack.h).

Info dict `{"Dealer Card": [(value, rank, suit)], "Player Card": [...]}`: only the dealer's
face-up card, as the frame shows (RL4VLM's info leaked the hidden card; prompts and correctors must
not see it). The oracle plays hit/stand basic strategy for an infinite deck, dealer standing on
all 17s.
"""

from __future__ import annotations

import re

from fastvlmrl.envs.games.base import RANK_NAMES, SUIT_LETTERS, Game, card_rank, card_suit, card_value, game_id, state_fields

_F = state_fields("Blackjack")


def blackjack_total(cards) -> tuple[int, bool]:
    """(best total, usable ace) of Blackjack card codes: an ace counts 11 when that does not bust."""
    total = sum(card_value(c) for c in cards)
    ace = any(card_rank(c) == 1 for c in cards)
    if ace and total + 10 <= 21:
        return total + 10, True
    return total, False


def blackjack_basic_strategy(total: int, soft: bool, dealer_value: int) -> str:
    """'hit' or 'stand'. dealer_value: 2..10, or 11 for an ace."""
    if soft:
        if total <= 17:
            return "hit"
        if total == 18:
            return "hit" if dealer_value >= 9 else "stand"
        return "stand"
    if total <= 11:
        return "hit"
    if total == 12:
        return "stand" if 4 <= dealer_value <= 6 else "hit"
    if total <= 16:
        return "stand" if dealer_value <= 6 else "hit"
    return "stand"


def _card(code: int) -> tuple[int, str, str]:
    return (card_value(code), RANK_NAMES[card_rank(code)], SUIT_LETTERS[card_suit(code)])


class BlackjackGame(Game):
    def named_state(self, state):
        keys = ("dealer_count", "player_count", "steps", "dealer_cards", "player_cards")
        return {key: state[:, _F[key]] for key in keys}

    def describe(self, row):
        row = [int(v) for v in row]
        player = row[_F["player_cards"]][: row[_F["player_count"]]]
        return {
            "Dealer Card": [_card(row[_F["dealer_cards"]][0])],
            "Player Card": [_card(c) for c in player],
        }

    def prompt_parts(self, info):
        head = (
            "You are a blackjack player. You are observing the current game state: the dealer's face-up card "
            "and your cards. Aces count as 1 or 11 and J, Q, K count as 10. Your goal is to beat the dealer's "
            f"total without going over 21. You can choose between {self.actions_text()}."
        )
        fields = [
            ("thoughts", "\"{first describe your total points and the dealer's total points, then think about which action to choose}\""),
        ]
        return head, fields, '"stand" or "hit"'

    def judge(self, info, reply):
        thoughts = str(reply.get("thoughts", ""))
        total, dealer = re.search(r"total of (\d+)", thoughts), re.search(r"worth (\d+)", thoughts)
        seen = None
        if total and dealer:
            values = [int(v) for v, _, _ in info["Player Card"]]
            true_total = sum(values) + (10 if 1 in values and sum(values) + 10 <= 21 else 0)
            up = int(info["Dealer Card"][0][0])
            seen = int(total.group(1)) == true_total and int(dealer.group(1)) == (11 if up == 1 else up)
        plan = re.search(r"strategy is to (stand|hit)", thoughts)
        return seen, None if plan is None else str(reply["action"]).strip().lower() == plan.group(1)

    def oracle(self, info):
        player = info["Player Card"]
        values = [int(v) for v, _, _ in player]
        total = sum(values)
        soft = 1 in values and total + 10 <= 21
        if soft:
            total += 10
        up_value, up_face, _ = info["Dealer Card"][0]
        dealer = 11 if int(up_value) == 1 else int(up_value)
        action = blackjack_basic_strategy(total, soft, dealer)
        faces = ", ".join(face for _, face, _ in player)
        kind = "soft " if soft else ""
        thoughts = (
            f"My cards are {faces}, a {kind}total of {total}. The dealer shows {up_face}, worth {dealer}. "
            f"With {kind}{total} against {dealer}, basic strategy is to {action}."
        )
        return {}, action, thoughts


BLACKJACK = BlackjackGame("Blackjack", game_id("Blackjack"), ("stand", "hit"))
