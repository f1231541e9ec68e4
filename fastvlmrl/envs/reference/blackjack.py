"""Blackjack in plain Python (rules as csrc/games/blackjack.h: gymnasium Blackjack-v1, natural/sab off)."""

from __future__ import annotations

from fastvlmrl.envs.games import GAMES, RANK_NAMES, SUIT_LETTERS, blackjack_total, card_rank, card_suit, card_value
from fastvlmrl.envs.games.base import state_fields
from fastvlmrl.envs.reference.base import ReferenceGame
from fastvlmrl.envs.reference.draw import FELT, WHITE


_F = state_fields("Blackjack")


def _draw_card(rng) -> int:
    rank = 1 + rng.below(13)
    suit = rng.below(4)
    return (rank - 1) * 4 + suit


def _score(cards) -> int:
    total, _ = blackjack_total(cards)
    return 0 if total > 21 else total


class Blackjack(ReferenceGame):
    game = GAMES["Blackjack"]

    def _deal(self, rng):
        self.dealer = [_draw_card(rng), _draw_card(rng)]
        self.player = [_draw_card(rng), _draw_card(rng)]
        self.steps = 0

    def _play(self, action, rng):
        self.steps += 1
        if action == 1:
            self.player.append(_draw_card(rng))
            bust = blackjack_total(self.player)[0] > 21
            return (-1.0 if bust else 0.0), bust, False
        while blackjack_total(self.dealer)[0] < 17:
            self.dealer.append(_draw_card(rng))
        p, d = _score(self.player), _score(self.dealer)
        return float((p > d) - (p < d)), True, False

    def _draw(self, c):
        c.fill(FELT)
        s = c.scale(2)
        w, h = c.x(70), c.y(98)
        c.text(c.x(5), c.y(5), "Dealer", s, WHITE)
        c.card(c.x(5), c.y(25), w, h, card_rank(self.dealer[0]), card_suit(self.dealer[0]))
        c.card_back(c.x(78), c.y(25), w, h)
        c.text(c.x(5), c.y(130), "Player", s, WHITE)
        n = len(self.player)  # one row inside the frame: 74 apart up to four cards, then fanned to fit
        for i, code in enumerate(self.player):
            x = 5 + i * 74 if n <= 4 else 5 + i * 220 // (n - 1)
            c.card(c.x(x), c.y(150), w, h, card_rank(code), card_suit(code))

    def _info(self):
        def card(code):
            return (card_value(code), RANK_NAMES[card_rank(code)], SUIT_LETTERS[card_suit(code)])

        return {"Dealer Card": [card(self.dealer[0])], "Player Card": [card(c) for c in self.player]}

    def _state_row(self, row):
        row[_F["dealer_count"]], row[_F["player_count"]], row[_F["steps"]] = len(self.dealer), len(self.player), self.steps
        dealer, player = row[_F["dealer_cards"]], row[_F["player_cards"]]  # views: -1 pads
        dealer[:], player[:] = -1, -1
        dealer[: len(self.dealer)] = self.dealer
        player[: len(self.player)] = self.player
