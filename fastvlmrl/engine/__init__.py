"""Rollout engine: batched generation for Hugging Face VLMs over a paged KV cache."""
