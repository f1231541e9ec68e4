"""GTR inside the rollout: the format reward (added to the step's return and advantage after GAE),
the corrected samples going into the DAgger buffer with the agent's own action, early truncation
(off every solution path, unsolvable hands: terminated with -1, a new episode), the buffer in the
player's checkpoint state, and none of it in evaluation. The agent is scripted (an engine that
answers with the oracle's replies, some deciding a random action)."""

import json
import numpy as np
import pytest
import torch

from fastvlmrl.config import GTRConfig, SamplingConfig
from fastvlmrl.engine.sequence import Generation
from fastvlmrl.envs.oracles import oracle_step
from fastvlmrl.envs.vector import make_batch
from fastvlmrl.gtr.guide import ThoughtGuide
from fastvlmrl.gtr.oracle_corrector import OracleCorrector
from fastvlmrl.rl.gae import compute_gae
from fastvlmrl.rl.rollout import EpisodeStats, Player
from fastvlmrl.rl.storage import RolloutStorage


class ScriptedEngine:
    """Answers each env with the oracle's reply for its state; with probability `noise` the reply
    decides a random action instead (its thought reasoning to it); `garbage` envs answer nonsense."""

    def __init__(self, envs, tokenizer, hidden: int, noise: float, garbage=(), seed=0):
        self.envs, self.tokenizer, self.hidden, self.noise, self.garbage = envs, tokenizer, hidden, noise, set(garbage)
        self.rng = np.random.default_rng(seed)
        self.replies = []  # per call: the texts

    def generate_requests(self, requests, params):
        out, texts = [], []
        for i, request in enumerate(requests):
            info = self.envs.describe(i)
            if i in self.garbage:
                text = "no json here"
            elif self.rng.random() < self.noise:
                text = oracle_step(self.envs.game, info, action=int(self.rng.integers(self.envs.game.num_actions))).text
            else:
                text = oracle_step(self.envs.game, info).text
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            out.append(Generation(request.prompt_token_ids, ids, [-0.5] * len(ids), text=text,
                                  hidden_state=torch.zeros(self.hidden)))
            texts.append(text)
        self.replies.append(texts)
        return out


@pytest.fixture(scope="module")
def tiny():
    from fastvlmrl.build import build_encoder
    from fastvlmrl.models import load_policy

    policy, processor = load_policy(None, dtype=torch.float32, device=torch.device("cpu"), seed=0)
    return policy, build_encoder(policy, processor, torch.float32)


def make_player(tiny, game="Points24", num_envs=8, noise=0.5, garbage=(), **gtr):
    policy, encoder = tiny
    envs = make_batch(game, num_envs, height=64, width=64, autoreset_mode="SameStep")
    cfg = GTRConfig(enabled=True, **gtr)
    guide = ThoughtGuide(OracleCorrector(envs.game), envs.game, cfg, seed=0)
    engine = ScriptedEngine(envs, encoder.tokenizer, policy.value_head.net[0].in_features, noise, garbage)
    player = Player(policy, engine, encoder, envs, cot=True, style="short", sampling=SamplingConfig(max_new_tokens=256),
                    illegal_action="random", illegal_penalty=-1.0, seed=0, guide=guide)
    return player, engine


def test_format_reward_corrections_and_buffer(tiny):
    player, engine = make_player(tiny, garbage=(0,))
    obs = player.reset(5)
    storage = RolloutStorage(3, 8)
    obs, stats, _, last = player.collect(obs, storage, gamma=0.9)
    bonus = np.array([[t.bonus for t in row] for row in storage.transitions])
    assert (bonus[:, 0] == 0).all() and (bonus[:, 1:] == 5.0).all()  # garbage earns nothing
    # the format reward sits on the return and advantage of its own step, after GAE
    adv, ret = compute_gae(storage.rewards, storage.values, storage.dones, last.float(), 0.9, 0.95)
    storage.finish(last, 0.9, 0.95, normalize=False)
    assert torch.allclose(storage.returns, ret + torch.as_tensor(bonus).float())
    assert torch.allclose(storage.advantages, adv + torch.as_tensor(bonus).float())
    # every wrong thought among the valid replies is in the buffer, with the agent's own action
    metrics = player.guide.metrics()
    wrong = metrics["gtr/corrected_rate"] * (3 * 7)
    assert len(player.guide.buffer) == round(wrong) > 0
    for sample in player.guide.buffer.draw(len(player.guide.buffer)):
        reply = json.loads(sample.reply)
        assert list(reply) == ["cards", "current formula", "thoughts", "action"]
        agent = [json.loads(t) for texts in engine.replies for t in texts if t.startswith("{")]
        assert any(a["action"] == reply["action"] and a["cards"] == reply["cards"] for a in agent)
    assert metrics["gtr/format_reward_mean"] == pytest.approx(5.0 * 7 / 8)
    assert stats.summary()["thought/valid_json_rate"] == pytest.approx(7 / 8)
    player.close()


def test_truncation_ends_off_path_and_unsolvable_episodes_with_minus_one(tiny):
    from fastvlmrl.envs.parse import parse_action

    player, engine = make_player(tiny, num_envs=16, noise=0.7, truncate_off_path=True, truncate_unsolvable=True)
    shadow = make_batch("Points24", 16, height=64, width=64, autoreset_mode="SameStep")  # the same step, uncut
    obs = player.reset(11)
    cuts = 0
    for _ in range(4):
        before = [player.envs.describe(i) for i in range(16)]
        shadow.set_state(player.envs.get_state())
        _, rewards, terminated, truncated, obs, _ = player.step(obs, 0.0, EpisodeStats())
        actions = [parse_action(player.game, text).action for text in engine.replies[-1]]
        _, game_rewards, game_over, _, _ = shadow.step(np.array(actions))
        for i in range(16):
            cut = not game_over[i] and (player.game.solvable(before[i]) is False
                                        or not player.game.on_path(shadow.describe(i)))
            assert terminated[i] == (game_over[i] or cut)
            assert rewards[i] == (-1.0 if cut else game_rewards[i])
            cuts += cut
    assert cuts == player.guide.counts["truncated"] > 0
    # no truncation without the switches
    plain, _ = make_player(tiny, num_envs=16, noise=0.7)
    obs = plain.reset(11)
    for _ in range(4):
        _, _, _, _, obs, _ = plain.step(obs, 0.0, EpisodeStats())
    assert plain.guide.counts["truncated"] == 0
    player.close(), plain.close(), shadow.close()


def test_the_buffer_travels_in_the_players_state_and_evaluation_is_unguided(tiny):
    player, _ = make_player(tiny)
    obs = player.reset(2)
    player.collect(obs, RolloutStorage(2, 8), gamma=0.9)
    state = player.get_state()
    other, _ = make_player(tiny)
    other.set_state(state)
    assert [s.reply for s in other.guide.buffer.draw(4)] == [s.reply for s in player.guide.buffer.draw(4)]
    before = player.guide.buffer.added
    player.evaluate(4, 0.0, seed=100)
    assert player.guide.buffer.added == before and player.guide.counts["replies"] == 16
    with pytest.raises(ValueError, match="without gtr.enabled"):
        other.set_state({k: v for k, v in state.items() if k != "guide"})
    player.close(), other.close()
