/* Blackjack (RL4VLM gym_cards Blackjack-v0 = gymnasium Blackjack-v1 rules with pixels):
 * infinite deck, actions 0 = stand (stick), 1 = hit; the dealer draws until 17 or more (a usable
 * ace counts as 11); reward +1 win, 0 draw, -1 loss; natural and sab off. Ranks are uniform over
 * A..K (J/Q/K = 10), which gives the value distribution of Blackjack-v1's deck. The frame shows
 * the dealer's first card and a card back, and the player's cards in rows of five. */
#ifndef FASTVLMRL_BLACKJACK_H
#define FASTVLMRL_BLACKJACK_H
#include "game.h"

#define BLACKJACK_MAX_DEALER 12 /* the dealer stops at 17: at most 12 cards (6 aces, a 6, 4 aces, one more) */
#define BLACKJACK_MAX_PLAYER 22 /* 21 aces and one more card */

typedef struct {
    int dealer[BLACKJACK_MAX_DEALER], ndealer; /* card codes (rank-1)*4 + suit */
    int player[BLACKJACK_MAX_PLAYER], nplayer;
    int steps;
} Blackjack;

/* State row: ndealer, nplayer, steps, dealer codes (12), player codes (22); -1 pads. */
enum {
    BLACKJACK_NDEALER,
    BLACKJACK_NPLAYER,
    BLACKJACK_STEPS,
    BLACKJACK_DEALER,
    BLACKJACK_PLAYER = BLACKJACK_DEALER + BLACKJACK_MAX_DEALER,
    BLACKJACK_STATE_LEN = BLACKJACK_PLAYER + BLACKJACK_MAX_PLAYER,
};
_Static_assert(BLACKJACK_STATE_LEN <= STATE_DIM, "the Blackjack state row must fit STATE_DIM");

static const StateField BLACKJACK_LAYOUT[] = {
    {"dealer_count", BLACKJACK_NDEALER, 1},
    {"player_count", BLACKJACK_NPLAYER, 1},
    {"steps", BLACKJACK_STEPS, 1},
    {"dealer_cards", BLACKJACK_DEALER, BLACKJACK_MAX_DEALER},
    {"player_cards", BLACKJACK_PLAYER, BLACKJACK_MAX_PLAYER},
    {NULL, 0, 0},
};

static int blackjack_num_actions(const void *g) { return 2; }

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

static void blackjack_reset(void *gv, Rng *rng) {
    Blackjack *g = gv;
    g->ndealer = g->nplayer = g->steps = 0;
    for (int i = 0; i < 2; i++) g->dealer[g->ndealer++] = blackjack_draw(rng);
    for (int i = 0; i < 2; i++) g->player[g->nplayer++] = blackjack_draw(rng);
}

/* Returns 1 when a card was dealt to the player (a hit), else 0. */
static int blackjack_step(void *gv, Rng *rng, int action, float *reward, int *terminated, int *truncated) {
    Blackjack *g = gv;
    g->steps++;
    *truncated = 0;
    if (action == 1) {
        g->player[g->nplayer++] = blackjack_draw(rng);
        int bust = blackjack_sum(g->player, g->nplayer) > 21;
        *terminated = bust;
        *reward = bust ? -1.0f : 0.0f;
        return 1;
    }
    while (blackjack_sum(g->dealer, g->ndealer) < 17) g->dealer[g->ndealer++] = blackjack_draw(rng);
    int p = blackjack_score(g->player, g->nplayer), d = blackjack_score(g->dealer, g->ndealer);
    *reward = (float)((p > d) - (p < d));
    *terminated = 1;
    return 0;
}

/* Layout at 300x300: "Dealer" at (5, 5), its first card at (5, 25) and a card back at (78, 25);
 * "Player" at (5, 130), cards 70x98 from (5, 150).
 * The player's cards in one row inside the frame: 74 apart up to four cards (RL4VLM's layout, whose
 * fifth card started at x=301 on the 300-wide frame), fanned to fit from the fifth on (each card
 * overlaps the next; its corner, rank and suit, stays visible). */
static int blackjack_card_x(int i, int n) { return n <= 4 ? 5 + i * 74 : 5 + i * 220 / (n - 1); }

static void blackjack_player_card(const Blackjack *g, Canvas *c, int i) {
    draw_card(c, layout_x(c, blackjack_card_x(i, g->nplayer)), layout_y(c, 150), layout_x(c, 70), layout_y(c, 98),
              card_code_rank(g->player[i]), card_code_suit(g->player[i]));
}

/* Felt over the row of the player's cards, from its left edge to the frame's right edge. */
static void blackjack_clear_player_row(Canvas *c) {
    fill_rect(c, layout_x(c, 5), layout_y(c, 150), c->w - layout_x(c, 5), layout_y(c, 98), COLOR_FELT);
}

static void blackjack_render(const void *gv, Canvas *c) {
    const Blackjack *g = gv;
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
static void blackjack_render_reset(const void *oldv, const void *gv, Canvas *c) {
    const Blackjack *old = oldv, *g = gv;
    if (old->nplayer > 2) blackjack_clear_player_row(c);
    draw_card(c, layout_x(c, 5), layout_y(c, 25), layout_x(c, 70), layout_y(c, 98), card_code_rank(g->dealer[0]),
              card_code_suit(g->dealer[0]));
    draw_text(c, layout_x(c, 5), layout_y(c, 130), "Player", layout_scale(c, 2), COLOR_WHITE);
    for (int i = 0; i < g->nplayer; i++) blackjack_player_card(g, c, i);
}

/* A hit adds one card (from the fifth on, the fanned row is redrawn); a stand changes nothing
 * visible (the dealer's card stays face down). */
static void blackjack_render_step(const void *gv, Canvas *c, int hit) {
    const Blackjack *g = gv;
    if (!hit) return;
    if (g->nplayer <= 4) {
        blackjack_player_card(g, c, g->nplayer - 1);
        return;
    }
    blackjack_clear_player_row(c);
    for (int i = 0; i < g->nplayer; i++) blackjack_player_card(g, c, i);
}

static void blackjack_state(const void *gv, int32_t *out) {
    const Blackjack *g = gv;
    out[BLACKJACK_NDEALER] = g->ndealer;
    out[BLACKJACK_NPLAYER] = g->nplayer;
    out[BLACKJACK_STEPS] = g->steps;
    for (int i = 0; i < BLACKJACK_MAX_DEALER; i++) out[BLACKJACK_DEALER + i] = i < g->ndealer ? g->dealer[i] : -1;
    for (int i = 0; i < BLACKJACK_MAX_PLAYER; i++) out[BLACKJACK_PLAYER + i] = i < g->nplayer ? g->player[i] : -1;
}

static int blackjack_valid(const void *gv) {
    const Blackjack *g = gv;
    if (!in_range(g->ndealer, 0, BLACKJACK_MAX_DEALER) || !in_range(g->nplayer, 0, BLACKJACK_MAX_PLAYER) ||
        !in_range(g->steps, 0, MAX_STEPS_RESTORED))
        return 0;
    for (int i = 0; i < g->ndealer; i++)
        if (!in_range(g->dealer[i], 0, 51)) return 0;
    for (int i = 0; i < g->nplayer; i++)
        if (!in_range(g->player[i], 0, 51)) return 0;
    return 1;
}

static const GameOps BLACKJACK_OPS = {
    .name = "Blackjack",
    .size = sizeof(Blackjack),
    .num_actions = blackjack_num_actions,
    .reset = blackjack_reset,
    .step = blackjack_step,
    .render = blackjack_render,
    .render_step = blackjack_render_step,
    .render_reset = blackjack_render_reset,
    .state = blackjack_state,
    .valid = blackjack_valid,
    .layout = BLACKJACK_LAYOUT,
};

#endif
