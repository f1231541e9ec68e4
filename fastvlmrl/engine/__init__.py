"""Rollout engine: batched generation for Hugging Face VLMs over a paged KV cache.

from fastvlmrl.engine import Engine, SamplingParams
engine = Engine(model, processor, block_size=16, num_blocks=2048)
outs = engine.generate(frames, prompts, SamplingParams(temperature=0.2, max_new_tokens=256, seed=0))
outs[0].text, outs[0].token_ids, outs[0].logprobs, outs[0].hidden_state
"""

from fastvlmrl.engine.engine import Engine, EngineStats
from fastvlmrl.engine.requests import Request
from fastvlmrl.engine.sampling_params import SamplingParams
from fastvlmrl.engine.sequence import Generation

__all__ = ["Engine", "EngineStats", "Generation", "Request", "SamplingParams"]
