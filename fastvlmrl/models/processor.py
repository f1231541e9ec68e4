"""Loading a model directory's processor, and the prompt text generation starts from."""

from __future__ import annotations

import inspect
import json
import os
from typing import Any

import transformers
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
from transformers.utils import is_torchvision_available

from fastvlmrl.models.char_tokenizer import CharTokenizer


def load_processor(path: str) -> Any:
    """The processor saved in ``path`` (local files only).

    ``AutoProcessor`` for Hugging Face checkpoints; a directory whose tokenizer is fastvlmrl's
    :class:`CharTokenizer` (the tiny VLM) is assembled here, because ``AutoTokenizer`` resolves
    tokenizers by model type and would not find it. Raises ValueError when the directory has no
    processor or no image processor.
    """
    if not has_image_processor(path):
        raise ValueError(
            f"{path} has no image processor (no preprocessor_config.json, no 'image_processor' in "
            "processor_config.json): save the model's processor into it (processor.save_pretrained)"
        )
    tok_cfg = _read_json(os.path.join(path, "tokenizer_config.json"))
    try:
        if tok_cfg.get("tokenizer_class") == CharTokenizer.__name__:
            processor = _assembled_processor(path, lambda: CharTokenizer.from_pretrained(path))
        elif not is_torchvision_available() and _needs_video_processor(path):
            processor = _assembled_processor(path, lambda: AutoTokenizer.from_pretrained(path, local_files_only=True))
        else:
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, ImportError, TypeError) as e:
        text = str(e).lower()
        hint = next((f" (pip install {pkg})" for pkg in ("torchvision", "num2words") if pkg in text), "")
        raise ValueError(f"cannot load the processor in {path}: {_first_sentence(e)}{hint}") from e
    if getattr(processor, "image_processor", None) is None:
        raise ValueError(
            f"{path} has no image processor (got {type(processor).__name__}); a VLM directory needs "
            "processor_config.json or preprocessor_config.json with the image settings"
        )
    return processor


def chat_prompt(processor: Any, task_text: str, *, image: bool = True) -> str:
    """The full prompt text for one frame and one task: the model's chat template applied to a user
    turn of (image, ``task_text``), with the generation prompt (the assistant's turn is next);
    ``image=False``: a text-only turn (ALFWorld's text game)."""
    if not getattr(processor, "chat_template", None):
        raise ValueError(f"{type(processor).__name__} has no chat template; cannot build the prompt")
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": task_text}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _processor_class(path: str) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        found = _read_json(os.path.join(path, name)).get("processor_class")
        if found:
            return found
    return None


def _needs_video_processor(path: str) -> bool:
    """Whether the directory's processor class has a video processor (in transformers 5 those need
    torchvision: Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT-Video, ...)."""
    cls = getattr(transformers, _processor_class(path) or "", None)
    return cls is not None and "video_processor" in cls.get_attributes()


def _assembled_processor(path: str, load_tokenizer) -> Any:
    """The directory's processor built from its parts: for a tokenizer AutoTokenizer cannot
    resolve (the tiny VLM's CharTokenizer), and for image-only use where the processor's video
    processor would need torchvision (that part is left out: ``processor(videos=...)`` is not
    available, images work, and ``save_pretrained`` writes a directory ``AutoProcessor`` loads)."""
    name = _processor_class(path) or "LlavaProcessor"
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(f"unknown processor class {name!r} in {path}/processor_config.json")
    backend = "torchvision" if is_torchvision_available() else "pil"  # pil: no fallback warning
    parts = {
        "image_processor": lambda: AutoImageProcessor.from_pretrained(path, local_files_only=True, backend=backend),
        "tokenizer": load_tokenizer,
    }
    attributes = cls.get_attributes()
    extra = {}
    if "video_processor" in attributes and not is_torchvision_available():
        attributes = [a for a in attributes if a != "video_processor"]
        # Same class name, so saved directories still name the real processor class. The class
        # attribute stands in for the missing part (SmolVLM's chat template reads its num_frames
        # and fps even for images; a class attribute stays out of save_pretrained's dict).
        cls = type(name, (cls,), {"get_attributes": classmethod(lambda c: attributes),
                                  "video_processor": _NoVideoProcessor()})
        # SmolVLMProcessor takes video_processor without a default; the mixin drops the None.
        if "video_processor" in inspect.signature(cls.__init__).parameters:
            extra["video_processor"] = None
    missing = [a for a in attributes if a not in parts]
    if missing:
        raise ValueError(f"{name}: cannot build its {missing} here")
    args = [parts[a]() for a in attributes]
    processor_dict, kwargs = cls.get_processor_dict(path, local_files_only=True)
    return cls.from_args_and_dict(args, processor_dict, **kwargs, **extra)


class _NoVideoProcessor:
    """The video processor an image-only processor lacks (videos need torchvision)."""

    num_frames = None
    fps = None

    def __call__(self, *args, **kwargs):
        raise ValueError("this processor was loaded without its video processor (videos need torchvision)")


def has_image_processor(path: str) -> bool:
    """Whether a model directory holds image-processor settings (cheap: reads two small files)."""
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
