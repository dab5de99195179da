"""Reading a webhook request before anyone is known to have sent it: bounded memory, then decoding.

Anyone on the internet can POST to the webhook. Until the HMAC over the whole body checks out, the
sender is anonymous, so what it may cost is bounded here: bodies over GitHub's 25 MB cap are refused
by their Content-Length before a byte is read, a request without a well-formed signature header is
refused unread, and every body that is read reserves its size from one memory budget shared by all
requests (``WEBHOOK_MEMORY_BUDGET_MB``); when the budget is spent the request gets 503 at once instead
of being buffered. The HMAC runs over the chunks as they arrive, so the body is copied only once.

``decode_payload`` turns verified bytes into the payload and the text to store: UTF-8 JSON (a leading
BOM is dropped), or GitHub's ``application/x-www-form-urlencoded`` form whose ``payload`` field holds
the JSON. Anything else is a ``BadBody`` (400), never an exception later in the worker.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import urllib.parse
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

MAX_BODY = 25 * 1024 * 1024   # GitHub caps webhook payloads at 25 MB
BODY_READ_SECONDS = 10.0      # GitHub sends a body at once; a trickle holds its reservation no longer
CHUNKED_STEP = 1024 * 1024    # a body without Content-Length reserves as it grows, this much at a time
MAX_JSON_DEPTH = 100          # GitHub payloads nest about 8 deep; deeper input is refused, not parsed later
_SIGNATURE = re.compile(r"sha256=[0-9a-fA-F]{64}")


class Rejected(Exception):
    """The request is refused before it is stored: ``status`` and a short message for the answer."""

    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason          # the metrics label
        self.message = message
        self.retry_after = retry_after


class BadBody(ValueError):
    """A signed body that is not a GitHub payload we can read (answered 400)."""


class MemoryBudget:
    """Bytes of request bodies held at once, across all requests; refuses rather than waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reserved = 0
        self.peak = 0        # the most ever reserved at once (tests and /health details)
        self.refused = 0     # requests answered 503 because the budget was spent

    def take(self, size: int) -> bool:
        if self.reserved + size > self.limit:
            self.refused += 1
            return False
        self.reserved += size
        self.peak = max(self.peak, self.reserved)
        return True

    def give(self, size: int) -> None:
        self.reserved -= size


def well_formed_signature(header: str | None) -> bool:
    """Is the X-Hub-Signature-256 header shaped like one GitHub sends (so worth reading the body for)?"""
    return bool(header) and _SIGNATURE.fullmatch(header.strip()) is not None


class Body:
    """A request body read within the budget; ``release()`` returns its reservation."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.reserved = 0
        self.data = bytearray()

    def reserve(self, size: int) -> None:
        if not self.budget.take(size):
            raise Rejected(503, "busy", "too many webhook bodies in flight; retry later", retry_after=5)
        self.reserved += size

    def release(self) -> None:
        self.budget.give(self.reserved)
        self.reserved = 0
        self.data = bytearray()


async def read_signed_body(request: web.Request, secret: str, budget: MemoryBudget) -> Body:
    """Read the body within ``budget`` while computing its HMAC; raise ``Rejected`` unless it is signed
    with ``secret``. The caller must ``release()`` the returned body when done with it."""
    header = request.headers.get("X-Hub-Signature-256")
    if not header or not secret:
        raise Rejected(401, "signature", "missing X-Hub-Signature-256")
    if not well_formed_signature(header):
        raise Rejected(401, "signature", "invalid X-Hub-Signature-256")
    declared = request.content_length
    if declared is not None and declared > MAX_BODY:
        raise Rejected(413, "too-large", "payload over GitHub's 25 MB cap")
    body = Body(budget)
    try:
        if declared is not None:
            body.reserve(declared)
            # calloc'd: pages are touched only as the bytes arrive.
            body.data = bytearray(declared)
        mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)
        filled = 0

        def take(chunk: bytes) -> None:
            nonlocal filled
            size = len(chunk)
            if filled + size > MAX_BODY:
                raise Rejected(413, "too-large", "payload over GitHub's 25 MB cap")
            if declared is None:
                while filled + size > body.reserved:
                    body.reserve(CHUNKED_STEP)
                body.data += chunk
            else:
                body.data[filled:filled + size] = chunk
            mac.update(chunk)
            filled += size

        content = request.content
        take(content.read_nowait())  # a small body is usually all here already: no timer for it
        if not content.at_eof():
            async with asyncio.timeout(BODY_READ_SECONDS):
                async for chunk in content.iter_any():
                    take(chunk)
        if declared is not None and filled != declared:
            raise Rejected(400, "malformed", "body shorter than its Content-Length")
        if not hmac.compare_digest("sha256=" + mac.hexdigest(), header.strip().lower()):
            raise Rejected(401, "signature", "invalid X-Hub-Signature-256")
    except (ConnectionError, aiohttp.ClientError, HttpProcessingError):
        body.release()
        raise Rejected(400, "incomplete", "body ended early") from None
    except TimeoutError:
        body.release()
        raise Rejected(408, "slow", f"body not received within {BODY_READ_SECONDS:.0f} s") from None
    except BaseException:
        body.release()
        raise
    return body


def _depth_ok(value: Any, limit: int) -> bool:
    """Is ``value`` nested at most ``limit`` containers deep? Level by level, without recursion (about
    30 us for GitHub's 12 KB issues.opened example)."""
    level, depth = [value], 1
    while level:
        if depth > limit:
            return False
        below: list[Any] = []
        append = below.append
        for item in level:
            for child in (item.values() if type(item) is dict else item):
                kind = type(child)
                if kind is dict or kind is list:
                    append(child)
        level, depth = below, depth + 1
    return True


def _text(data: bytes | bytearray | str, what: str) -> str:
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadBody(f"{what} is not UTF-8 (byte {exc.start}); GitHub sends UTF-8 JSON") from None
    # A BOM is not JSON, but it is unambiguous: drop it here so the stored text parses in the worker.
    return text[1:] if text.startswith("\ufeff") else text


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        payload = json.loads(text)
    except RecursionError:
        raise BadBody(f"{what}: JSON nested too deeply") from None
    except ValueError as exc:
        raise BadBody(f"{what}: malformed JSON: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(payload, dict):
        raise BadBody(f"{what}: payload is not a JSON object")
    # Nesting deeper than the limit needs more brackets than the limit; most payloads have fewer.
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH and not _depth_ok(payload, MAX_JSON_DEPTH):
        raise BadBody(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return payload


def decode_payload(data: bytes | bytearray, content_type: str) -> tuple[dict[str, Any], str]:
    """(payload, text to store) from a verified body; ``BadBody`` with a short reason otherwise.

    ``application/x-www-form-urlencoded`` is GitHub's other content type: the JSON is the ``payload``
    field of the form, and the signature covers the form as sent (checked before this)."""
    if content_type == "application/x-www-form-urlencoded":
        form_text = _text(data, "form body")
        try:
            fields = urllib.parse.parse_qs(form_text, strict_parsing=True, errors="strict", max_num_fields=20)
        except (ValueError, UnicodeDecodeError):
            raise BadBody("form body is not URL-encoded fields") from None
        values = fields.get("payload") or []
        if len(values) != 1:
            raise BadBody("form body needs exactly one 'payload' field (or send application/json)")
        text = _text(values[0], "payload field")
        return _json_object(text, "payload field"), text
    text = _text(data, "body")
    return _json_object(text, "body"), text
