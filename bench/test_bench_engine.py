"""Generation throughput: the engine vs Hugging Face `generate`, measured in the same run.

Each case builds a random-weight model from a config, makes a batch of prompts of about 600
tokens with one image each, and generates a fixed number of tokens with EOS ignored, so the
engine and `generate` produce the same number of tokens. Output tokens/s (prompt tokens are not
counted) and the engine/`generate` ratio are printed (past pytest's capture, so with or without
``-s``) and stored in ``extra_info``. pytest-benchmark's own table times the engine's
``generate_requests`` call alone (one round, after a warm-up call; no model building), which is
the engine time of the printed ratio.

- CPU (default): the project's tiny LLaVA (CLIP 112 px -> 49 image tokens, Llama hidden 128,
  2 layers), batch 32, 64 new tokens (256 on GPU; shorter here to keep the CPU run in minutes).
- GPU (``-m gpu``, see scripts/bench_engine_gpu.sh): Qwen2-VL-2B and LLaVA-1.6-Mistral-7B configs
  in bf16 (LLaVA-1.6's prompts are longer: its 300x300 frame is AnyRes tiles), batch 64, 256 new
  tokens; also reports the fraction of the decode roofline (HBM bandwidth
  over the bytes one decode step must read: language-model weights + the batch's KV cache).
- Text-only comparison with transformers' continuous batching (``generate_batch``), which takes
  token ids only (no images): both run the same prompts with the image tokens replaced by text.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pytest
import torch
from transformers import (
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
)
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from fastvlmrl.architectures import gemma3_4b, llava_15_7b, llava_16_mistral_7b, qwen2_vl_2b, qwen3_vl_2b
from fastvlmrl.engine import Engine, Request, SamplingParams

PROMPT_TOKENS = 600


@dataclass
class Case:
    name: str
    batch: int
    new_tokens: int
    device: str
    dtype: torch.dtype


def tiny_llava_config() -> LlavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=112,
        patch_size=16,
    )
    text = LlamaConfig(
        vocab_size=128,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=127, vision_feature_layer=-1)


CONFIGS = {"tiny-llava": tiny_llava_config, "llava-1.5-7b": llava_15_7b, "llava-1.6-mistral-7b": llava_16_mistral_7b,
           "qwen2-vl-2b": qwen2_vl_2b, "qwen3-vl-2b": qwen3_vl_2b, "gemma-3-4b": gemma3_4b}


def build(case: Case):
    cfg = CONFIGS[case.name]()
    torch.manual_seed(0)
    with torch.device(case.device):
        model = AutoModelForImageTextToText.from_config(cfg, dtype=case.dtype)
    return model.eval()


def make_requests(model, case: Case) -> list[Request]:
    """~600-token prompts (lengths vary by +-40) with one random image each."""
    cfg, g = model.config, torch.Generator().manual_seed(0)
    text_cfg = cfg.get_text_config()
    vocab = min(text_cfg.vocab_size, 30000, cfg.image_token_id)  # text tokens only
    image_id = cfg.image_token_id
    requests, n_image = [], None
    for i in range(case.batch):
        if cfg.model_type in ("qwen2_vl", "qwen3_vl"):
            grid = torch.tensor([[1, 24, 24]])  # a 336x336 (Qwen2-VL) or 384x384 (Qwen3-VL) frame -> 144 tokens
            vc = cfg.vision_config
            pixels = torch.randn(576, 3 * vc.temporal_patch_size * vc.patch_size**2, generator=g)
            mm = {"pixel_values": pixels.to(case.dtype), "image_grid_thw": grid}
            image = [cfg.vision_start_token_id] + [image_id] * 144 + [cfg.vision_end_token_id]
        elif cfg.model_type == "gemma3":  # 896 px, pooled to 256 tokens between begin and end of image
            vc = cfg.vision_config
            mm = {"pixel_values": torch.randn(1, 3, vc.image_size, vc.image_size, generator=g).to(case.dtype)}
            image = [cfg.boi_token_id] + [image_id] * cfg.mm_tokens_per_image + [cfg.eoi_token_id]
        elif cfg.model_type == "llava_next":
            # A 300x300 frame (RL4VLM's) in AnyRes: the base tile and the tiles of its best grid
            # (random pixels); the image's token count is what the model's own features give.
            vc = cfg.vision_config
            size = torch.tensor([[300, 300]])
            tiles = image_size_to_num_patches((300, 300), cfg.image_grid_pinpoints, vc.image_size)
            pixels = torch.randn(1, tiles, 3, vc.image_size, vc.image_size, generator=g)
            mm = {"pixel_values": pixels.to(case.dtype), "image_sizes": size}
            if n_image is None:
                with torch.inference_mode():
                    feats = model.model.get_image_features(**{k: v.to(case.device) for k, v in mm.items()},
                                                           return_dict=True)
                n_image = feats.pooler_output[0].shape[0]
            image = [image_id] * n_image
        else:
            vc = cfg.vision_config
            n = (vc.image_size // vc.patch_size) ** 2
            mm = {"pixel_values": torch.randn(1, 3, vc.image_size, vc.image_size, generator=g).to(case.dtype)}
            image = [image_id] * n
        n_text = PROMPT_TOKENS - len(image) + (i * 7919) % 81 - 40
        text = torch.randint(3, vocab, (max(n_text, 8),), generator=g).tolist()
        cut = len(text) // 8  # a short system/task text, then the image, then the rest
        ids = [text_cfg.bos_token_id] + text[:cut] + image + text[cut:]
        requests.append(Request(ids, {k: v.to(case.device) for k, v in mm.items()}))
    return requests


def hf_batch(model, requests: list[Request], pad_id: int):
    """Left-padded batch for `generate`, with each family's image tensors concatenated."""
    width = max(len(r.prompt_token_ids) for r in requests)
    device = model.device
    ids = torch.full((len(requests), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(requests):
        ids[i, width - len(r.prompt_token_ids) :] = torch.tensor(r.prompt_token_ids)
        mask[i, width - len(r.prompt_token_ids) :] = 1
    out = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    for key in requests[0].mm_inputs:
        out[key] = torch.cat([r.mm_inputs[key] for r in requests]).to(device)
    image_tokens = out["input_ids"] == model.config.image_token_id
    if model.config.model_type in ("qwen2_vl", "qwen3_vl"):  # M-RoPE positions come from the token types
        out["mm_token_type_ids"] = image_tokens.int()
    if model.config.model_type == "gemma3":  # the bidirectional image mask
        out["token_type_ids"] = image_tokens.long()
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def hbm_bandwidth(device_name: str) -> float | None:
    """Peak HBM bytes/s of known GPUs (FASTVLMRL_HBM_GBPS overrides, in GB/s)."""
    if os.environ.get("FASTVLMRL_HBM_GBPS"):
        return float(os.environ["FASTVLMRL_HBM_GBPS"]) * 1e9
    table = {
        "H200": 4.8e12,
        "H100 SXM": 3.35e12,
        "H100 80GB HBM3": 3.35e12,
        "H100 PCIe": 2.0e12,
        "H100": 3.35e12,
        "A100-SXM4-80GB": 2.04e12,
        "A100 80GB PCIe": 1.94e12,
        "A100": 1.55e12,
        "L40S": 0.864e12,
    }
    for key, bw in table.items():
        if key in device_name:
            return bw
    return None


def decode_roofline_fraction(engine: Engine, requests: list[Request], new_tokens: int) -> dict:
    """Ideal decode step time (bytes / bandwidth) over the measured one."""
    bw = hbm_bandwidth(torch.cuda.get_device_name())
    if bw is None or engine.stats.decode_steps == 0:
        return {}
    lm = engine.runner.lm
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())
    # A decode step reads every language-model weight once, except the embedding table, of which
    # it gathers B rows; the LM head reads its whole matrix (the same tensor when tied).
    head, embed = engine.runner.lm_head.weight, engine.runner.embed.weight
    weight_bytes += (head.numel() - embed.numel()) * head.element_size()
    kv_per_token = engine.kv.shape.block_bytes // engine.kv.shape.block_size
    mean_len = sum(len(r.prompt_token_ids) for r in requests) / len(requests) + new_tokens / 2
    step_bytes = weight_bytes + len(requests) * mean_len * kv_per_token
    measured = engine.stats.decode_s / engine.stats.decode_steps
    return {
        "decode_step_ms": measured * 1e3,
        "roofline_step_ms": step_bytes / bw * 1e3,
        "roofline_fraction": step_bytes / bw / measured,
        "hbm_bytes_per_s": bw,
    }


def time_generate(model, requests: list[Request], case: Case) -> float:
    """Seconds for Hugging Face `generate` on the whole batch (greedy, exactly new_tokens each)."""
    pad = model.config.get_text_config().pad_token_id
    batch = hf_batch(model, requests, pad)
    with torch.inference_mode():
        model.generate(**hf_batch(model, requests[:2], pad), max_new_tokens=2)  # warm-up
        seconds, out = timed(
            lambda: model.generate(
                **batch, max_new_tokens=case.new_tokens, min_new_tokens=case.new_tokens, do_sample=False
            ),
            case.device,
        )
    assert out.shape[1] - batch["input_ids"].shape[1] == case.new_tokens
    return seconds


def run_case(case: Case, benchmark, report):
    model = build(case)
    requests = make_requests(model, case)
    tokens = case.batch * case.new_tokens

    # `generate` first, then free its cache: both KV caches at once would not fit a 7B on 80 GB.
    hf_s = time_generate(model, requests, case)
    if case.device == "cuda":
        torch.cuda.empty_cache()

    sp = SamplingParams(temperature=0, max_new_tokens=case.new_tokens, ignore_eos=True)
    engine = Engine(
        model,
        None,
        memory_fraction=0.6 if case.device == "cuda" else 0.05,
        max_num_seqs=case.batch,
        max_model_len=max(len(r.prompt_token_ids) for r in requests) + 16 + case.new_tokens,
        compile_decode=False,  # the eager step; test_compiled_decode_vs_eager measures the compiled one
    )
    engine.generate_requests(requests[:2], SamplingParams(temperature=0, max_new_tokens=4))  # warm-up
    outs = benchmark.pedantic(lambda: engine.generate_requests(requests, sp), rounds=1, iterations=1)
    engine_s = benchmark.stats.stats.max
    assert all(o.error is None and len(o.token_ids) == case.new_tokens for o in outs)

    info = {
        "engine_tokens_per_s": tokens / engine_s,
        "hf_generate_tokens_per_s": tokens / hf_s,
        "speedup_vs_generate": hf_s / engine_s,
        "backend": engine.backend,
        "stats": vars(engine.stats),
    }
    if case.device == "cuda":
        info.update(decode_roofline_fraction(engine, requests, case.new_tokens))
        info["device"] = torch.cuda.get_device_name()
    benchmark.extra_info.update(info)
    lines = [
        f"[{case.name} {case.device} batch={case.batch} new={case.new_tokens}] engine {tokens / engine_s:,.0f} tok/s, "
        f"generate {tokens / hf_s:,.0f} tok/s, ratio {hf_s / engine_s:.2f}x; backend: {engine.backend}",
        f"  engine phases: vision {engine.stats.vision_s:.2f} s, prefill {engine.stats.prefill_s:.2f} s, "
        f"decode {engine.stats.decode_s:.2f} s over {engine.stats.decode_steps} steps",
    ]
    if "roofline_fraction" in info:
        lines.append(
            f"  decode step {info['decode_step_ms']:.2f} ms vs roofline {info['roofline_step_ms']:.2f} ms: "
            f"{info['roofline_fraction']:.1%} of the HBM roofline"
        )
    report(*lines)


@pytest.mark.benchmark(group="engine-cpu")
def test_engine_vs_generate_cpu(benchmark, report):
    run_case(Case("tiny-llava", batch=32, new_tokens=64, device="cpu", dtype=torch.float32), benchmark, report)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def time_engine(model, requests: list[Request], case: Case, *, compile_decode: bool, rounds: int = 3):
    """(best seconds of `rounds` engine calls on the batch, the first call's seconds, the engine, the
    tokens): greedy, exactly new_tokens each; the first call also compiles (its time is reported
    apart); no prefix cache, so every call prefills its prompts as a rollout's new frames do."""
    engine = Engine(model, None, memory_fraction=0.6 if case.device == "cuda" else 0.05, max_num_seqs=case.batch,
                    max_model_len=max(len(r.prompt_token_ids) for r in requests) + 16 + case.new_tokens,
                    compile_decode=compile_decode, enable_prefix_caching=False)  # every call prefills in full
    sp = SamplingParams(temperature=0, max_new_tokens=case.new_tokens, ignore_eos=True)
    warm_s, _ = timed(lambda: engine.generate_requests(requests, sp), case.device)
    best, outs = min((timed(lambda: engine.generate_requests(requests, sp), case.device) for _ in range(rounds)),
                     key=lambda r: r[0])
    assert all(o.error is None and len(o.token_ids) == case.new_tokens for o in outs)
    return best, warm_s, engine, [o.token_ids for o in outs]


@pytest.mark.benchmark(group="engine-compile")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[gpu, pytest.mark.gpu])])
def test_compiled_decode_vs_eager(device, benchmark, report):
    """The engine with its decode body compiled (`compile_decode=True`) against the same engine
    eager and Hugging Face `generate`, same requests, same run: decode-phase time per step, the
    whole call, the compile cost, and whether the greedy tokens agree."""
    case = (Case("tiny-llava", 32, 64, "cpu", torch.float32) if device == "cpu"
            else Case("qwen2-vl-2b", 64, 256, "cuda", torch.bfloat16))
    model = build(case)
    requests = make_requests(model, case)
    hf_s = time_generate(model, requests, case)
    if case.device == "cuda":
        torch.cuda.empty_cache()
    eager_s, _, eager, eager_tokens = time_engine(model, requests, case, compile_decode=False)
    eager_step = eager.stats.decode_s / max(eager.stats.decode_steps, 1)
    compiled_s, warm_s, compiled, compiled_tokens = benchmark.pedantic(
        lambda: time_engine(model, requests, case, compile_decode=True), rounds=1, iterations=1)
    compiled_step = compiled.stats.decode_s / max(compiled.stats.decode_steps, 1)
    agree = sum(a == b for a, b in zip(eager_tokens, compiled_tokens))
    benchmark.extra_info.update({"eager_s": eager_s, "compiled_s": compiled_s, "first_call_s": warm_s,
                                 "eager_decode_step_ms": eager_step * 1e3, "compiled_decode_step_ms": compiled_step * 1e3,
                                 "speedup": eager_s / compiled_s, "same_tokens": agree, "backend": compiled.backend,
                                 "hf_generate_s": hf_s, "compiled_vs_generate": hf_s / compiled_s})
    report(f"[{case.name} {device} batch={case.batch} new={case.new_tokens}] compiled decode {compiled_s:.2f} s vs "
           f"eager {eager_s:.2f} s: {eager_s / compiled_s:.2f}x (decode step {compiled_step * 1e3:.2f} ms vs "
           f"{eager_step * 1e3:.2f} ms); first call with compile {warm_s:.1f} s; same greedy tokens on "
           f"{agree}/{len(requests)} rows; backend: {compiled.backend}",
           f"  `generate` {hf_s:.2f} s: compiled engine {hf_s / compiled_s:.2f}x, eager engine {hf_s / eager_s:.2f}x "
           f"(whole calls, prefill included)")


@gpu
@pytest.mark.gpu
@pytest.mark.benchmark(group="engine-gpu")
@pytest.mark.parametrize("name", ["qwen2-vl-2b", "llava-1.6-mistral-7b"])
def test_engine_vs_generate_gpu(name, benchmark, report):
    run_case(Case(name, batch=64, new_tokens=256, device="cuda", dtype=torch.bfloat16), benchmark, report)


@gpu
@pytest.mark.gpu
@pytest.mark.benchmark(group="engine-gpu-families")
@pytest.mark.parametrize("name", ["qwen3-vl-2b", "gemma-3-4b"])
def test_engine_vs_generate_gpu_newer_families(name, benchmark, report):
    """Qwen3-VL (DeepStack) and Gemma 3 (image-block prefill mask: SDPA prefill, a capped context)."""
    run_case(Case(name, batch=64, new_tokens=256, device="cuda", dtype=torch.bfloat16), benchmark, report)


@pytest.mark.benchmark(group="engine-vs-continuous-batching")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[gpu, pytest.mark.gpu])])
def test_engine_vs_transformers_continuous_batching(device, benchmark, report):
    case = (
        Case("tiny-llava", 32, 64, "cpu", torch.float32)
        if device == "cpu"
        else Case("qwen2-vl-2b", 64, 256, "cuda", torch.bfloat16)
    )
    model = build(case)
    if not hasattr(model, "generate_batch"):
        pytest.skip("this transformers has no continuous batching (generate_batch)")
    image_id = model.config.image_token_id
    prompts = [[5 if t == image_id else t for t in r.prompt_token_ids] for r in make_requests(model, case)]
    sp = SamplingParams(temperature=0, max_new_tokens=case.new_tokens, ignore_eos=True)
    engine = Engine(
        model,
        None,
        memory_fraction=0.5 if device == "cuda" else 0.05,
        max_num_seqs=case.batch,
        max_model_len=PROMPT_TOKENS + 64 + case.new_tokens,
    )
    requests = [Request(p) for p in prompts]
    engine.generate_requests(requests[:2], SamplingParams(temperature=0, max_new_tokens=4))
    benchmark.pedantic(lambda: engine.generate_requests(requests, sp), rounds=1, iterations=1)
    engine_s = benchmark.stats.stats.max

    gc = GenerationConfig(
        max_new_tokens=case.new_tokens,
        do_sample=False,
        eos_token_id=-1,
        pad_token_id=model.config.get_text_config().pad_token_id,
    )
    model.generate_batch(inputs=prompts[:2], generation_config=GenerationConfig(max_new_tokens=2, do_sample=False))
    cb_s, out = timed(lambda: model.generate_batch(inputs=prompts, generation_config=gc), device)
    assert all(len(o.generated_tokens) == case.new_tokens for o in out.values())
    tokens = case.batch * case.new_tokens
    benchmark.extra_info.update(
        {
            "engine_tokens_per_s": tokens / engine_s,
            "continuous_batching_tokens_per_s": tokens / cb_s,
            "speedup_vs_continuous_batching": cb_s / engine_s,
        }
    )
    report(
        f"[text-only {case.name} {device} batch={case.batch} new={case.new_tokens}] engine {tokens / engine_s:,.0f} tok/s, "
        f"transformers generate_batch {tokens / cb_s:,.0f} tok/s, ratio {cb_s / engine_s:.2f}x",
    )
