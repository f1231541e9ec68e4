"""The local-VLM corrector: GTR's prompt through fastvlmrl's engine, malformed answers counted."""

import json

from fastvlmrl.config import GTRConfig
from fastvlmrl.gtr.correction import NO_VERDICT, UNPARSABLE

from .test_http_corrector import ANSWER, FIX, GAME, item


def test_the_vlm_corrector_runs_a_local_model_through_the_engine(tiny_dir):
    """The tiny random model cannot answer in JSON: every asked reply is no correction, counted;
    a model that answers well (its engine replaced by a scripted one) gives the correction."""
    import torch

    from fastvlmrl.engine.sequence import Generation
    from fastvlmrl.gtr.vlm_corrector import VLMCorrector

    cfg = GTRConfig(enabled=True, corrector="vlm", vlm_path=str(tiny_dir), vlm_max_new_tokens=8)
    c = VLMCorrector.from_config(cfg, GAME, device=torch.device("cpu"), dtype=torch.float32, num_envs=2)
    results = c.evaluate([item(), item("garbage")])
    assert [r.verdict for r in results] == [NO_VERDICT, UNPARSABLE] and c.failures["unparsable"] == 1
    prompt = c.prompt(item())
    assert "[Thought]" in prompt and "find_all_correct_formulas" in prompt and prompt.startswith("You check")

    class Answers:
        def generate_requests(self, requests, params):
            assert params.temperature == 0.0 and params.max_new_tokens == 8
            return [Generation(list(r.prompt_token_ids), text=json.dumps(ANSWER)) for r in requests]

    c.engine = Answers()
    assert c.evaluate([item()])[0].corrected_thought == FIX
