"""GTR-Turbo's self-teacher: the EMA of the weights (full fine-tuning) and the TIES merge of the
last adapters (LoRA), swapped into the model for the teacher's answers and back bit for bit, its
verdicts, and its state through a checkpoint."""

import json

import numpy as np
import pytest
import torch

from fastvlmrl.engine.sequence import Generation
from fastvlmrl.envs.games import get_game
from fastvlmrl.envs.parse import strict_reply
from fastvlmrl.envs.prompts import reply_keys
from fastvlmrl.gtr.correction import CORRECT, NO_VERDICT, UNPARSABLE, WRONG, CorrectionItem
from fastvlmrl.gtr.self_teacher import SelfTeacher
from fastvlmrl.gtr.ties import merge_lora_adapters

GAME = get_game("NumberLine")
INFO = {"Target": 4, "Current": 1}


class Recording:
    """An engine that answers scripted texts and records a weight as the model had it."""

    def __init__(self, policy, name, texts):
        self.policy, self.name, self.texts, self.seen = policy, name, list(texts), []

    def generate_requests(self, requests, params):
        self.seen.append(dict(self.policy.model.named_parameters())[self.name].detach().clone())
        return [Generation(list(r.prompt_token_ids), text=self.texts.pop(0)) for r in requests]


def build(lora: bool):
    from fastvlmrl.build import build_encoder
    from fastvlmrl.models import load_policy

    policy, processor = load_policy(None, lora=lora, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                    dtype=torch.float32, device=torch.device("cpu"), seed=0)
    return policy, build_encoder(policy, processor, torch.float32)


def reply(current="1", action="+", thoughts="1 is less than 4, so I should add one."):
    return json.dumps({"current number": current, "target number": "4", "thoughts": thoughts, "action": action})


def item(text):
    return CorrectionItem(np.zeros((64, 64, 3), np.uint8), "NumberLine.", text, INFO, strict_reply(text, reply_keys(GAME)))


def trained(policy):
    return {n: p for n, p in policy.model.named_parameters() if p.requires_grad}


def test_ema_teacher_swaps_in_and_back_exactly():
    policy, encoder = build(lora=False)
    name = next(iter(trained(policy)))
    engine = Recording(policy, name, [reply()])
    teacher = SelfTeacher(GAME, policy, engine, encoder, lora=False, ema_decay=0.75)
    start = {n: p.detach().clone() for n, p in trained(policy).items()}
    with torch.no_grad():
        for p in trained(policy).values():
            p.add_(1.0)  # an "update"
    teacher.after_update()
    for n, p in trained(policy).items():
        assert torch.allclose(teacher.teacher[n], 0.75 * start[n] + 0.25 * (start[n] + 1.0))
    own = {n: p.detach().clone() for n, p in trained(policy).items()}
    teacher.evaluate([item(reply())])
    assert torch.allclose(engine.seen[0], teacher.teacher[name])  # the teacher answered
    for n, p in trained(policy).items():
        assert torch.equal(p, own[n])  # and the model is itself again, bit for bit


def test_lora_teacher_is_the_ties_merge_of_the_last_adapters():
    policy, encoder = build(lora=True)
    teacher = SelfTeacher(GAME, policy, None, encoder, lora=True, lora_scale=2.0, merge=2, density=0.8)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        with torch.no_grad():
            for p in trained(policy).values():
                p.add_(torch.randn(p.shape, generator=g))
        teacher.after_update()
    assert len(teacher.snapshots) == 2
    key = lambda n: n.replace(".default.", ".")  # noqa: E731
    adapters = [{key(n): t for n, t in s.items() if "lora_" in n} for s in teacher.snapshots]
    expected = merge_lora_adapters(adapters, scale=2.0, density=0.8, rank=4)
    for n, t in teacher.teacher.items():
        if "lora_" in n:
            assert torch.allclose(t, expected[key(n)], atol=1e-5), n
    with pytest.raises(ValueError, match="has none"):
        SelfTeacher(GAME, build(lora=False)[0], None, encoder, lora=True)


def test_verdicts_and_state():
    policy, encoder = build(lora=False)
    name = next(iter(trained(policy)))
    engine = Recording(policy, name, [reply(), reply(current="2"), "not json"])
    teacher = SelfTeacher(GAME, policy, engine, encoder, lora=False)
    out = teacher.evaluate([item(reply()), item(reply()), item("garbage"), item(reply(action="-"))])
    assert [c.verdict for c in out] == [CORRECT, WRONG, UNPARSABLE, NO_VERDICT]
    assert out[1].corrected_thought["current number"] == "2" and "action" not in out[1].corrected_thought
    assert teacher.failures["teacher_unparsable"] == 1
    teacher.after_update()
    state = teacher.get_state()
    other = SelfTeacher(GAME, policy, engine, encoder, lora=False)
    other.set_state(state)
    assert other.updates == 1 and all(torch.equal(other.teacher[n], teacher.teacher[n]) for n in teacher.teacher)


def test_the_kl_to_the_teacher_is_the_mean_over_thought_tokens():
    from fastvlmrl.config import PPOConfig
    from fastvlmrl.rl.batch import forward_logp_and_values, pack
    from fastvlmrl.rl.ppo import _micro_loss, _minibatch_totals
    from fastvlmrl.rl.storage import Transition
    from fastvlmrl.distributed import current as current_world

    policy, encoder = build(lora=False)
    g = torch.Generator().manual_seed(3)
    samples = []
    for k in range(3):
        prompt, mm = encoder.encode(np.full((64, 64, 3), 40 * k, np.uint8), "NumberLine.")
        out = encoder.reply_ids(reply())
        is_action = torch.arange(len(out)) >= len(out) - 5
        t = Transition(prompt, mm, out, logprobs=torch.full((len(out),), -2.0), is_action=is_action, value=0.0)
        t.ref_logprobs = -torch.rand(len(out), generator=g) * 3
        samples.append((t, 0.0, 0.0))
    totals = _minibatch_totals(samples, 0.5, current_world())
    kw = dict(value_clip=None, temperature=1.0, pad_id=encoder.pad_id, device="cpu", logit_bias=None)
    with torch.no_grad():
        plain, _, _ = _micro_loss(policy, samples, totals, PPOConfig(), **kw)
        held, _, _ = _micro_loss(policy, samples, totals, PPOConfig(kl_coef=0.3), kl_thoughts_only=True, **kw)
        logp, _ = forward_logp_and_values(policy, pack([s[0] for s in samples], encoder.pad_id, "cpu"), 1.0)
    ref = torch.cat([s[0].ref_logprobs for s in samples])
    thought = ~torch.cat([s[0].is_action for s in samples])
    r = ref.double() - logp.double()
    k3 = torch.exp(r) - r - 1
    assert (held - plain).item() == pytest.approx(0.3 * float(k3[thought].mean()), rel=1e-5)


def test_kl_mode_judges_nothing_and_scores_under_the_teacher():
    from fastvlmrl.rl.batch import forward_logp_and_values, pack
    from fastvlmrl.rl.storage import Transition

    policy, encoder = build(lora=False)
    teacher = SelfTeacher(GAME, policy, None, encoder, lora=False, mode="kl", ema_decay=0.5)
    assert teacher.evaluate([item(reply())]) == []
    with torch.no_grad():
        for p in trained(policy).values():
            p.mul_(1.5)
    teacher.after_update()  # the teacher now lies between the start and the current weights
    prompt, mm = encoder.encode(np.zeros((64, 64, 3), np.uint8), "NumberLine.")
    out = encoder.reply_ids(reply())
    batch = pack([Transition(prompt, mm, out, logprobs=torch.zeros(len(out)), is_action=torch.zeros(len(out), dtype=bool),
                             value=0.0)], encoder.pad_id, "cpu")
    with torch.no_grad():
        own = forward_logp_and_values(policy, batch, 1.0)[0]
        under_teacher = teacher.logprobs(batch, 1.0)
        again = forward_logp_and_values(policy, batch, 1.0)[0]
    assert torch.equal(own, again) and not torch.allclose(own, under_teacher)
