"""Feedback as data (issue 8): what maintainers do after triage becomes labelled examples, the repo's
classifier is retrained from them in the background, and export writes what was recorded.

Label events arrive as signed webhooks at the real server; the stand-in answers the permission lookups
and holds the bot's comment and its reactions."""
from __future__ import annotations

import asyncio
import json

import pytest

from bot.db import open_db
from bot.features import learning
from bot.models.base import FakeModel, IssueText
from bot.models.classifier import load_classifier
from tests.conftest import REPO, event_payload


def _label(standin, name: str) -> dict:
    return next(label for label in standin.labels(REPO) if label["name"] == name)


def _examples(db) -> list[dict]:
    return list(db.query("SELECT number, kind, label, source, event, weight, actor FROM training_examples ORDER BY id"))


async def _open_triaged(bot, standin, fake_model, title: str, body: str, kind: str = "bug") -> dict:
    """An issue opened through a webhook and triaged by the (fake) local model with the given kind."""
    fake_model.queue({"kind": kind, "confidence": 0.97, "summary": "The export crashes."})
    issue = standin.add_issue(REPO, title, body)
    await bot.send("issues", event_payload("issues.opened", issue=issue))
    await bot.drain()
    return standin.issue(REPO, issue["number"])


async def _relabel(bot, standin, number: int, *, remove: str | None, add: str | None, sender: str = "maint") -> None:
    """A person changes labels in the UI: the stand-in's issue changes and GitHub sends `unlabeled` then
    `labeled`, each carrying the issue's labels after that change."""
    issue = standin.issue(REPO, number)
    names = [label["name"] for label in issue["labels"]]
    after = [n for n in names if n != remove] + ([add] if add else [])
    issue["labels"] = [_label(standin, n) for n in after]
    if remove is not None:
        names.remove(remove)
        payload = event_payload("issues.unlabeled", issue={**issue, "labels": [_label(standin, n) for n in names]},
                                label=_label(standin, remove), sender=sender)
        await bot.send("issues", payload)
    if add is not None:
        names.append(add)
        payload = event_payload("issues.labeled", issue={**issue, "labels": [_label(standin, n) for n in names]},
                                label=_label(standin, add), sender=sender)
        await bot.send("issues", payload)
    await bot.drain()


async def _background(bot) -> None:
    """Wait for background work (retrains) the server spawned."""
    while bot.services.background:
        await asyncio.gather(*list(bot.services.background), return_exceptions=True)


# ------------------------------------------------------------------------------------ label events
async def test_maintainer_replacing_the_bots_kind_label_is_recorded_as_a_correction(bot, standin, fake_model):
    issue = await _open_triaged(bot, standin, fake_model, "Export should support parquet",
                                "It would be great to export to parquet.")
    assert "bug" in [label["name"] for label in issue["labels"]]
    await _relabel(bot, standin, issue["number"], remove="bug", add="enhancement")
    rows = _examples(bot.db)
    # After `unlabeled` the issue had no kind label (a retraction); after `labeled` it is a feature.
    assert [(r["kind"], r["source"], r["event"]) for r in rows] == [("", "correction", "unlabeled"),
                                                                     ("feature", "correction", "labeled")]
    assert rows[-1]["actor"] == "maint" and rows[-1]["weight"] == learning.WEIGHTS["correction"]
    [final] = learning.resolved_examples(bot.db, REPO)
    assert (final.number, final.kind, final.source) == (issue["number"], "feature", "correction")


async def test_label_order_does_not_matter_when_both_kinds_are_briefly_on_the_issue(bot, standin, fake_model):
    issue = await _open_triaged(bot, standin, fake_model, "How do I load a CSV?", "Which function reads CSV?")
    number = issue["number"]
    await _relabel(bot, standin, number, remove=None, add="question")  # bug + question: the person's wins
    await _relabel(bot, standin, number, remove="bug", add=None)
    assert [(r["kind"], r["source"]) for r in _examples(bot.db)] == [("question", "correction"),
                                                                      ("question", "correction")]


async def test_maintainer_confirming_or_labelling_an_untriaged_issue_is_a_maintainer_example(bot, standin):
    issue = standin.add_issue(REPO, "Docs typo in README", "The install section has a typo.")
    await _relabel(bot, standin, issue["number"], remove=None, add="documentation")
    assert [(r["kind"], r["source"], r["label"]) for r in _examples(bot.db)] == [("docs", "maintainer",
                                                                                   "documentation")]


async def test_labels_from_people_without_write_access_and_other_labels_are_ignored(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "boom")
    await _relabel(bot, standin, issue["number"], remove=None, add="bug", sender="alice")  # no permission
    await _relabel(bot, standin, issue["number"], remove=None, add="security")  # not a kind label
    assert _examples(bot.db) == []


async def test_reopening_an_issue_the_bot_closed_is_recorded_with_weight_zero(bot, standin):
    issue = standin.add_issue(REPO, "Crash on start", "boom", labels=["bug"])
    standin.add_event(REPO, issue["number"], "closed", actor="first-responder[bot]")
    await bot.send("issues", event_payload("issues.reopened", issue=standin.issue(REPO, issue["number"]),
                                           sender="alice"))
    await bot.drain()
    [row] = _examples(bot.db)
    assert (row["source"], row["event"], row["weight"], row["kind"]) == ("correction", "reopened", 0.0, "bug")
    assert learning.resolved_examples(bot.db, REPO) == []  # a record, not a training signal


async def test_reopening_an_issue_a_person_closed_records_nothing(bot, standin):
    issue = standin.add_issue(REPO, "Crash on start", "boom")
    standin.add_event(REPO, issue["number"], "closed", actor="maint")
    await bot.send("issues", event_payload("issues.reopened", issue=standin.issue(REPO, issue["number"])))
    await bot.drain()
    assert _examples(bot.db) == []


async def test_thumbs_up_on_the_triage_comment_confirms_the_bots_kind_at_close(bot, standin, fake_model):
    issue = await _open_triaged(bot, standin, fake_model, "Crash when saving", "Traceback: KeyError")
    [comment] = [c for c in standin.comments(REPO, issue["number"]) if c["user"]["type"] == "Bot"]
    standin.add_reaction(REPO, "+1", user="alice", comment_id=comment["id"])
    await bot.send("issues", event_payload("issues.closed", issue=standin.issue(REPO, issue["number"]),
                                           sender="maint"))
    await bot.drain()
    assert [(r["kind"], r["source"]) for r in _examples(bot.db)] == [("bug", "reaction")]


async def test_the_fallbacks_decision_becomes_a_weighted_example(bot, standin, fake_model):
    bot.services.models.remote = FakeModel([{"kind": "feature", "confidence": 0.9, "summary": "Wants parquet."}],
                                           model_id="big", tier="remote")
    fake_model.queue({"kind": "bug", "confidence": 0.4, "probs": {"bug": 0.4, "feature": 0.35, "question": 0.25}})
    issue = standin.add_issue(REPO, "Parquet export", "Please add parquet export.")
    await bot.send("issues", event_payload("issues.opened", issue=issue))
    await bot.drain()
    assert [(r["kind"], r["source"], r["weight"]) for r in _examples(bot.db)] == [
        ("feature", "fallback", learning.WEIGHTS["fallback"])]


# ------------------------------------------------------------------------------------ retraining
def _seed(db, texts: list[tuple[str, str]], start: int) -> None:
    for offset, (title, kind) in enumerate(texts):
        learning.record_example(db, REPO, {"number": start + offset, "title": title, "body": title}, kind=kind,
                                source="maintainer", created_at=1_000_000 + start + offset)


BUG_WORDS = ["crash", "traceback", "exception", "segfault", "error", "fails", "broken", "regression"]
FEATURE_WORDS = ["add", "support", "option", "request", "allow", "new", "proposal", "please"]


async def test_corrections_from_label_events_feed_the_next_background_retrain(bot, standin, fake_model,
                                                                               monkeypatch):
    """The bot (and its classifier) think 'flurb widget' issues are bugs; maintainers relabel them as
    enhancements through the UI; the retrain that follows classifies the next one as a feature."""
    _seed(bot.db, [(f"{BUG_WORDS[i % 8]} {BUG_WORDS[(i + 3) % 8]} when loading file {i}", "bug") for i in range(24)],
          1000)
    _seed(bot.db, [(f"{FEATURE_WORDS[i % 8]} {FEATURE_WORDS[(i + 3) % 8]} for export format {i}", "feature")
                   for i in range(24)], 2000)
    flurb = [await _open_triaged(bot, standin, fake_model, f"flurb widget gizmo {i}", f"the flurb widget {i}")
             for i in range(22)]
    # Make the starting point real: the bot's labels were right by its classifier, trained with them as bugs.
    for issue in flurb:
        learning.record_example(bot.db, REPO, issue, kind="bug", source="fallback")
    await learning.retrain(bot.db, REPO, bot.services.config_cache[REPO].section("triage"), bot.services.models)
    probe = IssueText("flurb widget gizmo 99", "the flurb widget broke again")
    assert load_classifier(bot.db, REPO).predict(probe).kind == "bug"

    monkeypatch.setattr(learning, "RETRAIN_AFTER", 2 * len(flurb))  # unlabeled + labeled each: one retrain
    for issue in flurb:
        await _relabel(bot, standin, issue["number"], remove="bug", add="enhancement")
    await _background(bot)
    state = bot.db.execute("SELECT value FROM kv WHERE key = ?", [f"learning:{REPO}"]).fetchone()
    assert json.loads(state[0])["sources"]["correction"] == len(flurb)
    assert load_classifier(bot.db, REPO).predict(probe).kind == "feature"
    # ...and the server's cascade uses it for the next issue without waiting for its cache to expire.
    assert bot.services.models.classifier_for(REPO).predict(probe).kind == "feature"


def test_choose_threshold_needs_enough_confident_examples_and_a_margin():
    confident = [0.9] * 40
    assert learning.choose_threshold(confident, [True] * 40) == 0.5
    assert learning.choose_threshold(confident, [True] * 39 + [False]) == 1.0  # 97.5 % is not surely >= 95 %
    assert learning.choose_threshold([0.9] * 10, [True] * 10) == 1.0  # too few to know
    mixed = [0.6] * 30 + [0.95] * 60
    assert learning.choose_threshold(mixed, [False] * 10 + [True] * 20 + [True] * 60) == 0.61


def test_people_outrank_reactions_and_the_fallback_whatever_the_order(tmp_path):
    db = open_db(str(tmp_path / "bot.db"))
    issue = {"number": 7, "title": "t", "body": "b"}
    learning.record_example(db, REPO, issue, kind="docs", source="maintainer", created_at=1)
    learning.record_example(db, REPO, issue, kind="bug", source="fallback", created_at=2)
    learning.record_example(db, REPO, issue, kind="question", source="reaction", created_at=3)
    [final] = learning.resolved_examples(db, REPO)
    assert (final.kind, final.source) == ("docs", "maintainer")
    with pytest.raises(ValueError):
        learning.record_example(db, REPO, issue, kind="spam", source="maintainer")


# ------------------------------------------------------------------------------------ export
def test_export_writes_what_was_recorded(tmp_path, capsys):
    path = str(tmp_path / "bot.db")
    db = open_db(path)
    learning.record_example(db, REPO, {"number": 1, "title": "Crash", "body": "boom"}, kind="bug", label="bug",
                            source="maintainer", created_at=1_700_000_000)
    learning.record_example(db, REPO, {"number": 2, "title": "Add X", "body": "please"}, kind="feature",
                            source="fallback", created_at=1_700_000_100)
    learning.record_example(db, REPO, {"number": 2, "title": "Add X", "body": "please"}, kind="question",
                            label="question", source="correction", created_at=1_700_000_200)
    learning.record_example(db, "other/repo", {"number": 3, "title": "x"}, kind="bug", source="maintainer")
    out = tmp_path / "train.jsonl"
    assert learning.export_main([REPO, "--out", str(out), "--db", path]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["number"], r["kind"], r["source"], r["title"], r["body"]) for r in rows] == [
        (1, "bug", "maintainer", "Crash", "boom"), (2, "question", "correction", "Add X", "please")]
    assert rows[0]["time"] == "2023-11-14T22:13:20+00:00" and rows[1]["label"] == "question"
    assert "wrote 2 examples" in capsys.readouterr().err


def test_export_training_command_is_routed():
    from bot.__main__ import COMMANDS

    assert COMMANDS["export-training"][:2] == ("bot.features.learning", "export_main")


# ------------------------------------------------------------------------------------ `models` report
def test_models_report_counts_tiers_latency_escalations_and_cost(tmp_path, capsys):
    from bot.db import log_model_call
    from bot.models import report

    path = str(tmp_path / "bot.db")
    db = open_db(path)
    for n, latency in enumerate([10, 20, 30, 40]):
        log_model_call(db, ts=1_800_000_000, delivery_id=f"d{n}", repo=REPO, issue=n, tier="classifier",
                       latency_ms=latency, cost_usd=0.0, escalated=0)
    log_model_call(db, ts=1_800_000_000, delivery_id="d3", repo=REPO, issue=3, tier="remote", latency_ms=900,
                   cost_usd=0.004, escalated=1, input_tokens=1500, output_tokens=60)
    log_model_call(db, ts=1_000_000_000, delivery_id="old", repo=REPO, issue=9, tier="remote", latency_ms=1,
                   cost_usd=1.0, escalated=1)
    summary = report.summarize(report.load_rows(db, since=1_700_000_000))
    assert summary["decisions"] == 4 and summary["escalated"] == 1 and summary["escalation_rate"] == 0.25
    [classifier, remote] = summary["tiers"]
    assert (classifier["calls"], classifier["p50_ms"], classifier["p95_ms"]) == (4, 20, 40)
    assert remote["cost_usd"] == 0.004 and summary["cost_per_1000_decisions"] == 1.0
    assert report.main(["--since", "2025-01-01", "--db", path]) == 0
    out = capsys.readouterr().out
    assert "classifier" in out and "25.0 %" in out and "$1.00 per 1,000 decisions" in out


# ------------------------------------------------------------------------------------ canary
def test_canary_selection_is_stable_per_issue_and_near_the_percentage():
    chosen = [n for n in range(1, 5001) if learning.in_canary(REPO, n, 10)]
    assert chosen == [n for n in range(1, 5001) if learning.in_canary(REPO, n, 10)]
    assert 0.08 < len(chosen) / 5000 < 0.12
    assert not any(learning.in_canary(REPO, n, 0) for n in range(1, 200))
    assert all(learning.in_canary(REPO, n, 100) for n in range(1, 200))
    assert set(chosen) <= {n for n in range(1, 5001) if learning.in_canary(REPO, n, 20)}  # raising it only adds


# ------------------------------------------------------------------------------------ replay
def test_replay_escalates_less_as_labels_arrive_and_keeps_the_page_prose(tmp_path):
    from bot.eval import replay

    data = tmp_path / "issues.jsonl"
    with data.open("w") as handle:
        for n in range(240):
            words = BUG_WORDS if n % 2 else FEATURE_WORDS
            title = f"{words[n % 8]} {words[(n * 3 + 1) % 8]} {words[(n * 5 + 2) % 8]} in the loader {n}"
            handle.write(json.dumps({"repo": "o/r", "number": n + 1, "title": title, "body": title,
                                     "type_label": "bug" if n % 2 else "enhancement",
                                     "created_at": f"2024-01-01T00:00:00Z"[:8] + f"{1 + n // 24:02d}T{n % 24:02d}:00:00Z"})
                         + "\n")
        handle.write(json.dumps({"repo": "o/r", "number": 999, "title": "x", "body": "", "type_label": "multiple",
                                 "created_at": "2024-01-05T00:00:00Z"}) + "\n")
    page = tmp_path / "bench.md"
    page.write_text(f"# Replay\n\nprose before\n\n{replay.BEGIN}\nold\n{replay.END}\n\nprose after\n")
    assert replay.main(["--data", str(data), "--delay-issues", "5", "--retrain-every", "40", "--out", str(page),
                        "--json", str(tmp_path / "r.json")]) == 0
    [result] = json.loads((tmp_path / "r.json").read_text())
    first, last = result["table"][0], result["table"][-1]
    assert result["skipped"] == {"multiple": 1}
    assert first["escalation_rate"] == 1.0 or first["escalation_rate"] > 2 * last["escalation_rate"]
    assert last["escalation_rate"] <= 0.5 and last["local_accuracy"] >= 0.95
    text = page.read_text()
    assert "prose before" in text and "prose after" in text and "\nold\n" not in text and "| Q4 |" in text


def test_a_sharp_change_in_escalation_rate_is_reported_as_drift(tmp_path):
    import time as _time

    from bot.db import log_model_call, open_db
    from bot.features.learning import WEEK, drift_warnings, weekly_figures

    db = open_db(str(tmp_path / "drift.db"))
    now = _time.time()
    for i in range(30):  # last week: nothing escalated; this week: two in three escalated
        log_model_call(db, ts=now - WEEK - 3600 * (i + 1), repo="o/r", issue=i, delivery_id=f"a{i}",
                       tier="classifier", escalated=0, output={"kind": "bug"})
        log_model_call(db, ts=now - 3600 * (i + 1), repo="o/r", issue=100 + i, delivery_id=f"b{i}",
                       tier="classifier", escalated=int(i % 3 != 0), output={"kind": "bug"})
    before, after = weekly_figures(db, now=now)["o/r"]
    assert (before["escalation_rate"], after["decisions"]) == (0.0, 30)
    warnings = drift_warnings(db, now=now)
    assert warnings == ["o/r: escalation rate 0% -> 67% week over week"]
    assert drift_warnings(open_db(str(tmp_path / "empty.db")), now=now) == []
