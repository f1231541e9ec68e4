"""`fastvlmrl plan`: the peak GPU memory of a run's rollout and update, estimated before anything
is loaded, so a user sees whether a 7B run fits on 24, 40 or 80 GB.

The model's parameters are counted exactly from its config (built on the meta device: no weights
are read or allocated); the prompt's length is measured with the model's processor on the run's
game at its longest prompt (`build.longest_prompt_tokens`), or estimated for a named architecture
without files (`--model`). What each phase holds:

- always: the weights; the trainable parameters' gradients and Adam's two moments (LoRA adapters
  are float32: peft keeps them so under a bf16 base); the KL reference's copy of the trainable
  weights (full fine-tuning with ppo.kl_coef).
- rollout: the engine's KV cache, num_envs x (longest prompt + max_new_tokens) in 16-token blocks
  (the project's paged kernel; flash-attn's 256-token blocks round up more; the clamp to a
  fraction of free memory is not modelled: the plan is of what the run wants), and its prefill
  workspace (one chunk of max_num_batched_tokens through one layer).
- update: the KV cache (kept from the rollout), and the activations the backward keeps for one
  micro-batch, per decoder layer and token
  about (10 H + 2 H_kv + 4 I) elements (the normed inputs, q/k/v and the attention output, the
  MLP's four I-wide tensors), plus LoRA's float32 copies of the adapted layers' inputs (6 H + I);
  with gradient checkpointing, each layer's input plus one layer's full set; a trained vision
  tower adds (8 H_v + 2 I_v) per token it runs (CLS and every AnyRes crop included, Qwen2-VL's
  patches before their merge) and layer.
- SFT (sft.steps > 0): the same activations for an SFT micro-batch, before the engine exists.
- a fixed 1.5 GiB for the CUDA context and the allocator's reserve.

With `--processes N` (torchrun), the estimate is one process's: its env.num_envs / N envs' KV
cache, its share of each mini-batch (and SFT batch) as its micro-batch when none is set; with
model.fsdp, a 1/N shard of the weights, gradients and Adam moments, plus the whole weights
gathered during the rollout (`sharding.full_weights`) and, in the update, the units being gathered
(the root, embeddings and LM head included, and two layers: the one running and the next).

It is an estimate: measure the real peak with `torch.cuda.max_memory_allocated` (the GPU benchmark
does) and expect within about 15%.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

import torch

from fastvlmrl.config import Config

GiB = 2**30
CUDA_OVERHEAD = 1.5 * GiB  # the CUDA context (~0.5 GiB) and what the caching allocator keeps in reserve
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ENGINE_BLOCK = 16  # the project's paged-decode block (flash-attn's would be 256: more rounding)
ENGINE_PREFILL_TOKENS = 16384  # Engine's max_num_batched_tokens


@dataclass
class ModelShape:
    """The sizes the estimate needs, counted from a model built on the meta device."""

    name: str
    model_type: str
    params: int
    vision_params: int
    lora_params: int  # at the config's lora_r, on the language model and the projector
    value_head_params: int
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int  # kv_heads x head_dim
    vision_hidden: int = 0
    vision_intermediate: int = 0
    vision_layers: int = 0
    vision_tokens: int = 0  # tokens the vision tower runs per frame (before any merge; CLS and tiles included)


@dataclass
class Plan:
    shape: ModelShape
    prompt_tokens: int
    prompt_measured: bool  # False: estimated from the architecture (no processor)
    seq_tokens: int
    micro_batch: int
    checkpointing: bool
    parts: dict[str, float] = field(default_factory=dict)  # bytes held in both phases
    rollout: dict[str, float] = field(default_factory=dict)
    update: dict[str, float] = field(default_factory=dict)
    sft: dict[str, float] = field(default_factory=dict)  # the SFT warm start's steps (sft.steps > 0)
    activations_without_checkpointing: float = 0.0
    processes: int = 1  # torchrun's: the estimate is one process's
    fsdp: bool = False

    @property
    def rollout_peak(self) -> float:
        return sum(self.parts.values()) + sum(self.rollout.values()) + CUDA_OVERHEAD

    @property
    def update_peak(self) -> float:
        return sum(self.parts.values()) + sum(self.update.values()) + CUDA_OVERHEAD

    @property
    def sft_peak(self) -> float:
        return sum(self.parts.values()) + sum(self.sft.values()) + CUDA_OVERHEAD if self.sft else 0.0

    @property
    def peak(self) -> float:
        return max(self.rollout_peak, self.update_peak, self.sft_peak)


def model_shape(config, lora_r: int, name: str) -> ModelShape:
    """Count a transformers config's parameters without weights (meta device)."""
    from transformers import AutoModelForImageTextToText

    from fastvlmrl.models.policy import ValueHead, _lora_targets, _vision_tower

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
        head = ValueHead(config.get_text_config().hidden_size)
    try:
        vision = _vision_tower(model)
        vision_params = sum(p.numel() for p in vision.parameters())
    except ValueError:
        vision, vision_params = None, 0
    lora = 0
    for target in _lora_targets(model):
        linear = model.get_submodule(target)
        lora += lora_r * (linear.in_features + linear.out_features)
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    v_cfg = getattr(config, "vision_config", None)
    v_hidden = getattr(v_cfg, "hidden_size", 0) if v_cfg is not None else 0
    if getattr(v_cfg, "embed_dim", None):  # Qwen2-VL's vision config: hidden_size is the merger's output
        v_hidden = v_cfg.embed_dim
    v_inter = getattr(v_cfg, "intermediate_size", None) or int(v_hidden * getattr(v_cfg, "mlp_ratio", 4))
    v_layers = getattr(v_cfg, "num_hidden_layers", None) or getattr(v_cfg, "depth", 0)
    return ModelShape(
        name=name, model_type=config.model_type, params=sum(p.numel() for p in model.parameters()),
        vision_params=vision_params, lora_params=lora, value_head_params=sum(p.numel() for p in head.parameters()),
        hidden=text.hidden_size, intermediate=text.intermediate_size, layers=text.num_hidden_layers,
        kv_dim=kv_heads * head_dim, vision_hidden=v_hidden, vision_intermediate=v_inter, vision_layers=v_layers,
    )


def estimated_image_tokens(config, image_size: int) -> int:
    """Image placeholder tokens of one square frame, as the family's processor counts them."""
    v = config.vision_config
    if config.model_type == "llava":
        return (v.image_size // v.patch_size) ** 2
    if config.model_type == "llava_next":  # AnyRes: the base image + the unpadded tiles + a newline per row
        from transformers.image_processing_utils import select_best_resolution

        side = v.image_size // v.patch_size
        best_h, best_w = select_best_resolution((image_size, image_size), config.image_grid_pinpoints)
        rows, cols = best_h // v.image_size * side, best_w // v.image_size * side
        if cols > rows:  # a square frame in a wide canvas: the padded columns are dropped
            cols -= (cols - rows) // 2 * 2
        else:
            rows -= (rows - cols) // 2 * 2
        return side * side + rows * cols + rows
    if config.model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):  # resized to multiples of patch x merge, 2x2 merged
        factor = v.patch_size * v.spatial_merge_size
        side = max(round(image_size / factor), 1) * factor
        return (side // v.patch_size) ** 2 // v.spatial_merge_size**2 + 2  # + vision start/end
    if config.model_type == "gemma3":  # a fixed count, between begin/end of image and blank lines
        return config.mm_tokens_per_image + 4
    raise ValueError(f"no image-token estimate for model_type {config.model_type!r}: give model.path=DIR")


def vision_tokens_per_frame(config, image_size: int) -> int:
    """Tokens the vision tower itself runs on for one square frame: more than the prompt's image
    tokens (CLIP's CLS, each AnyRes tile a full crop, Qwen2-VL's patches before the 2x2 merge)."""
    v = config.vision_config
    if config.model_type == "llava":
        return (v.image_size // v.patch_size) ** 2 + 1
    if config.model_type == "llava_next":
        from transformers.image_processing_utils import select_best_resolution

        best_h, best_w = select_best_resolution((image_size, image_size), config.image_grid_pinpoints)
        crops = 1 + (best_h // v.image_size) * (best_w // v.image_size)
        return crops * ((v.image_size // v.patch_size) ** 2 + 1)
    if config.model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        return (estimated_image_tokens(config, image_size) - 2) * v.spatial_merge_size**2
    if config.model_type == "gemma3":  # SigLIP at its full size, pooled after the tower
        return (v.image_size // v.patch_size) ** 2
    raise ValueError(f"no vision-token estimate for model_type {config.model_type!r}")


def _prompt_tokens(cfg: Config, config, processor) -> tuple[int, bool]:
    """(the run's longest prompt in tokens, measured?) with the processor, else estimated."""
    from fastvlmrl.build import longest_prompt_tokens
    from fastvlmrl.envs.prompts import task_prompt
    from fastvlmrl.envs.vector import make_batch

    envs = make_batch(cfg.env.name, 1, height=cfg.env.image_size, width=cfg.env.image_size,
                      face_cards_as_10=cfg.env.face_cards_as_10)
    try:
        if processor is not None:
            from fastvlmrl.models.encoder import PromptEncoder

            return longest_prompt_tokens(cfg, envs, PromptEncoder(processor, ())), True
        envs.reset(seed=cfg.run.seed)
        task = task_prompt(envs.game, envs.game.longest_info(envs.describe(0)), cot=cfg.prompt.cot,
                           style=cfg.prompt.style)
        chat_overhead = 40  # the chat template's role markers and system line, in tokens
        return estimated_image_tokens(config, cfg.env.image_size) + ceil(len(task) / 3) + chat_overhead, False
    finally:
        envs.close()


def plan_run(cfg: Config, architecture_name: str | None = None, processes: int = 1) -> Plan:
    """The estimate for `cfg` (its model.path, the tiny VLM, or a named architecture), in one of
    `processes` torchrun processes."""
    from fastvlmrl.architectures import architecture

    processor = None
    if architecture_name is not None:
        config, name = architecture(architecture_name), architecture_name
    elif cfg.model.path is None:
        from fastvlmrl.models.tiny import build_tiny_processor, tiny_config_from, tiny_vlm_config

        processor = build_tiny_processor(tiny_config_from(cfg.model))
        config, name = tiny_vlm_config(tiny_config_from(cfg.model), processor.tokenizer), "the built-in tiny VLM"
    else:
        from transformers import AutoConfig

        from fastvlmrl.models.processor import load_processor

        config = AutoConfig.from_pretrained(cfg.model.path, local_files_only=True)
        processor, name = load_processor(cfg.model.path), cfg.model.path
    shape = model_shape(config, cfg.model.lora_r, name)
    shape.vision_tokens = vision_tokens_per_frame(config, cfg.env.image_size)
    prompt, measured = _prompt_tokens(cfg, config, processor)
    return estimate(cfg, shape, prompt, measured, processes=processes)


def estimate(cfg: Config, shape: ModelShape, prompt_tokens: int, prompt_measured: bool = True,
             processes: int = 1) -> Plan:
    """The memory of each phase for a model of `shape` (see the module docstring for the model),
    in one of `processes` torchrun processes."""
    dtype = "bfloat16" if cfg.model.dtype == "auto" else cfg.model.dtype  # auto is bf16 on GPU
    b = DTYPE_BYTES[dtype]
    seq = prompt_tokens + cfg.sampling.max_new_tokens
    share = ceil(cfg.ppo.minibatch_size / processes)  # this process's part of each mini-batch
    micro = min(cfg.ppo.micro_batch_size or share, share)
    fsdp = cfg.model.fsdp and processes > 1
    ckpt = cfg.model.gradient_checkpointing
    lora = cfg.model.lora
    vision_trains = not (lora or cfg.model.freeze_vision) and shape.vision_params > 0

    if lora:
        trainable, trainable_bytes = shape.lora_params, 4
    else:
        trainable = shape.params - (0 if vision_trains else shape.vision_params)
        trainable_bytes = b
    parts = {
        f"weights ({dtype}{', LoRA float32' if lora else ''})": shape.params * b + (shape.lora_params * 4 if lora else 0),
        "value head (float32) + its grads and Adam": shape.value_head_params * 16,
        "gradients": trainable * trainable_bytes,
        "Adam moments": 2 * trainable * trainable_bytes,
    }
    if cfg.ppo.kl_coef > 0 and not lora:
        parts["KL reference (trainable weights)"] = trainable * b
    whole = parts[next(iter(parts))]  # the weights, whole
    gathered = {}
    if fsdp:  # each process keeps a shard of everything; the rollout gathers the whole model
        parts = {f"{k} (1/{processes} shard)": v / processes for k, v in parts.items()}
        gathered = {"FSDP units gathered (root + 2 layers)": _gathered_units_bytes(shape, b, lora)}
    kv = _kv_bytes(cfg, shape, seq, b, ceil(cfg.env.num_envs / processes))  # (kept through the update)
    rollout = {"KV cache": kv,
               "engine prefill workspace": ENGINE_PREFILL_TOKENS * (2 * shape.hidden + 2 * shape.intermediate) * b}
    if fsdp:
        rollout = {"whole weights gathered for generation": whole, **rollout}
    update = {"KV cache (kept from the rollout)": kv, **gathered,
              **_training_activations(cfg, shape, micro, seq, b, vision_trains, "micro-batch")}
    sft = {}
    if cfg.sft.steps:
        sft_share = ceil(cfg.sft.batch_size / processes)
        sft_micro = min(cfg.sft.micro_batch_size or sft_share, sft_share)
        sft = {**gathered, **_training_activations(cfg, shape, sft_micro, seq, b, vision_trains, "SFT micro-batch")}
    full = shape.layers * _layer_activation_bytes(shape, b, lora) * micro * seq
    return Plan(shape, prompt_tokens, prompt_measured, seq, micro, ckpt, parts, rollout, update, sft,
                activations_without_checkpointing=full, processes=processes, fsdp=fsdp)


def _layer_params(shape: ModelShape) -> int:
    """One decoder layer's parameters: q and o (H x H), k and v (H x kv), the MLP's three (H x I)."""
    return 2 * shape.hidden * shape.hidden + 2 * shape.hidden * shape.kv_dim + 3 * shape.hidden * shape.intermediate


def _gathered_units_bytes(shape: ModelShape, b: int, lora: bool) -> float:
    """What FSDP holds whole in a training pass: the root unit (what no layer holds: embeddings, LM
    head, norms, projector) and two decoder layers (the one running and the one prefetched)."""
    layer = _layer_params(shape)
    root = max(shape.params - shape.vision_params - shape.layers * layer, 0)
    adapters = 2 * shape.lora_params / max(shape.layers, 1) * 4 if lora else 0
    return (root + 2 * layer) * b + adapters


def _training_activations(cfg: Config, shape: ModelShape, micro: int, seq: int, b: int, vision_trains: bool,
                          what: str) -> dict[str, float]:
    """What one forward and backward of `micro` sequences of `seq` tokens keeps."""
    ckpt = cfg.model.gradient_checkpointing
    per_layer = _layer_activation_bytes(shape, b, cfg.model.lora)
    tokens = micro * seq
    kept = (shape.layers * shape.hidden * b + per_layer) * tokens if ckpt else shape.layers * per_layer * tokens
    out = {f"activations ({what} {micro} x {seq} tokens{', checkpointed' if ckpt else ''})": kept}
    if vision_trains:  # each layer's set, or checkpointed: each layer's input and one layer's set
        v_layer = (8 * shape.vision_hidden + 2 * shape.vision_intermediate) * b
        kept_per_token = (shape.vision_layers * shape.vision_hidden * b + v_layer
                          if ckpt and cfg.model.gradient_checkpointing_vision else shape.vision_layers * v_layer)
        out["vision activations"] = micro * shape.vision_tokens * kept_per_token
    out["backward workspace (one layer's gradients)"] = per_layer * tokens
    return out


def _kv_bytes(cfg: Config, shape: ModelShape, seq: int, b: int, envs: int | None = None) -> float:
    from fastvlmrl.engine.kv_cache import kv_blocks_needed

    blocks = kv_blocks_needed(cfg.env.num_envs if envs is None else envs, seq, ENGINE_BLOCK)
    return blocks * ENGINE_BLOCK * 2 * shape.layers * shape.kv_dim * b


def _layer_activation_bytes(shape: ModelShape, b: int, lora: bool) -> float:
    """Bytes one decoder layer keeps for the backward, per token."""
    elements = 10 * shape.hidden + 2 * shape.kv_dim + 4 * shape.intermediate
    extra = (6 * shape.hidden + shape.intermediate) * 4 if lora else 0  # float32 copies into the adapters
    return elements * b + extra


def fitting_micro_batch(cfg: Config, shape: ModelShape, prompt_tokens: int, gpu_bytes: float,
                        processes: int = 1) -> int | None:
    """The largest micro-batch (a power of two below a process's share of the mini-batch, or the
    share) that fits, or None."""
    import copy

    best = None
    size = 1
    sizes = []
    share = ceil(cfg.ppo.minibatch_size / processes)
    while size < share:
        sizes.append(size)
        size *= 2
    for size in [*sizes, share]:
        trial = copy.deepcopy(cfg)
        trial.ppo.micro_batch_size = size
        if estimate(trial, shape, prompt_tokens, processes=processes).peak <= gpu_bytes:
            best = size
    return best


def describe_plan(cfg: Config, plan: Plan, gpus_gb: list[float]) -> list[str]:
    """The plan as the lines `fastvlmrl plan` prints."""
    s = plan.shape
    lines = [f"model      {s.name} ({s.model_type}): {s.params / 1e9:.2f} B parameters "
             f"(vision {s.vision_params / 1e9:.2f} B)"]
    if cfg.model.lora:
        lines.append(f"training   LoRA r{cfg.model.lora_r}: {s.lora_params / 1e6:.1f} M trainable (float32), "
                     f"+ value head {s.value_head_params / 1e6:.2f} M")
    else:
        lines.append(f"training   full fine-tuning{' (vision frozen)' if cfg.model.freeze_vision else ''}, "
                     f"+ value head {s.value_head_params / 1e6:.2f} M")
    how = "measured with the model's processor" if plan.prompt_measured else "estimated: no processor with --model"
    n = plan.processes
    envs = f"{cfg.env.num_envs}" if n == 1 else f"{ceil(cfg.env.num_envs / n)} of {cfg.env.num_envs}"
    lines.append(f"sequences  longest prompt {plan.prompt_tokens} tokens ({how}) + {cfg.sampling.max_new_tokens} "
                 f"new = {plan.seq_tokens}; rollout {envs} envs; update mini-batch "
                 f"{cfg.ppo.minibatch_size}, micro-batch {plan.micro_batch}, gradient checkpointing "
                 f"{'on' if plan.checkpointing else 'off'}")
    if n > 1:
        lines.append(f"processes  {n} (torchrun): each one's memory below"
                     f"{', model.fsdp: weights, gradients and Adam sharded' if plan.fsdp else ''}")
    lines.append("")
    width = max(len(k) for k in [*plan.parts, *plan.rollout, *plan.update, *plan.sft, 'CUDA context + allocator']) + 2
    lines.append(f"{'':{width}}    GiB")
    held = {**plan.parts, "CUDA context + allocator": CUDA_OVERHEAD}
    phases = [("held throughout", held), ("rollout", plan.rollout), ("update", plan.update)]
    phases += [("SFT steps (before the engine exists)", plan.sft)] if plan.sft else []
    for title, items in phases:
        lines.append(f"{title}:")
        lines += [f"  {k:{width - 2}}{v / GiB:7.2f}" for k, v in items.items()]
    if plan.checkpointing:
        lines.append(f"  (activations without checkpointing: {plan.activations_without_checkpointing / GiB:.2f} GiB)")
    sft = f", SFT {plan.sft_peak / GiB:.1f} GiB" if plan.sft else ""
    lines.append(f"peak       rollout {plan.rollout_peak / GiB:.1f} GiB, update {plan.update_peak / GiB:.1f} GiB{sft} "
                 f"-> {plan.peak / GiB:.1f} GiB")
    for gb in gpus_gb:
        capacity = gb * GiB  # a "80 GB" GPU holds 80 GiB (81,920 MiB)
        if plan.peak <= capacity:
            lines.append(f"{gb:g} GB GPU  fits ({(capacity - plan.peak) / GiB:.1f} GiB to spare)")
            continue
        plain = fitting_micro_batch(_with(cfg, "gradient_checkpointing", False), s, plan.prompt_tokens, capacity, n)
        checkpointed = fitting_micro_batch(_with(cfg, "gradient_checkpointing", True), s, plan.prompt_tokens, capacity, n)
        options = ([f"ppo.micro_batch_size={plain}"] if plain else []) + (
            [f"model.gradient_checkpointing=true ppo.micro_batch_size={checkpointed}"] if checkpointed else [])
        advice = " fits, or ".join(options) + " fits" if options else "not even micro-batch 1 with checkpointing fits"
        if plan.sft_peak > capacity:
            advice += "; the SFT steps need a smaller sft.micro_batch_size"
        lines.append(f"{gb:g} GB GPU  does not fit (short by {(plan.peak - capacity) / GiB:.1f} GiB): {advice}")
    return lines


def _with(cfg: Config, key: str, value) -> Config:
    import copy

    trial = copy.deepcopy(cfg)
    setattr(trial.model, key, value)
    return trial


__all__ = ["ModelShape", "Plan", "describe_plan", "estimate", "estimated_image_tokens", "model_shape", "plan_run"]
