"""scripts/sft_perception_probe.py: the characters it scores are exactly what the frame shows."""

import importlib.util
from pathlib import Path

import pytest

from fastvlmrl.rl.sft import make_demos

spec = importlib.util.spec_from_file_location("probe", Path(__file__).parents[1] / "scripts" / "sft_perception_probe.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def _faces(game, info):
    """What the frame shows, as the reply writes it."""
    if game == "Blackjack":
        return [face for _, face, _ in info["Player Card"]] + [info["Dealer Card"][0][1]]
    if game == "NumberLine":
        return [str(info["Current"]), str(info["Target"])]
    return [str(n) for n in info["Numbers"]]


@pytest.mark.parametrize("game", sorted(probe.READ_SPANS))
def test_read_mask_covers_the_cards_and_nothing_else(game):
    for demo in make_demos(game, 24, noise=0.5, seed=3, cot=True, style="short"):
        mask = probe.read_mask(demo.reply, len(demo.reply) + 1, game)
        read = "".join(ch for ch, m in zip(demo.reply, mask) if m)
        assert read and not mask[-1]  # something is read, never the EOS
        assert set(read) <= set("0123456789AJQK")
        assert sorted(read) == sorted("".join(_faces(game, demo.info)))


def test_read_mask_refuses_a_tokenizer_that_is_not_per_character():
    with pytest.raises(SystemExit, match="character tokenizer"):
        probe.read_mask('{"thoughts": "My cards are 2, 3, a total of 5. The dealer shows 4,"}', 10, "Blackjack")
