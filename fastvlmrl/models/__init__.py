"""Policies: Hugging Face VLMs plus a value head, the built-in tiny VLM, batched image preprocessing."""
