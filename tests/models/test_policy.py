import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fastvlmrl.models import Policy, build_tiny_vlm, chat_prompt, load_policy, make_policy


def _batch(processor, frames, texts, side="right"):
    processor.tokenizer.padding_side = side
    prompts = [chat_prompt(processor, t) for t in texts]
    return processor(images=list(frames), text=prompts, return_tensors="pt", padding=True)


def _ground_truth(model, enc, row):
    """One unpadded row through the plain Hugging Face forward: final hidden states and logits."""
    keep = enc["attention_mask"][row].bool()
    with torch.no_grad():
        out = model(
            input_ids=enc["input_ids"][row][keep][None],
            pixel_values=enc["pixel_values"][row : row + 1],
            output_hidden_states=True,
        )
    return out.hidden_states[-1][0], out.logits[0], keep


def test_tiny_directory_loads_the_same_policy(tiny_dir, helpers):
    fresh, processor = load_policy(None, seed=0)
    loaded, processor2 = load_policy(tiny_dir, seed=0)
    enc = _batch(processor, helpers.frames(2), ["a", "bb"])
    assert torch.equal(enc["input_ids"], _batch(processor2, helpers.frames(2), ["a", "bb"])["input_ids"])
    with torch.no_grad():
        args = (enc["input_ids"], enc["attention_mask"])
        assert torch.equal(fresh.hidden_states(*args, pixel_values=enc["pixel_values"]),
                           loaded.hidden_states(*args, pixel_values=enc["pixel_values"]))


def test_tiny_default_policy():
    policy, processor = load_policy(None, lora=False, freeze_vision=False, dtype=torch.float32, device="cpu", seed=0)
    assert isinstance(policy, Policy)
    model, _ = build_tiny_vlm(seed=0)
    assert torch.equal(policy.lm_head_weight(), model.get_output_embeddings().weight)
    assert policy.lm_head_weight().shape == (len(processor.tokenizer), 128)
    assert all(p.requires_grad for p in policy.parameters())
    v = policy.value(torch.randn(3, 128))
    assert v.shape == (3,) and v.dtype == torch.float32


@pytest.mark.parametrize("side", ["right", "left"])
def test_hidden_states_match_hf_forward(llava_dir, helpers, side):
    policy, processor = load_policy(llava_dir)
    enc = _batch(processor, helpers.frames(2, 64, 48), ["short", "a somewhat longer task text"], side)
    with torch.no_grad():
        hidden = policy.hidden_states(enc["input_ids"], enc["attention_mask"], pixel_values=enc["pixel_values"])
    assert hidden.shape == (*enc["input_ids"].shape, 64)
    for row in range(2):
        ref_h, ref_logits, keep = _ground_truth(policy.model, enc, row)
        torch.testing.assert_close(hidden[row][keep], ref_h, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hidden[row][keep] @ policy.lm_head_weight().T, ref_logits, atol=1e-4, rtol=1e-4)


def test_lora(llava_dir, helpers):
    base, processor = load_policy(llava_dir)
    policy, _ = load_policy(llava_dir, lora=True, lora_r=8, lora_alpha=16)
    from peft import PeftModel

    assert isinstance(policy.model, PeftModel)
    names = {n for n, _ in policy.model.named_modules()}
    assert any("language_model.layers.0.self_attn.q_proj.lora_A" in n for n in names)
    assert any("multi_modal_projector.linear_1.lora_A" in n for n in names)
    assert not any("vision_tower" in n and "lora_" in n for n in names)
    assert not any("lm_head.lora_" in n for n in names)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("value_head.") for n in trainable)
    assert any(n.startswith("value_head.") for n in trainable)
    assert not policy.lm_head_weight().requires_grad
    # LoRA starts as the identity (B = 0), and gradients reach the adapters and the value head.
    enc = _batch(processor, helpers.frames(2, 28, 28), ["one", "two"])
    args = (enc["input_ids"], enc["attention_mask"])
    hidden = policy.hidden_states(*args, pixel_values=enc["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(hidden, base.hidden_states(*args, pixel_values=enc["pixel_values"]))
    loss = (hidden @ policy.lm_head_weight().T).logsumexp(-1).mean() + policy.value(hidden[:, -1]).sum()
    loss.backward()
    grads = {n for n, p in policy.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("lora_B" in n for n in grads) and any(n.startswith("value_head.") for n in grads)


def test_freeze_vision(llava_dir):
    policy, _ = load_policy(llava_dir, freeze_vision=True)
    for name, p in policy.named_parameters():
        assert p.requires_grad == ("vision_tower" not in name), name


def test_dtype(helpers):
    policy, processor = load_policy(None, dtype=torch.bfloat16)
    assert policy.lm_head_weight().dtype == torch.bfloat16
    assert next(policy.value_head.parameters()).dtype == torch.float32
    rotary = [b for n, b in policy.model.named_buffers() if n.endswith("inv_freq")]
    assert rotary and all(b.dtype == torch.float32 for b in rotary)  # as from_pretrained(dtype=bf16) keeps them
    assert policy.value(torch.randn(2, 128, dtype=torch.bfloat16)).dtype == torch.float32
    enc = _batch(processor, helpers.frames(1), ["go"])  # float32 pixels into a bf16 model
    hidden = policy.hidden_states(enc["input_ids"], enc["attention_mask"], pixel_values=enc["pixel_values"])
    assert hidden.dtype == torch.bfloat16 and torch.isfinite(hidden.float()).all()


def test_errors(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="model directory not found"):
        load_policy(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no config.json"):
        load_policy(str(tmp_path))
    text_only = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(text_only)
    with pytest.raises(ValueError, match="'llama' model, not an image-text-to-text one"):
        load_policy(str(text_only))
    model, processor = build_tiny_vlm()
    no_images = tmp_path / "no_image_processor"
    model.save_pretrained(no_images)
    processor.tokenizer.save_pretrained(no_images)
    with pytest.raises(ValueError, match="has no image processor"):
        load_policy(str(no_images))
    with pytest.raises(ValueError, match="no vision tower"):
        make_policy(LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                                 num_hidden_layers=1, num_attention_heads=2)), freeze_vision=True)


# -- Qwen2-VL: M-RoPE positions and mm_token_type_ids --------------------------------------------


def _qwen_inputs(model, grids=((4, 4), (2, 4)), text_lens=(5, 9)):
    """Two right-padded rows, each: text, <vision_start>, image tokens, <vision_end>, text."""
    cfg = model.config
    rows, pixels, thw = [], [], []
    g = torch.Generator().manual_seed(0)
    for (gh, gw), n in zip(grids, text_lens):
        image = [cfg.vision_start_token_id] + [cfg.image_token_id] * (gh * gw // 4) + [cfg.vision_end_token_id]
        rows.append([5, 6] + image + list(range(10, 10 + n)))
        pixels.append(torch.randn(gh * gw, 3 * 2 * 14 * 14, generator=g))
        thw.append([1, gh, gw])
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), 0)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return ids, mask, torch.cat(pixels), torch.tensor(thw)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_hidden_states_build_mm_token_type_ids(helpers, family):
    model = helpers.build_qwen2_vl(family=family)
    policy = make_policy(model)
    ids, mask, pv, thw = _qwen_inputs(model)
    with torch.no_grad():
        hidden = policy.hidden_states(ids, mask, pixel_values=pv, image_grid_thw=thw)  # no mm_token_type_ids
        types = (ids == model.config.image_token_id).int()
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pv, image_grid_thw=thw,
                    mm_token_type_ids=types, output_hidden_states=True)
    m = mask.bool()
    torch.testing.assert_close(hidden[m], out.hidden_states[-1][m], atol=1e-5, rtol=1e-5)
    # Row 1 alone (no padding) gives the same states: positions follow the mask.
    n = int(mask[1].sum())
    with torch.no_grad():
        alone = policy.hidden_states(ids[1:, :n], mask[1:, :n], pixel_values=pv[16:], image_grid_thw=thw[1:])
    torch.testing.assert_close(hidden[1, :n], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_lora_and_freeze(helpers, family):
    policy = make_policy(helpers.build_qwen2_vl(family=family), lora=True, lora_r=4, lora_alpha=8, freeze_vision=True)
    lora = {n for n, _ in policy.model.named_modules() if n.endswith(".lora_A")}
    assert any("language_model.layers.1.mlp.down_proj" in n for n in lora)
    assert any("visual.merger" in n for n in lora)  # Qwen2-VL's projector lives in the vision module
    assert not any("visual.blocks" in n for n in lora)
    assert not any("lm_head" in n for n in lora)
    ids, mask, pv, thw = _qwen_inputs(policy.hf_model)
    hidden = policy.hidden_states(ids, mask, pixel_values=pv, image_grid_thw=thw)
    hidden.sum().backward()
    assert any(p.grad is not None for n, p in policy.named_parameters() if "lora_B" in n)


def test_qwen2_vl_directory(qwen2_vl_dir, helpers):
    # Without torchvision, the processor is assembled with no video processor (frames are images).
    policy, processor = load_policy(qwen2_vl_dir, lora=True, lora_r=4, lora_alpha=8)
    enc = processor(images=[helpers.frames(1, 56, 56)[0]], text=[chat_prompt(processor, "hi")], return_tensors="pt")
    mm = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    assert policy.hidden_states(enc["input_ids"], enc["attention_mask"], **mm).shape[-1] == 64


def test_qwen2_vl_directory_files(qwen2_vl_dir):
    """The directory the test above loads is a well-formed Qwen2-VL checkpoint."""
    with open(f"{qwen2_vl_dir}/config.json") as f:
        assert json.load(f)["model_type"] == "qwen2_vl"
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(qwen2_vl_dir, local_files_only=True)
    policy = make_policy(model)
    tok = AutoTokenizer.from_pretrained(qwen2_vl_dir, local_files_only=True)
    assert tok.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id
    assert policy.lm_head_weight().shape[0] >= len(tok)
