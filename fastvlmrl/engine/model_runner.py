"""Runs the Hugging Face model for one engine step: vision encoding, packed prefill, batched decode.

Every step packs its tokens into one row ``[1, T]`` (prefill: all new prompt tokens of all
sequences; decode: one token per sequence) with explicit position ids, so the model's own
embedding, rotary, norm and MLP code runs unchanged; only attention goes through the paged cache
(:mod:`fastvlmrl.engine.attention`). The runner calls the language model directly with
``inputs_embeds`` (image features scattered at the image-token positions, as the HF wrappers do)
and applies the LM head only to the rows that need logits.

The decode body can run compiled (:meth:`ModelRunner.compile_decode`: ``torch.compile``, one graph
with the paged attention as an opaque custom op), so the layers' small ops (norms, rotary, SiLU-mul,
LoRA) fuse into a few kernels; on CUDA the compiled body is what the decode graphs capture.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import nn

from fastvlmrl.engine.attention import ATTN_IMPL, AttentionBackend, AttentionContext, attention_context
from fastvlmrl.engine.families import Family, image_block_ids
from fastvlmrl.engine.kv_cache import KVCache
from fastvlmrl.engine.sequence import Sequence
from fastvlmrl.kernels.linear import linear_fp32

logger = logging.getLogger(__name__)


def set_attn_implementation(lm: nn.Module, impl: str | None) -> None:
    """Switch the language model (only: the vision tower keeps its own) to ``impl``.

    Through ``PreTrainedModel.set_attn_implementation`` (public since transformers 4.56; it
    validates the name against ``AttentionInterface`` and sets the language model's config, which
    is the composite config's ``text_config``). Falls back to the config attribute that every
    transformers version since 4.36 reads (``_attn_implementation_internal``) when the public
    method is missing, refuses (e.g. restoring ``None``), or did not take effect.
    """
    setter = getattr(lm, "set_attn_implementation", None)
    if setter is not None and impl is not None:
        try:
            setter(impl)
        except Exception:  # noqa: BLE001 - the fallback below sets it directly
            pass
    if getattr(lm.config, "_attn_implementation", None) != impl:
        lm.config._attn_implementation_internal = impl


class ModelRunner:
    def __init__(self, model: nn.Module, family: Family, kv: KVCache, backend: AttentionBackend, max_model_len: int):
        self.model = model
        self.family = family
        self.lm = family.language_model()
        self.kv = kv
        self.backend = backend
        self.block_size = kv.shape.block_size
        self.max_blocks_per_seq = -(-max_model_len // self.block_size)
        self.device = model.get_input_embeddings().weight.device
        self.rows = family.position_rows
        self.graphs = None  # set by the engine when CUDA graphs are on
        self.in_engine_mode = False
        self._compiled_body = None  # compile_decode()
        self._compile_required = False
        self._compile_failure: str | None = None

    # Looked up at every step, not kept: LoRA (peft) or modules_to_save wrappers may replace the
    # embedding or the LM head after the engine was built.
    @property
    def embed(self) -> nn.Module:
        return self.model.get_input_embeddings()

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 LM-head logits ``[B, V]``, computed as the trainer's fused log-prob computes them
        (:func:`fastvlmrl.kernels.linear.linear_fp32`: no bf16 rounding of the GEMM's output). A
        wrapped head (peft's modules_to_save, LoRA on the head) runs as its module does."""
        head = self.lm_head
        if type(head) is nn.Linear:
            return linear_fp32(hidden, head.weight, head.bias)
        return head(hidden).float()

    @contextlib.contextmanager
    def engine_mode(self) -> Iterator[None]:
        """Paged attention on the language model, eval mode, no autograd; restored on exit.

        The trainer shares this model: its own forwards keep their attention implementation and
        train mode, the engine switches them only while it runs.
        """
        previous_impl = self.lm.config._attn_implementation
        # Per module: a trainer may keep parts in eval (a frozen vision tower) while the rest trains.
        modes = [(m, m.training) for m in self.model.modules()]
        previous_mode = self.in_engine_mode  # nested: graph capture inside a generate call
        set_attn_implementation(self.lm, ATTN_IMPL)
        self.model.eval()
        self.in_engine_mode = True
        try:
            with torch.inference_mode():
                yield
        finally:
            self.in_engine_mode = previous_mode
            set_attn_implementation(self.lm, previous_impl)
            for module, training in modes:
                module.training = training

    # -- vision ------------------------------------------------------------------------------------

    def encode_images(self, seqs: list[Sequence]) -> dict[int, str]:
        """Vision features for each sequence's prompt; returns {seq_id: error} for failures."""
        seqs = [s for s in seqs if s.has_images and s.image_features is None]
        if not seqs:
            return {}
        try:
            per_seq = self._encode(seqs)
        except Exception:  # isolate the bad request(s): encode one by one
            per_seq = []
            for s in seqs:
                try:
                    per_seq.append(self._encode([s])[0])
                except Exception as e:  # noqa: BLE001 - any failure belongs to this request only
                    per_seq.append(f"image encoding failed: {type(e).__name__}: {e}")
        errors = {}
        for s, feats in zip(seqs, per_seq):
            if isinstance(feats, str):
                errors[s.seq_id] = feats
                continue
            prompt = torch.tensor(s.token_ids[: s.num_prompt_tokens], device=self.device)
            positions = (prompt == self.family.image_token_id).nonzero().squeeze(-1)
            if positions.numel() != feats.shape[0]:
                errors[s.seq_id] = (
                    f"the prompt has {positions.numel()} image tokens but its images give {feats.shape[0]} "
                    "features: build the prompt with the model's processor (it expands the image placeholder)"
                )
                continue
            s.image_features = feats.to(self.embed.weight.dtype)
            s.image_token_positions = positions
        return errors

    def _encode(self, seqs: list[Sequence]) -> list[torch.Tensor]:
        mm = self.family.batch_mm([s.mm_inputs for s in seqs])
        feats = self.family.image_features(mm)
        out, i = [], 0
        for s in seqs:
            n = self.family.num_images(s.mm_inputs)
            out.append(torch.cat(feats[i : i + n]))
            i += n
        assert i == len(feats), f"vision tower returned {len(feats)} images for {i}"
        return out

    # -- positions and slots -----------------------------------------------------------------------

    def positions(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        """Position ids of tokens [start, end), ``[rows, end - start]``."""
        p = seq.num_prompt_tokens
        if seq.prompt_positions is None:
            return torch.arange(start, end, device=self.device).expand(self.rows, -1)
        parts = []
        if start < p:
            parts.append(seq.prompt_positions[:, start : min(end, p)])
        if end > p:
            # Past the prompt, every M-RoPE row advances by one per token from the offset.
            parts.append((torch.arange(max(start, p), end, device=self.device) + seq.rope_delta).expand(self.rows, -1))
        return torch.cat(parts, dim=1)

    def _slots(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        pos = torch.arange(start, end)
        table = torch.tensor(seq.block_table)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def _block_tables(self, seqs: list[Sequence], width: int) -> torch.Tensor:
        rows = [s.block_table + [0] * (width - len(s.block_table)) for s in seqs]
        return torch.tensor(rows, dtype=torch.int32, device=self.device)

    def _position_arg(self, positions: torch.Tensor) -> torch.Tensor:
        # [rows, T] -> what the HF text model takes: [1, T] (1-D rotary) or [3, 1, T] (M-RoPE).
        return positions[:, None, :] if self.rows > 1 else positions

    # -- steps -------------------------------------------------------------------------------------

    def prefill(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        """Computes the uncached prompt tokens of ``seqs``; returns (logits [B, V], hidden [B, H])."""
        ids, positions, slots, q_bounds, k_lens = [], [], [], [], []
        image_rows, image_feats = [], []
        offset = 0
        for seq in seqs:
            start, end = seq.num_cached_tokens, len(seq)
            ids.extend(seq.token_ids[start:end])
            positions.append(self.positions(seq, start, end))
            slots.append(self._slots(seq, start, end))
            if seq.image_features is not None:
                keep = seq.image_token_positions >= start
                image_rows.append(seq.image_token_positions[keep] - start + offset)
                image_feats.append(seq.image_features[keep])
            q_bounds.append((offset, offset + end - start))
            k_lens.append(end)
            offset += end - start

        ids_t = torch.tensor(ids, device=self.device)
        lm_kwargs = {}
        if image_rows:
            rows = torch.cat(image_rows)
            # An image token id may lie past the embedding (Gemma 3 allows it): its row is replaced.
            ids_t[rows] = 0
            embeds = self.embed(ids_t)
            lm_kwargs = self.family.scatter_image_features(embeds, rows, torch.cat(image_feats))
        else:
            embeds = self.embed(ids_t)
        cu_q = torch.tensor([0] + [e for _, e in q_bounds], dtype=torch.int32, device=self.device)
        cu_k = torch.tensor([0] + k_lens, dtype=torch.int32, device=self.device).cumsum(0, dtype=torch.int32)
        ctx = AttentionContext(
            backend=self.backend,
            is_prefill=True,
            slot_mapping=torch.cat(slots).to(self.device),
            k_caches=self.kv.k,
            v_caches=self.kv.v,
            block_tables=self._block_tables(seqs, max(len(s.block_table) for s in seqs)),
            cu_seqlens_q=cu_q,
            cu_seqlens_k=cu_k,
            q_bounds=q_bounds,
            k_lens=k_lens,
            has_cached_prefix=any(s.num_cached_tokens > 0 for s in seqs),
            image_blocks=[self._image_blocks(s) for s in seqs] if self.family.image_blocks else None,
        )
        with attention_context(ctx):
            out = self.lm(
                inputs_embeds=embeds[None],
                position_ids=self._position_arg(torch.cat(positions, dim=1)),
                use_cache=False,
                **lm_kwargs,
            )
        hidden = out.last_hidden_state[0, cu_q[1:].long() - 1]
        return self.logits(hidden), hidden

    def _image_blocks(self, seq: Sequence) -> torch.Tensor | None:
        """Image index of each of the sequence's tokens (-1 text), None when no new token is an
        image token: the prefill mask is then plain causal."""
        if seq.image_token_positions is None or not bool((seq.image_token_positions >= seq.num_cached_tokens).any()):
            return None
        ids = torch.tensor(seq.token_ids, device=self.device)
        return image_block_ids(ids, self.family.image_token_id)

    def decode_inputs(self, seqs: list[Sequence]):
        """(ids, positions [rows, B], slots, block table [B, W], seq_lens) of a decode step, written
        into one int32 host buffer and sent in one copy (pinned and non-blocking on CUDA): a step's
        preparation costs one transfer, not five. The buffer is reused: the step before ended with
        the sampler's device-to-host copy, so its transfer is complete."""
        width = max(len(s.block_table) for s in seqs)
        batch = len(seqs)
        buf = self._host_buffer(batch, 4 + width)
        host = buf.numpy()
        bs = self.block_size
        for i, s in enumerate(seqs):
            last = len(s) - 1
            row = host[i]
            row[0], row[1] = s.token_ids[-1], last + s.rope_delta
            row[2] = s.block_table[last // bs] * bs + last % bs
            row[3] = len(s)
            row[4:4 + len(s.block_table)] = s.block_table
            row[4 + len(s.block_table):] = 0
        dev = buf.to(self.device, non_blocking=True) if self.device.type == "cuda" else buf.clone()
        ids, positions, slots = dev[:, 0].long(), dev[:, 1].long(), dev[:, 2].long()
        return ids, positions.expand(self.rows, -1), slots, dev[:, 4:].contiguous(), dev[:, 3].contiguous()

    def _host_buffer(self, batch: int, columns: int) -> torch.Tensor:
        """A [batch, columns] int32 view of a host buffer kept between steps (pinned on CUDA)."""
        held = getattr(self, "_host", None)
        if held is None or held.numel() < batch * columns:
            held = torch.empty(max(batch * columns, 2 * (held.numel() if held is not None else 0)),
                               dtype=torch.int32, pin_memory=self.device.type == "cuda")
            self._host = held
        return held[: batch * columns].view(batch, columns)  # contiguous: one plain copy

    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """One token for every sequence; returns logits ``[B, V]``."""
        ids, positions, slots, table, seq_lens = self.decode_inputs(seqs)
        if self.graphs is not None and self.graphs.fits(len(seqs)):
            hidden = self.graphs.run(ids, positions, slots, table, seq_lens)
        else:
            hidden = self.decode_body(ids, positions, slots, table, seq_lens)
        return self.logits(hidden)

    def compile_decode(self, required: bool = False) -> None:
        """Run the decode body through ``torch.compile`` (inductor) from now on. Batch size and
        block-table width are dynamic dimensions; the
        compiled graph reads the parameters as inputs, so optimizer steps are seen, and a changed
        module structure (LoRA injected, an adapter switched) fails its guards and recompiles.
        Compilation happens at the first call; if that call fails, decoding goes on eagerly
        (logged) unless ``required``. Later failures (out of memory, a bad input) raise as eager
        ones do. Dynamo specialises some shapes (batch 1, a one-block table) and recompiles on
        guard failures (dtype, adapters, ``requires_grad``); past its recompile limit it runs the
        body eagerly with a warning of its own."""
        self._compiled_body = torch.compile(self.eager_decode_body, dynamic=True)
        self._compile_required = required
        self._compile_failure = None
        self._compiled_ok = False

    @property
    def decode_compiled(self) -> bool:
        return self._compiled_body is not None

    @property
    def decode_body_note(self) -> str:
        if self._compiled_body is not None:
            attention = "; attention traced into it" if self._traced_attention else ""
            return f"decode body compiled (torch.compile, inductor{attention})"
        if self._compile_failure is not None:
            return f"eager decode body (compile failed: {self._compile_failure})"
        return "eager decode body"

    def decode_body(self, ids, positions, slots, block_tables, seq_lens) -> torch.Tensor:
        """The transformer body for one decode token per row (what a CUDA graph captures): compiled
        after :meth:`compile_decode`, else eager."""
        if self._compiled_body is not None:
            try:
                hidden = self._compiled_body(ids, positions, slots, block_tables, seq_lens, self._traced_attention)
                self._compiled_ok = True
                return hidden
            except Exception as e:  # a compile failure (the first call): eager from now on, unless required
                if self._compile_required or self._compiled_ok:
                    raise
                self._compiled_body = None
                self._compile_failure = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                logger.warning("fastvlmrl engine: compiling the decode step failed, decoding eagerly: %s", e)
        return self.eager_decode_body(ids, positions, slots, block_tables, seq_lens)

    @property
    def _traced_attention(self) -> bool:
        # CPU: the attention traced into the compiled step (decode_traced); CUDA, or the padded rows
        # of decode graphs (slot -1): the opaque custom op and its kernels
        return self.device.type != "cuda" and self.graphs is None

    def eager_decode_body(self, ids, positions, slots, block_tables, seq_lens, traced: bool = False) -> torch.Tensor:
        ctx = AttentionContext(
            backend=self.backend,
            is_prefill=False,
            slot_mapping=slots,
            k_caches=self.kv.k,
            v_caches=self.kv.v,
            block_tables=block_tables,
            seq_lens=seq_lens,
            traced=traced,
        )
        with attention_context(ctx):
            out = self.lm(
                inputs_embeds=self.embed(ids)[None], position_ids=self._position_arg(positions), use_cache=False
            )
        return out.last_hidden_state[0]
