"""GTR (Guided Thought Reinforcement, Wei et al. 2025): a corrector checks each thought the agent
writes and rewrites the wrong ones; the corrected thoughts are cloned with a supervised loss next
to PPO, from a DAgger buffer of every correction so far, so the reasoning does not collapse.

    correction.py        what a corrector is given and returns (CorrectionItem, Correction)
    oracle_corrector.py  the exact, rule-based corrector over the games' state and solvers
    http_corrector.py    an OpenAI-compatible chat-completions endpoint with GTR's questions
    vlm_corrector.py     any local Hugging Face VLM through the engine, with the same questions
    self_teacher.py      GTR-Turbo: the agent's own past (an EMA, or a TIES merge of its adapters)
    ties.py              TIES merging of LoRA adapters
    questions.py         GTR's per-game evaluation prompt and the reading of its JSON answer
    buffer.py            the DAgger buffer of corrected samples (part of the checkpoint)
    cloning.py           corrected sample -> training sample; the cloning loss (action masked)
    guide.py             what a rollout step does with GTR: format reward, corrections, truncation
"""
