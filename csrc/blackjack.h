/* Blackjack (RL4VLM gym_cards Blackjack-v0 = gymnasium Blackjack-v1 rules with pixels):
 * infinite deck, actions 0 = stand (stick), 1 = hit; the dealer draws until 17 or more (a usable
 * ace counts as 11); reward +1 win, 0 draw, -1 loss; natural and sab off. Ranks are uniform over
 * A..K (J/Q/K = 10), which gives the value distribution of Blackjack-v1's deck. The frame shows
 * the dealer's first card and a card back, and the player's cards in rows of five. */
#ifndef FASTVLMRL_BLACKJACK_H
#define FASTVLMRL_BLACKJACK_H
#include "draw.h"
#include "rng.h"

#define BLACKJACK_MAX_DEALER 12 /* the dealer stops at 17: at most 12 cards (6 aces, a 6, 4 aces, one more) */
#define BLACKJACK_MAX_PLAYER 22 /* 21 aces and one more card */

typedef struct {
    int dealer[BLACKJACK_MAX_DEALER], ndealer; /* card codes (rank-1)*4 + suit */
    int player[BLACKJACK_MAX_PLAYER], nplayer;
    int steps;
} Blackjack;

static inline int card_code_rank(int code) { return code / 4 + 1; }
static inline int card_code_suit(int code) { return code % 4; }

static int blackjack_draw(Rng *rng) {
    int rank = 1 + rng_below(rng, 13);
    int suit = rng_below(rng, 4);
    return (rank - 1) * 4 + suit;
}

static int blackjack_sum(const int *cards, int n) {
    int total = 0, ace = 0;
    for (int i = 0; i < n; i++) {
        int r = card_code_rank(cards[i]);
        total += r < 10 ? r : 10;
        ace |= r == 1;
    }
    return (ace && total + 10 <= 21) ? total + 10 : total;
}

static int blackjack_score(const int *cards, int n) {
    int s = blackjack_sum(cards, n);
    return s > 21 ? 0 : s;
}

static void blackjack_reset(Blackjack *g, Rng *rng) {
    g->ndealer = g->nplayer = g->steps = 0;
    for (int i = 0; i < 2; i++) g->dealer[g->ndealer++] = blackjack_draw(rng);
    for (int i = 0; i < 2; i++) g->player[g->nplayer++] = blackjack_draw(rng);
}

static void blackjack_step(Blackjack *g, Rng *rng, int action, float *reward, int *terminated, int *truncated) {
    g->steps++;
    *truncated = 0;
    if (action == 1) {
        g->player[g->nplayer++] = blackjack_draw(rng);
        int bust = blackjack_sum(g->player, g->nplayer) > 21;
        *terminated = bust;
        *reward = bust ? -1.0f : 0.0f;
        return;
    }
    while (blackjack_sum(g->dealer, g->ndealer) < 17) g->dealer[g->ndealer++] = blackjack_draw(rng);
    int p = blackjack_score(g->player, g->nplayer), d = blackjack_score(g->dealer, g->ndealer);
    *reward = (float)((p > d) - (p < d));
    *terminated = 1;
}

/* Layout at 300x300: "Dealer" at (5, 5), its first card at (5, 25) and a card back at (78, 25);
 * "Player" at (5, 130), cards 70x98 from (5, 150), 74 px apart, five to a row (102 px apart). */
static void blackjack_player_card(const Blackjack *g, Canvas *c, int i) {
    int x = 5 + (i % 5) * 74, y = 150 + (i / 5) * 102;
    draw_card(c, layout_x(c, x), layout_y(c, y), layout_x(c, 70), layout_y(c, 98), card_code_rank(g->player[i]),
              card_code_suit(g->player[i]));
}

static void blackjack_render(const Blackjack *g, Canvas *c) {
    fill_canvas(c, COLOR_FELT);
    int s = layout_scale(c, 2);
    draw_text(c, layout_x(c, 5), layout_y(c, 5), "Dealer", s, COLOR_WHITE);
    draw_card(c, layout_x(c, 5), layout_y(c, 25), layout_x(c, 70), layout_y(c, 98), card_code_rank(g->dealer[0]),
              card_code_suit(g->dealer[0]));
    draw_card_back(c, layout_x(c, 78), layout_y(c, 25), layout_x(c, 70), layout_y(c, 98));
    draw_text(c, layout_x(c, 5), layout_y(c, 130), "Player", s, COLOR_WHITE);
    for (int i = 0; i < g->nplayer; i++) blackjack_player_card(g, c, i);
}

/* A new deal over a Blackjack frame: erase the old hand's extra cards, then redraw the dealer's
 * card, the "Player" label and the two new cards (the full render's order for what overlaps). */
static void blackjack_render_reset(const Blackjack *old, const Blackjack *g, Canvas *c) {
    for (int i = 2; i < old->nplayer; i++) {
        int x = 5 + (i % 5) * 74, y = 150 + (i / 5) * 102;
        fill_rect(c, layout_x(c, x), layout_y(c, y), layout_x(c, 70), layout_y(c, 98), COLOR_FELT);
    }
    draw_card(c, layout_x(c, 5), layout_y(c, 25), layout_x(c, 70), layout_y(c, 98), card_code_rank(g->dealer[0]),
              card_code_suit(g->dealer[0]));
    draw_text(c, layout_x(c, 5), layout_y(c, 130), "Player", layout_scale(c, 2), COLOR_WHITE);
    for (int i = 0; i < g->nplayer; i++) blackjack_player_card(g, c, i);
}

/* A hit adds one card; a stand changes nothing visible (the dealer's card stays face down). */
static void blackjack_render_step(const Blackjack *g, Canvas *c, int action) {
    if (action == 1) blackjack_player_card(g, c, g->nplayer - 1);
}

/* State row: ndealer, nplayer, steps, dealer codes (12), player codes (22); -1 pads. */
static void blackjack_state(const Blackjack *g, int32_t *out) {
    out[0] = g->ndealer;
    out[1] = g->nplayer;
    out[2] = g->steps;
    for (int i = 0; i < BLACKJACK_MAX_DEALER; i++) out[3 + i] = i < g->ndealer ? g->dealer[i] : -1;
    for (int i = 0; i < BLACKJACK_MAX_PLAYER; i++)
        out[3 + BLACKJACK_MAX_DEALER + i] = i < g->nplayer ? g->player[i] : -1;
}

#endif
