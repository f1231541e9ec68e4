import pytest
import torch
from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration, LlavaProcessor

from fastvlmrl.envs.prompts import task_prompt
from fastvlmrl.models import TinyVLMConfig, build_tiny_vlm, chat_prompt, frames_to_pixel_values, load_processor


def test_sizes_and_processor_call(helpers):
    model, processor = build_tiny_vlm(TinyVLMConfig(), seed=0)
    assert isinstance(model, LlavaForConditionalGeneration) and isinstance(processor, LlavaProcessor)
    assert 1.0e6 < sum(p.numel() for p in model.parameters()) < 1.2e6  # the note's ~1.09M
    assert model.config.get_text_config().vocab_size == len(processor.tokenizer)
    prompt = chat_prompt(processor, task_prompt("NumberLine", {"Target": 3, "Current": 5}))
    assert prompt.startswith("USER: <image>\nYou are playing") and prompt.endswith("\nASSISTANT: ")
    frame = helpers.frames(1)[0]
    enc = processor(images=[frame], text=[prompt], return_tensors="pt")
    assert enc["pixel_values"].shape == (1, 3, 112, 112)
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == TinyVLMConfig().num_image_tokens == 49
    assert enc["input_ids"].shape[1] == 1 + len(prompt) - len("<image>") + 49
    torch.testing.assert_close(
        frames_to_pixel_values(frame[None], processor.image_processor), enc["pixel_values"], atol=1 / 255 + 1e-6, rtol=0
    )
    out = model(**enc)
    assert out.logits.shape == (1, enc["input_ids"].shape[1], len(processor.tokenizer))


def test_seed_determines_weights_and_leaves_global_rng():
    state = torch.random.get_rng_state()
    a, _ = build_tiny_vlm(seed=0)
    b, _ = build_tiny_vlm(seed=0)
    c, _ = build_tiny_vlm(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.mark.parametrize("std", [0.02, 0.1])
def test_init_std_sets_the_random_weights_scale(std):
    # the default 0.1 (not Hugging Face's 0.02) is what let the vision path learn to read the frames
    model, _ = build_tiny_vlm(TinyVLMConfig(init_std=std), seed=0)
    scaled = {
        "embed_tokens": model.get_input_embeddings().weight,
        "lm_head": model.lm_head.weight,
        "q_proj": model.model.language_model.layers[0].self_attn.q_proj.weight,
        "mlp": model.model.language_model.layers[1].mlp.down_proj.weight,
        "projector": model.model.multi_modal_projector.linear_1.weight,
        "patch_embedding": model.model.vision_tower.embeddings.patch_embedding.weight,
    }
    for name, weight in scaled.items():
        assert abs(weight.std().item() - std) < 0.1 * std, name
    assert TinyVLMConfig().init_std == 0.1


def test_save_load_round_trip(tiny_dir, helpers):
    model, processor = build_tiny_vlm(seed=0)
    model2 = AutoModelForImageTextToText.from_pretrained(tiny_dir, local_files_only=True).eval()
    processor2 = load_processor(tiny_dir)
    assert type(processor2.tokenizer) is type(processor.tokenizer)
    prompt = chat_prompt(processor, "Go.")
    assert chat_prompt(processor2, "Go.") == prompt
    frame = helpers.frames(1, 240, 320)[0]
    enc, enc2 = (p(images=[frame], text=[prompt], return_tensors="pt") for p in (processor, processor2))
    assert enc.keys() == enc2.keys() and all(torch.equal(enc[k], enc2[k]) for k in enc)
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, model2(**enc2).logits)


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        TinyVLMConfig(image_size=100)
    with pytest.raises(ValueError, match="number of heads"):
        TinyVLMConfig(hidden_size=130)
    with pytest.raises(ValueError, match="init_std"):
        TinyVLMConfig(init_std=0.0)
