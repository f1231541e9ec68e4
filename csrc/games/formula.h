/* What EZPoints and Points24 share: a hand of cards, a formula built one token per action, and
 * its scoring. Rules as RL4VLM's gym_cards, with its deliberate fixes:
 *  - the formula is evaluated with exact rational arithmetic (RL4VLM's float `==` rejected correct
 *    division solutions such as 8/(3-8/3));
 *  - the formula is a sequence of tokens, not Python source: two adjacent numbers are not one
 *    number ("2","4" is not 24) and doubled operators are not `**` or `//`; such a formula is
 *    malformed and scores -1. Blank tokens (left by invalid actions) are ignored, as whitespace
 *    is by Python's eval.
 * Scoring: a number used more often than the hand holds it is invalid (-1, a blank is appended);
 * "=" ends the episode: +10 if the formula equals the target and used every card, else -1;
 * a formula longer than max_len at the start of a step ends the episode with -1 (terminated: the
 * formula is in the prompt, so the limit is a rule of the game, not a time limit to bootstrap;
 * RL4VLM reported it as truncated). */
#ifndef FASTVLMRL_FORMULA_H
#define FASTVLMRL_FORMULA_H
#include <stdint.h>
#include <stdlib.h>
#include "game.h"

#define MAX_CARDS 4
#define MAX_FORMULA 24
#define MAX_OPERATORS 7
/* Token codes: 1..13 are numbers; operators and the blank are negative. */
enum { TOK_PLUS = -1, TOK_MINUS = -2, TOK_TIMES = -3, TOK_DIVIDE = -4, TOK_LPAREN = -5, TOK_RPAREN = -6,
       TOK_BLANK = -7, TOK_EQUALS = -8 };

typedef struct {
    int ncards;
    int rank[MAX_CARDS], suit[MAX_CARDS], value[MAX_CARDS];
    int tokens[MAX_FORMULA];
    int flen;       /* tokens in the formula */
    int text_len;   /* characters of the formula's text (tokens joined by spaces) */
    int used;       /* numbers used so far */
    int steps;
    int target;     /* 12 or 24 */
    int max_len;    /* 5 or 20 */
    int num_numbers;        /* number actions: 10, or 13 when face cards keep 11/12/13 */
    int operators[MAX_OPERATORS]; /* token of each operator action */
    int num_operators;
} Formula;

/* State row: card codes (rank-1)*4+suit (-1 pads), card values (0 pads), ncards, flen, used,
 * steps, then the tokens (0 pads). */
enum {
    FORMULA_CARDS = 0,
    FORMULA_NUMBERS = FORMULA_CARDS + MAX_CARDS,
    FORMULA_NCARDS = FORMULA_NUMBERS + MAX_CARDS,
    FORMULA_LEN,
    FORMULA_USED,
    FORMULA_STEPS,
    FORMULA_TOKENS,
    FORMULA_STATE_LEN = FORMULA_TOKENS + MAX_FORMULA,
};
_Static_assert(FORMULA_STATE_LEN <= STATE_DIM, "the formula state row must fit STATE_DIM");

static const StateField FORMULA_LAYOUT[] = {
    {"cards", FORMULA_CARDS, MAX_CARDS},
    {"numbers", FORMULA_NUMBERS, MAX_CARDS},
    {"num_cards", FORMULA_NCARDS, 1},
    {"formula_len", FORMULA_LEN, 1},
    {"numbers_used", FORMULA_USED, 1},
    {"steps", FORMULA_STEPS, 1},
    {"formula", FORMULA_TOKENS, MAX_FORMULA},
    {NULL, 0, 0},
};

/* The game's settings (target, length limit, actions), set once by the game's init. */
static void formula_settings(Formula *f, int target, int max_len, int num_numbers, const int *operators,
                             int num_operators) {
    f->target = target;
    f->max_len = max_len;
    f->num_numbers = num_numbers;
    memcpy(f->operators, operators, (size_t)num_operators * sizeof(int));
    f->num_operators = num_operators;
}

static int formula_num_actions(const void *fv) {
    const Formula *f = fv;
    return f->num_numbers + f->num_operators;
}

static const char *token_text(int tok) {
    static const char *numbers[14] = {"?", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13"};
    switch (tok) {
        case TOK_PLUS: return "+";
        case TOK_MINUS: return "-";
        case TOK_TIMES: return "*";
        case TOK_DIVIDE: return "/";
        case TOK_LPAREN: return "(";
        case TOK_RPAREN: return ")";
        case TOK_BLANK: return " ";
        default: return (tok >= 1 && tok <= 13) ? numbers[tok] : "?";
    }
}

/* ---- exact evaluation: recursive descent over tokens with int64 fractions ---- */
typedef struct {
    int64_t num, den; /* den > 0, reduced */
} Frac;

typedef struct {
    const int *tok;
    int n, pos, ok;
} Parser;

static int64_t gcd64(int64_t a, int64_t b) {
    if (a < 0) a = -a;
    if (b < 0) b = -b;
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a ? a : 1;
}

static Frac frac_make(Parser *p, int64_t num, int64_t den) {
    Frac r = {0, 1};
    /* Values stay tiny (at most 4 numbers up to 13), but refuse rather than overflow: operands below
     * 2^30 keep every product below 2^62. */
    if (den == 0 || num > ((int64_t)1 << 30) || num < -((int64_t)1 << 30) || den > ((int64_t)1 << 30) ||
        den < -((int64_t)1 << 30)) {
        p->ok = 0;
        return r;
    }
    if (den < 0) {
        num = -num;
        den = -den;
    }
    int64_t g = gcd64(num, den);
    r.num = num / g;
    r.den = den / g;
    return r;
}

static int parser_peek(Parser *p) {
    while (p->pos < p->n && p->tok[p->pos] == TOK_BLANK) p->pos++;
    return p->pos < p->n ? p->tok[p->pos] : 0;
}

static Frac parse_expr(Parser *p);

static Frac parse_unary(Parser *p) {
    Frac zero = {0, 1};
    if (!p->ok) return zero;
    int t = parser_peek(p);
    if (t == TOK_PLUS || t == TOK_MINUS) {
        p->pos++;
        Frac v = parse_unary(p);
        if (t == TOK_MINUS) v.num = -v.num;
        return v;
    }
    if (t >= 1) {
        p->pos++;
        return frac_make(p, t, 1);
    }
    if (t == TOK_LPAREN) {
        p->pos++;
        Frac v = parse_expr(p);
        if (parser_peek(p) != TOK_RPAREN) {
            p->ok = 0;
            return zero;
        }
        p->pos++;
        return v;
    }
    p->ok = 0;
    return zero;
}

static Frac parse_term(Parser *p) {
    Frac v = parse_unary(p);
    for (;;) {
        if (!p->ok) return v;
        int t = parser_peek(p);
        if (t != TOK_TIMES && t != TOK_DIVIDE) return v;
        p->pos++;
        Frac r = parse_unary(p);
        if (!p->ok) return v;
        if (t == TOK_TIMES) v = frac_make(p, v.num * r.num, v.den * r.den);
        else v = frac_make(p, v.num * r.den, v.den * r.num); /* r == 0 gives den 0: not ok */
    }
}

static Frac parse_expr(Parser *p) {
    Frac v = parse_term(p);
    for (;;) {
        if (!p->ok) return v;
        int t = parser_peek(p);
        if (t != TOK_PLUS && t != TOK_MINUS) return v;
        p->pos++;
        Frac r = parse_term(p);
        if (!p->ok) return v;
        int64_t rn = t == TOK_PLUS ? r.num : -r.num;
        v = frac_make(p, v.num * r.den + rn * v.den, v.den * r.den);
    }
}

/* 1 if the tokens form a well-formed formula whose exact value equals target, else 0. */
static int formula_equals(const int *tokens, int n, int target) {
    Parser p = {tokens, n, 0, 1};
    Frac v = parse_expr(&p);
    if (!p.ok || parser_peek(&p) != 0) return 0;
    return v.den == 1 && v.num == target;
}

/* ---- the game ---- */
static void formula_clear(Formula *f) {
    f->flen = 0;
    f->text_len = 0;
    f->used = 0;
    f->steps = 0;
}

/* Characters the token adds to the text: a separating space (after the first token), then its text. */
static int formula_append(Formula *f, int tok) {
    int added = (f->flen > 0 ? 1 : 0) + (int)strlen(token_text(tok));
    f->tokens[f->flen++] = tok;
    f->text_len += added;
    return added;
}

static int formula_number_valid(const Formula *f, int number) {
    int in_hand = 0, used = 0;
    for (int i = 0; i < f->ncards; i++) in_hand += f->value[i] == number;
    for (int i = 0; i < f->flen; i++) used += f->tokens[i] == number;
    return used + 1 <= in_hand;
}

/* One step. Returns the number of characters appended to the formula text (0 if none). */
static int formula_step(void *fv, Rng *rng, int action, float *reward, int *terminated, int *truncated) {
    Formula *f = fv;
    f->steps++;
    *reward = 0.0f;
    *terminated = 0;
    *truncated = 0;
    if (f->flen > f->max_len) {
        *reward = -1.0f;
        *terminated = 1;
        return 0;
    }
    int tok = action < f->num_numbers ? action + 1 : f->operators[action - f->num_numbers];
    if (tok >= 1 && !formula_number_valid(f, tok)) {
        *reward = -1.0f;
        return formula_append(f, TOK_BLANK);
    }
    if (tok >= 1) f->used++;
    if (tok == TOK_EQUALS) {
        int ok = formula_equals(f->tokens, f->flen, f->target) && f->used == f->ncards;
        *reward = ok ? 10.0f : -1.0f;
        *terminated = 1;
        return 0;
    }
    return formula_append(f, tok);
}

/* The formula text: tokens joined by single spaces (as RL4VLM's " ".join). */
static int formula_text(const Formula *f, char *out, int cap) {
    int n = 0;
    for (int i = 0; i < f->flen; i++) {
        const char *t = token_text(f->tokens[i]);
        if (i > 0 && n < cap - 1) out[n++] = ' ';
        for (int k = 0; t[k] && n < cap - 1; k++) out[n++] = t[k];
    }
    out[n] = 0;
    return n;
}

static void formula_state(const void *fv, int32_t *out) {
    const Formula *f = fv;
    for (int i = 0; i < MAX_CARDS; i++) {
        out[FORMULA_CARDS + i] = i < f->ncards ? (f->rank[i] - 1) * 4 + f->suit[i] : -1;
        out[FORMULA_NUMBERS + i] = i < f->ncards ? f->value[i] : 0;
    }
    out[FORMULA_NCARDS] = f->ncards;
    out[FORMULA_LEN] = f->flen;
    out[FORMULA_USED] = f->used;
    out[FORMULA_STEPS] = f->steps;
    for (int i = 0; i < MAX_FORMULA; i++) out[FORMULA_TOKENS + i] = i < f->flen ? f->tokens[i] : 0;
}

static int formula_valid(const void *fv) {
    const Formula *f = fv;
    if (!in_range(f->ncards, 0, MAX_CARDS) || !in_range(f->flen, 0, MAX_FORMULA) || !in_range(f->used, 0, f->ncards) ||
        !in_range(f->text_len, 0, 4 * MAX_FORMULA) || !in_range(f->steps, 0, MAX_STEPS_RESTORED))
        return 0;
    for (int i = 0; i < f->ncards; i++)
        if (!in_range(f->rank[i], 1, 13) || !in_range(f->suit[i], 0, 3) || !in_range(f->value[i], 1, 13)) return 0;
    for (int i = 0; i < f->flen; i++)
        if (!in_range(f->tokens[i], TOK_EQUALS, 13) || f->tokens[i] == 0) return 0;
    return 1;
}

static void formula_keep_settings(void *restored, const void *live) {
    const Formula *l = live;
    formula_settings(restored, l->target, l->max_len, l->num_numbers, l->operators, l->num_operators);
}

#endif
