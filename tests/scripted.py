"""An engine whose every generated reply is a fixed text (its tokens, log-prob -1 each; the value
calls, the hidden states and the values stay the model's): the tiny random model never writes
valid JSON, so the tests of GTR's format reward, corrections, buffer and cloning script it."""

import dataclasses


def scripted_generate(real, text: str):
    """A replacement for `Engine.generate_requests` (given the real one) answering `text`."""

    def scripted(self, requests, params=None):
        if params is None or params.max_new_tokens <= 1:  # the value calls
            return real(self, requests, params)
        gens = real(self, requests, dataclasses.replace(params, max_new_tokens=1))
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        for gen in gens:
            gen.token_ids, gen.logprobs, gen.text = list(ids), [-1.0] * len(ids), text
        return gens

    return scripted
