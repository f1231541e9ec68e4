"""Reference games: the rules, RNG and pixels of the C batch in plain Python/numpy.

They are the ground truth for the C envs' tests and the baseline of `bench/`. One
`gymnasium.Env` class per game."""

from fastvlmrl.envs.reference.blackjack import Blackjack
from fastvlmrl.envs.reference.formula import EZPoints, Points24, evaluate
from fastvlmrl.envs.reference.numberline import NumberLine

__all__ = ["NumberLine", "EZPoints", "Points24", "Blackjack", "evaluate"]
