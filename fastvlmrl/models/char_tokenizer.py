"""A character-level tokenizer made at run time, for the built-in tiny VLM.

One token per character: the special tokens, newline and printable ASCII; any other character is
``<unk>``. Special-token strings (``<image>``, ``</s>``, ...) written in the text are one token each.
It is a real ``transformers.PreTrainedTokenizer``: ``save_pretrained`` / ``from_pretrained`` work
(``fastvlmrl.models.load_processor`` loads a processor saved with it; ``AutoProcessor`` only knows
transformers' own tokenizer classes), it carries a chat template, and
``tokenizer(text, return_offsets_mapping=True)`` returns character offsets, which the trainer uses
to split thought and action tokens (``offsets(text)`` gives them for the bare text).
"""

from __future__ import annotations

import json
import os

from transformers import PreTrainedTokenizer
from transformers.tokenization_utils_base import BatchEncoding

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIALS = (PAD, BOS, EOS, UNK, IMAGE)
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB_FILE = "vocab.json"

# LLaVA-1.5's conversation shape. Content is a string or a list of {"type": "image"} /
# {"type": "text", "text": ...} parts (the Hugging Face processor convention); an image part becomes
# the <image> placeholder the processor expands. The tokenizer adds <s> itself, so the template does not.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ 'USER: ' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' }}"
    "{%- else -%}{{ message['role'] | upper + ': ' }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ '</s>' }}{%- endif -%}"
    "{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT: ' }}{%- endif -%}"
)


class CharTokenizer(PreTrainedTokenizer):
    """Character-level tokenizer: ids 0..4 = ``<pad> <s> </s> <unk> <image>``, then ``\\n`` and ASCII 32..126."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str | None = None, **kwargs):
        if vocab_file is not None:  # a saved tokenizer keeps its own alphabet
            with open(vocab_file, encoding="utf-8") as f:
                self.vocab: dict[str, int] = json.load(f)
        else:
            self.vocab = {tok: i for i, tok in enumerate(SPECIALS + tuple(CHARS))}
        self.ids_to_tokens = {i: tok for tok, i in self.vocab.items()}
        kwargs.setdefault("pad_token", PAD)
        kwargs.setdefault("bos_token", BOS)
        kwargs.setdefault("eos_token", EOS)
        kwargs.setdefault("unk_token", UNK)
        kwargs.setdefault("extra_special_tokens", {"image_token": IMAGE})
        kwargs.setdefault("chat_template", CHAT_TEMPLATE)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return list(text)

    def _convert_token_to_id(self, token: str) -> int:
        return self.vocab.get(token, self.vocab[UNK])

    def _convert_id_to_token(self, index: int) -> str:
        return self.ids_to_tokens.get(index, UNK)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        # Llama convention: <s> in front, no </s> (generation starts from the prompt).
        ids = [self.bos_token_id] + token_ids_0
        return ids if token_ids_1 is None else ids + [self.bos_token_id] + token_ids_1

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False) -> list[int]:
        if already_has_special_tokens:
            return [int(t in self.all_special_ids) for t in token_ids_0 + (token_ids_1 or [])]
        mask = [1] + [0] * len(token_ids_0)
        return mask if token_ids_1 is None else mask + [1] + [0] * len(token_ids_1)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.vocab, f, ensure_ascii=False, indent=0)
        return (path,)

    # -- character offsets -------------------------------------------------------------------------

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` character span of each token of ``tokenize(text)`` (no special tokens added)."""
        spans, pos = [], 0
        for piece in self.tokens_trie.split(text):  # the same split tokenize() makes
            if piece in self._added_tokens_encoder:
                spans.append((pos, pos + len(piece)))
            else:
                spans.extend((pos + i, pos + i + 1) for i in range(len(piece)))
            pos += len(piece)
        return spans

    def _encode_plus(self, text, text_pair=None, add_special_tokens: bool = True, **kwargs) -> BatchEncoding:
        # The slow-tokenizer base has no offset mapping; a character tokenizer's offsets are trivial.
        want_offsets = kwargs.pop("return_offsets_mapping", False)
        if not want_offsets:
            return super()._encode_plus(text, text_pair, add_special_tokens=add_special_tokens, **kwargs)
        if text_pair is not None or not (isinstance(text, str) or all(isinstance(t, str) for t in text)):
            raise ValueError(
                "return_offsets_mapping supports a string or a list of strings (no pairs, no pre-tokenized input)"
            )
        return_tensors = kwargs.pop("return_tensors", None)
        enc = super()._encode_plus(text, None, add_special_tokens=add_special_tokens, **kwargs)
        batched = not isinstance(text, str)
        texts, ids = (text, enc["input_ids"]) if batched else ([text], [enc["input_ids"]])
        side = kwargs.get("padding_side") or self.padding_side
        offsets = []
        for t, row in zip(texts, ids):
            spans = ([(0, 0)] if add_special_tokens else []) + self.offsets(t)
            n_pad = len(row) - len(spans)
            if n_pad < 0:
                raise ValueError("return_offsets_mapping does not support truncation")
            pad = [(0, 0)] * n_pad
            offsets.append(pad + spans if side == "left" else spans + pad)
        enc["offset_mapping"] = offsets if batched else offsets[0]
        prepend = not batched and return_tensors is not None  # [L] -> [1, L], as the plain path does
        return BatchEncoding(dict(enc), tensor_type=return_tensors, prepend_batch_axis=prepend)

