"""GTR's evaluation prompt for a model corrector (an HTTP endpoint, or a local VLM): the game's
rules as the system message, then numbered evaluation questions per game, the agent's thought (its
reply's JSON without "action") and, for the formula games, the current formula and the solver's
solutions as GTR's tool result; and the reading of the corrector's JSON answer
(`answer1..answerN`, `evaluation` YES/NO, `possible_solution`, `target_formula`, `correction`).
A malformed answer is no correction (NO_VERDICT), never an exception."""

from __future__ import annotations

import json

from fastvlmrl.envs import solver
from fastvlmrl.envs.games import Game
from fastvlmrl.envs.games.formula import FormulaGame, formula_string
from fastvlmrl.envs.prompts import reply_keys
from fastvlmrl.gtr.correction import CORRECT, NO_VERDICT, WRONG, Correction, CorrectionItem

QUESTIONS = {
    "NumberLine": (
        "What are the current number and the target number in the image? Does the thought read them correctly?",
        "Is the action the thought chooses the right one to move the current number closer to the target number?",
    ),
    "EZPoints": (
        "What are the two cards in the image? Do the numbers in the thought match them, in any order?",
        "Does the formula proposed in the thought match the target formula, or one of the solutions?",
        "Is the action right for reaching the proposed formula, or '=' if the formula is complete?",
    ),
    "Points24": (
        "What are the four cards in the image? The tool result below lists every correct formula for them.",
        "Do the ranks in the thought match the image, in any order?",
        "Does the formula proposed in the thought match the target formula, or one of the solutions?",
        "Is the action right for reaching the proposed formula, or '=' if the formula is complete?",
    ),
    "Blackjack": (
        "What are the player's cards and the dealer's face-up card in the image? Does the thought state the totals correctly?",
        "Is the action the thought chooses the right one (hit or stand) given those totals?",
    ),
}

_MAX_SOLUTIONS = 20  # listed in the tool result (Points24 hands have up to a few hundred)


def system_prompt(game: Game) -> str:
    head, _, _ = game.prompt_parts(_blank_info(game))
    return ("You check the reasoning of an agent playing a game from an image and correct it when it is wrong. "
            f"The game: {head}")


def _blank_info(game: Game) -> dict:
    if isinstance(game, FormulaGame):
        return {"Cards": [], "Numbers": [], "Formula": []}
    if game.name == "NumberLine":
        return {"Target": 0, "Current": 0}
    return {"Dealer Card": [(0, "?", "?")], "Player Card": []}


def thought_of(reply: dict) -> dict:
    """The agent's thought: its reply's JSON without the action (what the corrector judges)."""
    return {key: value for key, value in reply.items() if key != "action"}


def user_prompt(game: Game, item: CorrectionItem) -> str:
    """The questions, the thought and (formula games) the current formula, the target formula
    (the item's: 'NOT DETERMINED' until the corrector fixed one this episode) and the solver's
    solutions as the tool result."""
    questions = QUESTIONS[game.name]
    lines = ["Answer these questions about the image and the agent's thought:"]
    lines += [f"{k}. {q}" for k, q in enumerate(questions, 1)]
    if isinstance(game, FormulaGame):
        numbers = tuple(int(n) for n in item.info["Numbers"])
        found = solver.solutions(numbers, game.target, game.solver_ops)
        tool = ("; ".join(solver.format_tokens(s) for s in found[:_MAX_SOLUTIONS]) if found
                else "No possible solution")
        lines += [f"[Tool result] find_all_correct_formulas: {tool}",
                  f"[Current Formula] '{formula_string(item.info)}'",
                  f"[Target Formula] {item.target or 'NOT DETERMINED'}"]
    thought = thought_of(item.reply or {})
    lines.append(f"[Thought] {json.dumps(thought)}")
    keys = [k for k in reply_keys(game) if k != "action"]
    answer_keys = ", ".join(f'"answer{k}"' for k in range(1, len(questions) + 1))
    extra = ', "possible_solution": "YES" or "NO", "target_formula": "<formula>"' if isinstance(game, FormulaGame) else ""
    lines.append(f"Reply in JSON with {answer_keys}, \"evaluation\": \"YES\" if the thought is right, else \"NO\"{extra}, "
                 f"and \"correction\": null if the thought is right, else the corrected thought as a JSON object with "
                 f"the keys {', '.join(repr(k) for k in keys)}.")
    return "\n".join(lines)


def read_answer(game: Game, text) -> Correction:
    """The corrector's reply as a Correction; NO_VERDICT when it is not the JSON asked for."""
    text = str(text).strip()
    if text.startswith("```"):  # a markdown fence around the JSON, as local models often write
        text = text.split("\n", 1)[-1].rsplit("```", 1)[0].strip()
    try:
        answer = json.loads(text)
    except (ValueError, RecursionError):
        return Correction(NO_VERDICT)
    if not isinstance(answer, dict):
        return Correction(NO_VERDICT)
    evaluation = str(answer.get("evaluation", "")).strip().upper()
    answers = {f"answer{k}": answer.get(f"answer{k}") for k in range(1, len(QUESTIONS[game.name]) + 1)}
    solvable = _yes_no(answer.get("possible_solution"))
    target = answer.get("target_formula")
    target = str(target) if isinstance(target, (str, int)) and str(target).strip() else None
    if evaluation == "YES":
        return Correction(CORRECT, solvable=solvable, target=target, answers=answers)
    if evaluation != "NO":
        return Correction(NO_VERDICT, answers=answers)
    correction = answer.get("correction")
    keys = [k for k in reply_keys(game) if k != "action"]
    if not isinstance(correction, dict) or not all(k in correction for k in keys):
        return Correction(NO_VERDICT, solvable=solvable, target=target, answers=answers)  # wrong, but no usable fix
    return Correction(WRONG, {k: correction[k] for k in keys}, solvable=solvable, target=target, answers=answers)


def _yes_no(value) -> bool | None:
    text = str(value).strip().upper() if value is not None else ""
    return True if text == "YES" else False if text == "NO" else None
