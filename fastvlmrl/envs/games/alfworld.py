"""ALFWorld's text protocol as a `Game`: the prompt, the parser, the oracle and GiGPO's anchors
over the info dicts the ALFWorld envs describe (fastvlmrl/envs/alfworld). Its actions change
with every state (the admissible commands), so the env takes an index into `legal_actions(info)`.

It needs no part of ALFWorld's engine: the info dict carries everything (the oracle's next command
and thought are computed in the env's worker from the game's facts).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from fastvlmrl.envs.games.base import Game

_HEAD = "You are an expert in the ALFRED Embodied Environment."
_THOUGHTS = ('"{first describe what you see using the text description, then carefully think about which '
             'action completes the task}"')
# What a prompt can hold at its longest, for the engine's KV sizing (longest_info): commands in a
# crowded room with an object in hand, and a long room description.
_MAX_COMMANDS = 80
_MAX_OBSERVATION = 1200


@dataclass(frozen=True)
class ALFWorldGame(Game):
    history: int = 20  # previous actions in the prompt (GTR); 0 = none
    observation: bool = True  # the engine's text feedback in the prompt (RL4VLM)

    has_frames = False

    def with_prompt(self, *, history: int | None = None, observation: bool | None = None) -> ALFWorldGame:
        return replace(self, history=self.history if history is None else int(history),
                       observation=self.observation if observation is None else bool(observation))

    def named_state(self, state):
        raise NotImplementedError("ALFWorld has no C state rows: its envs describe each state as an info dict")

    def describe(self, row):
        raise NotImplementedError("ALFWorld has no C state rows: its envs describe each state as an info dict")

    def legal_actions(self, info):
        return tuple(info["admissible_commands"])

    def parse_reply(self, text, info):
        from fastvlmrl.envs.alfworld.text import parse_command

        return parse_command(text, info["admissible_commands"])

    def head(self, info: dict) -> str:
        """The prompt before its JSON format: role, scene, task, previous actions, admissible commands."""
        parts = [_HEAD]
        if self.observation:
            parts.append(f"You are also given the following text description of the current scene: {info['observation']}")
        parts.append(f"Your task is to {info['task'].rstrip('.')}.")
        if self.history > 0:
            previous = list(info.get("previous_actions", ()))[-self.history:]
            parts.append("The previous actions you have taken: [" + ", ".join(f"'{a}'" for a in previous) + "].")
        commands = "\n ".join(f"'{c}'" for c in info["admissible_commands"])
        parts.append(f"Your admissible actions of the current situation are: [{commands}].")
        return " ".join(parts)

    def prompt_parts(self, info):
        thoughts = _THOUGHTS if self.observation else _THOUGHTS.replace(" using the text description", "")
        return self.head(info), [("thoughts", thoughts)], '"{an admissible action}"'

    def short_state(self, info):
        seen = f" Seen: {info['observation']}" if self.observation else ""
        done = ""
        if self.history > 0:
            done = " Done: " + "; ".join(list(info.get("previous_actions", ()))[-self.history:]) + "."
        return (f" Task: {info['task'].rstrip('.')}.{seen}{done} Actions: "
                + "; ".join(info["admissible_commands"]) + ".")

    def longest_info(self, info):
        commands = list(info["admissible_commands"])
        longest = max(commands, key=len) if commands else "go to cabinet 10"
        pad = max(_MAX_COMMANDS - len(commands), 0)
        # padded with room-description text (a tokenizer packs a run of one letter far tighter)
        filler = (", a cabinet 10" * (_MAX_OBSERVATION // 14 + 1))
        observation = (info["observation"] + filler)[: max(_MAX_OBSERVATION, len(info["observation"]))]
        return {**info, "observation": observation,
                "admissible_commands": commands + [longest] * pad,
                "previous_actions": [longest] * self.history}

    def oracle(self, info):
        action = info.get("expert_action")
        if action is None:  # won, or no plan: a harmless command
            commands = info["admissible_commands"]
            action = "look" if "look" in commands else commands[0]
            return {}, action, f"Nothing left to do for the task: I {action}."
        return {}, action, info["expert_thoughts"]

    def reasoned(self, info, action):
        if action == info.get("expert_action"):
            return self.oracle(info)
        return {}, action, f"{_scene(info['observation'])} My task is to {info['task'].rstrip('.')}: I {action}."

    def right_decision(self, info, action):
        from fastvlmrl.envs.alfworld.text import parse_command

        expert = info.get("expert_action")
        if action is None or expert is None:  # no action, or no expert move here (won, no plan): no verdict
            return None
        commands = info["admissible_commands"]
        parsed = parse_command(json.dumps({"action": action}), commands)  # as the env reads it: "'go to x 1'."
        return parsed.action is not None and commands[parsed.action] == expert

    def episode_success(self, episode_return, final_info):
        # won, not a positive return: the reward adds partial progress (goal conditions) every step
        return bool(final_info is not None and final_info.get("won"))

    def anchor(self, info, row=None):
        key = json.dumps([info.get("game"), info["observation"], info["admissible_commands"]])
        return hashlib.blake2b(key.encode(), digest_size=16).digest()


def _scene(observation: str) -> str:
    """The observation's first sentence about the scene (a reset's text starts with TextWorld's
    banner and ends with the task line)."""
    lines = [line.strip() for line in observation.splitlines()
             if line.strip() and not line.startswith("-=") and not line.startswith("Your task is to")]
    first = (lines[0] if lines else observation).split(". ")[0].strip().rstrip(".")
    return first + "."


ALFWORLD = ALFWorldGame("ALFWorld", -1, ())
