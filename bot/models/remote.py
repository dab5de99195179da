"""The big-model fallback: any OpenAI-compatible server through the real ``openai`` client.

Used only when the local tiers are unsure. Asks for ``json_schema`` output and falls back to
``json_object`` (then validates) on servers that reject it; re-asks once on invalid output; retries 429
and 5xx (and timeouts) with exponential backoff; a circuit breaker stops calling a server that keeps
failing; ``DailyBudget`` enforces each repository's caps and the operator's ceilings on calls and estimated
cost per UTC day.
"""
from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bot.models.base import (
    KINDS,
    TIER_REMOTE,
    InvalidOutput,
    IssueText,
    Prediction,
    PromptTemplate,
    load_prompt,
    triage_schema,
    validate_output,
)

log = logging.getLogger(__name__)

# A big model's answers carry no calibrated probability unless the server returns logprobs; this is the
# nominal confidence given to a validated answer (the eval's stated oracle accuracy).
NOMINAL_CONFIDENCE = 0.9


class RemoteError(Exception):
    """The fallback could not produce a valid answer; ``reason`` says why (logged with the call)."""

    def __init__(self, reason: str, *, input_tokens: int = 0, output_tokens: int = 0,
                 cost_usd: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cost_usd = cost_usd


class CircuitOpen(RemoteError):
    """The breaker is open after repeated failures; no call was made."""


def estimate_cost(input_tokens: int, output_tokens: int, price_per_million_input: float,
                  price_per_million_output: float) -> float:
    """US dollars for one call at the configured prices per 1M tokens."""
    return (input_tokens * price_per_million_input + output_tokens * price_per_million_output) / 1_000_000


@dataclass
class CircuitBreaker:
    """Open after ``threshold`` consecutive failures; half-open (one trial call) after ``cooldown`` s."""

    threshold: int = 3
    cooldown: float = 60.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def allow(self) -> bool:
        with self._lock:
            if self.opened_at is None:
                return True
            if self.clock() - self.opened_at >= self.cooldown:
                self.opened_at = None  # half-open: let one call through; a failure re-opens at once
                self.failures = self.threshold - 1
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            self.opened_at = None

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.failures >= self.threshold:
                self.opened_at = self.clock()

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None and self.clock() - self.opened_at < self.cooldown


class DailyBudget:
    """Caps on fallback calls and estimated cost per UTC day, in two layers.

    * Each repository's own caps (``fallback.max_calls_per_day`` / ``max_cost_per_day`` in its config),
      counted over that repository's calls only, so one repo's generous caps cannot starve another.
    * The operator's ceilings (``FALLBACK_MAX_CALLS_PER_DAY`` / ``FALLBACK_MAX_COST_PER_DAY``), counted
      over every repository the server serves. A repo config can lower what it may spend, never raise
      it past these: the operator pays.

    With a database, the day's usage is read from ``model_calls`` (remote tiers) plus the calls in
    flight (``fallback_reservations``), checked and reserved in one ``BEGIN IMMEDIATE`` transaction, so
    concurrent workers (and processes sharing the file) cannot overshoot a call cap. The cost of a call
    is known only after it, so a cost cap can be passed by at most the calls in flight when it is reached.
    Without a database it is counted here (tests, the demo).
    """

    RESERVATION_TTL = 900.0
    """A reservation older than this belongs to a worker that died mid-call; it no longer counts."""

    def __init__(self, db: Any = None, clock: Callable[[], float] = time.time, *,
                 max_calls: int | None = None, max_cost: float | None = None) -> None:
        self.db = db
        self.clock = clock
        self.max_calls = max_calls
        self.max_cost = max_cost
        self._counts: dict[tuple[str | None, int], list[float]] = {}
        self._lock = threading.Lock()
        self._schema_ready = False

    def _day(self) -> tuple[int, float]:
        now = self.clock()
        day = int(now // 86400)
        return day, day * 86400.0

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            self.db.execute("CREATE TABLE IF NOT EXISTS fallback_reservations "
                            "(id INTEGER PRIMARY KEY, repo TEXT NOT NULL, ts REAL NOT NULL)")
            self._schema_ready = True

    def _db_usage(self, conn: Any, repo: str | None) -> tuple[int, float]:
        _, start = self._day()
        where, args = ("AND repo = ?", [repo]) if repo is not None else ("", [])
        try:
            row = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(cost_usd), 0) FROM model_calls "
                f"WHERE (tier = ? OR tier LIKE ?) AND ts >= ? {where}",
                [TIER_REMOTE, f"%:{TIER_REMOTE}", start, *args],
            ).fetchone()
        except sqlite3.OperationalError:  # no call log yet: nothing spent
            row = (0, 0.0)
        in_flight = conn.execute(
            f"SELECT COUNT(*) FROM fallback_reservations WHERE ts >= ? {where}",
            [self.clock() - self.RESERVATION_TTL, *args],
        ).fetchone()[0]
        return int(row[0]) + int(in_flight), float(row[1])

    def usage(self, repo: str | None = None) -> tuple[int, float]:
        """Calls made (or in flight) and dollars spent today by ``repo``, or by every repo (``None``)."""
        if self.db is not None:
            self._ensure_schema()
            return self._db_usage(self.db.conn, repo)
        day, _ = self._day()
        with self._lock:
            calls, cost = self._counts.get((repo, day), [0, 0.0])
            return int(calls), float(cost)

    def _refusal(self, repo: str, fallback_config: dict[str, Any],
                 usage: Callable[[str | None], tuple[int, float]]) -> str | None:
        if self.max_calls is not None or self.max_cost is not None:
            calls, cost = usage(None)
            if self.max_calls is not None and calls >= self.max_calls:
                return f"operator's daily call ceiling reached ({calls}/{self.max_calls}, FALLBACK_MAX_CALLS_PER_DAY)"
            if self.max_cost is not None and cost >= self.max_cost:
                return (f"operator's daily cost ceiling reached (${cost:.4f}/${self.max_cost:.2f}, "
                        "FALLBACK_MAX_COST_PER_DAY)")
        calls, cost = usage(repo)
        max_calls = int(fallback_config.get("max_calls_per_day", 0))
        max_cost = float(fallback_config.get("max_cost_per_day", 0.0))
        if calls >= max_calls:
            return f"daily call cap reached ({calls}/{max_calls})"
        if cost >= max_cost:
            return f"daily cost cap reached (${cost:.4f}/${max_cost:.2f})"
        return None

    def check(self, repo: str, fallback_config: dict[str, Any]) -> str | None:
        """``None`` if another call for ``repo`` is allowed today, else the reason it is not."""
        return self._refusal(repo, fallback_config, self.usage)

    def reserve(self, repo: str, fallback_config: dict[str, Any]) -> tuple[int | None, str | None]:
        """Check the caps and hold a slot for one call: ``(reservation, None)`` or ``(None, reason)``.

        Pass the reservation to :meth:`release` once the call is in the call log (or failed)."""
        if self.db is None:
            return None, self.check(repo, fallback_config)
        self._ensure_schema()
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            reason = self._refusal(repo, fallback_config, lambda which: self._db_usage(conn, which))
            reservation = None
            if reason is None:
                conn.execute("DELETE FROM fallback_reservations WHERE ts < ?",
                             [self.clock() - self.RESERVATION_TTL])
                reservation = conn.execute("INSERT INTO fallback_reservations (repo, ts) VALUES (?, ?)",
                                           [repo, self.clock()]).lastrowid
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return reservation, reason

    def release(self, reservation: int | None) -> None:
        """Drop a reservation (the call it held is in ``model_calls`` now, or never happened)."""
        if self.db is not None and reservation is not None:
            self.db.execute("DELETE FROM fallback_reservations WHERE id = ?", [reservation])

    def record(self, repo: str, cost_usd: float) -> None:
        """Count a call when there is no database (with one, the call log is the record)."""
        if self.db is not None:
            return
        day, _ = self._day()
        with self._lock:
            for key in ((repo, day), (None, day)):
                entry = self._counts.setdefault(key, [0, 0.0])
                entry[0] += 1
                entry[1] += cost_usd


class RemoteModel:
    """The fallback model behind the ``Model`` interface (sync; callers run it in a thread)."""

    tier = TIER_REMOTE

    def __init__(self, *, api_key: str, model: str = "gpt-4o-mini", base_url: str | None = None,
                 timeout: float = 30.0, max_retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0,
                 price_per_million_input: float = 0.15, price_per_million_output: float = 0.6,
                 breaker: CircuitBreaker | None = None, prompt: PromptTemplate | None = None,
                 sleep: Callable[[float], None] = time.sleep, client: Any = None) -> None:
        import openai

        self.model_id = f"remote:{model}"
        self.model = model
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.price_per_million_input = price_per_million_input
        self.price_per_million_output = price_per_million_output
        self.breaker = breaker or CircuitBreaker()
        self.prompt = prompt or load_prompt("triage")
        self.sleep = sleep
        # Our own retry loop (below) so that backoff, the breaker and the tests see every attempt.
        self.client = client or openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout,
                                              max_retries=0)
        self.format_level = 0  # index into FORMATS, raised when the server rejects a format

    @classmethod
    def from_settings(cls, settings: Any, fallback_config: dict[str, Any] | None = None,
                      **kwargs: Any) -> "RemoteModel | None":
        """The fallback for these settings, or ``None`` when no API key is configured."""
        if not getattr(settings, "openai_api_key", None):
            return None
        fallback_config = fallback_config or {}
        return cls(api_key=settings.openai_api_key, base_url=settings.openai_base_url,
                   model=settings.fallback_model,
                   price_per_million_input=float(fallback_config.get("price_per_million_input", 0.15)),
                   price_per_million_output=float(fallback_config.get("price_per_million_output", 0.6)),
                   **kwargs)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return estimate_cost(input_tokens, output_tokens, self.price_per_million_input,
                             self.price_per_million_output)

    # -- one HTTP call with retries ----------------------------------------------------------------
    # Output formats from strictest to loosest; a server that rejects one is asked with the next from then on.
    # json_object + "schema" is what llama.cpp's server turns into a grammar; plain json_object is the last resort.
    FORMATS = ("json_schema", "json_object+schema", "json_object")

    def _response_format(self) -> dict[str, Any]:
        name = self.FORMATS[self.format_level]
        if name == "json_schema":
            return {"type": "json_schema",
                    "json_schema": {"name": "triage", "strict": True, "schema": strict_schema()}}
        if name == "json_object+schema":
            return {"type": "json_object", "schema": strict_schema()}
        return {"type": "json_object"}

    @property
    def schema_supported(self) -> bool:
        return self.format_level == 0

    def _rejects_format(self, exc: Exception) -> bool:
        """Did the server refuse our response_format (400/422, or llama.cpp's validation error as a 500)?"""
        message = (str(exc) + " " + str(getattr(exc, "body", ""))).lower()
        status = getattr(exc, "status_code", None)
        return (status in (400, 422, 500) and self.format_level < len(self.FORMATS) - 1
                and ("response_format" in message or "json_schema" in message or "'schema'" in message))

    def _create(self, messages: list[dict[str, str]]) -> Any:
        """One chat completion, retrying 429/5xx/timeouts with backoff (honouring Retry-After)."""
        import openai

        attempt = 0
        while True:
            try:
                return self.client.chat.completions.create(
                    model=self.model, messages=messages, temperature=0,
                    response_format=self._response_format(), max_tokens=300,
                )
            except openai.APIStatusError as exc:
                if self._rejects_format(exc):
                    log.info("fallback server rejects %s output; trying %s", self.FORMATS[self.format_level],
                             self.FORMATS[self.format_level + 1])
                    self.format_level += 1
                    continue
                if not isinstance(exc, (openai.RateLimitError, openai.InternalServerError)):
                    raise RemoteError(f"HTTP {exc.status_code}") from exc
                error: Exception = exc
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                error = exc
            status = getattr(error, "status_code", None)
            kind = f"HTTP {status}" if status else type(error).__name__
            if attempt >= self.max_retries:
                raise RemoteError(f"{kind} after {attempt + 1} attempts") from error
            delay = min(self.max_backoff, self.backoff * (2 ** attempt)) * (0.5 + random.random() / 2)
            retry_after = _retry_after(error)
            if retry_after is not None:
                delay = min(self.max_backoff, max(delay, retry_after))
            log.warning("fallback call failed (%s); retry in %.2fs", kind, delay)
            self.sleep(delay)
            attempt += 1

    def predict(self, issue: IssueText) -> Prediction:
        """Ask the big model; one re-ask on invalid output. Raises RemoteError / CircuitOpen."""
        if not self.breaker.allow():
            raise CircuitOpen("circuit breaker open")
        started = time.perf_counter()
        messages = self.prompt.messages(issue)
        input_tokens = output_tokens = 0
        last_problem = ""
        for attempt in range(2):
            try:
                response = self._create(messages)
            except RemoteError as exc:
                self.breaker.failure()
                exc.input_tokens, exc.output_tokens = input_tokens, output_tokens
                exc.cost_usd = self.cost(input_tokens, output_tokens)
                raise
            usage = getattr(response, "usage", None)
            text = response.choices[0].message.content or "" if response.choices else ""
            input_tokens += int(getattr(usage, "prompt_tokens", 0) or sum(len(m["content"]) for m in messages) // 4)
            output_tokens += int(getattr(usage, "completion_tokens", 0) or len(text) // 4)
            try:
                answer = validate_output(text)
            except InvalidOutput as exc:
                last_problem = str(exc)
                log.info("fallback answer invalid (%s); attempt %d", exc, attempt + 1)
                messages = messages + [
                    {"role": "assistant", "content": text[:2000]},
                    {"role": "user", "content": "That answer was not valid. Reply with only a JSON object "
                                                "with keys kind, summary, missing as described."},
                ]
                continue
            self.breaker.success()
            kind = answer["kind"]
            probs = {k: (NOMINAL_CONFIDENCE if k == kind else (1 - NOMINAL_CONFIDENCE) / (len(KINDS) - 1))
                     for k in KINDS}
            return Prediction(
                kind=kind, confidence=NOMINAL_CONFIDENCE, probs=probs, summary=answer["summary"],
                missing=answer["missing"], tier=self.tier, model=self.model_id,
                latency_ms=(time.perf_counter() - started) * 1000, input_tokens=input_tokens,
                output_tokens=output_tokens, raw={"text": text, "attempts": attempt + 1},
                cost_usd=self.cost(input_tokens, output_tokens),
            )
        # Invalid twice: the server works, the answer does not; counts against the breaker too.
        self.breaker.failure()
        raise RemoteError(f"invalid output twice: {last_problem}", input_tokens=input_tokens,
                          output_tokens=output_tokens, cost_usd=self.cost(input_tokens, output_tokens))


def strict_schema() -> dict[str, Any]:
    """``triage_schema`` without the length keywords OpenAI's strict mode rejects (validated after)."""
    schema = triage_schema()
    schema["properties"]["summary"].pop("maxLength", None)
    schema["properties"]["missing"].pop("maxItems", None)
    return schema


def _retry_after(exc: Any) -> float | None:
    """Seconds from a ``Retry-After`` header, if the server sent one."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
