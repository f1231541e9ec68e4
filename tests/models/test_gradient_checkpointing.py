"""Gradient checkpointing of the tiny VLM (a Hugging Face LLaVA): the same loss and gradients as
without it, with LoRA (peft) and with full fine-tuning, the layers really recomputed in the
backward, the engine's no-grad forwards untouched; and micro-batches of VLM samples with prompts
of different lengths give the unsplit gradients."""

import numpy as np
import pytest
import torch

from fastvlmrl.build import build_encoder
from fastvlmrl.models import load_policy
from fastvlmrl.models.policy import enable_gradient_checkpointing
from fastvlmrl.rl.sft import sft_backward
from fastvlmrl.rl.storage import Transition


def _samples(encoder, n=5):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        frame = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        prompt_ids, mm = encoder.encode(frame, "What is on the board?" + " really" * i)
        reply = encoder.reply_ids('{"thoughts": "a number", "action": "+"}'[: 12 + 5 * i])
        samples.append(Transition(prompt_ids, mm, reply, logprobs=torch.zeros(len(reply)),
                                  is_action=torch.ones(len(reply), dtype=torch.bool), value=0.0))
    return samples


def _grads(lora: bool, checkpointing: bool, vision: bool = False, micro: int = 0):
    torch.manual_seed(0)  # peft initialises the adapters from the global RNG
    policy, processor = load_policy(None, lora=lora, lora_r=4, lora_alpha=8, lora_dropout=0.0, seed=0)
    if checkpointing:
        assert enable_gradient_checkpointing(policy, vision=vision) == 2 + (2 if vision else 0)
    encoder = build_encoder(policy, processor, torch.float32)
    policy.train()
    loss = sft_backward(policy, _samples(encoder), micro, pad_id=encoder.pad_id, device="cpu")
    return float(loss), {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}, policy


@pytest.mark.parametrize("lora, vision", [(False, False), (False, True), (True, False)])
def test_checkpointing_gives_the_same_gradients(lora, vision):
    loss, grads, _ = _grads(lora, checkpointing=False)
    loss_ckpt, grads_ckpt, policy = _grads(lora, checkpointing=True, vision=vision)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 0
    if lora:
        assert all("lora_" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_checkpointed_layers_run_again_in_the_backward_and_not_in_the_engine():
    policy, processor = load_policy(None, seed=0)
    enable_gradient_checkpointing(policy)
    encoder = build_encoder(policy, processor, torch.float32)
    layer = policy.hf_model.model.language_model.layers[0].mlp  # inside the checkpointed forward
    calls = []
    layer.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    policy.train()
    sft_backward(policy, _samples(encoder, n=2), 0, pad_id=encoder.pad_id, device="cpu")
    assert len(calls) == 2  # the forward, then its recomputation in the backward
    calls.clear()
    policy.eval()
    with torch.no_grad():  # what the engine and the rollout's scoring do
        from fastvlmrl.rl.batch import forward_logp_and_values, pack

        forward_logp_and_values(policy, pack(_samples(encoder, n=2), encoder.pad_id, "cpu"), 1.0)
    assert len(calls) == 1


def test_vlm_micro_batches_with_prompts_of_different_lengths_give_the_unsplit_gradients():
    loss, grads, _ = _grads(lora=False, checkpointing=False, micro=0)
    for micro in (1, 3):
        loss_m, grads_m, _ = _grads(lora=False, checkpointing=True, micro=micro)
        assert loss_m == pytest.approx(loss, rel=1e-6)
        for name in grads:
            torch.testing.assert_close(grads_m[name], grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_a_model_without_a_language_model_is_one_clear_error():
    policy, _ = load_policy(None, seed=0)
    del policy.hf_model.model.language_model
    with pytest.raises(ValueError, match="no language_model"):
        enable_gradient_checkpointing(policy)
