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

    def thought_decision(self, thoughts):
        found = re.findall(r"\b(hit|stand)\b", thoughts.lower())
        return found[-1] if found else None

    def assess(self, info, reply):
        thoughts = str(reply.get("thoughts", ""))
        total, dealer = re.search(r"total of (\d+)", thoughts), re.search(r"worth (\d+)", thoughts)
        true_total, _, true_dealer = _hand(info)
        totals = None
        if total or dealer:  # what it states must be true; a total it leaves out is not checked
            totals = all(int(m.group(1)) == truth for m, truth in ((total, true_total), (dealer, true_dealer)) if m)
        return {"totals": totals, **super().assess(info, reply)}

    def judge(self, info, reply):
        # the totals the thought states, and basic strategy from them (as the other games decide
        # from the fields a reply states): the reply's own plan may be wrong and still followed
        thoughts = str(reply.get("thoughts", ""))
        total, dealer = re.search(r"(soft )?total of (\d+)", thoughts), re.search(r"worth (\d+)", thoughts)
        if not (total and dealer):
            return None, None
        true_total, _, true_dealer = _hand(info)
        stated_total, stated_dealer = int(total.group(2)), int(dealer.group(1))
        seen = stated_total == true_total and stated_dealer == true_dealer
        if not (2 <= stated_dealer <= 11 and stated_total <= 21):
            return seen, None
        expected = blackjack_basic_strategy(stated_total, total.group(1) is not None, stated_dealer)
        return seen, str(reply["action"]).strip().lower() == expected

    def oracle(self, info):
        total, soft, dealer = _hand(info)
        return self.reasoned(info, blackjack_basic_strategy(total, soft, dealer))

    def reasoned(self, info, action):
        total, soft, dealer = _hand(info)
        faces = ", ".join(face for _, face, _ in info["Player Card"])
        up_face = info["Dealer Card"][0][1]
        kind = "soft " if soft else ""
        thoughts = (
            f"My cards are {faces}, a {kind}total of {total}. The dealer shows {up_face}, worth {dealer}. "
            f"With {kind}{total} against {dealer}, basic strategy is to {action}."
        )
        return {}, action, thoughts


def _hand(info) -> tuple[int, bool, int]:
    """(the player's best total, whether it is soft, the dealer's up-card value with an ace as 11)."""
    values = [int(v) for v, _, _ in info["Player Card"]]
    total = sum(values)
    soft = 1 in values and total + 10 <= 21
    up_value = int(info["Dealer Card"][0][0])
    return total + 10 * soft, soft, 11 if up_value == 1 else up_value


BLACKJACK = BlackjackGame("Blackjack", game_id("Blackjack"), ("stand", "hit"))
