"""Shadow runs and canaries of a candidate setup (issue 8), the learned threshold in the live cascade, and
`python -m bot models compare`. End to end through signed webhooks, the FakeModel and the stand-in."""
from __future__ import annotations


import json

from bot.config import parse_repo_config
from bot.db import kv_set, log_model_call, open_db
from bot.features import learning
from bot.models import report
from bot.models.base import FakeModel, Prediction
from bot.models.cascade import Cascade
from bot.models.factory import classifier_loader
from tests.conftest import REPO, event_payload

# Duplicates and the answer cache off: two issues with the same text must get the same first response.
BASE = "duplicates:\n  enabled: false\nanswers:\n  enabled: false\n"
BUG_BODY = "Version 1.2. Steps: click save. Expected: saved. Actual: crash.\n```\nTraceback: KeyError\n```"


def _configure(bot, standin, triage: str = "") -> None:
    """Pin the maintainer's threshold at 0.85 so these tests do not move with the default."""
    standin.put_file(REPO, ".github/first-responder.yml", BASE + "triage:\n  threshold: 0.85\n" + triage)
    bot.services.config_cache.pop(REPO, None)


def _labels(standin, number):
    return sorted(label["name"] for label in standin.issue(REPO, number)["labels"])


def _bot_comments(standin, number):
    return [c["body"] for c in standin.comments(REPO, number) if c["user"]["type"] == "Bot"]


async def _open(bot, standin, title="Crash when saving", body=BUG_BODY, user="alice"):
    issue = standin.add_issue(REPO, title, body, user=user)
    await bot.send("issues", event_payload("issues.opened", issue=issue, sender=user))
    await bot.drain()
    return issue


def _calls(db, number=None):
    sql = "SELECT tier, output, escalated FROM model_calls"
    rows = list(db.query(sql + (" WHERE issue = ?" if number is not None else "") + " ORDER BY id",
                         [number] if number is not None else []))
    return [{**r, "output": json.loads(r["output"] or "{}")} for r in rows]


def _audit(db, number):
    return [(r["action"], json.loads(r["details"] or "{}").get("labels"))
            for r in db.query("SELECT action, details FROM audit WHERE issue = ? ORDER BY id", [number])]


# ------------------------------------------------------------------------------------ shadow
async def test_shadow_mode_applies_nothing_extra_and_logs_the_candidates_decision(bot, standin, fake_model):
    answer = {"kind": "bug", "confidence": 0.94, "summary": "Saving crashes."}
    _configure(bot, standin)
    fake_model.queue(answer)
    before = await _open(bot, standin)
    _configure(bot, standin, "  candidate:\n    mode: shadow\n    threshold: 0.95\n")
    fake_model.queue(answer)
    shadowed = await _open(bot, standin)

    # The same labels, the same comment, the same writes as without the candidate; one model call each.
    assert _labels(standin, shadowed["number"]) == _labels(standin, before["number"]) == ["bug"]
    assert _bot_comments(standin, shadowed["number"]) == _bot_comments(standin, before["number"])
    assert _audit(bot.db, shadowed["number"]) == _audit(bot.db, before["number"])
    assert len(fake_model.calls) == 2  # a threshold-only candidate reuses the prediction

    assert [c["tier"] for c in _calls(bot.db, before["number"])] == ["fake"]
    [live, row] = _calls(bot.db, shadowed["number"])
    assert (live["tier"], row["tier"], row["escalated"]) == ("fake", "shadow:decision", 0)
    out = row["output"]
    assert (out["mode"], out["canary"], out["threshold"], out["confidence"]) == ("shadow", False, 0.95, 0.94)
    assert out["kind"] is None and out["candidate"]["applied"] is False  # 0.94 < 0.95: the candidate would not label
    assert (out["current"]["kind"], out["current"]["applied"], out["current"]["threshold"]) == ("bug", True, 0.85)
    # The ordinary report does not count the shadow row as a decision.
    assert report.summarize(report.load_rows(bot.db))["decisions"] == 2


async def test_a_candidate_model_runs_in_shadow_and_its_calls_are_prefixed(bot, standin, fake_model):
    other = FakeModel([{"kind": "feature", "confidence": 0.97, "summary": "Wants saving."}], model_id="other-gguf")
    bot.services.models.candidates["other.gguf"] = Cascade(local=other, db=bot.db)
    _configure(bot, standin, "  candidate:\n    mode: shadow\n    model_path: other.gguf\n")
    fake_model.queue({"kind": "bug", "confidence": 0.95, "summary": "Saving crashes."})
    issue = await _open(bot, standin)
    assert _labels(standin, issue["number"]) == ["bug"]
    assert len(other.calls) == 1
    calls = _calls(bot.db, issue["number"])
    assert [c["tier"] for c in calls] == ["fake", "shadow:fake", "shadow:decision"]
    assert calls[1]["output"]["kind"] == "feature" and calls[1]["output"]["setup"] == "model=other.gguf"
    decision = calls[2]["output"]
    assert (decision["current"]["kind"], decision["candidate"]["kind"], decision["kind"]) == ("bug", "feature",
                                                                                             "feature")


async def test_a_candidate_model_outside_the_allowed_directories_is_refused(bot, standin, fake_model, tmp_path):
    fake_model.queue({"kind": "bug", "confidence": 0.95})
    _configure(bot, standin, "  candidate:\n    mode: canary\n    model_path: /etc/passwd\n  canary: 100\n")
    issue = await _open(bot, standin)
    assert _labels(standin, issue["number"]) == ["bug"]  # the current setup decided; triage went on
    assert [c["tier"] for c in _calls(bot.db, issue["number"])] == ["fake"]


# ------------------------------------------------------------------------------------ canary
async def test_canary_applies_the_candidate_only_on_selected_issues_and_selection_is_stable(bot, standin,
                                                                                          fake_model):
    # The current threshold (0.85) leaves a 0.80 bug unlabelled; the candidate (0.75) labels it.
    fake_model.default = Prediction(kind="bug", confidence=0.8, summary="Saving crashes.")
    # comment: always, so the re-delivery below can show it edits the one comment rather than adding one.
    _configure(bot, standin, "  comment: always\n  canary: 50\n  candidate:\n    mode: canary\n    threshold: 0.75\n")
    issues = [await _open(bot, standin, title=f"Crash when saving {i}") for i in range(10)]
    selected = {i["number"] for i in issues if learning.in_canary(REPO, i["number"], 50)}
    assert selected and len(selected) < len(issues)
    for issue in issues:
        number = issue["number"]
        labels = _labels(standin, number)
        assert ("bug" in labels) == (number in selected), (number, labels)
        assert ("needs-triage" in labels) == (number not in selected)
        calls = _calls(bot.db, number)
        live = [c for c in calls if not c["tier"].startswith("shadow:")]
        [row] = [c for c in calls if c["tier"] == "shadow:decision"] or [None]
        if number in selected:  # the call log marks the canary's calls; the current decision is in shadow
            assert [c["output"].get("canary") for c in live] == [True]
            assert row["output"]["canary"] is True and row["output"]["candidate"]["kind"] == "bug"
            assert row["output"]["current"]["kind"] is None and row["output"]["current"]["threshold"] == 0.85
        else:  # canary mode adds nothing to the other issues
            assert [c["output"].get("canary") for c in live] == [None] and row is None

    # A re-delivery of a selected issue and of an unselected one: the same side decides again.
    for issue in issues[:4]:
        await bot.send("issues", event_payload("issues.opened", issue=standin.issue(REPO, issue["number"])))
    await bot.drain()
    for issue in issues[:4]:
        flags = {c["output"].get("canary") for c in _calls(bot.db, issue["number"])
                 if not c["tier"].startswith("shadow:")}
        assert flags == ({True} if issue["number"] in selected else {None})
        assert len(_bot_comments(standin, issue["number"])) == 1

    groups = report.compare(report.load_rows(bot.db), {})
    [canary] = [g for g in groups if g["canary"]]
    assert canary["issues"] == len(selected) and canary["agreement"] == 0.0
    assert canary["candidate"]["applied"] == len(selected) and canary["current"]["applied"] == 0


# ------------------------------------------------------------------------------------ learned threshold
async def test_the_learned_threshold_is_used_only_when_stricter(bot, standin, fake_model):
    _configure(bot, standin)
    kv_set(bot.db, f"learning:{REPO}", {"threshold": 0.95, "trained": True})
    fake_model.queue({"kind": "bug", "confidence": 0.9})
    stricter = await _open(bot, standin)
    assert _labels(standin, stricter["number"]) == ["needs-triage"]  # 0.90 >= 0.85 but < the learned 0.95

    kv_set(bot.db, f"learning:{REPO}", {"threshold": 0.6, "trained": True})
    fake_model.queue({"kind": "bug", "confidence": 0.8})
    looser = await _open(bot, standin)
    assert _labels(standin, looser["number"]) == ["needs-triage"]  # 0.80 >= 0.6, but the maintainer asked 0.85

    kv_set(bot.db, f"learning:{REPO}", {"threshold": 0.6, "trained": True})
    fake_model.queue({"kind": "bug", "confidence": 0.9})
    fine = await _open(bot, standin)
    assert "bug" in _labels(standin, fine["number"])

    cascade = bot.services.models
    assert cascade.threshold_for(REPO, {"threshold": 0.7}) == 0.7
    kv_set(bot.db, f"learning:{REPO}", {"threshold": 1.0, "trained": False})  # a retrain that stored nothing
    assert cascade.threshold_for(REPO, {"threshold": 0.7}) == 0.7
    kv_set(bot.db, f"learning:{REPO}", {"threshold": 0.9, "trained": True})
    assert cascade.threshold_for(REPO, {"threshold": 0.7}) == 0.9
    assert cascade.threshold_for("other/repo", {"threshold": 0.7}) == 0.7


def test_forget_classifier_drops_the_loaders_cached_entry(tmp_path):
    db = open_db(str(tmp_path / "bot.db"))
    loader = classifier_loader(db)
    cascade = Cascade(local=FakeModel(), classifiers=loader, db=db)
    loader.cache[REPO] = None
    loader.cache["other/repo"] = None
    cascade.forget_classifier(REPO)
    assert REPO not in loader.cache and "other/repo" in loader.cache
    Cascade(local=FakeModel(), classifiers={}, db=db).forget_classifier(REPO)  # a plain mapping: nothing to drop


def test_candidate_config_is_validated():
    config = parse_repo_config("triage:\n  canary: 150\n  candidate:\n    mode: sometimes\n    threshold: 2\n")
    triage = config.section("triage")
    assert triage["candidate"] == {"mode": "off", "threshold": None, "model_path": ""} and triage["canary"] == 0
    assert len(config.warnings) == 3
    ok = parse_repo_config("triage:\n  canary: 10\n  candidate:\n    mode: canary\n    threshold: 0.9\n")
    assert ok.warnings == [] and ok.section("triage")["candidate"]["threshold"] == 0.9


# ------------------------------------------------------------------------------------ models compare
def _decision(kind, applied=True, *, escalated=False, latency=10.0, cost=0.0, threshold=0.85):
    return {"kind": kind if applied else None, "predicted": kind, "confidence": 0.9, "threshold": threshold,
            "applied": applied, "escalated": escalated, "known": True, "tier": "classifier",
            "latency_ms": latency, "cost_usd": cost}


def test_models_compare_prints_agreement_and_accuracy(tmp_path, capsys):
    path = str(tmp_path / "bot.db")
    db = open_db(path)
    seeded = [  # issue, current, candidate
        (1, _decision("bug"), _decision("bug", threshold=0.9)),
        (2, _decision("feature"), _decision("bug", threshold=0.9)),
        (3, _decision("question", escalated=True, cost=0.002, latency=900), _decision("question", threshold=0.9)),
        (4, _decision("bug"), _decision("bug", applied=False, threshold=0.9)),
    ]
    for number, current, candidate in seeded:
        log_model_call(db, ts=1_800_000_000, delivery_id=f"d{number}", repo=REPO, issue=number,
                       tier="shadow:decision", model="threshold=0.90", latency_ms=1, cost_usd=0.0, escalated=0,
                       output={"kind": candidate["kind"], "confidence": 0.9, "threshold": 0.9, "mode": "shadow",
                               "canary": False, "setup": "threshold=0.90", "current": current,
                               "candidate": candidate})
    log_model_call(db, ts=1_000_000_000, delivery_id="old", repo=REPO, issue=9, tier="shadow:decision",
                   output={"setup": "threshold=0.90", "canary": False, "current": _decision("bug"),
                           "candidate": _decision("docs")})
    log_model_call(db, ts=1_800_000_000, delivery_id="d1", repo=REPO, issue=1, tier="classifier", latency_ms=5)
    # Maintainers' final labels: #1 bug, #2 bug (a correction after a feature), #3 docs; #4 unknown.
    for number, kind, source in [(1, "bug", "maintainer"), (2, "feature", "maintainer"), (2, "bug", "correction"),
                                 (3, "docs", "maintainer")]:
        learning.record_example(db, REPO, {"number": number, "title": "t"}, kind=kind, source=source,
                                created_at=1_800_000_100 + number)
    learning.record_example(db, REPO, {"number": 4, "title": "t"}, kind="feature", source="fallback")

    [group] = report.compare(report.load_rows(db, since=1_700_000_000), report.final_labels(db, REPO))
    assert (group["issues"], group["agreement"], group["with_label"]) == (4, 0.5, 3)
    current, candidate = group["current"], group["candidate"]
    assert (current["correct"], current["judged"]) == (1, 3)  # bug right, feature wrong, question wrong
    assert (candidate["correct"], candidate["judged"]) == (2, 3)  # bug right, bug right, question wrong
    assert current["escalation_rate"] == 0.25 and current["cost_usd"] == 0.002 and candidate["applied"] == 3

    assert report.main(["compare", "--since", "2025-01-01", "--repo", REPO, "--db", path]) == 0
    out = capsys.readouterr().out
    assert "agreement: 50.0 %" in out and "33.3 % (1/3)" in out and "66.7 % (2/3)" in out
    assert "escalation rate" in out and "latency p50 ms" in out and "cost $" in out
    assert report.main(["compare", "--repo", "nobody/here", "--db", path]) == 0
    assert "no shadow or canary comparisons" in capsys.readouterr().out


def test_too_little_held_back_history_keeps_the_configured_threshold(bot):
    from bot.db import kv_set

    cascade = bot.services.models
    kv_set(bot.db, f"learning:{REPO}", {"threshold": 1.0, "trained": True, "insufficient": True})
    assert cascade.threshold_for(REPO, {"threshold": 0.93}) == 0.93
    kv_set(bot.db, f"learning:{REPO}", {"threshold": 1.0, "trained": True, "insufficient": False})
    assert cascade.threshold_for(REPO, {"threshold": 0.93}) == 1.0  # judged, and not good enough: escalate
