"""Loading a model directory's processor, and the prompt text generation starts from."""

from __future__ import annotations

import json
import os
from typing import Any

import transformers
from transformers import AutoImageProcessor, AutoProcessor
from transformers.utils import is_torchvision_available

from fastvlmrl.models.char_tokenizer import CharTokenizer


def load_processor(path: str) -> Any:
    """The processor saved in ``path`` (local files only).

    ``AutoProcessor`` for Hugging Face checkpoints; a directory whose tokenizer is fastvlmrl's
    :class:`CharTokenizer` (the tiny VLM) is assembled here, because ``AutoTokenizer`` resolves
    tokenizers by model type and would not find it. Raises ValueError when the directory has no
    processor or no image processor.
    """
    if not _has_image_processor(path):
        raise ValueError(
            f"{path} has no image processor (no preprocessor_config.json, no 'image_processor' in "
            "processor_config.json): save the model's processor into it (processor.save_pretrained)"
        )
    tok_cfg = _read_json(os.path.join(path, "tokenizer_config.json"))
    try:
        if tok_cfg.get("tokenizer_class") == CharTokenizer.__name__:
            processor = _char_processor(path)
        else:
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, ImportError) as e:
        hint = " (pip install torchvision)" if "torchvision" in str(e).lower() else ""
        raise ValueError(f"cannot load the processor in {path}: {_first_sentence(e)}{hint}") from e
    if getattr(processor, "image_processor", None) is None:
        raise ValueError(
            f"{path} has no image processor (got {type(processor).__name__}); a VLM directory needs "
            "processor_config.json or preprocessor_config.json with the image settings"
        )
    return processor


def chat_prompt(processor: Any, task_text: str) -> str:
    """The full prompt text for one frame and one task: the model's chat template applied to a user
    turn of (image, ``task_text``), with the generation prompt (the assistant's turn is next)."""
    if not getattr(processor, "chat_template", None):
        raise ValueError(f"{type(processor).__name__} has no chat template; cannot build the prompt")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": task_text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _char_processor(path: str) -> Any:
    proc_cfg = _read_json(os.path.join(path, "processor_config.json"))
    name = proc_cfg.get("processor_class", "LlavaProcessor")
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(f"unknown processor class {name!r} in {path}/processor_config.json")
    backend = "torchvision" if is_torchvision_available() else "pil"  # pil: no fallback warning
    parts = {
        "image_processor": lambda: AutoImageProcessor.from_pretrained(path, local_files_only=True, backend=backend),
        "tokenizer": lambda: CharTokenizer.from_pretrained(path),
    }
    missing = [a for a in cls.get_attributes() if a not in parts]
    if missing:
        raise ValueError(f"{name} with a CharTokenizer: cannot build its {missing}")
    args = [parts[a]() for a in cls.get_attributes()]
    processor_dict, kwargs = cls.get_processor_dict(path, local_files_only=True)
    return cls.from_args_and_dict(args, processor_dict, **kwargs)


def _has_image_processor(path: str) -> bool:
    if os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        return True
    return "image_processor" in _read_json(os.path.join(path, "processor_config.json"))


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _first_sentence(e: BaseException) -> str:
    """Transformers' errors run to paragraphs: keep the first sentence, on one line."""
    text = " ".join(str(e).split())
    end = text.find(". ")
    return f"{type(e).__name__}: {text if end < 0 else text[: end + 1]}"
