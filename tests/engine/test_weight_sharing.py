"""The engine reads the trainer's parameters in place: an optimizer step shows up in the next
rollout with nothing to sync, LoRA-style wrapped layers included, and the trainer's model is left
as it was (attention implementation, train mode)."""

from __future__ import annotations

import torch
from torch import nn

from fastvlmrl.engine import Engine, SamplingParams

SP = SamplingParams(temperature=0, max_new_tokens=8)


class LoRALinear(nn.Module):
    """A minimal LoRA layer (what peft inserts): base(x) + scale * B(A(x))."""

    def __init__(self, base: nn.Linear, rank: int = 4):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.randn(rank, base.in_features) * 0.1)
        self.B = nn.Parameter(torch.randn(base.out_features, rank) * 0.1)

    def forward(self, x):
        return self.base(x) + x @ self.A.t() @ self.B.t()


def hf_greedy(model, processor, images, prompts):
    out = []
    for image, prompt in zip(images, prompts):
        enc = processor(images=[image], text=[prompt])
        ids = model.generate(**enc, max_new_tokens=SP.max_new_tokens, do_sample=False)
        out.append(ids[0, enc["input_ids"].shape[1] :].tolist())
    return out


def train_step(model, params, processor, image, prompt, lr):
    """One optimizer step pushing the model towards a fixed continuation."""
    opt = torch.optim.Adam(params, lr=lr)
    enc = processor(images=[image], text=[prompt + "zzzzzzzz"])
    logits = model(**enc).logits
    loss = nn.functional.cross_entropy(logits[0, :-1], enc["input_ids"][0, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad()


def test_optimizer_step_is_seen_without_sync(tiny):
    model = tiny.build_model("qwen2_vl", seed=1)
    processor = tiny.TinyProcessor(model, "qwen2_vl")
    images = [tiny.frame(i, 56, 56) for i in range(3)]
    prompts = ["<image> one", "<image> and two", "three <image>"]
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    before = engine.generate(images, prompts, SP)
    assert [b.token_ids for b in before] == hf_greedy(model, processor, images, prompts)

    model.train()
    impl = model.config.get_text_config()._attn_implementation
    for _ in range(3):
        train_step(model, model.parameters(), processor, images[0], prompts[0], lr=3e-2)
    after = engine.generate(images, prompts, SP)
    assert model.training and model.config.get_text_config()._attn_implementation == impl
    model.eval()
    assert [a.token_ids for a in after] != [b.token_ids for b in before]
    assert [a.token_ids for a in after] == hf_greedy(model, processor, images, prompts)


def test_lora_layers_are_used_and_trained(tiny):
    model = tiny.build_model("llava", seed=2)
    processor = tiny.TinyProcessor(model, "llava")
    images = [tiny.frame(i) for i in range(2)]
    prompts = ["<image> lora", "<image> adapters are modules"]
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    plain = engine.generate(images, prompts, SP)

    lora_params = []
    for layer in model.model.language_model.layers:
        for name in ("q_proj", "v_proj"):
            wrapped = LoRALinear(getattr(layer.self_attn, name))
            setattr(layer.self_attn, name, wrapped)
            lora_params += [wrapped.A, wrapped.B]
    with_lora = engine.generate(images, prompts, SP)
    assert [o.token_ids for o in with_lora] == hf_greedy(model, processor, images, prompts)
    assert [o.token_ids for o in with_lora] != [o.token_ids for o in plain]

    model.train()
    for _ in range(3):
        train_step(model, lora_params, processor, images[0], prompts[0], lr=5e-2)
    model.eval()
    trained = engine.generate(images, prompts, SP)
    assert [o.token_ids for o in trained] != [o.token_ids for o in with_lora]
    assert [o.token_ids for o in trained] == hf_greedy(model, processor, images, prompts)


def test_attention_switch_without_the_public_setter(tiny, monkeypatch):
    """The engine switches the language model's attention with ``set_attn_implementation`` and
    falls back to the config attribute where that method is missing or refuses; either way the
    trainer's setting is restored afterwards and the vision tower's is never touched."""
    model = tiny.build_model("llava", seed=8)
    processor = tiny.TinyProcessor(model, "llava")
    images, prompts = [tiny.frame(i) for i in range(2)], ["<image> attn", "switch <image> back"]
    want = hf_greedy(model, processor, images, prompts)
    lm = model.model.language_model
    text_impl, vision_impl = lm.config._attn_implementation, model.config.vision_config._attn_implementation
    seen = []
    real = lm.set_attn_implementation

    def record(impl):
        seen.append(impl)
        return real(impl)

    monkeypatch.setattr(lm, "set_attn_implementation", record)
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    assert [o.token_ids for o in engine.generate(images, prompts, SP)] == want
    assert seen == ["fastvlmrl_paged", text_impl]

    def refuse(impl):
        raise ValueError("not supported here")

    monkeypatch.setattr(lm, "set_attn_implementation", refuse)
    assert [o.token_ids for o in engine.generate(images, prompts, SP)] == want
    assert lm.config._attn_implementation == text_impl
    assert model.config.vision_config._attn_implementation == vision_impl


def test_mixed_train_eval_modes_are_restored(tiny):
    """A trainer that keeps the frozen vision tower in eval while the language model trains gets
    exactly that back after a rollout (not the whole model flipped to train)."""
    model = tiny.build_model("llava", seed=9)
    processor = tiny.TinyProcessor(model, "llava")
    engine = Engine(model, processor, block_size=8, num_blocks=64)
    model.train()
    model.model.vision_tower.eval()
    before = {name: m.training for name, m in model.named_modules()}
    assert not all(before.values()) and any(before.values())
    engine.generate([tiny.frame(0)], ["<image> modes"], SP)
    assert {name: m.training for name, m in model.named_modules()} == before
