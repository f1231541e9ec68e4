"""Reinforcement learning: rollout storage, GAE, PPO (RL4VLM), SFT."""
