"""Local tiers first, the big model only when they are unsure: one calibrated decision per issue.

The repo's learned classifier (when it has enough history) and the local LLM are combined by a weighted
product of their probabilities (a log-linear pool; the LLM's weight is 0 by default because on real data it adds
nothing beyond the repo's own history with the bundled 135M model, see docs/benchmarks-triage.md). Below ``triage.threshold``, or when
the local output fails validation, the cascade escalates to the remote fallback, if one is configured,
enabled, under its daily caps and its breaker is closed; otherwise the result is marked ``uncertain`` and
the triage decision applies nothing uncertain. Every model call is logged to ``model_calls``.

The threshold is the stricter of ``triage.threshold`` and the one the repo's last retrain chose (kv
``learning:OWNER/NAME``): a learned threshold can only make the bot more careful than the maintainer asked.
A candidate setup (``triage.candidate``, issue 8) runs through the same class: ``predict(threshold=...,
log_as="shadow:", escalate=False)`` for a shadow run, :meth:`at_threshold` for a threshold-only candidate
(no model call), :meth:`candidate` for another local GGUF.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import threading
import time
from dataclasses import replace
from typing import Any, Callable

from bot.models.base import (
    KINDS,
    TIER_COMBINED,
    TIER_LOCAL,
    IssueText,
    Model,
    Prediction,
    PromptTemplate,
    load_prompt,
    normalise_probs,
    top_kind,
)
from bot.models.classifier import IssueClassifier
from bot.models.remote import DailyBudget, RemoteError

log = logging.getLogger(__name__)

# Weight of the local LLM's log-probabilities next to the classifier's, chosen on the NLBSE dev data:
# SmolLM2-135M zero-shot scored 0.34 macro-F1 there and any weight > 0 lowered the pooled F1 (w=0.1: -0.02,
# w=0.25: -0.14), so by default a repo with a trained classifier decides the kind from it alone and the LLM
# writes the summary. A larger GGUF (LOCAL_MODEL_PATH) may earn a weight; re-run the eval to choose it.
LLM_WEIGHT = 0.0


def combine(classifier_probs: dict[str, float] | None, llm_probs: dict[str, float] | None,
            llm_weight: float = LLM_WEIGHT) -> dict[str, float]:
    """Log-linear pool ``p_clf * p_llm ** w`` renormalised; either side may be missing."""
    if classifier_probs is None and llm_probs is None:
        return normalise_probs({})
    if classifier_probs is None:
        return normalise_probs(llm_probs or {})
    if llm_probs is None or llm_weight == 0:
        return normalise_probs(classifier_probs)
    pooled = {}
    for kind in KINDS:
        c = classifier_probs.get(kind, 0.0)
        l = max(llm_probs.get(kind, 0.0), 1e-6)
        pooled[kind] = c * math.exp(llm_weight * math.log(l)) if c > 0 else 0.0
    return normalise_probs(pooled)


class Cascade:
    """Classifier + local LLM, then the remote fallback below the threshold.

    ``classifiers`` maps a repo to its trained classifier, or is a callable ``repo -> classifier|None``
    (e.g. loading from the database). ``local`` and ``remote`` may be ``None`` (no LLM / no fallback).
    """

    def __init__(self, *, local: Model | None = None, remote: Model | None = None,
                 classifiers: dict[str, IssueClassifier] | Callable[[str], IssueClassifier | None] | None = None,
                 db: Any = None, budget: DailyBudget | None = None, llm_weight: float = LLM_WEIGHT,
                 prompt: PromptTemplate | None = None) -> None:
        self.local = local
        self.remote = remote
        self._classifiers = classifiers if classifiers is not None else {}
        self.db = db
        self.budget = budget or DailyBudget(db)
        self.llm_weight = llm_weight
        self.prompt = prompt or load_prompt("triage")
        self.abstractive_summaries = False
        """May ``triage.summary: model`` use this cascade's summaries? Set by the factory: only for a
        model the operator chose (LOCAL_MODEL_PATH, or one handed in), not the bundled 135M GGUF."""
        self.candidates: dict[str, Cascade] = {}
        """Candidate cascades by GGUF path (see :meth:`candidate`); tests may put their own here."""
        self.candidate_dirs: list[str] = []
        """Directories a candidate GGUF may be loaded from (the server sets them; a repo's config cannot)."""
        self._candidates_lock = threading.Lock()

    def classifier_for(self, repo: str) -> IssueClassifier | None:
        source = self._classifiers
        found = source(repo) if callable(source) else source.get(repo)
        return found if found is not None and found.usable() else None

    def set_classifier(self, repo: str, classifier: IssueClassifier) -> None:
        if callable(self._classifiers):
            raise TypeError("classifiers come from a loader; store the new one where it loads from")
        self._classifiers[repo] = classifier

    def forget_classifier(self, repo: str) -> None:
        """Drop the loader's cached classifier of ``repo`` so the next issue loads the one just stored.

        A plain mapping holds what was set explicitly and is left alone."""
        cache = getattr(self._classifiers, "cache", None)
        if cache is not None:
            cache.pop(repo, None)
        for candidate in list(self.candidates.values()):
            candidate.forget_classifier(repo)

    # -- thresholds ------------------------------------------------------------------------------
    def learned_threshold(self, repo: str) -> float | None:
        """The threshold the repo's last successful retrain chose (kv ``learning:OWNER/NAME``), if any."""
        if self.db is None or not repo:
            return None
        from bot.db import kv_get

        try:
            state = kv_get(self.db, f"learning:{repo}") or {}
        except Exception:  # noqa: BLE001 - no kv table yet (a bare database): no learned threshold
            return None
        value = state.get("threshold")
        if not state.get("trained", True) or not isinstance(value, (int, float)) or isinstance(value, bool):
            return None  # a retrain that stored no classifier chose nothing the live tiers can use
        if state.get("insufficient"):
            return None  # too little held-back history to judge: the configured threshold stands
        return float(value)

    def threshold_for(self, repo: str, triage_config: dict[str, Any] | None = None) -> float:
        """``triage.threshold``, raised to the learned threshold when that is stricter (never lowered)."""
        from bot.config import DEFAULTS

        triage_config = triage_config or DEFAULTS["triage"]
        threshold = float(triage_config.get("threshold", DEFAULTS["triage"]["threshold"]))
        learned = self.learned_threshold(repo)
        return max(threshold, learned) if learned is not None else threshold

    # -- candidates ------------------------------------------------------------------------------
    def candidate(self, model_path: str) -> "Cascade":
        """A cascade like this one with another local GGUF (loaded once, then cached).

        The path comes from a repository's config, so it must name a ``.gguf`` file inside one of
        :attr:`candidate_dirs` (server-side); anything else raises ``ValueError``."""
        with self._candidates_lock:
            if model_path in self.candidates:
                return self.candidates[model_path]
            real = os.path.realpath(model_path)
            allowed = [os.path.realpath(d) for d in self.candidate_dirs if d]
            if not real.endswith(".gguf") or not any(os.path.commonpath([real, d]) == d for d in allowed):
                raise ValueError(f"candidate model {model_path!r} is not a .gguf file in an allowed directory")
            from bot.models.local import LocalModel

            cascade = Cascade(local=LocalModel(real), remote=self.remote, classifiers=self._classifiers, db=self.db,
                              budget=self.budget, llm_weight=self.llm_weight, prompt=self.prompt)
            self.candidates[model_path] = cascade
            return cascade

    def at_threshold(self, decided: Prediction, threshold: float) -> Prediction:
        """What this cascade would have decided at another ``threshold``, from a decision it made: no model
        call. The local prediction is reused; when it is below ``threshold`` the outcome is the one the
        decision already had on its escalation path, or - if it had accepted the local answer - a would-be
        escalation (``raw["would_escalate"]``; the fallback is never called for a comparison)."""
        local: Prediction = decided.raw.get("local_prediction") or decided
        used = float(decided.raw.get("threshold", threshold))
        accepted_before = local.valid and local.confidence >= used
        if local.valid and local.confidence >= threshold:
            out = replace(local, uncertain=False, escalated=False, reason="")
        elif not accepted_before:
            out = replace(decided)  # the same escalation path, the same outcome
        elif self.remote is None:
            out = replace(local, uncertain=True, reason=f"confidence {local.confidence:.2f} < {threshold:.2f}; "
                                                        "no fallback configured")
        else:
            out = replace(local, uncertain=True, reason=f"confidence {local.confidence:.2f} < {threshold:.2f}; "
                                                        "would escalate (not called)")
            out.raw = {**local.raw, "would_escalate": True}
            return out
        out.raw = {**out.raw, "threshold": threshold}
        return out

    # -- logging ---------------------------------------------------------------------------------
    def _log(self, prediction: Prediction, *, repo: str, issue_number: int | None, delivery_id: str,
             installation_id: int | None, escalated: bool = False, reason: str = "",
             uses_prompt: bool = True, log_as: str = "", log_extra: dict[str, Any] | None = None) -> None:
        if self.db is None:
            return
        from bot.db import log_model_call

        try:
            log_model_call(
                self.db, delivery_id=delivery_id, repo=repo, issue=issue_number,
                tier=log_as + (prediction.tier or ""),
                model=prediction.model, prompt_name=self.prompt.name if uses_prompt else None,
                prompt_sha256=self.prompt.sha256 if uses_prompt else None,
                input_tokens=prediction.input_tokens, output_tokens=prediction.output_tokens,
                latency_ms=round(prediction.latency_ms, 2), cost_usd=prediction.cost_usd,
                escalated=int(escalated), reason=reason, installation_id=installation_id,
                output={"kind": prediction.kind, "confidence": round(prediction.confidence, 4),
                        "valid": prediction.valid, **(log_extra or {})},
            )
        except Exception:  # the call log must never break triage
            log.exception("could not log a model call", extra={"repo": repo, "issue": issue_number})

    # -- the decision ----------------------------------------------------------------------------
    def local_prediction(self, issue: IssueText, *, repo: str = "", want_summary: bool = True,
                         **log_fields: Any) -> Prediction:
        """Combine the local tiers (no escalation); logs each call when ``log_fields`` are given.

        When the repo's classifier decides alone (LLM weight 0) and no model-written summary is wanted,
        the LLM is not called at all: it would add seconds and change nothing."""
        repo = repo or issue.repo
        classifier = self.classifier_for(repo)
        clf_pred = llm_pred = None
        if classifier is not None:
            clf_pred = classifier.predict(issue)
            if log_fields:
                self._log(clf_pred, repo=repo, uses_prompt=False, **log_fields)
        skip_llm = clf_pred is not None and self.llm_weight == 0 and not want_summary
        if self.local is not None and not skip_llm:
            try:
                if "summary" in inspect.signature(self.local.predict).parameters:
                    llm_pred = self.local.predict(issue, summary=want_summary)
                else:
                    llm_pred = self.local.predict(issue)
            except Exception as exc:  # a broken local model must not stop triage
                log.exception("local model failed", extra={"repo": repo})
                llm_pred = Prediction(kind="other", confidence=0.0, probs=normalise_probs({}), tier=TIER_LOCAL,
                                      model=getattr(self.local, "model_id", "local"), valid=False,
                                      reason=f"local model error: {type(exc).__name__}")
            if log_fields:
                self._log(llm_pred, repo=repo, reason=llm_pred.reason, **log_fields)
        if clf_pred is None and llm_pred is None:
            return Prediction(kind="other", confidence=0.0, probs=normalise_probs({}), tier=TIER_LOCAL,
                              valid=False, reason="no local model")
        if clf_pred is not None and llm_pred is not None:
            probs = combine(clf_pred.probs, llm_pred.probs if llm_pred.valid or llm_pred.probs else None,
                            self.llm_weight)
            kind, confidence = top_kind(probs)
            return replace(llm_pred, kind=kind, confidence=confidence, probs=probs, tier=TIER_COMBINED,
                           model=f"{clf_pred.model}+{llm_pred.model}",
                           latency_ms=clf_pred.latency_ms + llm_pred.latency_ms,
                           raw={"classifier": clf_pred.probs, "llm": llm_pred.probs})
        return clf_pred if clf_pred is not None else llm_pred  # type: ignore[return-value]

    def predict(self, issue: IssueText, *, repo: str = "", installation_id: int = 0, delivery_id: str = "",
                triage_config: dict[str, Any] | None = None, fallback_config: dict[str, Any] | None = None,
                threshold: float | None = None, escalate: bool = True, log_as: str = "",
                log_extra: dict[str, Any] | None = None) -> Prediction:
        """The cascade's decision for one issue (sync: run it in a worker thread).

        ``threshold`` replaces the usual one (:meth:`threshold_for`), for a candidate; ``escalate=False``
        never calls the fallback (a shadow run: a would-be escalation is ``uncertain`` with
        ``raw["would_escalate"]``); ``log_as`` prefixes the logged tiers and ``log_extra`` is added to each
        logged ``output``. The result's ``raw`` carries ``local_prediction`` and ``threshold``."""
        from bot.config import DEFAULTS

        repo = repo or issue.repo
        triage_config = triage_config or DEFAULTS["triage"]
        fallback_config = fallback_config or DEFAULTS["fallback"]
        threshold = self.threshold_for(repo, triage_config) if threshold is None else float(threshold)
        log_fields = {"issue_number": issue.number, "delivery_id": delivery_id,
                      "installation_id": installation_id, "log_as": log_as, "log_extra": log_extra}
        started = time.perf_counter()
        want_summary = triage_config.get("summary", "extractive") == "model"
        local = self.local_prediction(issue, repo=repo, want_summary=want_summary, **log_fields)
        notes = {"local_prediction": local, "threshold": threshold}
        if local.valid and local.confidence >= threshold:
            return replace(local, latency_ms=(time.perf_counter() - started) * 1000, raw={**local.raw, **notes})
        why = (f"confidence {local.confidence:.2f} < {threshold:.2f}" if local.valid
               else (local.reason or "invalid local output"))
        if not escalate and self.remote is not None:
            return replace(local, uncertain=True, reason=f"{why}; would escalate (not called)",
                           latency_ms=(time.perf_counter() - started) * 1000,
                           raw={**local.raw, **notes, "would_escalate": True})
        outcome = self._escalate(issue, repo=repo, why=why, fallback_config=fallback_config, **log_fields)
        if isinstance(outcome, Prediction):
            # Keep the local summary if the big model gave none.
            outcome.summary = outcome.summary or local.summary
            outcome.latency_ms = (time.perf_counter() - started) * 1000
            outcome.raw = {**(outcome.raw or {}), **notes}
            return outcome
        return replace(local, uncertain=True, reason=f"{why}; {outcome}",
                       latency_ms=(time.perf_counter() - started) * 1000, raw={**local.raw, **notes})

    def _escalate(self, issue: IssueText, *, repo: str, why: str, fallback_config: dict[str, Any],
                  issue_number: int | None, delivery_id: str, installation_id: int, log_as: str = "",
                  log_extra: dict[str, Any] | None = None) -> Prediction | str:
        """The remote prediction, or the reason there is none."""
        if self.remote is None:
            return "no fallback configured"
        if not fallback_config.get("enabled", True):
            return "fallback disabled in config"
        reservation, capped = self.budget.reserve(repo, fallback_config)
        if capped:
            log.info("fallback not called for %s: %s", repo, capped, extra={"repo": repo, "issue": issue_number})
            return capped
        try:
            try:
                prediction = self.remote.predict(issue)
            except RemoteError as exc:
                failed = Prediction(kind="other", confidence=0.0, tier="remote",
                                    model=getattr(self.remote, "model_id", "remote"), valid=False,
                                    input_tokens=exc.input_tokens, output_tokens=exc.output_tokens,
                                    cost_usd=exc.cost_usd, reason=exc.reason)
                self._log(failed, repo=repo, issue_number=issue_number, delivery_id=delivery_id,
                          installation_id=installation_id, escalated=True, reason=f"{why}; {exc.reason}",
                          log_as=log_as, log_extra=log_extra)
                self.budget.record(repo, exc.cost_usd)
                return f"fallback failed: {exc.reason}"
            prediction.escalated = True
            prediction.reason = why
            self._log(prediction, repo=repo, issue_number=issue_number, delivery_id=delivery_id,
                      installation_id=installation_id, escalated=True, reason=why, log_as=log_as,
                      log_extra=log_extra)
            self.budget.record(repo, prediction.cost_usd)
            return prediction
        finally:
            # After the call is in the log, so it is counted by one or the other at every moment.
            self.budget.release(reservation)
