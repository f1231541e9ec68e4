"""The HTTP corrector against a stub chat-completions server on 127.0.0.1: a valid answer becomes
a correction; a slow server, a 500, a 429, a 400, a body that is not JSON and a truncated JSON
answer each become no correction (counted), bounded in time and never an exception; retries with
backoff recover from transient errors; the request carries GTR's prompt, the frame as a base64
PNG, the JSON response format and the API key."""

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from fastvlmrl.config import GTRConfig
from fastvlmrl.envs.games import get_game
from fastvlmrl.envs.parse import strict_reply
from fastvlmrl.envs.prompts import reply_keys
from fastvlmrl.gtr.correction import CORRECT, NO_VERDICT, UNPARSABLE, WRONG, CorrectionItem
from fastvlmrl.gtr.http_corrector import HTTPCorrector
from fastvlmrl.gtr.questions import read_answer

GAME = get_game("Points24")
INFO = {"Cards": ["C7", "SA", "S3", "S4"], "Numbers": [7, 1, 3, 4], "Formula": ["3", "*"]}
REPLY = {"cards": [7, 1, 3, 5], "current formula": "3 *", "thoughts": "so I append '5'.", "action": "5"}
FIX = {"cards": [7, 1, 3, 4], "current formula": "3 *", "thoughts": "3 * 7 + 4 - 1 = 24, so I append '7'."}
ANSWER = {"answer1": "7, A, 3, 4", "answer2": "NO", "answer3": "NO", "answer4": "NO", "evaluation": "NO",
          "possible_solution": "YES", "target_formula": "3 * 7 + 4 - 1", "correction": FIX}


def item(reply=REPLY):
    text = json.dumps(reply) if isinstance(reply, dict) else reply
    frame = np.zeros((20, 30, 3), np.uint8)
    frame[5:9, 5:9] = [200, 10, 30]
    return CorrectionItem(frame, "Points24.", text, INFO, strict_reply(text, reply_keys(GAME)))


class Stub(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append((self.path, dict(self.headers), body))
            mode = server.modes.pop(0) if server.modes else server.default
        if mode == "slow":
            time.sleep(1.0)
            mode = "valid"
        if mode == "not_http":  # a reply without a status line
            self.wfile.write(b"hello there\r\n\r\n")
            self.close_connection = True
            return
        if mode == "cut":  # the body stops short of its Content-Length
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"choices": [')
            self.close_connection = True
            return
        if mode in ("500", "429", "400"):
            self.send_response(int(mode))
            self.end_headers()
            self.wfile.write(b"error")
            return
        content = {"valid": json.dumps(ANSWER), "yes": json.dumps({**ANSWER, "evaluation": "YES", "correction": None}),
                   "truncated": json.dumps(ANSWER)[:40], "no_fix": json.dumps({**ANSWER, "correction": "try again"})}
        payload = b"<html>not json" if mode == "garbage" else json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": content[mode]}}]}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    server.lock, server.requests, server.modes, server.default = threading.Lock(), [], [], "valid"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def corrector(server, **kwargs):
    options = {"api_key": "sk-test", "timeout_s": 0.3, "retries": 1, "concurrency": 4, "backoff_s": 0.01, **kwargs}
    return HTTPCorrector(GAME, f"http://127.0.0.1:{server.server_port}/v1", "gpt-4o", **options)


def test_a_valid_answer_is_a_correction_and_the_request_is_gtrs(stub):
    c = corrector(stub)
    result = c.evaluate([item()])[0]
    assert result.verdict == WRONG and result.corrected_thought == FIX
    assert result.solvable is True and result.target == "3 * 7 + 4 - 1" and result.answers["answer2"] == "NO"
    path, headers, body = stub.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "gpt-4o" and body["response_format"] == {"type": "json_object"}
    assert body["temperature"] == 0.4 and body["max_tokens"] == 400
    user = body["messages"][1]["content"]
    image = user[0]["image_url"]["url"]
    assert image.startswith("data:image/png;base64,")
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(image.split(",", 1)[1]))))
    assert np.array_equal(decoded, item().frame)
    text = user[1]["text"]
    assert "[Current Formula] '3 *'" in text and "3 * 7 + 4 - 1" in text and '"action"' not in text
    assert "find_all_correct_formulas" in text and "1. What are the four cards" in text
    assert "24" in body["messages"][0]["content"]
    stub.default = "yes"
    assert c.evaluate([item()])[0].verdict == CORRECT
    assert c.evaluate([item("not json")])[0].verdict == UNPARSABLE and len(stub.requests) == 2  # never sent
    c.close()


@pytest.mark.parametrize("mode, kind, attempts", [("slow", "timeout", 2), ("500", "http_500", 2), ("429", "http_429", 2),
                                                 ("400", "http_400", 1), ("garbage", "unparsable", 1),
                                                 ("truncated", "unparsable", 1), ("no_fix", "unparsable", 1),
                                                 ("not_http", "connection", 2), ("cut", "unparsable", 1)])
def test_each_failure_is_no_correction_counted_and_bounded(stub, mode, kind, attempts):
    stub.default = mode
    c = corrector(stub)
    start = time.perf_counter()
    results = c.evaluate([item(), item()])
    assert time.perf_counter() - start < 3.0
    assert [r.verdict for r in results] == [NO_VERDICT, NO_VERDICT]
    assert len(stub.requests) == 2 * attempts  # retried only what may pass on a second try
    assert c.failures[kind or "unparsable"] == 2 * attempts
    c.close()


def test_retries_with_backoff_recover_from_transient_errors(stub):
    stub.modes = ["500", "429"]
    c = corrector(stub, retries=2, concurrency=1)
    assert c.evaluate([item()])[0].verdict == WRONG
    assert len(stub.requests) == 3 and c.failures == {"http_500": 1, "http_429": 1}
    c.close()


def test_a_server_that_is_not_there_is_no_correction():
    c = HTTPCorrector(GAME, "http://127.0.0.1:9/v1", "m", timeout_s=0.3, retries=1, backoff_s=0.01)
    assert c.evaluate([item()])[0].verdict == NO_VERDICT and c.failures["connection"] == 2
    c.close()


def test_from_config_reads_the_key_from_the_environment(monkeypatch):
    cfg = GTRConfig(enabled=True, corrector="http", http_base_url="http://127.0.0.1:1/v1", http_api_key_env="MY_KEY")
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ValueError, match="MY_KEY"):
        HTTPCorrector.from_config(cfg, GAME)
    monkeypatch.setenv("MY_KEY", "sk-1")
    c = HTTPCorrector.from_config(cfg, GAME)
    assert c.api_key == "sk-1" and c.url == "http://127.0.0.1:1/v1/chat/completions"
    c.close()
    c = HTTPCorrector.from_config(GTRConfig(enabled=True, corrector="http", http_base_url="http://x/v1/",
                                            http_api_key_env=""), GAME)
    assert c.api_key is None and c.url == "http://x/v1/chat/completions"
    c.close()


def test_read_answer_never_raises():
    assert read_answer(GAME, json.dumps(ANSWER)).verdict == WRONG
    for bad in ("", "[1, 2]", "{", json.dumps({"evaluation": "MAYBE"}), json.dumps({**ANSWER, "correction": {"cards": 1}}),
                None, 12):
        assert read_answer(GAME, bad).verdict == NO_VERDICT
    yes = read_answer(GAME, json.dumps({"evaluation": "yes", "possible_solution": "NO"}))
    assert yes.verdict == CORRECT and yes.solvable is False and yes.target is None



def test_the_target_formula_a_corrector_fixed_holds_for_the_episode(stub):
    from fastvlmrl.gtr.guide import ThoughtGuide

    guide = ThoughtGuide(corrector(stub), GAME, GTRConfig(enabled=True, corrector="http"))
    one = item()
    frames, infos, prompts, texts = [one.frame], [INFO], [one.prompt], [one.output]
    guide.observe(frames, infos, prompts, texts)
    guide.observe(frames, infos, prompts, texts)
    guide.truncations(infos, infos, np.array([True]))  # the episode ended: its target goes
    guide.observe(frames, infos, prompts, texts)
    targets = [body["messages"][1]["content"][1]["text"].split("[Target Formula] ")[1].split("\n")[0]
               for _, _, body in stub.requests]
    assert targets == ["NOT DETERMINED", "3 * 7 + 4 - 1", "NOT DETERMINED"]
    assert len(guide.buffer) == 3 and guide.get_state()["failures"] == {}
    guide.close()
