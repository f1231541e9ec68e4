/* The table of games: a game's id is its index here (Python reads the ids, names and state
 * layouts from the module: `_cards.GAME_IDS`, `_cards.LAYOUTS`). Adding a game: include its
 * header, add its struct to GameState and its GameOps to GAMES. */
#ifndef FASTVLMRL_GAMES_H
#define FASTVLMRL_GAMES_H
#include "games/blackjack.h"
#include "games/ezpoints.h"
#include "games/numberline.h"
#include "games/points24.h"

/* Room for any game's struct. */
typedef union {
    NumberLine numberline;
    Formula formula;
    Blackjack blackjack;
} GameState;

static const GameOps *const GAMES[] = {&NUMBERLINE_OPS, &EZPOINTS_OPS, &POINTS24_OPS, &BLACKJACK_OPS};
#define NUM_GAMES ((int)(sizeof(GAMES) / sizeof(GAMES[0])))

#endif
