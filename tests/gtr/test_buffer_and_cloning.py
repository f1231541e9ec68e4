"""The DAgger buffer (capacity, uniform draws, its state through a checkpoint file) and thought
cloning (the loss covers exactly the thought and scaffolding tokens; its value and gradient; the
term inside the PPO update)."""

import json

import numpy as np
import pytest
import torch

from fastvlmrl.gtr.buffer import CorrectedSample, DAggerBuffer
from fastvlmrl.gtr.cloning import ThoughtCloning, clone_sample


def sample(k: int) -> CorrectedSample:
    frame = np.full((6, 5, 3), k % 256, np.uint8)
    frame[0, 0] = [1, 2, 3]
    return CorrectedSample(frame, f"task {k}", json.dumps({"thoughts": f"t{k}", "action": "+"}))


def test_buffer_keeps_the_newest_and_draws_uniformly():
    buffer = DAggerBuffer(3, seed=0)
    assert buffer.draw(2) == [] and len(buffer) == 0
    for k in range(5):
        buffer.add(sample(k))
    assert len(buffer) == 3 and buffer.added == 5
    drawn = buffer.draw(3)
    assert sorted(s.task for s in drawn) == ["task 2", "task 3", "task 4"]  # without replacement, oldest dropped
    assert np.array_equal(drawn[0].frame, sample(int(drawn[0].task.split()[1])).frame)
    assert len(buffer.draw(7)) == 7  # more than it holds: with replacement
    counts = np.zeros(3)
    for _ in range(3000):
        counts[int(buffer.draw(1)[0].task.split()[1]) - 2] += 1
    assert np.all(np.abs(counts / 3000 - 1 / 3) < 0.04)
    with pytest.raises(ValueError, match="capacity"):
        DAggerBuffer(0)


def test_buffer_state_survives_a_checkpoint_file_and_resumes_the_same_draws(tmp_path):
    buffer = DAggerBuffer(10, seed=4)
    for k in range(7):
        buffer.add(sample(k))
    buffer.draw(3)
    torch.save({"buffer": buffer.state_dict()}, tmp_path / "state.pt")
    restored = DAggerBuffer(10, seed=99)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False)["buffer"])
    for a, b in zip(buffer.draw(5), restored.draw(5)):
        assert a.task == b.task and a.reply == b.reply and np.array_equal(a.frame, b.frame)
    assert restored.added == 7


@pytest.fixture(scope="module")
def tiny():
    from fastvlmrl.build import build_encoder
    from fastvlmrl.models import load_policy

    policy, processor = load_policy(None, dtype=torch.float32, device=torch.device("cpu"), seed=0)
    return policy, build_encoder(policy, processor, torch.float32)


def test_the_cloning_loss_covers_exactly_the_thought_and_the_scaffolding(tiny):
    _, encoder = tiny
    reply = '{"cards": [7, 1, 3, 4], "current formula": "3 *", "thoughts": "append \'7\'", "action": "7"}'
    t = clone_sample(encoder, CorrectedSample(np.zeros((64, 64, 3), np.uint8), "Points24.", reply))
    ids, masked = t.output_ids.tolist(), t.is_action.tolist()
    learned = encoder.tokenizer.decode([i for i, m in zip(ids, masked) if not m])
    assert learned == reply[: reply.index('"action"')]
    assert encoder.tokenizer.decode([i for i, m in zip(ids, masked) if m], skip_special_tokens=True) == '"action": "7"}'
    assert masked[-1] and ids[-1] == encoder.eos_id  # the EOS after the action carries no loss either
    assert not any(masked[: len(ids) - masked.count(True)])  # the masked tokens are one tail


def _grads(policy):
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
                      for p in policy.parameters() if p.requires_grad])


def test_cloning_backward_is_the_weighted_mean_cross_entropy_and_micro_batches_do_not_change_it(tiny):
    from fastvlmrl.rl.batch import forward_logp_and_values, pack

    policy, encoder = tiny
    buffer = DAggerBuffer(8, seed=1)
    for k in range(4):
        buffer.add(CorrectedSample(np.full((64, 64, 3), 40 * k, np.uint8), "NumberLine.",
                                   json.dumps({"thoughts": "x" * (k + 1), "action": "+"})))
    state = buffer.state_dict()
    results = []
    for micro in (0, 1, 3):
        buffer.load_state_dict(state)
        policy.zero_grad(set_to_none=True)
        loss = ThoughtCloning(buffer, encoder, batch_size=4, coef=0.5, micro_batch_size=micro).backward(policy, pad_id=encoder.pad_id,
                                                                                                          device="cpu")
        results.append((loss, _grads(policy)))
    # by hand: the same draw, all at once
    buffer.load_state_dict(state)
    samples = [clone_sample(encoder, s) for s in buffer.draw(4)]
    logp, _ = forward_logp_and_values(policy, pack(samples, encoder.pad_id, "cpu"), 1.0)
    keep = ~torch.cat([s.is_action for s in samples])
    expected = float(-(logp.detach() * keep).sum() / keep.sum())
    policy.zero_grad(set_to_none=True)
    (0.5 * -(logp * keep).sum() / keep.sum()).backward()
    for loss, grads in results:
        assert loss == pytest.approx(expected, rel=1e-5)
        assert torch.allclose(grads, _grads(policy), atol=1e-6)
    empty = ThoughtCloning(DAggerBuffer(2), encoder, batch_size=4, coef=1.0)
    assert empty.backward(policy, pad_id=encoder.pad_id, device="cpu") is None


def test_the_ppo_update_adds_the_cloning_term(tiny):
    """coef 0 leaves the update as plain PPO's; a positive coef moves the weights differently and is logged."""
    import copy

    from fastvlmrl.config import PPOConfig
    from fastvlmrl.rl.ppo import make_optimizer, ppo_update
    from fastvlmrl.rl.storage import SampleStorage, Transition

    policy, encoder = tiny
    rng = torch.Generator().manual_seed(0)
    samples = []
    for k in range(4):
        prompt, mm = encoder.encode(np.full((64, 64, 3), 30 * k, np.uint8), "NumberLine.")
        out = encoder.reply_ids('{"action": "+"}')
        samples.append((Transition(prompt, mm, out, logprobs=torch.full((len(out),), -3.0),
                                   is_action=torch.ones(len(out), dtype=torch.bool), value=0.0),
                        float(torch.randn(1, generator=rng)), 0.0))
    buffer = DAggerBuffer(8, seed=2)
    for k in range(3):
        buffer.add(CorrectedSample(np.full((64, 64, 3), 50 * k, np.uint8), "NumberLine.",
                                   json.dumps({"thoughts": "go up", "action": "+"})))
    cfg = PPOConfig(epochs=1, minibatch_size=4, lr=1e-3)
    weights = {}
    for coef in (None, 0.0, 1.0):
        model = copy.deepcopy(policy)
        cloning = None if coef is None else ThoughtCloning(copy.deepcopy(buffer), encoder, batch_size=2, coef=coef)
        metrics = ppo_update(model, make_optimizer(model, cfg), SampleStorage(samples), cfg, temperature=1.0,
                             pad_id=encoder.pad_id, device="cpu", generator=torch.Generator().manual_seed(0),
                             cloning=cloning)
        weights[coef] = torch.cat([p.detach().flatten() for p in model.parameters()])
        if coef is not None:
            assert metrics["gtr/sft_steps"] == 1 and metrics["gtr/sft_loss"] > 0
    assert torch.equal(weights[None], weights[0.0])
    assert not torch.equal(weights[None], weights[1.0])
