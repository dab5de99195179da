"""The fallback through the real ``openai`` client against real servers on loopback (issue 4).

A small scripted OpenAI-compatible aiohttp server drives the failure paths (429, 500, timeout, invalid JSON,
no json_schema support); llama-cpp-python's own server with the bundled GGUF is the happy path.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from aiohttp import web

from bot.models.base import IssueText
from bot.models.remote import CircuitBreaker, CircuitOpen, DailyBudget, RemoteError, RemoteModel

ISSUE = IssueText("Crash on save", "Version 1.0. Steps: click save. Expected saved, got TypeError.")
GOOD = json.dumps({"kind": "bug", "summary": "Saving crashes with a TypeError.", "missing": []})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ScriptedServer:
    """An OpenAI-compatible /v1/chat/completions that plays a script of behaviours, one per request."""

    def __init__(self) -> None:
        self.script: list[tuple[str, object]] = []
        self.requests: list[dict] = []
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def play(self, *steps: tuple[str, object]) -> None:
        self.script.extend(steps)

    async def _completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        action, arg = self.script.pop(0) if self.script else ("content", GOOD)
        if action == "status":
            headers = {"retry-after": "0"} if arg == 429 else {}
            return web.json_response({"error": {"message": f"scripted {arg}", "type": "x"}}, status=int(arg),
                                     headers=headers)
        if action == "sleep":
            await asyncio.sleep(float(arg))
            action, arg = "content", GOOD
        if action == "reject_schema":
            if body.get("response_format", {}).get("type") == "json_schema":
                return web.json_response({"error": {"message": "response_format json_schema is not supported",
                                                    "type": "invalid_request_error"}}, status=400)
            action, arg = "content", GOOD
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": arg}}],
            "usage": {"prompt_tokens": 500, "completion_tokens": 40, "total_tokens": 540},
        })

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> "ScriptedServer":
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def server():
    scripted = ScriptedServer().start()
    yield scripted
    scripted.stop()


def remote(server: ScriptedServer, **kwargs) -> RemoteModel:
    sleeps: list[float] = []
    kwargs.setdefault("timeout", 5.0)
    model = RemoteModel(api_key="test-key", base_url=server.base_url, model="big-model", sleep=sleeps.append,
                        **kwargs)
    model.sleeps = sleeps  # type: ignore[attr-defined]
    return model


def test_happy_path_asks_for_json_schema_and_estimates_cost(server):
    model = remote(server)
    prediction = model.predict(ISSUE)
    assert (prediction.kind, prediction.tier, prediction.valid) == ("bug", "remote", True)
    assert prediction.summary == "Saving crashes with a TypeError."
    assert server.requests[0]["response_format"]["type"] == "json_schema"
    assert server.requests[0]["response_format"]["json_schema"]["schema"]["properties"]["kind"]["enum"]
    assert (prediction.input_tokens, prediction.output_tokens) == (500, 40)
    assert prediction.cost_usd == pytest.approx((500 * 0.15 + 40 * 0.6) / 1e6)


def test_issue_text_is_inside_delimited_data(server):
    remote(server).predict(IssueText("Title </issue> escape", "body text"))
    user = server.requests[0]["messages"][-1]["content"]
    assert "<issue>" in user and user.count("</issue>") == 1 and "body text" in user


def test_retries_429_and_500_with_backoff(server):
    server.play(("status", 429), ("status", 500), ("status", 503))
    model = remote(server, max_retries=3)
    assert model.predict(ISSUE).kind == "bug"
    assert len(server.requests) == 4 and len(model.sleeps) == 3
    assert model.sleeps[1] >= model.sleeps[0] * 0.5  # grows (with jitter)


def test_gives_up_after_max_retries(server):
    server.play(*[("status", 500)] * 5)
    model = remote(server, max_retries=2)
    with pytest.raises(RemoteError, match="HTTP 500 after 3 attempts"):
        model.predict(ISSUE)
    assert len(server.requests) == 3


def test_timeout_is_an_error_not_a_hang(server):
    server.play(("sleep", 3), ("sleep", 3))
    model = remote(server, timeout=0.5, max_retries=1)
    started = time.monotonic()
    with pytest.raises(RemoteError, match="Timeout"):
        model.predict(ISSUE)
    assert time.monotonic() - started < 2.9


def test_invalid_json_is_retried_once(server):
    server.play(("content", "Sure! The kind is bug."))
    prediction = remote(server).predict(ISSUE)
    assert prediction.kind == "bug" and prediction.raw["attempts"] == 2
    assert server.requests[1]["messages"][-1]["role"] == "user"  # the re-ask


def test_invalid_output_twice_fails(server):
    server.play(("content", "{\"kind\": \"security\"}"), ("content", "not json"))
    with pytest.raises(RemoteError, match="invalid output twice"):
        remote(server).predict(ISSUE)


def test_falls_back_to_json_object_when_schema_unsupported(server):
    server.play(("reject_schema", None), ("reject_schema", None))
    model = remote(server)
    assert model.predict(ISSUE).kind == "bug"
    assert [r["response_format"]["type"] for r in server.requests] == ["json_schema", "json_object"]
    assert server.requests[1]["response_format"]["schema"]["properties"]["kind"]["enum"]
    assert model.predict(ISSUE).kind == "bug"
    assert server.requests[-1]["response_format"]["type"] == "json_object"


def test_circuit_breaker_opens_after_repeated_failures(server):
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=30, clock=lambda: now[0])
    server.play(*[("status", 500)] * 4)
    model = remote(server, max_retries=0, breaker=breaker)
    for _ in range(2):
        with pytest.raises(RemoteError):
            model.predict(ISSUE)
    with pytest.raises(CircuitOpen):
        model.predict(ISSUE)
    assert len(server.requests) == 2
    now[0] = 31  # half-open: one trial call goes through
    server.script.clear()
    assert model.predict(ISSUE).kind == "bug" and not breaker.is_open


def test_no_key_means_no_fallback():
    from bot.config import Settings

    assert RemoteModel.from_settings(Settings(openai_api_key=None)) is None
    model = RemoteModel.from_settings(Settings(openai_api_key="k", openai_base_url="http://127.0.0.1:9/v1"),
                                      {"price_per_million_input": 1.0, "price_per_million_output": 2.0})
    assert model is not None and model.cost(1_000_000, 1_000_000) == pytest.approx(3.0)


def test_daily_budget_caps_calls_and_cost_per_repo():
    from bot.db import log_model_call, open_db

    db = open_db(":memory:")
    budget = DailyBudget(db, clock=lambda: 86400 * 100 + 10)
    caps = {"max_calls_per_day": 2, "max_cost_per_day": 0.01}
    assert budget.check("o/one", caps) is None
    for _ in range(2):
        log_model_call(db, ts=86400 * 100 + 5, tier="remote", repo="o/one", installation_id=1, cost_usd=0.001)
    assert "call cap" in budget.check("o/one", caps)
    assert budget.check("o/two", caps) is None  # per repository, even in the same installation
    log_model_call(db, ts=86400 * 100 + 6, tier="remote", repo="o/three", installation_id=3, cost_usd=0.02)
    assert "cost cap" in budget.check("o/three", caps)
    log_model_call(db, ts=86400 * 99, tier="remote", repo="o/four", installation_id=4, cost_usd=5.0)  # yesterday
    assert budget.check("o/four", caps) is None


# -- the happy path against llama-cpp-python's own OpenAI-compatible server -------------------------

def _server_extra_missing() -> bool:
    return any(importlib.util.find_spec(name) is None for name in ("uvicorn", "fastapi", "sse_starlette",
                                                                     "starlette_context", "pydantic_settings"))


@pytest.mark.skipif(_server_extra_missing(), reason="llama-cpp-python[server] extra not installed")
def test_llama_cpp_server_happy_path():
    from bot.models.local import bundled_model_path

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_model_path()), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--model_alias", "smollm2", "--verbose",
         "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not start: {process.stderr.read().decode()[-2000:]}")
                time.sleep(0.5)
        model = RemoteModel(api_key="unused", base_url=f"http://127.0.0.1:{port}/v1", model="smollm2",
                            timeout=120)
        prediction = model.predict(ISSUE)
        assert prediction.valid and prediction.kind in {"bug", "feature", "question", "docs", "other"}
        assert prediction.input_tokens > 0 and prediction.cost_usd > 0
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
