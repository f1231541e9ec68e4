"""The architectures of the VLMs the papers and users train, as transformers configs (no weights):
for `fastvlmrl plan --model NAME` (memory before a download) and the GPU benchmarks (random
weights at real shapes). Each is the published checkpoint's config.json, the parts that size it."""

from __future__ import annotations

from transformers import (
    CLIPVisionConfig,
    Gemma3Config,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    MistralConfig,
    Qwen2VLConfig,
    Qwen3VLConfig,
)


def _clip_vit_l_336() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=336, patch_size=14, projection_dim=768)


def llava_15_7b() -> LlavaConfig:
    """llava-hf/llava-1.5-7b-hf (CLIP ViT-L/14-336 + Vicuna-7B): RL4VLM's LLaVA-1.5."""
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlavaConfig(vision_config=_clip_vit_l_336(), text_config=text, image_token_id=32000, vision_feature_layer=-2)


def llava_16_mistral_7b() -> LlavaNextConfig:
    """llava-hf/llava-v1.6-mistral-7b-hf (CLIP ViT-L/14-336, AnyRes tiles + Mistral-7B): RL4VLM's
    and GTR's base model."""
    text = MistralConfig(vocab_size=32064, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                         sliding_window=None, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlavaNextConfig(vision_config=_clip_vit_l_336(), text_config=text, image_token_id=32000,
                           vision_feature_layer=-2, vision_feature_select_strategy="default",
                           image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])


def _qwen2_vl(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int,
              tie: bool) -> Qwen2VLConfig:
    return Qwen2VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                         bos_token_id=151643, eos_token_id=151645, pad_token_id=151643),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=hidden, num_heads=16, mlp_ratio=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=tie,
    )


def qwen2_vl_2b() -> Qwen2VLConfig:
    """Qwen/Qwen2-VL-2B-Instruct."""
    return _qwen2_vl(1536, 8960, 28, 12, 2, 151936, tie=True)


def qwen2_vl_7b() -> Qwen2VLConfig:
    """Qwen/Qwen2-VL-7B-Instruct."""
    return _qwen2_vl(3584, 18944, 28, 28, 4, 152064, tie=False)


def qwen3_vl_2b() -> Qwen3VLConfig:
    """Qwen/Qwen3-VL-2B-Instruct: 16 px patches, DeepStack from vision layers 5, 11, 17."""
    return Qwen3VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                          "mrope_interleaved": True},
                         bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, tie_word_embeddings=True),
        vision_config=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                           deepstack_visual_indexes=[5, 11, 17]),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=True,
    )


def gemma3_4b() -> Gemma3Config:
    """google/gemma-3-4b-it: SigLIP-so400m at 896 px pooled to 256 tokens; 5 of every 6 layers
    attend in a 1024-token window."""
    return Gemma3Config(
        text_config=dict(vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                         sliding_window=1024, sliding_window_pattern=6, max_position_embeddings=131072,
                         rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
                         bos_token_id=2, eos_token_id=1, pad_token_id=0),
        vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                           image_size=896, patch_size=14, vision_use_head=False),
        mm_tokens_per_image=256, image_token_id=262144, boi_token_id=255999, eoi_token_id=256000,
    )


ARCHITECTURES = {
    "llava-1.5-7b": llava_15_7b,
    "llava-1.6-mistral-7b": llava_16_mistral_7b,
    "qwen2-vl-2b": qwen2_vl_2b,
    "qwen2-vl-7b": qwen2_vl_7b,
    "qwen3-vl-2b": qwen3_vl_2b,
    "gemma-3-4b": gemma3_4b,
}


def architecture(name: str):
    """The named architecture's config; ValueError naming the known ones."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}: choose one of {', '.join(ARCHITECTURES)} "
                         "(or give model.path=DIR of a local model)")
    return ARCHITECTURES[name]()
