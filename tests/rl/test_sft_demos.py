import json

import numpy as np
import pytest
import torch

from fastvlmrl.envs.games import GAMES, get_game
from fastvlmrl.envs.parse import parse_action
from fastvlmrl.rl.sft import encode_demos, make_demos, sft_lr


def test_clean_demos_are_oracle_replies_for_the_frames():
    demos = make_demos("NumberLine", 100, noise=0.0, seed=1, image_size=64, num_envs=16)
    assert len(demos) == 100
    for d in demos:
        reply = json.loads(d.reply)
        assert list(reply) == ["current number", "target number", "thoughts", "action"]
        current, target = int(reply["current number"]), int(reply["target number"])
        assert reply["action"] == ("+" if current < target else "-")
        assert f"Target: {target}" not in d.task  # the numbers are in the frame, not the prompt
        assert d.frame.shape == (64, 64, 3)


@pytest.mark.parametrize("name", list(GAMES))
def test_noisy_demos_reason_to_their_action_and_read_the_frame_truthfully(name):
    """A noisy demonstration decides a random action in its thought and its action together
    (before: the oracle's thought, then a contradicting random action)."""
    clean = make_demos(name, 256, noise=0.0, seed=2, image_size=48)
    noisy = make_demos(name, 256, noise=1.0, seed=2, image_size=48)
    assert [d.task for d in clean[:64]] == [d.task for d in noisy[:64]]  # same first states
    game, off_expert = GAMES[name], 0
    for demo in noisy:
        reply = json.loads(demo.reply)
        assert parse_action(name, demo.reply).legal
        assert game.judge(demo.info, reply)[0] in (True, None)  # what it says it sees is the frame
        thoughts, action = reply["thoughts"], reply["action"]
        if name == "NumberLine":
            assert ("add one" in thoughts) == (action == "+")
        elif name == "Blackjack":
            assert thoughts.endswith(f"basic strategy is to {action}.")
        elif action == "=":
            assert thoughts.endswith(("end it.", "end the game.", "it is complete."))
        else:
            assert thoughts.endswith(f"so I append '{action}'.")
        off_expert += action != game.oracle(demo.info)[1]
    assert off_expert > 256 * (0.3 if game.num_actions == 2 else 0.8)


def test_encoded_demos_share_one_encoding_per_frame_and_match_the_encoder():
    from fastvlmrl.build import build_encoder
    from fastvlmrl.models import load_policy

    policy, processor = load_policy(None, lora=False, dtype=torch.float32, device="cpu", seed=0)
    encoder = build_encoder(policy, processor, torch.float32)
    demos = make_demos("NumberLine", 200, noise=0.5, seed=3, image_size=64, num_envs=8)
    samples = encode_demos(encoder, iter(demos))
    assert len(samples) == 200
    for demo, sample in zip(demos[:20], samples):
        prompt_ids, mm = encoder.encode(demo.frame, demo.task)
        assert torch.equal(sample.prompt_ids, prompt_ids)
        assert torch.equal(sample.mm["pixel_values"], mm["pixel_values"])
        assert torch.equal(sample.output_ids, encoder.reply_ids(demo.reply))
    distinct = {id(s.mm["pixel_values"]) for s in samples}
    assert len(distinct) == len({(d.frame.tobytes(), d.task) for d in demos}) < 200


def test_no_cot_demos_hold_the_action_only():
    demos = make_demos("Blackjack", 20, cot=False, image_size=48)
    assert all(list(json.loads(d.reply)) == ["action"] for d in demos)
    assert {json.loads(d.reply)["action"] for d in demos} <= set(get_game("Blackjack").actions)


def test_sft_schedule_warms_up_then_decays():
    lrs = [sft_lr(s, 100, 1e-3, 10) for s in range(100)]
    assert lrs[0] == 1e-4 and np.isclose(lrs[9], 1e-3) and lrs[-1] < 1e-5
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
