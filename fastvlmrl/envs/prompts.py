"""Task prompts per game, in RL4VLM's structure: role and rules, legal actions, "respond with valid
JSON", then the keys in order. `cot=False` asks for "action" only (the paper's no-CoT ablation).

The prompt is built from an env's RL4VLM-style info dict (`CardsVectorEnv.describe(i)`), so the
formula in the text is the one the frame shows, also right after an autoreset. The chat template
around it belongs to the model (the trainer applies it).
"""

from __future__ import annotations

from fastvlmrl.envs.games import Game, get_game

_JSON_INTRO = "Your response should be a valid json file in the following format:"


def _json_block(fields: list[tuple[str, str]]) -> str:
    lines = [f'  "{key}": {value}' for key, value in fields]
    return "{\n" + ",\n".join(lines) + "\n}"


def _actions_list(game: Game) -> str:
    return "[" + ", ".join(f"'{a}'" for a in game.actions) + "]"


def _face_card_rule(game: Game) -> str:
    if "13" in game.actions:
        return "Note that 'J', 'Q', and 'K' count as '11', '12' and '13' and 'A' counts as '1'."
    return "Note that 'J', 'Q', and 'K' count as '10' and 'A' counts as '1'."


def formula_string(info: dict) -> str:
    """The current formula as the frame writes it (tokens joined by spaces)."""
    return " ".join(info.get("Formula", []))


def short_prompt(game: Game, info: dict, *, cot: bool = True) -> str:
    """A one-line prompt for small models that cannot read instructions anyway (the built-in tiny
    VLM): the game, the text state RL4VLM's prompt carries (the formula), the JSON keys in order."""
    keys = {
        "NumberLine": ["current number", "target number"],
        "Blackjack": [],
        "EZPoints": ["cards", "current formula"],
        "Points24": ["cards", "current formula"],
    }[game.name]
    keys = (keys + ["thoughts"] if cot else []) + ["action"]
    state = f" Formula: '{formula_string(info)}'." if game.name in ("EZPoints", "Points24") else ""
    return f"{game.name}.{state} Reply in JSON with {', '.join(keys)}."


def task_prompt(game: Game | str, info: dict, *, cot: bool = True, style: str = "full") -> str:
    """The task prompt for one env, from its info dict (see module docstring); style "short" is
    `short_prompt`."""
    game = get_game(game) if isinstance(game, str) else game
    if style == "short":
        return short_prompt(game, info, cot=cot)
    if style != "full":
        raise ValueError(f"prompt style must be 'full' or 'short', got {style!r}")
    if game.name == "NumberLine":
        head = (
            "You are playing a game called number line. You will see a target number and a current number "
            "in the image. Your goal is to move the current number closer to the target number by choosing "
            f"either adding one to or subtracting one from the current number. You can choose between {_actions_list(game)}."
        )
        fields = [
            ("current number", '"x"'),
            ("target number", '"x"'),
            ("thoughts", '"{first read out the current and target number, then think carefully about which action to choose}"'),
        ]
        action = '"-" or "+"'
    elif game.name == "Blackjack":
        head = (
            "You are a blackjack player. You are observing the current game state: the dealer's face-up card "
            "and your cards. Aces count as 1 or 11 and J, Q, K count as 10. Your goal is to beat the dealer's "
            f"total without going over 21. You can choose between {_actions_list(game)}."
        )
        fields = [
            ("thoughts", "\"{first describe your total points and the dealer's total points, then think about which action to choose}\""),
        ]
        action = '"stand" or "hit"'
    else:
        n_cards, target = (2, 12) if game.name == "EZPoints" else (4, 24)
        formula = formula_string(info)
        card_words = "two cards" if n_cards == 2 else "four cards"
        head = (
            f"You are an expert card game player. You are observing {card_words} in the image. "
            f"You are observing the current formula: '{formula}'. You can choose between {_actions_list(game)}. "
            "The number or operator you choose will be appended to the current formula. "
            f"{_face_card_rule(game)} "
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
        action = '"{number}" or "{operator}"'
    if not cot:
        fields = []
    fields.append(("action", action))
    return f"{head}\n{_JSON_INTRO}\n{_json_block(fields)}"
