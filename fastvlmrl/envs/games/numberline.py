"""NumberLine: move "Current" to "Target" with "-" and "+" (rules in csrc/games/numberline.h).

Info dict `{"Target": g, "Current": p}`; the oracle moves toward the target.
"""

from __future__ import annotations

from fastvlmrl.envs.games.base import Game, game_id, state_fields

_F = state_fields("NumberLine")


class NumberLineGame(Game):
    short_keys = ("current number", "target number")

    def named_state(self, state):
        return {key: state[:, _F[key]] for key in ("target", "current", "steps")}

    def describe(self, row):
        return {"Target": int(row[_F["target"]]), "Current": int(row[_F["current"]])}

    def prompt_parts(self, info):
        head = (
            "You are playing a game called number line. You will see a target number and a current number "
            "in the image. Your goal is to move the current number closer to the target number by choosing "
            f"either adding one to or subtracting one from the current number. You can choose between {self.actions_text()}."
        )
        fields = [
            ("current number", '"x"'),
            ("target number", '"x"'),
            ("thoughts", '"{first read out the current and target number, then think carefully about which action to choose}"'),
        ]
        return head, fields, '"-" or "+"'

    def oracle(self, info):
        return self.reasoned(info, "+" if int(info["Current"]) < int(info["Target"]) else "-")

    def reasoned(self, info, action):
        g, p = int(info["Target"]), int(info["Current"])
        if action == "+":
            why = f"{p} is less than {g}, so I should add one"
        else:
            why = f"{p} is greater than {g}, so I should subtract one"
        thoughts = f"The current number is {p} and the target number is {g}. {why}."
        return {"current number": str(p), "target number": str(g)}, action, thoughts

    def thought_decision(self, thoughts):
        adds, subtracts = thoughts.rfind("add one"), thoughts.rfind("subtract one")
        if adds == subtracts:  # (both -1: it names neither)
            return None
        return "+" if adds > subtracts else "-"

    def assess(self, info, reply):
        try:
            numbers = (int(reply["current number"]) == int(info["Current"])
                       and int(reply["target number"]) == int(info["Target"]))
        except (KeyError, TypeError, ValueError, OverflowError):
            numbers = None if "current number" not in reply or "target number" not in reply else False
        return {"numbers": numbers, **super().assess(info, reply)}

    def judge(self, info, reply):
        try:
            current, target = int(reply["current number"]), int(reply["target number"])
        except (KeyError, TypeError, ValueError, OverflowError):
            return None, None
        seen = current == int(info["Current"]) and target == int(info["Target"])
        if current == target:
            return seen, None
        return seen, str(reply["action"]).strip() == ("+" if current < target else "-")


NUMBERLINE = NumberLineGame("NumberLine", game_id("NumberLine"), ("-", "+"))
