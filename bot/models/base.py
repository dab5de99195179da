"""The one small interface every triage model sits behind (local GGUF, learned classifier, remote fallback).

As in simonw/llm: a model has an id and one method; it returns plain data. ``predict`` is synchronous
because llama.cpp and scikit-learn are; callers run it in a worker thread (``asyncio.to_thread``), never
on the event loop. ``FakeModel`` returns queued answers and records what it was asked, for handler tests.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, runtime_checkable

KINDS: tuple[str, ...] = ("bug", "feature", "question", "docs", "other")

# Which tier produced a prediction; also the ``tier`` column of ``model_calls``.
TIER_CLASSIFIER = "classifier"
TIER_LOCAL = "local"
TIER_COMBINED = "combined"
TIER_REMOTE = "remote"
TIER_FAKE = "fake"


@dataclass(frozen=True)
class IssueText:
    """The untrusted text of one issue, as the models see it."""

    title: str
    body: str = ""
    repo: str = ""
    number: int | None = None
    author: str = ""

    @classmethod
    def from_dict(cls, issue: dict[str, Any], repo: str = "") -> "IssueText":
        """Build from a GitHub issue payload (or any dict with ``title``/``body``)."""
        user = issue.get("user") or {}
        return cls(
            title=str(issue.get("title") or ""),
            body=str(issue.get("body") or ""),
            repo=repo or str(issue.get("repo") or ""),
            number=issue.get("number"),
            author=str(user.get("login") or issue.get("author") or ""),
        )


@dataclass
class Prediction:
    """What a model says about one issue.

    ``probs`` maps every kind the model knows to a probability (they sum to ~1); ``confidence`` is the
    calibrated probability that ``kind`` is right. ``valid`` is False when the model's output failed
    validation (the cascade then escalates). ``tier`` says which tier decided ("uncertain" decisions keep
    the tier that produced them and set ``uncertain``).
    """

    kind: str
    confidence: float
    probs: dict[str, float] = field(default_factory=dict)
    summary: str = ""
    missing: list[str] = field(default_factory=list)
    tier: str = ""
    model: str = ""
    latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    raw: dict[str, Any] = field(default_factory=dict)
    valid: bool = True
    uncertain: bool = False
    escalated: bool = False
    reason: str = ""
    cost_usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Model(Protocol):
    """Anything that can classify an issue. Implementations must be safe to call from a worker thread."""

    model_id: str

    def predict(self, issue: IssueText) -> Prediction:  # pragma: no cover - protocol
        ...


def normalise_probs(scores: dict[str, float], kinds: Iterable[str] = KINDS) -> dict[str, float]:
    """Return probabilities over ``kinds`` that sum to 1 (missing kinds get 0; all-zero -> uniform)."""
    kinds = list(kinds)
    cleaned = {k: max(0.0, float(scores.get(k, 0.0))) for k in kinds}
    total = sum(cleaned.values())
    if total <= 0:
        return {k: 1.0 / len(kinds) for k in kinds}
    return {k: v / total for k, v in cleaned.items()}


def top_kind(probs: dict[str, float]) -> tuple[str, float]:
    """The most probable kind and its probability (ties broken by KINDS order)."""
    order = {k: i for i, k in enumerate(KINDS)}
    kind = max(probs, key=lambda k: (probs[k], -order.get(k, 99)))
    return kind, probs[kind]


class FakeModel:
    """A model for tests: returns queued answers in order and records every issue it was asked about.

    ``answers`` may hold ``Prediction`` objects, dicts of Prediction fields, or exceptions (raised when
    reached). When the queue is empty, ``default`` is returned (or an ``other``/0.0 prediction).
    """

    def __init__(self, answers: Iterable[Any] = (), *, model_id: str = "fake", tier: str = TIER_FAKE,
                 default: Prediction | None = None) -> None:
        self.model_id = model_id
        self.tier = tier
        self.answers: deque[Any] = deque(answers)
        self.default = default
        self.calls: list[IssueText] = []
        self._lock = threading.Lock()

    def queue(self, *answers: Any) -> None:
        """Add answers to the end of the queue."""
        self.answers.extend(answers)

    def predict(self, issue: IssueText) -> Prediction:
        with self._lock:
            self.calls.append(issue)
            answer = self.answers.popleft() if self.answers else self.default
        if isinstance(answer, BaseException):
            raise answer
        if answer is None:
            answer = Prediction(kind="other", confidence=0.0, probs=normalise_probs({}))
        if isinstance(answer, dict):
            fields = dict(answer)
            kind = fields.setdefault("kind", "other")
            fields.setdefault("confidence", 1.0)
            fields.setdefault("probs", {k: (1.0 if k == kind else 0.0) for k in KINDS})
            answer = Prediction(**fields)
        else:
            answer = Prediction(**asdict(answer))
        answer.tier = answer.tier or self.tier
        answer.model = answer.model or self.model_id
        return answer


# ---------------------------------------------------------------------------------------------------
# The triage prompt and its output schema, shared by the local and the remote tier.

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
MISSING_ITEMS: tuple[str, ...] = (
    "version", "steps to reproduce", "expected vs actual behaviour", "logs or error output", "use case",
)
MAX_ISSUE_CHARS = 2000  # what of an issue's text a model sees; enough for the kind, bounded for n_ctx


def triage_schema(kinds: Iterable[str] = KINDS) -> dict[str, Any]:
    """The JSON schema every model answer must satisfy (also the llama.cpp grammar)."""
    return {
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": list(kinds)},
            "summary": {"type": "string", "maxLength": 300},
            "missing": {"type": "array", "items": {"type": "string", "enum": list(MISSING_ITEMS)},
                        "maxItems": len(MISSING_ITEMS)},
        },
        "required": ["kind", "summary", "missing"],
        "additionalProperties": False,
    }


class InvalidOutput(ValueError):
    """A model's answer is not a JSON object matching ``triage_schema``."""


def validate_output(text: str | dict[str, Any]) -> dict[str, Any]:
    """Parse and check a model answer; return ``{"kind", "summary", "missing"}`` or raise InvalidOutput."""
    if isinstance(text, dict):
        data = text
    else:
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise InvalidOutput(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidOutput("not a JSON object")
    kind = data.get("kind")
    if kind not in KINDS:
        raise InvalidOutput(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    summary = data.get("summary", "")
    if not isinstance(summary, str):
        raise InvalidOutput("summary is not a string")
    missing = data.get("missing", [])
    if not isinstance(missing, list) or not all(isinstance(m, str) for m in missing):
        raise InvalidOutput("missing is not a list of strings")
    return {
        "kind": kind,
        "summary": " ".join(summary.split())[:300],
        "missing": [m for m in dict.fromkeys(missing) if m in MISSING_ITEMS],
    }


@dataclass(frozen=True)
class PromptTemplate:
    """One template from ``prompts/``: its name and sha256 are logged with every call that used it."""

    name: str
    sha256: str
    system: str
    user: str

    def messages(self, issue: IssueText, max_chars: int = MAX_ISSUE_CHARS) -> list[dict[str, str]]:
        """Chat messages with the issue inside the delimited data block."""
        title = _strip_delimiters(issue.title)[:300]
        body = _strip_delimiters(issue.body)[:max_chars]
        user = self.user.replace("{title}", title).replace("{body}", body)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


_DELIMITER = re.compile(r"</?\s*(issue|title|body)\s*>", re.IGNORECASE)


def _strip_delimiters(text: str) -> str:
    """Remove our own delimiter tags from untrusted text so it cannot close the data block early."""
    return _DELIMITER.sub(" ", text or "")


@functools.lru_cache(maxsize=16)
def load_prompt(name: str = "triage", directory: str | None = None) -> PromptTemplate:
    """Read ``prompts/<name>.md`` (leading HTML comment dropped; split at ``=== user ===``)."""
    path = Path(directory or PROMPTS_DIR) / f"{name}.md"
    raw = path.read_text(encoding="utf-8")
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()
    text = re.sub(r"\A\s*<!--.*?-->\s*", "", raw, flags=re.S)
    system, _, user = text.partition("=== user ===")
    return PromptTemplate(name=name, sha256=digest, system=system.strip(), user=user.strip())
