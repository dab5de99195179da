"""Builds the model cascade the server uses, from settings: the bundled (or configured) GGUF, each
repository's learned classifier from the database, and the fallback when an API key is set."""
from __future__ import annotations

import logging
from typing import Any

import cachetools

from bot.models.base import Model
from bot.models.cascade import Cascade
from bot.models.classifier import load_classifier

log = logging.getLogger(__name__)


def classifier_loader(db: Any):
    """repo -> stored classifier, cached a minute so a retrain is picked up without a restart."""
    cache: cachetools.TTLCache = cachetools.TTLCache(maxsize=256, ttl=60)

    def load(repo: str):
        if repo not in cache:
            try:
                cache[repo] = load_classifier(db, repo)
            except Exception:  # noqa: BLE001 - a stale pickle must not stop triage; the LLM still runs
                log.exception("could not load the classifier of %s", repo)
                cache[repo] = None
        return cache[repo]

    load.cache = cache  # type: ignore[attr-defined]
    return load


def build_cascade(settings: Any, db: Any, *, metrics: Any = None, local: Model | None = None) -> Cascade:
    """The cascade for the server: local GGUF + per-repo classifiers, fallback if configured."""
    from bot.models.remote import DailyBudget, RemoteModel

    if local is None:
        from bot.models.local import LocalModel

        local = LocalModel(settings.local_model_path)
    remote = RemoteModel.from_settings(settings)
    if remote is None:
        log.info("no OPENAI_API_KEY: no fallback; the bot acts only on what the local tier is sure of")
    # The operator's ceilings hold over every repository; a repo's `fallback` caps only lower them.
    budget = DailyBudget(db, max_calls=getattr(settings, "fallback_max_calls_per_day", None),
                         max_cost=getattr(settings, "fallback_max_cost_per_day", None))
    cascade = Cascade(local=local, remote=remote, classifiers=classifier_loader(db), db=db, budget=budget)
    # `triage.summary: model` only with a model the operator chose: the bundled 135M one invents too often.
    cascade.abstractive_summaries = bool(getattr(settings, "local_model_path", None))
    # A repo's `triage.candidate.model_path` may only name a GGUF the operator put here (CANDIDATE_MODEL_DIR).
    cascade.candidate_dirs = [d for d in (getattr(settings, "candidate_model_dir", None),) if d]
    return cascade


def wrap(model: Any, db: Any, settings: Any = None) -> Cascade:
    """Put a bare model (e.g. the tests' FakeModel) behind the cascade, so logging and thresholds apply.

    A cascade made elsewhere gets the database and, with ``settings``, the operator's spend ceilings
    when it has none of its own: no way into the server skips them."""
    if isinstance(model, Cascade):
        if model.db is None:
            model.db = db
        if model.budget.db is None:
            model.budget.db = db
        if settings is not None:
            if model.budget.max_calls is None:
                model.budget.max_calls = getattr(settings, "fallback_max_calls_per_day", None)
            if model.budget.max_cost is None:
                model.budget.max_cost = getattr(settings, "fallback_max_cost_per_day", None)
        return model
    cascade = Cascade(local=model, remote=None, classifiers=classifier_loader(db), db=db)
    cascade.abstractive_summaries = True  # a model handed in explicitly (tests, evals) is the operator's choice
    return cascade
