"""fastvlmrl: fine-tune vision-language models as decision-making agents with RL, fast."""

from fastvlmrl import envs  # noqa: F401  (registers the Gymnasium ids)
