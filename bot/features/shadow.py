"""Shadow runs and canaries of a candidate triage setup (issue 8): ``triage.candidate`` in the repo config.

* ``mode: shadow`` - on every live issue the current setup decides and is applied as always; then, in a
  worker thread, the candidate's decision is computed too and logged, never applied.
* ``mode: canary`` - the issues :func:`bot.features.learning.in_canary` selects (``triage.canary`` per cent,
  a stable hash of repo and number) get the candidate's decision applied instead; its model calls carry
  ``"canary": true`` in their ``output``, and the current setup's decision is computed in shadow for them.

A candidate is a ``threshold`` (no second model: the current prediction is reused and decided at the other
threshold, :meth:`bot.models.cascade.Cascade.at_threshold`) and/or a ``model_path`` (another local GGUF,
which must sit in a server-allowed directory). The side that is not applied never calls the fallback: when
it would escalate, the applied side's fallback answer is reused if there is one, else its outcome is
unknown (``known: false``). Each comparison is one ``model_calls`` row, tier ``shadow:decision``, whose
``output`` holds the candidate's kind, confidence and threshold and both decisions; the rows of a
candidate model's own calls have their tier prefixed ``shadow:``. ``python -m bot models compare`` reads them.
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from typing import Any

from bot.core.triage import decide
from bot.models.base import IssueText, Prediction

log = logging.getLogger(__name__)

SHADOW = "shadow:"
DECISION_TIER = "shadow:decision"


def candidate_of(config: dict[str, Any]) -> dict[str, Any] | None:
    """The repo's candidate setup when one is switched on and says something; else ``None``."""
    candidate = config.get("candidate") or {}
    if candidate.get("mode", "off") not in ("shadow", "canary"):
        return None
    if candidate.get("threshold") is None and not candidate.get("model_path"):
        return None
    return candidate


def setup_name(candidate: dict[str, Any]) -> str:
    """A short name for the candidate in the call log and the report."""
    parts = []
    if candidate.get("model_path"):
        parts.append(f"model={os.path.basename(str(candidate['model_path']))}")
    if candidate.get("threshold") is not None:
        parts.append(f"threshold={float(candidate['threshold']):.2f}")
    return " ".join(parts)


def selected_for_canary(repo: str, number: int, config: dict[str, Any]) -> bool:
    from bot.features.learning import in_canary

    candidate = candidate_of(config)
    return bool(candidate and candidate["mode"] == "canary" and in_canary(repo, number, config.get("canary") or 0))


def decide_config(config: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """The triage config the candidate's decision is made with (its threshold, if it sets one)."""
    if candidate.get("threshold") is None:
        return config
    return {**config, "threshold": float(candidate["threshold"])}


def _candidate_cascade(ctx, candidate: dict[str, Any]):
    return ctx.models.candidate(candidate["model_path"]) if candidate.get("model_path") else ctx.models


def candidate_threshold(ctx, candidate: dict[str, Any], config: dict[str, Any]) -> float:
    if candidate.get("threshold") is not None:
        return float(candidate["threshold"])
    return _candidate_cascade(ctx, candidate).threshold_for(ctx.repo, config)


def predict_kwargs(ctx, candidate: dict[str, Any]) -> dict[str, Any]:
    """How ``bot.features.triage.predict`` runs the candidate for a canary issue (applied, logged as canary)."""
    return {"cascade": _candidate_cascade(ctx, candidate), "threshold": candidate.get("threshold"),
            "log_extra": {"canary": True, "setup": setup_name(candidate)}}


def _decision(issue: dict[str, Any], config: dict[str, Any], labels: set[str], prediction: Prediction,
              threshold: float, *, repo: str) -> dict[str, Any]:
    plan = decide(issue, {**config, "threshold": threshold}, labels, prediction, repo=repo)
    would = bool(prediction.raw.get("would_escalate"))
    return {"kind": plan.data["kind"], "predicted": prediction.kind, "confidence": round(prediction.confidence, 4),
            "threshold": round(threshold, 4), "applied": bool(plan.data["confident"]),
            "escalated": bool(prediction.escalated or would), "known": not would, "tier": prediction.tier,
            "latency_ms": round(float(prediction.latency_ms or 0.0), 2), "cost_usd": float(prediction.cost_usd or 0.0)}


def _reuse_fallback(shadow: Prediction, applied: Prediction) -> Prediction:
    """A shadow side that would escalate takes the applied side's fallback answer when there is one."""
    if shadow.raw.get("would_escalate") and applied.escalated:
        return replace(applied, raw={"threshold": shadow.raw.get("threshold"), "fallback_reused": True})
    return shadow


def _shadow_side(ctx, text: IssueText, config: dict[str, Any], candidate: dict[str, Any], applied: Prediction,
                 *, canary: bool) -> tuple[Prediction, float]:
    """Sync (worker thread): the decision of the side that was not applied, and its threshold."""
    models = ctx.models
    common = {"repo": ctx.repo, "installation_id": ctx.installation_id, "delivery_id": ctx.delivery_id,
              "triage_config": config, "fallback_config": ctx.config.section("fallback"), "escalate": False,
              "log_as": SHADOW, "log_extra": {"canary": canary, "setup": setup_name(candidate)}}
    if not canary:  # the candidate in shadow
        threshold = candidate_threshold(ctx, candidate, config)
        if not candidate.get("model_path"):
            return models.at_threshold(applied, threshold), threshold
        shadow = _candidate_cascade(ctx, candidate).predict(text, threshold=threshold, **common)
        return _reuse_fallback(shadow, applied), threshold
    threshold = models.threshold_for(ctx.repo, config)  # the current setup, in shadow for a canary issue
    if not candidate.get("model_path"):
        return models.at_threshold(applied, threshold), threshold
    shadow = models.predict(text, **common)
    return _reuse_fallback(shadow, applied), threshold


async def compare(ctx, issue: dict[str, Any], labels: set[str], config: dict[str, Any], candidate: dict[str, Any],
                  applied: Prediction, *, canary: bool) -> dict[str, Any] | None:
    """Compute the other side's decision (never applied) and log the comparison row; returns its output.

    Never raises: a failing candidate must not disturb triage."""
    try:
        text = IssueText.from_dict(issue, ctx.repo)
        other, other_threshold = await asyncio.to_thread(_shadow_side, ctx, text, config, candidate, applied,
                                                         canary=canary)
        applied_threshold = (candidate_threshold(ctx, candidate, config) if canary
                             else ctx.models.threshold_for(ctx.repo, config))
        applied_side = _decision(issue, config, labels, applied, applied_threshold, repo=ctx.repo)
        other_side = _decision(issue, config, labels, other, other_threshold, repo=ctx.repo)
        current, cand = (other_side, applied_side) if canary else (applied_side, other_side)
        output = {"kind": cand["kind"], "predicted": cand["predicted"], "confidence": cand["confidence"],
                  "threshold": cand["threshold"], "mode": candidate["mode"], "canary": canary,
                  "setup": setup_name(candidate), "current": current, "candidate": cand}
        from bot.db import log_model_call

        log_model_call(ctx.db, delivery_id=ctx.delivery_id, repo=ctx.repo, issue=issue["number"], tier=DECISION_TIER,
                       model=setup_name(candidate), latency_ms=other_side["latency_ms"], cost_usd=0.0, escalated=0,
                       reason="canary: current setup in shadow" if canary else "shadow: candidate setup",
                       installation_id=ctx.installation_id, output=output)
        return output
    except Exception:  # noqa: BLE001 - the comparison is an experiment; triage has already been applied
        log.exception("shadow comparison failed", extra={"repo": ctx.repo, "delivery": ctx.delivery_id})
        return None
