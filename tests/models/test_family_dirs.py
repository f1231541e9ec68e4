"""The newer families from saved directories, with their own processors and chat templates, as a
user's checkpoint would be: the engine's greedy output equals ``generate``, and the trainer's padded
forward reproduces what the engine sampled (log-probs and the value head's input), with LoRA on the
language model and a frozen vision tower."""

from __future__ import annotations

import pytest
import torch

from fastvlmrl.engine import Engine, SamplingParams
from fastvlmrl.models import chat_prompt, load_policy

DIRS = ["qwen3_vl_dir", "gemma3_dir", "llava_onevision_dir", "internvl_dir", "idefics3_dir", "smolvlm_dir"]
TASKS = ["hi", "a longer task: reach the target number", "go"]


def frames(helpers, n):
    return list(helpers.frames(n, 96, 128))


def encode(processor, frame, prompt):
    return processor(images=[frame], text=[prompt], return_tensors="pt")


@pytest.mark.parametrize("dir_fixture", DIRS)
def test_greedy_matches_generate_with_the_model_processor(dir_fixture, request, helpers):
    policy, processor = load_policy(request.getfixturevalue(dir_fixture))
    images = frames(helpers, 3)
    prompts = [chat_prompt(processor, t) for t in TASKS]
    engine = Engine(policy.model, processor, block_size=8, num_blocks=128)
    outs = engine.generate(images, prompts, SamplingParams(temperature=0, max_new_tokens=8))
    for image, prompt, out in zip(images, prompts, outs):
        assert out.error is None
        enc = encode(processor, image, prompt)
        assert out.prompt_token_ids == enc["input_ids"][0].tolist()
        with torch.no_grad():
            want = policy.model.generate(**enc, max_new_tokens=8, do_sample=False)[0, enc["input_ids"].shape[1]:]
        assert out.token_ids == want.tolist()


@pytest.mark.parametrize("dir_fixture", DIRS)
def test_training_forward_reproduces_the_rollout(dir_fixture, request, helpers):
    policy, processor = load_policy(request.getfixturevalue(dir_fixture), lora=True, lora_r=4, lora_alpha=8,
                                    freeze_vision=True)
    with torch.no_grad():  # LoRA B starts at zero: make the adapters change the output
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    images = frames(helpers, 3)
    prompts = [chat_prompt(processor, t) for t in TASKS]
    engine = Engine(policy.model, processor, block_size=8, num_blocks=128)
    outs = engine.generate(images, prompts, SamplingParams(temperature=1.0, max_new_tokens=8, seed=2))
    # The trainer's forward: prompt + sampled ids right-padded, every prompt's image tensors.
    rows = [o.prompt_token_ids + o.token_ids for o in outs]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    encs = [encode(processor, im, p) for im, p in zip(images, prompts)]
    mm = {k: torch.cat([e[k] for e in encs]) for k in encs[0] if k in ("pixel_values", "image_grid_thw", "image_sizes", "pixel_attention_mask")}
    policy.eval()  # the rollout's policy: LoRA dropout off
    with torch.no_grad():
        hidden = policy.hidden_states(ids, mask, **mm)
        logp = (hidden @ policy.lm_head_weight().T).log_softmax(-1)
    for i, out in enumerate(outs):
        n = len(out.prompt_token_ids)
        got = logp[i, n - 1 : len(rows[i]) - 1].gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(got, torch.tensor(out.logprobs), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.hidden_state, hidden[i, n - 1], atol=1e-5, rtol=1e-5)
    # LoRA sits on the language model only; the vision tower gets no gradient.
    hidden = policy.hidden_states(ids, mask, **mm)
    (hidden.sum() + policy.value(hidden[:, 0]).sum()).backward()
    trained = {n for n, p in policy.named_parameters() if p.grad is not None}
    assert any(("language_model" in n or "text_model" in n) and "lora_B" in n for n in trained)
    assert not any(("vision_tower" in n or "visual.blocks" in n or "vision_model" in n) for n in trained)
    assert any(n.startswith("value_head") for n in trained)


def test_smolvlm_processor_without_torchvision_or_num2words(smolvlm_dir, monkeypatch, helpers):
    """Without torchvision SmolVLM's processor is assembled image-only (its constructor takes the
    video processor with no default, and its chat template reads the video settings); without
    num2words, which it requires, loading is one line that names the package."""
    import transformers.models.smolvlm.processing_smolvlm as smolvlm

    from fastvlmrl.models.processor import load_processor

    processor = load_processor(smolvlm_dir)
    assert type(processor).__name__ == "SmolVLMProcessor" and processor.image_seq_len == 4
    prompt = chat_prompt(processor, "hi")
    assert prompt.count("<image>") == 1
    enc = processor(images=[helpers.frames(1, 96, 128)[0]], text=[prompt], return_tensors="pt")
    assert int((enc["input_ids"] == processor.tokenizer.image_token_id).sum()) == 4 * enc["pixel_values"].shape[1]
    with pytest.raises(ValueError, match="video"):
        processor.video_processor()

    monkeypatch.setattr(smolvlm, "num2words", None)
    with pytest.raises(ValueError, match=r"cannot load the processor in .*num2words.*\(pip install num2words\)$"):
        load_processor(smolvlm_dir)


@pytest.mark.parametrize("config_name", ["Mistral3Config", "Llama4Config", "PaliGemmaConfig"])
def test_an_unsupported_family_is_one_line_before_anything_loads(config_name, tmp_path, capsys):
    """Only config.json in the directory: the refusal comes before the processor and the weights."""
    import transformers

    from fastvlmrl.cli import main

    config = getattr(transformers, config_name)()
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=rf"does not support model_type '{config.model_type}' yet \(supported: "):
        load_policy(str(tmp_path))
    assert main(["train", f"model.path={tmp_path}", f"run.out_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"model_type '{config.model_type}'" in err[0] and "gemma3" in err[0]
    assert not (tmp_path / "runs").exists()


def test_a_processor_that_needs_torchvision_says_so(tmp_path, helpers):
    import json

    from transformers.utils import is_torchvision_available

    from fastvlmrl.models.processor import load_processor

    if is_torchvision_available():
        pytest.skip("torchvision is installed here")
    helpers.qwen_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "Llama4ImageProcessorFast",
                                                                  "processor_class": "Llama4Processor"}))
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "Llama4Processor"}))
    with pytest.raises(ValueError, match=r"^cannot load the processor in .*Llama4ImageProcessor requires the "
                                         r"Torchvision library.*\(pip install torchvision\)$"):
        load_processor(str(tmp_path))


def test_onevision_requests_with_several_images(llava_onevision_dir, helpers):
    """The engine hands the processor each request's images as a flat list (counts of ones)."""
    policy, processor = load_policy(llava_onevision_dir)
    frames_ = list(helpers.frames(3, 96, 128))
    two = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "then"}, {"type": "image"}]}]
    prompts = [processor.apply_chat_template(two, add_generation_prompt=True, tokenize=False),
               chat_prompt(processor, "one")]
    images = [frames_[:2], frames_[2]]
    outs = Engine(policy.model, processor, block_size=8, num_blocks=256).generate(
        images, prompts, SamplingParams(temperature=1.0, max_new_tokens=6, seed=1))
    for image, prompt, out in zip(images, prompts, outs):
        assert out.error is None
        enc = processor(images=image if isinstance(image, list) else [image], text=[prompt], return_tensors="pt")
        ids = torch.cat([enc["input_ids"], torch.tensor([out.token_ids])], dim=1)
        mm = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        with torch.no_grad():
            logp = policy.model(input_ids=ids, **mm).logits[0].log_softmax(-1)
        n = enc["input_ids"].shape[1]
        want = logp[n - 1 : -1].gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(out.logprobs), want, atol=1e-5, rtol=1e-5)


def test_the_training_batch_pads_different_tile_counts(idefics3_dir, helpers):
    """Frames split into different numbers of tiles pack into one batch (zero tiles, dropped by the
    model) and give each sample's own states."""
    from fastvlmrl.rl.batch import pack
    from fastvlmrl.rl.storage import Transition

    policy, processor = load_policy(idefics3_dir)
    policy.eval()
    transitions = []
    for hw in [(32, 128), (96, 128)]:
        enc = encode(processor, helpers.frames(1, *hw)[0], chat_prompt(processor, "hi"))
        mm = {k: enc[k] for k in ("pixel_values", "pixel_attention_mask")}
        transitions.append(Transition(enc["input_ids"][0], mm, torch.tensor([65, 66]), torch.zeros(2),
                                      torch.zeros(2, dtype=torch.bool), 0.0))
    assert transitions[0].mm["pixel_values"].shape[1] != transitions[1].mm["pixel_values"].shape[1]
    batch = pack(transitions, processor.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        together = policy.hidden_states(batch.input_ids, batch.attention_mask, **batch.mm)
        for i, t in enumerate(transitions):
            alone = pack([t], processor.tokenizer.pad_token_id, "cpu")
            h = policy.hidden_states(alone.input_ids, alone.attention_mask, **alone.mm)[0]
            torch.testing.assert_close(together[i, : h.shape[0]], h, atol=1e-5, rtol=1e-5)


def test_a_config_without_a_model_type_is_one_line(tmp_path):
    from fastvlmrl.config import load_config
    from fastvlmrl.config_io import ConfigError

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="config.json names no model_type"):
        load_config(None, [f"model.path={tmp_path}"])
