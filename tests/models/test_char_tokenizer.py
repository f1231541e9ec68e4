import torch
from transformers import PreTrainedTokenizer

from fastvlmrl.models import CharTokenizer
from fastvlmrl.models.char_tokenizer import CHARS


def test_vocabulary_and_round_trip():
    tok = CharTokenizer()
    assert isinstance(tok, PreTrainedTokenizer)
    assert len(tok) == 5 + len(CHARS) == 101
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.image_token == "<image>" and tok.convert_tokens_to_ids("<image>") == 4
    text = '{\n  "thoughts": "Target 3, current 5: go down.",\n  "action": "-"\n}'
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok(text)["input_ids"] == [tok.bos_token_id] + ids


def test_special_tokens_in_text_and_unknown_characters():
    tok = CharTokenizer()
    ids = tok("a<image>b</s>", add_special_tokens=False)["input_ids"]
    assert ids == [tok.convert_tokens_to_ids("a"), 4, tok.convert_tokens_to_ids("b"), tok.eos_token_id]
    assert tok("é\t", add_special_tokens=False)["input_ids"] == [tok.unk_token_id] * 2
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_chat_template():
    tok = CharTokenizer()
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Pick + or -."}]}
    prompt = tok.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    assert prompt == "USER: <image>\nPick + or -.\nASSISTANT: "
    full = tok.apply_chat_template([user, {"role": "assistant", "content": '{"action": "+"}'}], tokenize=False)
    assert full == 'USER: <image>\nPick + or -.\nASSISTANT: {"action": "+"}</s>\n'
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "USER: hi\n"


def test_offsets_mapping():
    tok = CharTokenizer()
    text = 'x<image>{"action": "+"}'
    enc = tok(text, return_offsets_mapping=True)
    spans = enc["offset_mapping"]
    assert len(spans) == len(enc["input_ids"])
    assert spans[0] == (0, 0)  # <s>
    assert spans[1:3] == [(0, 1), (1, 8)]  # "x", then "<image>" is one token
    for (s, e), i in zip(spans[1:], enc["input_ids"][1:]):
        assert tok.convert_tokens_to_ids(text[s:e]) == i
    assert tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"] == tok.offsets(text)
    # The action span by characters -> its tokens.
    start = text.index('"+"')
    inside = [j for j, (s, e) in enumerate(spans) if s >= start and e <= start + 3 and e > s]
    assert tok.decode([enc["input_ids"][j] for j in inside]) == '"+"'


def test_offsets_mapping_batched_padded_tensors():
    tok = CharTokenizer()
    for side in ("right", "left"):
        tok.padding_side = side
        enc = tok(["ab", "abcd"], padding=True, return_offsets_mapping=True, return_tensors="pt")
        assert enc["input_ids"].shape == (2, 5) and enc["offset_mapping"].shape == (2, 5, 2)
        short = enc["offset_mapping"][0]
        real = short[enc["attention_mask"][0].bool()]
        assert real.tolist() == [[0, 0], [0, 1], [1, 2]]
        assert (short[~enc["attention_mask"][0].bool()] == 0).all()
    single = tok("ab", return_offsets_mapping=True, return_tensors="pt")
    assert single["offset_mapping"].shape == (1, 3, 2) and single["input_ids"].shape == (1, 3)


def test_save_and_load(tmp_path):
    tok = CharTokenizer()
    tok.save_pretrained(tmp_path)
    again = CharTokenizer.from_pretrained(tmp_path)
    text = "USER: <image>\nhello {\"a\": 1}\n"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.get_vocab() == tok.get_vocab()
    assert again.chat_template == tok.chat_template
    assert torch.equal(
        again(text, return_offsets_mapping=True, return_tensors="pt")["offset_mapping"],
        tok(text, return_offsets_mapping=True, return_tensors="pt")["offset_mapping"],
    )
