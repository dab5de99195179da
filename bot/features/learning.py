"""Feedback as data: what maintainers do after the bot triaged becomes labelled examples, and the repo's
learned classifier is retrained from them in the background (issue 8).

Where examples come from (``training_examples.source``):

* ``maintainer`` - a person with write access set an issue's kind label (``issues.labeled``/``unlabeled``);
* ``correction`` - the same, on an issue whose kind label the bot applied (audit log) within
  ``CORRECTION_WINDOW_DAYS``, when the person's kind differs from the bot's; also an issue the bot
  closed that a person reopened (recorded, weight 0: it says the bot was wrong, not what the kind is);
* ``fallback`` - the big model's decision when the local tiers escalated (read from ``model_calls``);
* ``reaction`` - 👍/👎 on the bot's triage comment, read once when the issue is closed.

One issue can collect many rows; :func:`resolved_examples` picks the one that counts (people over
reactions over the fallback, then the latest), and a row with an empty ``kind`` retracts the issue (its
kind label was removed and none replaced it). Rows with weight 0 are kept for the record only.

Retraining happens when ``RETRAIN_AFTER`` new rows arrived since the last one: the examples are read on
the event loop, the fit runs in a worker thread (``asyncio.to_thread``), and the result is stored with
``save_classifier`` so ``classifier_loader`` picks it up. The replay (``bot/eval/replay.py``) uses the same
:func:`train_weighted` and :func:`choose_threshold`, so the benchmark measures this code.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from gidgethub.routing import Router

from bot.db import kv_get, kv_set
from bot.models.base import KINDS, IssueText

log = logging.getLogger(__name__)
router = Router()

SOURCES = ("maintainer", "correction", "reaction", "fallback")
WEIGHTS: dict[str, float] = {"maintainer": 1.0, "correction": 1.0, "reaction": 0.75, "fallback": 0.5}
"""Sample weights in training: a person's label counts double the big model's guess."""
PRECEDENCE: dict[str, int] = {"maintainer": 3, "correction": 3, "history": 3, "reaction": 2, "fallback": 1}
"""Which row decides an issue's final kind when several exist (ties: the latest)."""

CORRECTION_WINDOW_DAYS = 30
"""A person changing the bot's kind label later than this is ordinary curation, not a correction."""
RETRAIN_AFTER = 20
"""New example rows (any source) that trigger a background retrain of the repo's classifier."""
VALIDATION_SHARE = 0.2
"""The most recent share of people's labels held back to choose the threshold."""
TARGET_PRECISION = 0.95
MIN_CONFIDENT = 20
"""A threshold counts only if at least this many held-back examples are at or above it."""
THRESHOLD_GRID = tuple(round(0.50 + 0.01 * i, 2) for i in range(50))
CONFIDENCE_Z = 1.0
"""The held-back precision must clear the target at its Wilson lower bound (z = 1, ~84 % one-sided): 20
of 20 right passes, 39 of 40 does not. Plain observed precision let early thresholds, chosen on a few
dozen labels, fall to 0.5 and the bot's own decisions to ~89 % correct in the first quarter of the replay."""

_retraining: set[str] = set()  # repos with a retrain running in this process


# ------------------------------------------------------------------------------------------ schema
def ensure_schema(db: Any) -> None:
    """The ``training_examples`` table (idempotent)."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS training_examples (
            id INTEGER PRIMARY KEY,
            repo TEXT NOT NULL,
            number INTEGER NOT NULL,
            title TEXT,
            body TEXT,
            kind TEXT NOT NULL,
            label TEXT,
            source TEXT NOT NULL,
            event TEXT,
            weight REAL NOT NULL,
            actor TEXT,
            delivery_id TEXT,
            created_at REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX IF NOT EXISTS training_examples_repo ON training_examples(repo, number, id)")


def record_example(db: Any, repo: str, issue: dict[str, Any], *, kind: str, source: str, label: str = "",
                   event: str = "", actor: str = "", delivery_id: str = "", weight: float | None = None,
                   created_at: float | None = None) -> int:
    """Store one example row and return its id. ``kind`` '' retracts the issue's earlier label."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}")
    if kind and kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    row = {"repo": repo, "number": int(issue["number"]), "title": issue.get("title") or "",
           "body": issue.get("body") or "", "kind": kind, "label": label, "source": source, "event": event,
           "weight": WEIGHTS[source] if weight is None else float(weight), "actor": actor,
           "delivery_id": delivery_id, "created_at": time.time() if created_at is None else created_at}
    return db["training_examples"].insert(row).last_pk


@dataclass
class Example:
    """One issue's final label for training or export."""

    number: int
    title: str
    body: str
    kind: str
    source: str
    weight: float
    created_at: float
    label: str = ""


def resolved_examples(db: Any, repo: str) -> list[Example]:
    """Each issue's deciding row (people over reactions over the fallback, then the latest); retracted
    issues and weight-0 rows are left out."""
    best: dict[int, tuple[tuple[int, float, int], dict]] = {}
    for row in db.query("SELECT * FROM training_examples WHERE repo = ? AND weight > 0 ORDER BY id", [repo]):
        key = (PRECEDENCE.get(row["source"], 0), row["created_at"], row["id"])
        if row["number"] not in best or key >= best[row["number"]][0]:
            best[row["number"]] = (key, row)
    out = []
    for _key, row in best.values():
        if row["kind"]:
            out.append(Example(row["number"], row["title"], row["body"], row["kind"], row["source"], row["weight"],
                               row["created_at"], row["label"] or ""))
    return sorted(out, key=lambda e: (e.created_at, e.number))


# -------------------------------------------------------------------------------- training (pure-ish)
def train_weighted(issues: Sequence[IssueText], kinds: Sequence[str], weights: Sequence[float], *,
                   repo: str = "", seed: int = 0):
    """``IssueClassifier.train`` with per-example weights (maintainer labels above fallback guesses).

    Kinds with fewer than 5 examples are dropped (the calibration's 5 folds need 5 of each); needs two
    kinds left. Returns the trained ``IssueClassifier`` or ``None`` if there is not enough data yet.
    """
    from bot.models.classifier import IssueClassifier, _docs, build_pipeline

    counts = Counter(kinds)
    keep = [i for i, kind in enumerate(kinds) if counts[kind] >= 5]
    if len({kinds[i] for i in keep}) < 2:
        return None
    issues = [issues[i] for i in keep]
    kinds = [kinds[i] for i in keep]
    weights = [float(weights[i]) for i in keep]
    pipeline = build_pipeline(seed)
    pipeline.fit(_docs(issues), kinds, classifier__sample_weight=weights)
    return IssueClassifier(pipeline, [str(k) for k in pipeline.classes_], repo=repo, n_train=len(kinds),
                           counts=dict(Counter(kinds)))


def wilson_lower(correct: int, total: int, z: float = CONFIDENCE_Z) -> float:
    """Lower end of the Wilson score interval for a proportion (0 when ``total`` is 0)."""
    if total <= 0:
        return 0.0
    p = correct / total
    centre = p + z * z / (2 * total)
    margin = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return (centre - margin) / (1 + z * z / total)


def choose_threshold(confidences: Sequence[float], correct: Sequence[bool], *, target: float = TARGET_PRECISION,
                     min_confident: int = MIN_CONFIDENT, grid: Iterable[float] = THRESHOLD_GRID,
                     z: float = CONFIDENCE_Z) -> float:
    """The lowest threshold whose held-back decisions at or above it are >= ``target`` correct (at the
    Wilson lower bound), counting only thresholds with at least ``min_confident`` such decisions; 1.0
    (escalate everything) if none qualifies."""
    pairs = list(zip(confidences, correct))
    for threshold in grid:
        above = [ok for conf, ok in pairs if conf >= threshold]
        if len(above) < min_confident:
            return 1.0  # higher thresholds only keep fewer
        if wilson_lower(sum(above), len(above), z) >= target:
            return float(threshold)
    return 1.0


def fit_with_threshold(issues: Sequence[IssueText], kinds: Sequence[str], weights: Sequence[float],
                       validation: Sequence[bool], *, repo: str = "", target: float = TARGET_PRECISION,
                       min_confident: int = MIN_CONFIDENT, seed: int = 0) -> tuple[Any, float, dict[str, Any]]:
    """Fit on everything but the held-back slice, choose the threshold on that slice, then refit on all.

    ``validation[i]`` marks the held-back examples (people's most recent labels). Returns
    ``(classifier or None, threshold, details)``.
    """
    train_idx = [i for i, held in enumerate(validation) if not held]
    held_idx = [i for i, held in enumerate(validation) if held]
    threshold, details = 1.0, {"validation": len(held_idx), "insufficient": True}
    probe = train_weighted([issues[i] for i in train_idx], [kinds[i] for i in train_idx],
                           [weights[i] for i in train_idx], repo=repo, seed=seed) if held_idx else None
    if probe is not None and probe.usable():
        probs = probe.predict_proba([issues[i] for i in held_idx])
        best = [max(p, key=p.get) for p in probs]
        confidences = [p[k] for p, k in zip(probs, best)]
        correct = [k == kinds[i] for k, i in zip(best, held_idx)]
        threshold = choose_threshold(confidences, correct, target=target, min_confident=min_confident)
        # Too few held-back decisions to judge any threshold is not evidence against the classifier:
        # the live bot then keeps the configured threshold (chosen on development data) instead of 1.0.
        lowest = min(THRESHOLD_GRID)
        details["insufficient"] = sum(1 for conf in confidences if conf >= lowest) < min_confident
        covered = [ok for conf, ok in zip(confidences, correct) if conf >= threshold]
        details.update(coverage=len(covered) / len(held_idx),
                       precision=(sum(covered) / len(covered)) if covered else None)
    classifier = train_weighted(issues, kinds, weights, repo=repo, seed=seed)
    details["threshold"] = threshold
    return classifier, threshold, details


def validation_mask(examples: Sequence[Example], share: float = VALIDATION_SHARE) -> list[bool]:
    """Hold back the most recent ``share`` of people's labels (never fallback guesses: they are not truth)."""
    people = [i for i, e in enumerate(examples) if e.source != "fallback"]
    people.sort(key=lambda i: (examples[i].created_at, examples[i].number))
    held = set(people[len(people) - int(len(people) * share):]) if share > 0 else set()
    return [i in held for i in range(len(examples))]


# ------------------------------------------------------------------------------------------ labels
def label_kinds(triage_config: dict[str, Any]) -> dict[str, str]:
    """Repo label name (lower case) -> kind, from ``triage.labels``."""
    return {str(label).lower(): kind for kind, label in (triage_config.get("labels") or {}).items()
            if label and kind in KINDS}


def kinds_of(labels: Iterable[Any], mapping: dict[str, str]) -> list[str]:
    names = [(label.get("name") if isinstance(label, dict) else str(label)) or "" for label in labels]
    return list(dict.fromkeys(mapping[n.lower()] for n in names if n.lower() in mapping))


def bot_applied_kind(db: Any, repo: str, number: int, mapping: dict[str, str],
                     window_days: float = CORRECTION_WINDOW_DAYS, now: float | None = None) -> tuple[str, str] | None:
    """(kind, label) the bot applied to this issue within the window (latest), from the audit log."""
    since = (now or time.time()) - window_days * 86400
    rows = db.execute("SELECT details FROM audit WHERE repo = ? AND issue = ? AND action = 'AddLabels' "
                      "AND result = 'ok' AND ts >= ? ORDER BY id DESC", [repo, number, since]).fetchall()
    for (details,) in rows:
        for label in (json.loads(details or "{}").get("labels") or []):
            if str(label).lower() in mapping:
                return mapping[str(label).lower()], str(label)
    return None


# ------------------------------------------------------------------------------------------ handlers
async def _has_write(ctx, login: str) -> bool:
    from bot.core.commands import WRITE_PERMISSIONS
    from bot.features.commands import actor_permission

    return (await actor_permission(ctx, login)) in WRITE_PERMISSIONS


def _sender(event) -> dict[str, Any]:
    return event.data.get("sender") or {}


@router.register("issues", action="labeled")
@router.register("issues", action="unlabeled")
async def on_kind_label_changed(event, gh, ctx) -> None:
    """A person with write access set or removed a kind label: the issue's kind labels now are the data."""
    mapping = label_kinds(ctx.config.section("triage"))
    changed = ((event.data.get("label") or {}).get("name") or "").lower()
    issue = event.data["issue"]
    sender = _sender(event)
    if changed not in mapping or issue.get("pull_request") or sender.get("type") == "Bot":
        return
    if not await _has_write(ctx, sender.get("login") or ""):
        return
    number = issue["number"]
    bot = bot_applied_kind(ctx.db, ctx.repo, number, mapping)
    current = kinds_of(issue.get("labels") or [], mapping)
    if len(current) > 1 and bot is not None:
        current = [k for k in current if k != bot[0]] or current  # the person's label beats the bot's
    kind = current[0] if len(current) == 1 else ""
    label = next((n for n, k in mapping.items() if k == kind), "") if kind else ""
    source = "correction" if bot is not None and kind != bot[0] else "maintainer"
    record_example(ctx.db, ctx.repo, issue, kind=kind, label=label, source=source, event=event.data["action"],
                   actor=sender.get("login") or "", delivery_id=ctx.delivery_id)
    log.info("recorded %s example #%s: %s", source, number, kind or "(retracted)",
             extra={"delivery": ctx.delivery_id, "repo": ctx.repo, "issue": number})
    await maybe_retrain(ctx)


@router.register("issues", action="reopened")
async def on_reopened(event, gh, ctx) -> None:
    """An issue the bot closed and a person reopened: the bot was wrong (kept with weight 0)."""
    from bot.features.commands import closed_by_bot

    issue = event.data["issue"]
    if _sender(event).get("type") == "Bot" or issue.get("pull_request"):
        return
    if not await closed_by_bot(ctx, issue["number"]):
        return
    mapping = label_kinds(ctx.config.section("triage"))
    current = kinds_of(issue.get("labels") or [], mapping)
    record_example(ctx.db, ctx.repo, issue, kind=current[0] if len(current) == 1 else "", source="correction",
                   event="reopened", actor=_sender(event).get("login") or "", delivery_id=ctx.delivery_id,
                   weight=0.0)


@router.register("issues", action="opened")
async def on_opened_after_triage(event, gh, ctx) -> None:
    """The fallback's decision on a new issue becomes an example (this router runs after triage's)."""
    row = ctx.db.execute("SELECT output FROM model_calls WHERE delivery_id = ? AND escalated = 1 "
                         "AND tier NOT LIKE 'shadow:%' ORDER BY id DESC LIMIT 1", [ctx.delivery_id]).fetchone()
    if row is None:
        return
    output = json.loads(row[0] or "{}")
    if not output.get("valid", True) or output.get("kind") not in KINDS:
        return
    record_example(ctx.db, ctx.repo, event.data["issue"], kind=output["kind"], source="fallback",
                   event="opened", delivery_id=ctx.delivery_id)
    await maybe_retrain(ctx)


@router.register("issues", action="closed")
async def on_closed(event, gh, ctx) -> None:
    """👍/👎 on the bot's triage comment, read once at close (GitHub sends no webhook for reactions)."""
    from bot.actions import find_marked_comment
    from bot.core.triage import TRIAGE_MARKER

    issue = event.data["issue"]
    mapping = label_kinds(ctx.config.section("triage"))
    applied = bot_applied_kind(ctx.db, ctx.repo, issue["number"], mapping, window_days=3650)
    if applied is None or issue.get("pull_request"):
        return
    comment = await find_marked_comment(ctx, issue["number"], TRIAGE_MARKER)
    reactions = (comment or {}).get("reactions") or {}
    up, down = int(reactions.get("+1") or 0), int(reactions.get("-1") or 0)
    if up == down:
        return
    record_example(ctx.db, ctx.repo, issue, kind=applied[0] if up > down else "", label=applied[1] if up > down else "",
                   source="reaction", event=f"reactions +{up}/-{down}", delivery_id=ctx.delivery_id)


# ------------------------------------------------------------------------------------------ retraining
def _state_key(repo: str) -> str:
    return f"learning:{repo}"


def pending_examples(db: Any, repo: str) -> int:
    """Example rows recorded since the last retrain."""
    last = (kv_get(db, _state_key(repo)) or {}).get("last_example_id", 0)
    return db.execute("SELECT count(*) FROM training_examples WHERE repo = ? AND id > ?", [repo, last]).fetchone()[0]


def training_set(db: Any, repo: str, mapping: dict[str, str]) -> list[Example]:
    """The repo's labelled history from the index plus the recorded examples (which win per issue).

    Index issues whose only kind label came from the bot are left out: training on its own guesses
    would only make it surer of its mistakes.
    """
    examples = {e.number: e for e in resolved_examples(db, repo)}
    if "issues" in db.table_names():
        bot_labelled = {r[0] for r in db.execute(
            "SELECT DISTINCT issue FROM audit WHERE repo = ? AND action = 'AddLabels' AND result = 'ok'", [repo])}
        for row in db.query("SELECT number, title, body, labels, created_at FROM issues WHERE repo = ?", [repo]):
            if row["number"] in examples or row["number"] in bot_labelled:
                continue
            kinds = kinds_of(json.loads(row["labels"] or "[]"), mapping)
            if len(kinds) == 1:
                created = _timestamp(row["created_at"])
                examples[row["number"]] = Example(row["number"], row["title"] or "", row["body"] or "", kinds[0],
                                                  "history", 1.0, created)
    return sorted(examples.values(), key=lambda e: (e.created_at, e.number))


def _timestamp(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def fit_repo(examples: Sequence[Example], repo: str) -> tuple[Any, float, dict[str, Any]]:
    """Sync and CPU-bound: run it in a worker thread."""
    issues = [IssueText(e.title, e.body, repo, e.number) for e in examples]
    return fit_with_threshold(issues, [e.kind for e in examples], [e.weight for e in examples],
                              validation_mask(examples), repo=repo)


async def retrain(db: Any, repo: str, triage_config: dict[str, Any], models: Any = None) -> dict[str, Any]:
    """Retrain the repo's classifier now (fit in a worker thread) and store it; returns what happened."""
    from bot.models.classifier import save_classifier

    last_id = db.execute("SELECT coalesce(max(id), 0) FROM training_examples WHERE repo = ?", [repo]).fetchone()[0]
    examples = training_set(db, repo, label_kinds(triage_config))
    started = time.perf_counter()
    classifier, threshold, details = await asyncio.to_thread(fit_repo, examples, repo)
    state = {"last_example_id": last_id, "trained_at": time.time(), "examples": len(examples),
             "threshold": threshold, "seconds": round(time.perf_counter() - started, 2),
             "sources": dict(Counter(e.source for e in examples)), **details}
    if classifier is not None:
        save_classifier(db, repo, classifier)
        # The server's loader caches a classifier for a minute; drop ours so the next issue uses the new one.
        if models is not None and hasattr(models, "forget_classifier"):
            models.forget_classifier(repo)
    state["trained"] = classifier is not None
    kv_set(db, _state_key(repo), state)
    log.info("retrained the classifier of %s on %d examples (threshold %.2f)", repo, len(examples), threshold,
             extra={"repo": repo})
    return state


async def maybe_retrain(ctx, *, wait: bool = False) -> asyncio.Task | None:
    """Start a background retrain when ``RETRAIN_AFTER`` new examples arrived (one at a time per repo)."""
    if ctx.repo in _retraining or pending_examples(ctx.db, ctx.repo) < RETRAIN_AFTER:
        return None
    _retraining.add(ctx.repo)

    async def run() -> None:
        try:
            await retrain(ctx.db, ctx.repo, ctx.config.section("triage"), ctx.models)
        except Exception:  # noqa: BLE001 - a failed retrain keeps the old classifier
            log.exception("retrain failed", extra={"repo": ctx.repo})
        finally:
            _retraining.discard(ctx.repo)

    services = getattr(ctx, "services", None)
    task = services.spawn(run()) if services is not None else asyncio.create_task(run())
    if wait:
        await task
    return task


# ------------------------------------------------------------------------------------------ export
def export_rows(db: Any, repo: str, *, history: bool = False) -> list[dict[str, Any]]:
    """One JSON-ready row per issue: text, final kind and label, where it came from, when."""
    if history:
        from bot.config import DEFAULTS

        examples = training_set(db, repo, label_kinds(DEFAULTS["triage"]))
    else:
        examples = resolved_examples(db, repo)
    return [{"repo": repo, "number": e.number, "title": e.title, "body": e.body, "kind": e.kind, "label": e.label,
             "source": e.source, "weight": e.weight,
             "time": datetime.fromtimestamp(e.created_at, timezone.utc).isoformat(timespec="seconds")}
            for e in examples]


def recorded_repo(db: Any, repo: str) -> str | None:
    """``repo`` as this database spells it, if the database knows it at all (installed, indexed, or with
    recorded examples); None for a repository it has never seen (a typo, or another database)."""
    tables = set(db.table_names())
    for table in ("installations", "training_examples", "issues"):
        if table in tables:
            row = db.execute(f"SELECT repo FROM {table} WHERE lower(repo) = lower(?) LIMIT 1", [repo]).fetchone()
            if row:
                return row[0]
    return None


def export_main(argv: list[str]) -> int:
    """``python -m bot export-training OWNER/NAME [--out FILE] [--history]``: JSONL for fine-tuning elsewhere."""
    from bot.cli import ArgumentParser, CliError, open_database, repo_name
    from bot.config import ConfigError, Settings

    parser = ArgumentParser(prog="python -m bot export-training")
    parser.add_argument("repo", type=repo_name, help="OWNER/NAME")
    parser.add_argument("--out", help="file to write (default: stdout)")
    parser.add_argument("--history", action="store_true",
                        help="also the repo's labelled history from the index (source 'history')")
    parser.add_argument("--db", help="database path (default: DATABASE_PATH)")
    args = parser.parse_args(argv)
    if args.db:
        path, variable = args.db, "--db"
    else:
        try:
            path, variable = Settings.from_env(require_app=False).database_path, "DATABASE_PATH"
        except ConfigError as exc:
            raise CliError(f"export-training: {exc}", 2) from None
    db = open_database(path, command="export-training", variable=variable, must_exist=True)
    repo = recorded_repo(db, args.repo)
    if repo is None:
        raise CliError(f"export-training: unknown repository {args.repo}: nothing is recorded for it in {path} "
                       "(the App was never installed there, or this is another database)")
    rows = export_rows(db, repo, history=args.history)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise CliError(f"export-training: cannot write {args.out}: {exc.strerror or type(exc).__name__}") from None
        print(f"wrote {len(rows)} examples to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
        if not rows:
            print(f"export-training: no examples recorded for {repo} yet", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------ canary
def in_canary(repo: str, number: int, percent: float) -> bool:
    """Is this issue in the ``triage.canary`` percentage? A hash of repo and number, so the same issue is
    always in or out (re-deliveries and edits do not flip it) and about ``percent`` % of issues are in."""
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"{repo.lower()}#{int(number)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 10000 < percent * 100


# --- drift ------------------------------------------------------------------------------------------

WEEK = 7 * 24 * 3600
DRIFT_MIN_DECISIONS = 20  # per week and repo, before a change means anything
DRIFT_ESCALATION_JUMP = 0.25  # absolute change in escalation rate, week over week
DRIFT_MIX_JUMP = 0.30  # absolute change in one kind's share of decisions


def weekly_figures(db: Any, *, now: float | None = None, weeks: int = 2) -> dict[str, list[dict[str, Any]]]:
    """Per repo, the last ``weeks`` full weeks: decisions, escalation rate and the kind mix (from the call log)."""
    now = now or time.time()
    start = now - weeks * WEEK
    rows = db.execute(
        "SELECT repo, issue, delivery_id, max(escalated), min(ts), "
        "  (SELECT json_extract(m2.output, '$.kind') FROM model_calls m2 WHERE m2.repo = m.repo "
        "   AND m2.issue = m.issue AND m2.delivery_id = m.delivery_id AND m2.tier NOT LIKE 'shadow:%' "
        "   ORDER BY m2.id DESC LIMIT 1) "
        "FROM model_calls m WHERE ts >= ? AND ts < ? AND tier NOT LIKE 'shadow:%' "
        "GROUP BY repo, issue, delivery_id", [start, now]).fetchall()
    out: dict[str, list[dict[str, Any]]] = {}
    for repo, _issue, _delivery, escalated, ts, kind in rows:
        week = min(weeks - 1, int((ts - start) // WEEK))
        figures = out.setdefault(repo, [{"decisions": 0, "escalated": 0, "kinds": {}} for _ in range(weeks)])[week]
        figures["decisions"] += 1
        figures["escalated"] += int(bool(escalated))
        if kind:
            figures["kinds"][kind] = figures["kinds"].get(kind, 0) + 1
    for weeks_of_repo in out.values():
        for figures in weeks_of_repo:
            n = figures["decisions"]
            figures["escalation_rate"] = round(figures["escalated"] / n, 3) if n else None
            figures["mix"] = {k: round(v / n, 3) for k, v in figures["kinds"].items()} if n else {}
    return out


def drift_warnings(db: Any, *, now: float | None = None) -> list[str]:
    """Sharp week-over-week changes in escalation rate or kind mix, for the log and ``/health``.

    Accuracy against later maintainer labels is in the replay eval, not here: live labels arrive late."""
    warnings = []
    for repo, (before, after) in weekly_figures(db, now=now).items():
        if min(before["decisions"], after["decisions"]) < DRIFT_MIN_DECISIONS:
            continue
        jump = after["escalation_rate"] - before["escalation_rate"]
        if abs(jump) >= DRIFT_ESCALATION_JUMP:
            warnings.append(f"{repo}: escalation rate {before['escalation_rate']:.0%} -> "
                            f"{after['escalation_rate']:.0%} week over week")
        for kind in set(before["mix"]) | set(after["mix"]):
            change = after["mix"].get(kind, 0.0) - before["mix"].get(kind, 0.0)
            if abs(change) >= DRIFT_MIX_JUMP:
                warnings.append(f"{repo}: share of '{kind}' decisions {before['mix'].get(kind, 0):.0%} -> "
                                f"{after['mix'].get(kind, 0):.0%} week over week")
    for warning in warnings:
        log.warning("drift: %s", warning)
    return warnings
