"""Real peft LoRA: the trainer wraps the policy with peft first and then builds the engine on the
peft model (or injects adapters into a model an engine already holds). Greedy output equals
``generate`` on the peft model, and one optimizer step on the LoRA weights shows up in the next
rollout with nothing to sync."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastvlmrl.engine import Engine, SamplingParams
from fastvlmrl.engine.families import family_for

peft = pytest.importorskip("peft")

SP = SamplingParams(temperature=0, max_new_tokens=8)
# The language model's linear layers only (the vision tower keeps its plain layers).
TARGETS = r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def hf_greedy(model, processor, images, prompts):
    out = []
    for image, prompt in zip(images, prompts):
        enc = processor(images=[image], text=[prompt])
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=SP.max_new_tokens, do_sample=False)
        out.append(ids[0, enc["input_ids"].shape[1] :].tolist())
    return out


def lora_step(model, processor, image, prompt, lr):
    """One Adam step on the trainable (LoRA) parameters towards a fixed continuation."""
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    enc = processor(images=[image], text=[prompt + "zzzzzzzz"])
    logits = model(**enc).logits
    loss = nn.functional.cross_entropy(logits[0, :-1], enc["input_ids"][0, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad()
    model.eval()


HW = {"llava": (28, 28), "qwen2_vl": (56, 56), "qwen3_vl": (64, 64), "gemma3": (56, 56), "llava_onevision": (56, 84), "internvl": (56, 112),
      "idefics3": (32, 64), "smolvlm": (64, 64)}


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "qwen3_vl", "gemma3", "llava_onevision", "internvl",
                                    "idefics3", "smolvlm"])
def test_engine_on_peft_model(family, tiny):
    model = tiny.build_model(family, seed=5)
    processor = tiny.TinyProcessor(model, family)
    hw = HW[family]
    images = [tiny.frame(i, *hw) for i in range(3)]
    prompts = ["<image> lora", "<image> adapters are modules", "peft says <image> hi"]
    plain = hf_greedy(model, processor, images, prompts)

    # The trainer's order: LoRA first (non-zero B so the adapters change the output), then engine.
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.1, init_lora_weights=False)
    policy = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_" in name:
                p.mul_(0.3)  # peft's random init is large for a 64-wide model: keep outputs varied
    n_lora = sum(isinstance(m, peft.tuners.lora.LoraLayer) for m in policy.modules())
    language_model = family_for(model).language_model()
    assert n_lora == len(language_model.layers) * 7
    policy.eval()
    engine = Engine(policy, processor, block_size=8, num_blocks=64)
    assert engine.family.name == family
    # family_for on the peft wrapper itself (the trainer calls it so) resolves the same modules.
    fam = family_for(policy)
    assert fam.model is model and fam.language_model() is language_model

    before = engine.generate(images, prompts, SP)
    want = hf_greedy(policy, processor, images, prompts)
    assert [o.error for o in before] == [None] * 3
    assert [o.token_ids for o in before] == want
    assert want != plain, "the adapters do not change the output: the test would prove nothing"

    impl = model.config.get_text_config()._attn_implementation
    lora_step(policy, processor, images[0], prompts[0], lr=5e-2)
    policy.train()  # the trainer's state is kept across a rollout
    after = engine.generate(images, prompts, SP)
    assert policy.training and model.config.get_text_config()._attn_implementation == impl
    policy.eval()
    assert [o.token_ids for o in after] != [o.token_ids for o in before]
    assert [o.token_ids for o in after] == hf_greedy(policy, processor, images, prompts)


def test_adapters_injected_after_the_engine_is_built(tiny):
    """inject_adapter_in_model replaces modules inside the model the engine already holds."""
    model = tiny.build_model("qwen2_5_vl", seed=6)
    processor = tiny.TinyProcessor(model, "qwen2_5_vl")
    images = [tiny.frame(i, 56, 56) for i in range(2)]
    prompts = ["<image> inject", "then <image> generate"]
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    plain = engine.generate(images, prompts, SP)

    # The LM head and the token embeddings too: the engine must not hold on to the modules it
    # found at construction.
    targets = r"(.*language_model.*\.(q_proj|v_proj|down_proj|embed_tokens)|lm_head)"
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    model = peft.inject_adapter_in_model(config, model)
    assert isinstance(model.lm_head, peft.tuners.lora.LoraLayer)
    assert isinstance(model.get_input_embeddings(), peft.tuners.lora.LoraLayer)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
            if "lora_" in name:
                p.mul_(0.3)
    with_lora = engine.generate(images, prompts, SP)
    assert [o.token_ids for o in with_lora] == hf_greedy(model, processor, images, prompts)
    assert [o.token_ids for o in with_lora] != [o.token_ids for o in plain]

    lora_step(model, processor, images[0], prompts[0], lr=5e-2)
    trained = engine.generate(images, prompts, SP)
    assert [o.token_ids for o in trained] != [o.token_ids for o in with_lora]
    assert [o.token_ids for o in trained] == hf_greedy(model, processor, images, prompts)


def test_cuda_graphs_recaptured_when_parameters_are_replaced(tiny, monkeypatch):
    """Captured decode graphs read parameters by address: in-place optimizer steps are seen, but
    adapters injected later are new tensors the old graphs never read. The engine captures again
    when the set of parameter tensors changes (and only then). Capture itself needs CUDA, so the
    graphs here are the eager stand-in (``capture=False``); tests/engine/test_gpu.py replays."""
    import fastvlmrl.engine.engine as engine_module
    from fastvlmrl.engine.cuda_graphs import DecodeGraphs

    captures = []

    def fake_graphs(runner, max_num_seqs):
        captures.append(max_num_seqs)
        return DecodeGraphs(runner, max_num_seqs, capture=False)

    monkeypatch.setattr(engine_module, "DecodeGraphs", fake_graphs)
    model = tiny.build_model("llava", seed=7)
    processor = tiny.TinyProcessor(model, "llava")
    images, prompts = [tiny.frame(i) for i in range(3)], ["<image> graphs", "<image> g2", "x <image>"]
    engine = Engine(model, processor, block_size=8, num_blocks=64, max_num_seqs=8, max_model_len=128)
    engine.capture_cuda_graphs()
    assert len(captures) == 1
    engine.generate(images, prompts, SP)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # in place: the captured graph sees it, no re-capture
    engine.generate(images, prompts, SP)
    assert len(captures) == 1

    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    peft.inject_adapter_in_model(config, model)
    got = engine.generate(images, prompts, SP)
    assert len(captures) == 2
    assert [o.token_ids for o in got] == hf_greedy(model, processor, images, prompts)
    engine.generate(images, prompts, SP)
    assert len(captures) == 2


def test_disabled_adapter_does_not_leak_through_the_prefix_cache(tiny):
    """``with policy.disable_adapter():`` (the base model, e.g. for a reference rollout) changes
    the function without changing a parameter: prefix blocks cached under one must not be served
    under the other."""
    model = tiny.build_model("llava", seed=10)
    processor = tiny.TinyProcessor(model, "llava")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    policy = peft.get_peft_model(model, config).eval()
    task = "You are playing NumberLine. Move the current number to the target with + or -. "
    images, prompts = [tiny.frame(0), tiny.frame(1)], [task + "<image> a", task + "<image> b"]
    engine = Engine(policy, processor, block_size=8, num_blocks=128)
    with policy.disable_adapter():
        base = engine.generate(images, prompts, SP)
        assert [o.token_ids for o in base] == hf_greedy(policy, processor, images, prompts)
    tuned = engine.generate(images, prompts, SP)
    assert tuned[0].num_cached_tokens == 0
    assert [o.token_ids for o in tuned] == hf_greedy(policy, processor, images, prompts)
    assert [o.token_ids for o in tuned] != [o.token_ids for o in base]
