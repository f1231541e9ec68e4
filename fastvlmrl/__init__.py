"""fastvlmrl: fine-tune vision-language models as decision-making agents with RL, fast."""
