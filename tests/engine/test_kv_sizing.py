"""The rollout's KV cache is sized from what the run needs (num_envs x (longest prompt +
max_new_tokens), rounded to blocks), clamped by free memory, not a fraction of free memory."""

import logging

import pytest
import torch

from fastvlmrl.build import build_encoder, build_player, longest_prompt_tokens
from fastvlmrl.config import load_config
from fastvlmrl.engine import Engine
from fastvlmrl.engine.kv_cache import CacheShape, kv_blocks_needed, num_blocks_for
from fastvlmrl.models import load_policy


def test_blocks_needed_rounds_each_sequence_up():
    assert kv_blocks_needed(4, 16, 16) == 4
    assert kv_blocks_needed(4, 17, 16) == 8
    assert kv_blocks_needed(1, 1, 16) == 1
    assert kv_blocks_needed(3, 0, 16) == 3  # a sequence holds at least one block


def test_free_memory_clamps_the_blocks():
    shape = CacheShape(num_layers=2, num_kv_heads=2, head_dim=8, block_size=16, dtype=torch.float32)
    assert num_blocks_for(shape, torch.device("cpu"), 0.5, 10) == 10
    with pytest.raises(ValueError, match="memory_fraction"):
        num_blocks_for(shape, torch.device("cpu"), 0.0, 10)


@pytest.mark.parametrize("game", ["NumberLine", "Points24"])
def test_the_players_engine_holds_what_the_run_needs(game):
    cfg = load_config(None, [f"env.name={game}", "env.num_envs=3", "env.image_size=64", "prompt.style=short",
                             "sampling.max_new_tokens=40"])
    policy, processor = load_policy(None, seed=0)
    encoder = build_encoder(policy, processor, torch.float32)
    player = build_player(cfg, policy, processor, encoder)
    try:
        longest = longest_prompt_tokens(cfg, player.envs, encoder)
        block = player.engine.block_manager.block_size
        assert player.engine.kv.num_blocks == 3 * -(-(longest + 40) // block)
        # The context limit (the block tables' width) is the run's longest sequence with a margin,
        # not the model's maximum context.
        engine = player.engine
        assert longest + 40 + 64 <= engine.max_model_len < policy.hf_model.config.get_text_config().max_position_embeddings
        assert engine.max_model_len % block == 0
        assert engine.runner.max_blocks_per_seq == engine.max_model_len // block
        obs, _ = player.envs.reset(seed=0)
        if game == "Points24":  # the formula's room is in the estimate: longer than the first prompt
            from fastvlmrl.envs.prompts import task_prompt

            first = len(encoder.encode(obs[0], task_prompt(player.envs.game, player.envs.describe(0),
                                                           style="short"))[0])
            assert longest >= first + 24 * 3 - 1
    finally:
        player.envs.close()


def test_too_little_memory_is_said(caplog):
    """(Fewer blocks than needed is correct: the scheduler preempts; its tests hold that.)"""
    policy, processor = load_policy(None, seed=0)
    with caplog.at_level(logging.WARNING):
        engine = Engine(policy.model, processor, expected_seqs=10**6, expected_seq_len=2048, memory_fraction=1e-4)
    assert "preempted" in caplog.text and engine.kv.num_blocks < kv_blocks_needed(10**6, 2048, 16)


def test_max_model_len_follows_the_expected_length_unless_given():
    policy, _ = load_policy(None, seed=0)
    model_max = policy.hf_model.config.get_text_config().max_position_embeddings
    assert Engine(policy.model, None, block_size=16, num_blocks=8).max_model_len == model_max
    assert Engine(policy.model, None, block_size=16, num_blocks=8, expected_seq_len=100).max_model_len == 176
    assert Engine(policy.model, None, block_size=16, num_blocks=8, expected_seq_len=1000).max_model_len == 1136
    assert Engine(policy.model, None, block_size=16, num_blocks=8, expected_seq_len=100,
                  max_model_len=300).max_model_len == 300
    assert Engine(policy.model, None, block_size=16, num_blocks=8,
                  expected_seq_len=10 * model_max).max_model_len == model_max


def test_a_sequence_cut_by_the_context_limit_is_said_once(caplog):
    from fastvlmrl.engine import Request, SamplingParams

    policy, _ = load_policy(None, seed=0)
    engine = Engine(policy.model, None, block_size=16, num_blocks=16, max_model_len=24)
    sp = SamplingParams(temperature=0, max_new_tokens=50, ignore_eos=True)
    with caplog.at_level(logging.WARNING, logger="fastvlmrl.engine.engine"):
        outs = engine.generate_requests([Request([1, 5, 6, 7]), Request([1, 8, 9])], sp)
    assert all(o.finish_reason == "length" and len(o.token_ids) < 50 for o in outs)
    assert sum("reached the context limit" in r.getMessage() for r in caplog.records) == 1
