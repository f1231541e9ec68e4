"""The rollout engine runs the tiny VLM with its own processor on real game frames, and the
policy's training forward reproduces what the engine sampled."""

import pytest
import torch

from fastvlmrl.engine import Engine, SamplingParams
from fastvlmrl.envs import NumberLineVectorEnv
from fastvlmrl.envs.prompts import task_prompt
from fastvlmrl.models import chat_prompt, load_policy


@pytest.fixture(scope="module")
def rollout_inputs():
    env = NumberLineVectorEnv(3)
    frames, _ = env.reset(seed=0)
    infos = [env.describe(i) for i in range(3)]
    env.close()
    return list(frames), infos


def test_greedy_matches_generate(rollout_inputs):
    policy, processor = load_policy(None, seed=0)
    frames, infos = rollout_inputs
    prompts = [chat_prompt(processor, task_prompt("NumberLine", info)) for info in infos]
    engine = Engine(policy.model, processor, block_size=16, num_blocks=256)
    outs = engine.generate(frames, prompts, SamplingParams(temperature=0, max_new_tokens=12))
    for frame, prompt, out in zip(frames, prompts, outs):
        assert out.error is None and len(out.token_ids) == 12
        enc = processor(images=[frame], text=[prompt], return_tensors="pt")
        assert out.prompt_token_ids == enc["input_ids"][0].tolist()
        want = policy.model.generate(**enc, max_new_tokens=12, do_sample=False)[0, enc["input_ids"].shape[1] :]
        assert out.token_ids == want.tolist()
        assert out.text == processor.tokenizer.decode(want, skip_special_tokens=True)


@pytest.mark.parametrize("lora", [False, True])
def test_training_forward_reproduces_rollout(rollout_inputs, lora):
    """Sampled log-probs and the last-prompt-token state from the engine == the policy's forward."""
    policy, processor = load_policy(None, seed=1, lora=lora, lora_r=8, lora_alpha=16)
    frames, infos = rollout_inputs
    prompts = [chat_prompt(processor, task_prompt("NumberLine", info)) for info in infos]
    engine = Engine(policy.model, processor, block_size=16, num_blocks=256)
    outs = engine.generate(frames, prompts, SamplingParams(temperature=1.0, max_new_tokens=8, seed=3))
    # What the trainer does: prompt ids + sampled ids, right-padded, with the prompts' pixel values.
    rows = [o.prompt_token_ids + o.token_ids for o in outs]
    input_ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)], mask[i, : len(ids)] = torch.tensor(ids), 1
    pixel_values = processor(images=frames, text=prompts, return_tensors="pt", padding=True)["pixel_values"]
    with torch.no_grad():
        hidden = policy.hidden_states(input_ids, mask, pixel_values=pixel_values)
        logp = (hidden @ policy.lm_head_weight().T).log_softmax(-1)
    for i, out in enumerate(outs):
        n, ids = len(out.prompt_token_ids), rows[i]
        recomputed = logp[i, n - 1 : len(ids) - 1].gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(recomputed, torch.tensor(out.logprobs), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.hidden_state, hidden[i, n - 1], atol=1e-4, rtol=1e-4)
        assert policy.value(out.hidden_state[None]).shape == (1,)
