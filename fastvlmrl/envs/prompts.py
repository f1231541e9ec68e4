"""Task prompts per game, in RL4VLM's structure: role and rules, legal actions, "respond with valid
JSON", then the keys in order. `cot=False` asks for "action" only (the paper's no-CoT ablation).

The prompt is built from an env's RL4VLM-style info dict (`CardsVectorEnv.describe(i)`), so the
formula in the text is the one the frame shows, also right after an autoreset. The chat template
around it belongs to the model (the trainer applies it). What differs per game (the head, the JSON
fields, the action's value, the short prompt's keys) comes from the game's module
(`Game.prompt_parts`, fastvlmrl/envs/games/<game>.py); the structure is here.
"""

from __future__ import annotations

from fastvlmrl.envs.games import Game, formula_string, get_game

__all__ = ["formula_string", "reply_keys", "short_prompt", "task_prompt"]

_JSON_INTRO = "Your response should be a valid json file in the following format:"


def _json_block(fields: list[tuple[str, str]]) -> str:
    lines = [f'  "{key}": {value}' for key, value in fields]
    return "{\n" + ",\n".join(lines) + "\n}"


def reply_keys(game: Game | str, *, cot: bool = True) -> tuple[str, ...]:
    """The JSON keys a reply must hold, in the prompts' order (both styles ask for the same)."""
    game = get_game(game) if isinstance(game, str) else game
    return ((*game.short_keys, "thoughts") if cot else ()) + ("action",)


def short_prompt(game: Game, info: dict, *, cot: bool = True) -> str:
    """A one-line prompt for small models that cannot read instructions anyway (the built-in tiny
    VLM): the game, the text state RL4VLM's prompt carries (the formula), the JSON keys in order."""
    keys = reply_keys(game, cot=cot)
    return f"{game.name}.{game.short_state(info)} Reply in JSON with {', '.join(keys)}."


def task_prompt(game: Game | str, info: dict, *, cot: bool = True, style: str = "full") -> str:
    """The task prompt for one env, from its info dict (see module docstring); style "short" is
    `short_prompt`. The game supplies its head, its JSON fields and its action (`prompt_parts`)."""
    game = get_game(game) if isinstance(game, str) else game
    if style == "short":
        return short_prompt(game, info, cot=cot)
    if style != "full":
        raise ValueError(f"prompt style must be 'full' or 'short', got {style!r}")
    head, fields, action = game.prompt_parts(info)
    fields = list(fields) if cot else []
    fields.append(("action", action))
    return f"{head}\n{_JSON_INTRO}\n{_json_block(fields)}"
