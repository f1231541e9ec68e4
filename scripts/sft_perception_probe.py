"""When does the warm start learn to read the frame? SFT alone, probed every N steps.

    python3 scripts/sft_perception_probe.py configs/tiny/blackjack.yaml 50 run.seed=1 [key=value ...]

Runs a preset's SFT (the same demonstrations, schedule and seed as `fastvlmrl train`, nothing
written) and every N steps scores 128 held-out noise-free demonstrations teacher-forced: for the
characters of the cards (or numbers) the reply reads off the frame, `tok_acc` is the share whose
probability is above 1/2 (what greedy decoding writes, given a correct prefix), `greedy_reads` the
share of frames where every such character is, `p_read_all` the mean probability of reading all
of them. One JSON line per probe on stdout. Built-in tiny VLM only (model.path null): a sizing aid
for the tiny presets (which image size, how many SFT steps), not a metric of a run.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time

import numpy as np
import torch

from fastvlmrl.build import build_encoder
from fastvlmrl.config import load_config
from fastvlmrl.models import load_policy
from fastvlmrl.models.tiny import tiny_config_from
from fastvlmrl.rl.batch import forward_logp_and_values, pack
from fastvlmrl.rl.sft import demo_stream, encode_demos, sft_train

# the spans of a noise-free reply that are read off the frame (separators excluded below)
READ_SPANS = {
    "Blackjack": [r"My cards are (.*?), a (?:soft )?total", r"dealer shows (\S+),"],
    "EZPoints": [r'"cards": \[([^\]]*)\]'],
    "Points24": [r'"cards": \[([^\]]*)\]'],
    "NumberLine": [r'"current number": "(\d+)"', r'"target number": "(\d+)"'],
}
HELD_OUT = 128


def read_mask(reply: str, n_tokens: int, game: str) -> torch.Tensor:
    """The output tokens (one per character, then EOS) that state what the frame shows."""
    if n_tokens != len(reply) + 1:
        raise SystemExit("the probe needs a character tokenizer (the built-in tiny VLM: model.path null)")
    mask = torch.zeros(n_tokens, dtype=torch.bool)
    for pattern in READ_SPANS[game]:
        found = re.search(pattern, reply)
        if found is None:
            raise SystemExit(f"no {pattern!r} in the demonstration {reply!r}: READ_SPANS is out of date")
        for k in range(found.start(1), found.end(1)):
            mask[k] = reply[k] not in ", "
    return mask


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    preset, every, overrides = argv[0], int(argv[1]), argv[2:]
    cfg = load_config(preset, overrides)
    if cfg.model.path is not None or cfg.env.name not in READ_SPANS:
        raise SystemExit(f"the probe runs the built-in tiny VLM on {', '.join(READ_SPANS)}")
    torch.set_num_threads(cfg.run.threads or 2)
    torch.manual_seed(cfg.run.seed)  # the initial weights `fastvlmrl train` draws for this seed
    policy, processor = load_policy(None, seed=cfg.run.seed, tiny=tiny_config_from(cfg.model),
                                    dtype=torch.float32, device="cpu")
    encoder = build_encoder(policy, processor, torch.float32)
    logit_bias = encoder.logit_bias(policy.lm_head_weight().shape[0], "cpu", torch.float32)
    game = dict(cot=cfg.prompt.cot, style=cfg.prompt.style, image_size=cfg.env.image_size,
                face_cards_as_10=cfg.env.face_cards_as_10)
    start = time.perf_counter()
    demos = encode_demos(encoder, demo_stream(cfg.env.name, cfg.sft.demos, noise=cfg.sft.noise, seed=cfg.run.seed,
                                              **game))
    held_demos = list(demo_stream(cfg.env.name, HELD_OUT, noise=0.0, seed=10_000 + cfg.run.seed, **game))
    held = encode_demos(encoder, held_demos)
    masks = [read_mask(d.reply, len(t.output_ids), cfg.env.name) for d, t in zip(held_demos, held)]

    def probe(step: int) -> None:
        policy.eval()
        p_all, reads, chars = [], [], []
        with torch.no_grad():
            for i in range(0, len(held), 32):
                part = held[i:i + 32]
                logp, _ = forward_logp_and_values(policy, pack(part, encoder.pad_id, "cpu"), 1.0, logit_bias)
                for sample, mask, token_logp in zip(part, masks[i:], logp.split([len(t.output_ids) for t in part])):
                    read = token_logp[mask]
                    p_all.append(float(read.sum().exp()))
                    right = (read > math.log(0.5)).tolist()
                    reads.append(all(right))
                    chars.extend(right)
        policy.train()
        print(json.dumps({"step": step, "tok_acc": round(float(np.mean(chars)), 3),
                          "greedy_reads": round(float(np.mean(reads)), 3), "p_read_all": round(float(np.mean(p_all)), 3),
                          "seconds": round(time.perf_counter() - start)}), flush=True)

    probe(0)
    sft_train(policy, encoder, demos, cfg.sft, device="cpu", seed=cfg.run.seed, logit_bias=logit_bias,
              log=lambda step, loss: probe(step + 1) if (step + 1) % every == 0 else None)


if __name__ == "__main__":
    main(sys.argv[1:])
