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
- ``qwen3_vl_dir``: the same for a tiny Qwen3-VL (patch 16, DeepStack into decoder layers 0, 1).
- ``llava_onevision_dir``: a tiny LLaVA-OneVision (AnyRes tiles pooled to anyres_max_9) with
  its image processor, Qwen's tokens and template (file by file, as above: a video processor).
- ``internvl_dir``: a tiny transformers-native InternVL (56 px tiles + thumbnail, pixel shuffle)
  with GOT-OCR2's image processor and InternVL's image tokens (file by file, as above).
- ``idefics3_dir`` / ``smolvlm_dir``: tiny Idefics3 / SmolVLM (32 px tiles + the global image,
  pixel shuffle) with their PIL image processors and Idefics' tokens (file by file, as above).
- ``gemma3_dir``: a tiny Gemma 3 (SigLIP 56 px pooled to 4 tokens, sliding and full layers) with
  its own ``Gemma3Processor`` (PIL image processor, byte-level tokenizer with Gemma's specials).
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
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
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


def build_qwen3_vl(seed: int = 0):
    """A tiny random Qwen3-VL with Qwen2-VL's token ids (vocabulary 264, ``qwen_tokenizer``)."""
    torch.manual_seed(seed)
    cfg = Qwen3VLConfig(
        text_config=dict(
            vocab_size=264, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512, bos_token_id=256, eos_token_id=258,
            pad_token_id=257,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                             "mrope_interleaved": True},
        ),
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                           deepstack_visual_indexes=[0, 1]),
        image_token_id=261, video_token_id=262, vision_start_token_id=259, vision_end_token_id=260,
    )
    return Qwen3VLForConditionalGeneration(cfg).eval()


def build_llava_onevision(seed: int = 0):
    """A tiny random LLaVA-OneVision (SigLIP 28 px tiles, AnyRes grid up to 56x56, Qwen2 text) with
    Qwen's token ids (vocabulary 264, ``qwen_tokenizer``); ``<|image_pad|>`` is its image token."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    cfg = LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", vocab_size=264, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=256, eos_token_id=258, pad_token_id=257),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14),
        image_token_id=261, video_token_id=262, image_grid_pinpoints=ONEVISION_PINPOINTS, vision_feature_layer=-1,
    )
    return LlavaOnevisionForConditionalGeneration(cfg).eval()


def internvl_tokenizer():
    """Byte-level BPE + the named image tokens InternVL's processor reads (``<img>`` 256,
    ``</img>`` 257, ``<IMG_CONTEXT>`` 258, ``<video>`` 259) and ChatML's (260..262)."""
    tok = byte_tokenizer(["<|im_start|>", "<|im_end|>", "<|endoftext|>"], start_image_token="<img>",
                         end_image_token="</img>", context_image_token="<IMG_CONTEXT>", video_token="<video>")
    tok.pad_token, tok.eos_token = "<|endoftext|>", "<|im_end|>"
    return tok


def build_internvl(seed: int = 0):
    """A tiny random InternVL: 56 px tiles (4x4 patches pixel-shuffled to 4 tokens), Qwen2 text,
    ``internvl_tokenizer``'s ids (vocabulary 264)."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    torch.manual_seed(seed)
    cfg = InternVLConfig(
        text_config=dict(model_type="qwen2", vocab_size=264, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, eos_token_id=261, pad_token_id=262),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=56, patch_size=14),
        image_token_id=258, image_seq_length=4, downsample_ratio=0.5, vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return InternVLForConditionalGeneration(cfg).eval()


INTERNVL_TEMPLATE = QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n")
IDEFICS_TEMPLATE = (  # SmolVLM's: "User:<image>text<end_of_utterance>" turns, then "Assistant:"
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:"
    "{% if m['content'] is string %} {{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<image>{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def idefics_tokenizer():
    """Byte-level BPE + the tokens Idefics3's and SmolVLM's processors read (image 256, fake
    token around image 257, global image 258, end of utterance 259, video 260), ChatML's start,
    pad, and the tile grid's row/col markers (one token each)."""
    rows_cols = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tok = byte_tokenizer(["<|im_start|>", "<|endoftext|>", *rows_cols], image_token="<image>",
                         fake_image_token="<fake_token_around_image>", global_image_token="<global-img>",
                         end_of_utterance_token="<end_of_utterance>", video_token="<video>")
    tok.bos_token, tok.eos_token, tok.pad_token = "<|im_start|>", "<end_of_utterance>", "<|endoftext|>"
    return tok


def build_idefics3(seed: int = 0, family: str = "idefics3"):
    """A tiny random Idefics3 (or SmolVLM): 32 px tiles of 8 px patches, pixel-shuffled by 2 to 4
    tokens per tile, Llama text, ``idefics_tokenizer``'s ids (vocabulary 299)."""
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, SmolVLMConfig,
                              SmolVLMForConditionalGeneration)

    tok = idefics_tokenizer()
    config_cls, model_cls = ((Idefics3Config, Idefics3ForConditionalGeneration) if family == "idefics3"
                             else (SmolVLMConfig, SmolVLMForConditionalGeneration))
    torch.manual_seed(seed)
    cfg = config_cls(
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        scale_factor=2, image_token_id=tok.image_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    return model_cls(cfg).eval(), tok


ONEVISION_PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]
ONEVISION_TEMPLATE = QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<|image_pad|>")
GEMMA_IMAGE_TOKENS = 4
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<start_of_image>{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def byte_tokenizer(specials: list[str], **named: str):
    """Byte-level BPE over the 256 byte symbols (no merges) + ``specials`` (ids from 256 on, the
    ``named`` ones first: e.g. ``boi_token="<start_of_image>"``, saved with the tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **({"extra_special_tokens": named} if named else {}))
    tok.add_special_tokens({"additional_special_tokens": specials})
    return tok


def qwen_tokenizer():
    """Byte-level BPE + Qwen's special tokens (ids 256..262)."""
    tok = byte_tokenizer(QWEN_SPECIALS)
    tok.pad_token, tok.eos_token = "<|im_end|>", "<|im_end|>"
    return tok


def build_gemma3(seed: int = 0):
    """A tiny random Gemma 3 and its processor: token ids 256..258 are the image's begin, end and
    soft tokens, 259..263 pad, eos, bos and the turn markers (vocabulary 264)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    tok = byte_tokenizer(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
                         boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token="<image_soft_token>")
    tok.pad_token, tok.eos_token, tok.bos_token = "<pad>", "<end_of_turn>", "<bos>"
    ids = tok.convert_tokens_to_ids
    torch.manual_seed(seed)
    cfg = Gemma3Config(
        text_config=dict(
            vocab_size=264, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=512,
            sliding_window=256, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            bos_token_id=ids("<bos>"), eos_token_id=ids("<end_of_turn>"), pad_token_id=ids("<pad>"),
        ),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=56, patch_size=14, vision_use_head=False),
        mm_tokens_per_image=GEMMA_IMAGE_TOKENS, image_token_id=tok.image_token_id, boi_token_id=tok.boi_token_id,
        eoi_token_id=tok.eoi_token_id,
    )
    model = Gemma3ForConditionalGeneration(cfg).eval()
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 56, "width": 56}),
                                tokenizer=tok, chat_template=GEMMA_TEMPLATE, image_seq_length=GEMMA_IMAGE_TOKENS)
    return model, processor


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
def qwen3_vl_dir(tmp_path_factory):
    """As ``qwen2_vl_dir``: Qwen3-VL's image processor is Qwen2-VL's with 16 px patches."""
    from transformers import Qwen2VLImageProcessorPil

    path = tmp_path_factory.mktemp("qwen3_vl")
    build_qwen3_vl().save_pretrained(path)
    qwen_tokenizer().save_pretrained(path)
    Qwen2VLImageProcessorPil(patch_size=16, min_pixels=64 * 64, max_pixels=128 * 128).save_pretrained(path)
    (path / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen3VLProcessor"}))
    (path / "chat_template.jinja").write_text(QWEN_TEMPLATE)
    return str(path)


@pytest.fixture(scope="session")
def llava_onevision_dir(tmp_path_factory):
    """Written file by file: its processor has a video processor (torchvision) too."""
    from transformers import LlavaOnevisionImageProcessorPil

    path = tmp_path_factory.mktemp("llava_onevision")
    build_llava_onevision().save_pretrained(path)
    tok = qwen_tokenizer()
    tok.save_pretrained(path)
    LlavaOnevisionImageProcessorPil(size={"height": 28, "width": 28},
                                    image_grid_pinpoints=ONEVISION_PINPOINTS).save_pretrained(path)
    (path / "processor_config.json").write_text(json.dumps({
        "processor_class": "LlavaOnevisionProcessor", "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
        "num_image_tokens": 4, "vision_feature_select_strategy": "full", "vision_aspect_ratio": "anyres_max_9",
    }))
    (path / "chat_template.jinja").write_text(ONEVISION_TEMPLATE)
    return str(path)


@pytest.fixture(scope="session")
def internvl_dir(tmp_path_factory):
    """Written file by file (its processor has a video processor); tiles of 56 px, at most 4 and
    a thumbnail."""
    from transformers import GotOcr2ImageProcessorPil

    path = tmp_path_factory.mktemp("internvl")
    build_internvl().save_pretrained(path)
    internvl_tokenizer().save_pretrained(path)
    GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=True, min_patches=1,
                             max_patches=4).save_pretrained(path)
    (path / "processor_config.json").write_text(json.dumps({"processor_class": "InternVLProcessor",
                                                            "image_seq_length": 4}))
    (path / "chat_template.jinja").write_text(INTERNVL_TEMPLATE)
    return str(path)


def _idefics_dir(tmp_path_factory, family: str):
    """Written file by file (SmolVLM's processor has a video processor); a frame is resized to a
    64 px longest edge and split into 32 px tiles plus the global image."""
    from transformers import Idefics3ImageProcessorPil, SmolVLMImageProcessorPil

    path = tmp_path_factory.mktemp(family)
    model, tok = build_idefics3(family=family)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    image_processor = Idefics3ImageProcessorPil if family == "idefics3" else SmolVLMImageProcessorPil
    image_processor(do_image_splitting=True, size={"longest_edge": 64},
                    max_image_size={"longest_edge": 32}).save_pretrained(path)
    name = "Idefics3Processor" if family == "idefics3" else "SmolVLMProcessor"
    (path / "processor_config.json").write_text(json.dumps({"processor_class": name, "image_seq_len": 4}))
    (path / "chat_template.jinja").write_text(IDEFICS_TEMPLATE)
    return str(path)


@pytest.fixture(scope="session")
def idefics3_dir(tmp_path_factory):
    return _idefics_dir(tmp_path_factory, "idefics3")


@pytest.fixture(scope="session")
def smolvlm_dir(tmp_path_factory):
    return _idefics_dir(tmp_path_factory, "smolvlm")


@pytest.fixture(scope="session")
def gemma3_dir(tmp_path_factory):
    model, processor = build_gemma3()
    path = tmp_path_factory.mktemp("gemma3")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def helpers():
    """The builders above, for test modules (imported by importlib, they cannot import conftest)."""

    class _Helpers:
        frames = staticmethod(frames)
        build_llava = staticmethod(build_llava)
        build_qwen2_vl = staticmethod(build_qwen2_vl)
        build_qwen3_vl = staticmethod(build_qwen3_vl)
        build_llava_onevision = staticmethod(build_llava_onevision)
        build_internvl = staticmethod(build_internvl)
        build_gemma3 = staticmethod(build_gemma3)
        qwen_tokenizer = staticmethod(qwen_tokenizer)

    return _Helpers
