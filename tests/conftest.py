"""Small checkpoints for the model and trainer tests, saved to temporary directories (nothing
downloaded).

- ``tiny_dir``: the built-in tiny VLM (LLaVA + character tokenizer) saved with ``save_pretrained``.
- ``llava_dir``: a LLaVA-1.5-shaped checkpoint (CLIP 28px tower + Llama, the engine tests' sizes)
  with a CLIP image processor and the character tokenizer.
- ``qwen2_vl_model`` / ``qwen2_vl_dir``: a tiny random Qwen2-VL (M-RoPE, patch merger) and its
  directory with a Qwen2-VL image processor, a byte-level BPE tokenizer that knows the vision
  tokens, and a chat template. It is written file by file because a ``Qwen2VLProcessor`` cannot
  be constructed without torchvision (its video processor); ``load_processor`` assembles an
  image-only one there.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import settings
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from fastvlmrl.models import CharTokenizer, TinyVLMConfig, build_tiny_vlm, clip_image_processor
from fastvlmrl.models.char_tokenizer import CHAT_TEMPLATE

# Property tests (hypothesis) draw the same examples every run, so the suite never passes or
# fails by chance; HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

QWEN_SPECIALS = [  # ids 256..262 after the 256 byte symbols
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def frames(n: int, h: int = 300, w: int = 300, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def build_llava(seed: int = 0) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    tok = CharTokenizer()
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
            patch_size=14,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        ),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    processor = LlavaProcessor(
        image_processor=clip_image_processor(28, invert=False),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def build_qwen2_vl(seed: int = 0, family: str = "qwen2_vl"):
    """A tiny random Qwen2-VL (or Qwen2.5-VL with ``family="qwen2_5_vl"``): vocabulary 264 (256
    byte symbols + Qwen's special tokens at 256..262, see ``qwen_tokenizer``)."""
    text = dict(
        vocab_size=264, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=256, eos_token_id=258, pad_token_id=257,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    tokens = dict(image_token_id=261, video_token_id=262, vision_start_token_id=259, vision_end_token_id=260)
    torch.manual_seed(seed)
    if family == "qwen2_5_vl":
        cfg = Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[1],
                               window_size=56),
            **tokens,
        )
        return Qwen2_5_VLForConditionalGeneration(cfg).eval()
    cfg = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        **tokens,
    )
    return Qwen2VLForConditionalGeneration(cfg).eval()


def qwen_tokenizer():
    """Byte-level BPE over the 256 byte symbols (no merges) + Qwen's special tokens (ids 256..262)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    tok.pad_token, tok.eos_token = "<|im_end|>", "<|im_end|>"
    return tok


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    model, processor = build_tiny_vlm(TinyVLMConfig(), seed=0)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory):
    model, processor = build_llava()
    path = tmp_path_factory.mktemp("llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def qwen2_vl_dir(tmp_path_factory):
    """Written file by file: without torchvision a Qwen2VLProcessor cannot be built to save itself."""
    from transformers import Qwen2VLImageProcessorPil

    path = tmp_path_factory.mktemp("qwen2_vl")
    build_qwen2_vl().save_pretrained(path)
    qwen_tokenizer().save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(path)
    (path / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}))
    (path / "chat_template.jinja").write_text(QWEN_TEMPLATE)
    return str(path)


@pytest.fixture(scope="session")
def helpers():
    """The builders above, for test modules (imported by importlib, they cannot import conftest)."""

    class _Helpers:
        frames = staticmethod(frames)
        build_llava = staticmethod(build_llava)
        build_qwen2_vl = staticmethod(build_qwen2_vl)
        qwen_tokenizer = staticmethod(qwen_tokenizer)

    return _Helpers
