"""NumberLine in plain Python (rules as csrc/games/numberline.h)."""

from __future__ import annotations

from fastvlmrl.envs.games import GAMES
from fastvlmrl.envs.games.base import state_fields
from fastvlmrl.envs.reference.base import ReferenceGame
from fastvlmrl.envs.reference.draw import BLACK, WHITE

MAX_POSITION = 5
_F = state_fields("NumberLine")


class NumberLine(ReferenceGame):
    game = GAMES["NumberLine"]

    def _deal(self, rng):
        start = rng.below(MAX_POSITION + 1)
        goal = rng.below(MAX_POSITION + 1)
        if goal == start:
            goal = (goal + 1) % MAX_POSITION  # RL4VLM's rule
        self.target, self.current, self.steps = goal, start, 0

    def _play(self, action, rng):
        self.steps += 1
        before = abs(self.current - self.target)
        if action == 0 and self.current > 0:
            self.current -= 1
        elif action == 1 and self.current < MAX_POSITION:
            self.current += 1
        after = abs(self.current - self.target)
        terminated = after == 0
        reward = 1.0 if terminated else (-1.0 if after >= before else 0.0)
        truncated = not terminated and self.steps >= 2 * MAX_POSITION
        return reward, terminated, truncated

    def _draw(self, c):
        c.fill(WHITE)
        s = c.scale(4)
        c.text(c.x(30), c.y(60), f"Target: {self.target}", s, BLACK)
        c.text(c.x(30), c.y(180), f"Current: {self.current}", s, BLACK)

    def _info(self):
        return {"Target": self.target, "Current": self.current}

    def _state_row(self, row):
        row[_F["target"]], row[_F["current"]], row[_F["steps"]] = self.target, self.current, self.steps
