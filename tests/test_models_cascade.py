"""The cascade (issue 4): escalate below the threshold only; no key / cap reached -> uncertain; call log."""
from __future__ import annotations

import pytest

from bot.db import open_db
from bot.models.base import KINDS, FakeModel, IssueText, Prediction
from bot.models.cascade import Cascade, combine
from bot.models.classifier import IssueClassifier
from bot.models.remote import DailyBudget, RemoteError

ISSUE = IssueText("Crash on save", "It crashes.", repo="o/r", number=5)
TRIAGE = {"threshold": 0.8}
FALLBACK = {"enabled": True, "max_calls_per_day": 10, "max_cost_per_day": 1.0}


def local(kind="bug", confidence=0.9, **fields):
    probs = {k: (confidence if k == kind else (1 - confidence) / 4) for k in KINDS}
    return {"kind": kind, "confidence": confidence, "probs": probs, "tier": "local", **fields}


def remote_answer(kind="feature"):
    return {"kind": kind, "confidence": 0.9, "tier": "remote", "cost_usd": 0.0002, "input_tokens": 500,
            "output_tokens": 40, "summary": "from the big model"}


@pytest.fixture
def db():
    return open_db(":memory:")


def calls(db):
    return list(db["model_calls"].rows)


def test_confident_local_answer_does_not_escalate(db):
    big = FakeModel()
    cascade = Cascade(local=FakeModel([local("bug", 0.93)]), remote=big, db=db)
    result = cascade.predict(ISSUE, installation_id=1, triage_config=TRIAGE, fallback_config=FALLBACK)
    assert (result.kind, result.escalated, result.uncertain) == ("bug", False, False)
    assert big.calls == []
    rows = calls(db)
    assert len(rows) == 1 and rows[0]["tier"] == "local" and rows[0]["prompt_name"] == "triage"
    assert len(rows[0]["prompt_sha256"]) == 64 and rows[0]["escalated"] == 0


def test_low_confidence_escalates_and_logs_cost(db):
    big = FakeModel([remote_answer("feature")], tier="remote")
    cascade = Cascade(local=FakeModel([local("bug", 0.55)]), remote=big, db=db)
    result = cascade.predict(ISSUE, installation_id=1, delivery_id="d1", triage_config=TRIAGE,
                             fallback_config=FALLBACK)
    assert (result.kind, result.tier, result.escalated) == ("feature", "remote", True)
    assert "0.55 < 0.80" in result.reason and len(big.calls) == 1
    remote_row = [r for r in calls(db) if r["tier"] == "remote"][0]
    assert remote_row["escalated"] == 1 and remote_row["cost_usd"] == pytest.approx(0.0002)
    assert remote_row["delivery_id"] == "d1" and remote_row["installation_id"] == 1


def test_invalid_local_output_escalates_even_when_confident(db):
    big = FakeModel([remote_answer("question")], tier="remote")
    cascade = Cascade(local=FakeModel([local("bug", 0.99, valid=False, reason="invalid output: cut off")]),
                      remote=big, db=db)
    result = cascade.predict(ISSUE, installation_id=1, triage_config=TRIAGE, fallback_config=FALLBACK)
    assert result.kind == "question" and "invalid output" in result.reason


def test_no_fallback_configured_means_uncertain(db):
    cascade = Cascade(local=FakeModel([local("bug", 0.5)]), remote=None, db=db)
    result = cascade.predict(ISSUE, installation_id=1, triage_config=TRIAGE, fallback_config=FALLBACK)
    assert result.uncertain and not result.escalated and "no fallback configured" in result.reason


def test_cap_reached_means_uncertain_and_no_call(db):
    big = FakeModel([remote_answer()] * 5, tier="remote")
    cascade = Cascade(local=FakeModel([local("bug", 0.5)] * 5), remote=big, db=db)
    caps = {**FALLBACK, "max_calls_per_day": 2}
    results = [cascade.predict(ISSUE, installation_id=9, triage_config=TRIAGE, fallback_config=caps)
               for _ in range(3)]
    assert [r.escalated for r in results] == [True, True, False]
    assert results[2].uncertain and "cap reached" in results[2].reason and len(big.calls) == 2


def test_fallback_disabled_in_config_means_uncertain(db):
    big = FakeModel(tier="remote")
    cascade = Cascade(local=FakeModel([local("bug", 0.5)]), remote=big, db=db)
    result = cascade.predict(ISSUE, installation_id=1, triage_config=TRIAGE,
                             fallback_config={**FALLBACK, "enabled": False})
    assert result.uncertain and big.calls == []


def test_fallback_error_means_uncertain_and_is_logged(db):
    big = FakeModel([RemoteError("HTTP 500 after 4 attempts")], tier="remote")
    cascade = Cascade(local=FakeModel([local("bug", 0.5)]), remote=big, db=db)
    result = cascade.predict(ISSUE, installation_id=1, triage_config=TRIAGE, fallback_config=FALLBACK)
    assert result.uncertain and "HTTP 500" in result.reason
    assert [r["tier"] for r in calls(db)] == ["local", "remote"]


def test_in_memory_budget_without_db():
    budget = DailyBudget(None, clock=lambda: 1000.0)
    budget.record("o/r", 0.6)
    assert budget.check("o/r", FALLBACK) is None
    budget.record("o/r", 0.6)
    assert "cost cap" in budget.check("o/r", FALLBACK)


def test_combine_pools_classifier_and_llm():
    clf = {"bug": 0.6, "feature": 0.3, "question": 0.1, "docs": 0.0, "other": 0.0}
    llm = {"bug": 0.1, "feature": 0.8, "question": 0.1, "docs": 0.0, "other": 0.0}
    pooled = combine(clf, llm, 1.0)
    assert sum(pooled.values()) == pytest.approx(1.0) and pooled["feature"] > pooled["bug"]
    assert combine(clf, llm, 0.0) == pytest.approx(clf)
    assert pooled["docs"] == 0.0  # a kind the repo's history never had stays impossible


def _labelled(n_per_kind=25):
    issues, labels = [], []
    for i in range(n_per_kind):
        issues.append(IssueText(f"Crash when saving file {i}", f"TypeError traceback at line {i}, it fails"))
        labels.append("bug")
        issues.append(IssueText(f"Add option to export {i}", f"It would be nice to support format {i}"))
        labels.append("feature")
        issues.append(IssueText(f"How do I configure thing {i}?", f"I could not find how to set {i}"))
        labels.append("question")
    return issues, labels


def test_classifier_trains_predicts_and_round_trips_through_sqlite(db):
    from bot.models.classifier import load_classifier, save_classifier

    issues, labels = _labelled()
    model = IssueClassifier.train(issues, labels, repo="o/r")
    assert model.usable()
    prediction = model.predict(IssueText("App crashes when saving", "TypeError traceback"))
    assert prediction.kind == "bug" and sum(prediction.probs.values()) == pytest.approx(1.0)
    save_classifier(db, "o/r", model)
    again = load_classifier(db, "o/r")
    assert again.predict_proba([issues[1]])[0] == pytest.approx(model.predict_proba([issues[1]])[0])


def test_cascade_uses_the_repo_classifier_when_it_has_enough_history(db):
    issues, labels = _labelled()
    classifier = IssueClassifier.train(issues, labels, repo="o/r")
    cascade = Cascade(local=FakeModel([local("feature", 0.4)]), classifiers={"o/r": classifier}, db=db)
    result = cascade.predict(IssueText("Crash when saving file", "TypeError traceback", repo="o/r"),
                             installation_id=1, triage_config={"threshold": 0.5, "summary": "model"},
                             fallback_config=FALLBACK)
    assert result.tier == "combined" and result.kind == "bug"
    assert {r["tier"] for r in calls(db)} == {"classifier", "local"}


def test_the_llm_is_not_called_when_the_classifier_decides_and_no_model_summary_is_wanted(db):
    issues, labels = _labelled()
    classifier = IssueClassifier.train(issues, labels, repo="o/r")
    llm = FakeModel([local("feature", 0.4)])
    cascade = Cascade(local=llm, classifiers={"o/r": classifier}, db=db)
    result = cascade.predict(IssueText("Crash when saving file", "TypeError traceback", repo="o/r"),
                             installation_id=1, triage_config={"threshold": 0.5}, fallback_config=FALLBACK)
    assert result.tier == "classifier" and result.kind == "bug"
    assert llm.calls == [] and {r["tier"] for r in calls(db)} == {"classifier"}
