"""Policies: Hugging Face VLMs plus a value head, the built-in tiny VLM, batched image preprocessing."""

from fastvlmrl.models.char_tokenizer import CharTokenizer
from fastvlmrl.models.policy import Policy, ValueHead, load_policy, make_policy
from fastvlmrl.models.preprocess import clip_image_processor, frames_to_pixel_values
from fastvlmrl.models.processor import chat_prompt, load_processor
from fastvlmrl.models.tiny import TinyVLMConfig, build_tiny_processor, build_tiny_vlm

__all__ = [
    "CharTokenizer",
    "Policy",
    "TinyVLMConfig",
    "ValueHead",
    "build_tiny_processor",
    "build_tiny_vlm",
    "chat_prompt",
    "clip_image_processor",
    "frames_to_pixel_values",
    "load_policy",
    "load_processor",
    "make_policy",
]
