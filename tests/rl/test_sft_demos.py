import json

import numpy as np

from fastvlmrl.envs.games import get_game
from fastvlmrl.envs.parse import parse_action
from fastvlmrl.rl.sft import make_demos, sft_lr


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


def test_noisy_demos_replace_the_action_only():
    clean = make_demos("Points24", 400, noise=0.0, seed=2, image_size=48)
    noisy = make_demos("Points24", 400, noise=1.0, seed=2, image_size=48)
    assert [d.task for d in clean[:64]] == [d.task for d in noisy[:64]]  # same first states
    changed = 0
    for c, n in zip(clean[:64], noisy[:64]):
        rc, rn = json.loads(c.reply), json.loads(n.reply)
        assert rc["thoughts"] == rn["thoughts"]
        assert parse_action("Points24", n.reply).legal
        changed += rc["action"] != rn["action"]
    assert changed > 64 * 0.8  # 16 of 17 random actions differ from the oracle's


def test_no_cot_demos_hold_the_action_only():
    demos = make_demos("Blackjack", 20, cot=False, image_size=48)
    assert all(list(json.loads(d.reply)) == ["action"] for d in demos)
    assert {json.loads(d.reply)["action"] for d in demos} <= set(get_game("Blackjack").actions)


def test_sft_schedule_warms_up_then_decays():
    lrs = [sft_lr(s, 100, 1e-3, 10) for s in range(100)]
    assert lrs[0] == 1e-4 and np.isclose(lrs[9], 1e-3) and lrs[-1] < 1e-5
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
