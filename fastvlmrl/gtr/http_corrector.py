"""A corrector behind an OpenAI-compatible chat-completions endpoint (GPT-4o as in GTR, or any
server that speaks the API: vLLM, SGLang, a gateway): GTR's evaluation prompt (`questions.py`)
with the frame as a base64 PNG, JSON response format. Requests run `concurrency` at a time, each
with a timeout (per socket read and for the whole body) and bounded retries with exponential
backoff (on timeouts, connection errors, 429 and 5xx); whatever still fails (or answers with something that is not the JSON asked for) is no
correction for that step, counted in `failures`, never an exception and never a stall beyond
timeout x (retries + 1) plus the backoffs."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from fastvlmrl.envs.games import Game
from fastvlmrl.gtr.correction import NO_VERDICT, UNPARSABLE, Correction, CorrectionItem
from fastvlmrl.gtr.questions import read_answer, system_prompt, user_prompt

_MAX_BACKOFF_S = 15.0  # GTR's tenacity wait_random_exponential(1, 15)


class HTTPCorrector:
    def __init__(self, game: Game, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 60.0,
                 retries: int = 3, concurrency: int = 8, temperature: float = 0.4, max_tokens: int = 400,
                 backoff_s: float = 1.0):
        self.game = game
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.temperature, self.max_tokens = temperature, max_tokens
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="gtr-http")
        self.failures: Counter = Counter()  # timeout, connection, http_<status>, unparsable (cumulative)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg, game: Game) -> HTTPCorrector:
        """From the run's GTRConfig; the API key is read from the environment variable it names."""
        key = None
        if cfg.http_api_key_env:
            key = os.environ.get(cfg.http_api_key_env)
            if not key:
                raise ValueError(f"gtr.corrector=http: the environment variable {cfg.http_api_key_env} (the API key) is "
                                 "not set: export it, or set gtr.http_api_key_env='' for an endpoint without a key")
        return cls(game, cfg.http_base_url, cfg.http_model, api_key=key, timeout_s=cfg.http_timeout_s,
                   retries=cfg.http_retries, concurrency=cfg.http_concurrency, temperature=cfg.http_temperature,
                   max_tokens=cfg.http_max_tokens)

    def evaluate(self, items: list[CorrectionItem]) -> list[Correction]:
        return list(self.pool.map(self.correct, items))

    def correct(self, item: CorrectionItem) -> Correction:
        if item.reply is None:
            return Correction(UNPARSABLE)
        text = self._ask(self.payload(item))
        if text is None:
            return Correction(NO_VERDICT)
        correction = read_answer(self.game, text)
        if correction.verdict == NO_VERDICT:
            self._count("unparsable")
        return correction

    def payload(self, item: CorrectionItem) -> dict:
        buffer = io.BytesIO()
        Image.fromarray(item.frame).save(buffer, format="PNG")
        image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system_prompt(self.game)},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                             {"type": "text", "text": user_prompt(self.game, item)}]},
            ],
            "response_format": {"type": "json_object"},
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _ask(self, payload: dict) -> str | None:
        """The reply's message content, or None once the attempts are spent (each failure counted)."""
        body = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(_MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    reply = json.loads(self._read(response, time.monotonic() + self.timeout_s).decode("utf-8"))
                return str(reply["choices"][0]["message"]["content"])
            except urllib.error.HTTPError as e:
                self._count(f"http_{e.code}")
                if e.code != 429 and e.code < 500:
                    return None  # the request itself is wrong: retrying will not help
            except (TimeoutError, socket.timeout):
                self._count("timeout")
            except urllib.error.URLError as e:
                self._count("timeout" if isinstance(e.reason, (TimeoutError, socket.timeout)) else "connection")
            except (ValueError, KeyError, IndexError, TypeError):  # not a chat-completions reply
                self._count("unparsable")
                return None
            except (ConnectionError, OSError, http.client.HTTPException):  # (a cut body, a reply that is not HTTP)
                self._count("connection")
            except Exception:  # anything else a server can provoke: no correction, never a crash
                self._count("error")
        return None

    @staticmethod
    def _read(response, deadline: float) -> bytes:
        """The body, read in pieces against a deadline: the socket timeout bounds each read, not a
        server that drips a byte at a time."""
        parts = []
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("the reply took longer than the timeout")
            part = response.read(1 << 16)
            if not part:
                return b"".join(parts)
            parts.append(part)

    def _count(self, kind: str) -> None:
        with self._lock:
            self.failures[kind] += 1

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
