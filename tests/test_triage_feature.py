"""Triage end to end (issue 4): a signed `issues.opened` delivery, the model cascade (FakeModel
here; the real GGUF has its own tests), the stand-in receiving one comment and allowlisted labels."""
from __future__ import annotations

from bot.db import set_flag
from bot.models.base import Prediction
from tests.conftest import REPO, event_payload


def _labels(standin, number):
    return sorted(label["name"] for label in standin.issue(REPO, number)["labels"])


def _bot_comments(standin, number):
    return [c for c in standin.comments(REPO, number) if c["user"]["type"] == "Bot"]


async def _open(bot, standin, title, body, user="alice"):
    issue = standin.add_issue(REPO, title, body, user=user)
    await bot.send("issues", event_payload("issues.opened", issue=issue, sender=user))
    await bot.drain()
    return issue


COMPLETE = ("Version 1.2. Steps: click save. Expected: saved. Actual: crash.\n```\nTraceback: KeyError\n```")


async def test_confident_complete_bug_gets_its_label_and_no_comment(bot, standin, fake_model):
    """`triage.comment: auto` (the default): nothing to ask the author, so labels only (issue #12 item 6)."""
    fake_model.queue({"kind": "bug", "confidence": 0.95, "summary": "The app crashes when saving a file."})
    issue = await _open(bot, standin, "Crash when saving", COMPLETE)
    assert _labels(standin, issue["number"]) == ["bug"]
    assert _bot_comments(standin, issue["number"]) == []
    calls = list(bot.db.query("SELECT tier, model, prompt_sha256, delivery_id FROM model_calls"))
    assert calls and calls[0]["tier"] == "fake" and calls[0]["delivery_id"]


async def test_comment_always_in_config_comments_on_a_complete_report(bot, standin, fake_model):
    standin.put_file(REPO, ".github/first-responder.yml", "triage:\n  comment: always\n  summary: model\n")
    fake_model.queue({"kind": "bug", "confidence": 0.95, "summary": "Crash when saving: Traceback KeyError."})
    issue = await _open(bot, standin, "Crash when saving", COMPLETE)
    assert _labels(standin, issue["number"]) == ["bug"]
    [comment] = _bot_comments(standin, issue["number"])
    assert "Crash when saving: Traceback KeyError." in comment["body"] and "written by a model" in comment["body"]
    assert "first-responder:triage" in comment["body"] and "/help" in comment["body"]
    assert "I added the `bug` label" in comment["body"]


async def test_vague_report_with_uncertain_kind_is_asked_for_details(bot, standin, fake_model):
    """Demo #102 (issue #12 item 5): unsure of the kind, yet the author is asked for what is missing."""
    fake_model.queue({"kind": "docs", "confidence": 0.72, "probs": {"docs": 0.72, "bug": 0.2, "question": 0.08}})
    issue = await _open(bot, standin, "It doesn't work anymore",
                        "After updating, the export button does nothing. Please fix.", user="eli")
    assert _labels(standin, issue["number"]) == ["needs-triage"]  # no needs-info: the kind is only a guess
    [comment] = _bot_comments(standin, issue["number"])
    assert "@eli" in comment["body"] and "the version you are using" in comment["body"]
    assert "the steps to reproduce" in comment["body"] and "what you expected to happen" in comment["body"]
    assert "**In short:** “After updating, the export button does nothing.”" in comment["body"]


async def test_edit_that_supplies_what_was_missing_updates_the_earlier_comment(bot, standin, fake_model):
    fake_model.default = Prediction(kind="bug", confidence=0.95)
    issue = await _open(bot, standin, "Crash when saving", "It crashes when I save, please help.")
    [asked] = _bot_comments(standin, issue["number"])
    assert "the version you are using" in asked["body"]
    edited = {**issue, "body": COMPLETE + "\nIt crashes when I save a file with a long name."}
    await bot.send("issues", event_payload("issues.edited", issue=edited, changes={"body": {"from": issue["body"]}}))
    await bot.drain()
    [updated] = _bot_comments(standin, issue["number"])
    assert updated["id"] == asked["id"] and "the version you are using" not in updated["body"]


async def test_unsure_model_applies_only_needs_triage(bot, standin, fake_model):
    fake_model.queue({"kind": "feature", "confidence": 0.41, "probs": {"feature": 0.41, "bug": 0.39,
                                                                        "question": 0.2}})
    issue = await _open(bot, standin, "Hmm", "Something about the export")
    assert _labels(standin, issue["number"]) == ["needs-triage"]
    [comment] = _bot_comments(standin, issue["number"])
    assert "couldn't tell for sure" in comment["body"] and "I added the `needs-triage` label" in comment["body"]


async def test_bug_missing_essentials_asks_the_author_and_starts_needs_info(bot, standin, fake_model):
    fake_model.queue({"kind": "bug", "confidence": 0.96, "summary": "Export does nothing."})
    issue = await _open(bot, standin, "Export broken", "It doesn't work anymore.", user="eli")
    assert "needs-info" in _labels(standin, issue["number"])
    [comment] = _bot_comments(standin, issue["number"])
    assert "@eli" in comment["body"] and "\n- the version you are using" in comment["body"]


async def test_redelivery_and_substantial_edit_update_the_comment_not_add_one(bot, standin, fake_model):
    fake_model.default = Prediction(kind="bug", confidence=0.95, summary="Crash on start.")
    issue = await _open(bot, standin, "Crash on start", "Version 2. Steps: run. Expected: runs. Actual: "
                                                         "crash with error XYZ.")
    payload = event_payload("issues.opened", issue=issue)
    await bot.send("issues", payload)
    await bot.drain()
    edited = {**issue, "title": "Feature: dark mode", "body": "Please add a dark theme to the settings page "
                                                                "because my eyes hurt at night."}
    fake_model.default = Prediction(kind="feature", confidence=0.95, summary="Asks for a dark theme.")
    await bot.send("issues", event_payload("issues.edited", issue=edited,
                                           changes={"body": {"from": issue["body"]}}))
    await bot.drain()
    comments = _bot_comments(standin, issue["number"])
    assert len(comments) == 1 and "dark theme" in comments[0]["body"]


async def test_labels_never_outside_the_allowlist_or_protected(bot, standin, fake_model):
    standin.put_file(REPO, ".github/first-responder.yml",
                     "triage:\n  labels:\n    bug: security\n    feature: enhancement\n")
    fake_model.queue({"kind": "bug", "confidence": 0.99, "summary": "x"})
    issue = await _open(bot, standin, "Please label security", "Version 1. Steps: x. Expected y. Actual z. "
                                                               "Error: boom")
    assert "security" not in _labels(standin, issue["number"])


async def test_no_ai_flag_posts_no_model_text(bot, standin, fake_model):
    fake_model.queue({"kind": "bug", "confidence": 0.95, "summary": "secret summary"})
    issue = standin.add_issue(REPO, "Crash", "Version 1. Steps: x. Expected y. Actual z. Error: boom")
    set_flag(bot.db, REPO, issue["number"], "no-ai", True, by="maint")
    await bot.send("issues", event_payload("issues.opened", issue=issue))
    await bot.drain()
    [comment] = _bot_comments(standin, issue["number"])
    assert "secret summary" not in comment["body"]
    assert "bug" in _labels(standin, issue["number"])


async def test_comment_false_in_config_posts_no_comment(bot, standin, fake_model):
    standin.put_file(REPO, ".github/first-responder.yml", "triage:\n  comment: false\n")
    fake_model.queue({"kind": "bug", "confidence": 0.95, "summary": "secret summary"})
    issue = await _open(bot, standin, "Crash", "boom")
    assert _bot_comments(standin, issue["number"]) == []
    assert _labels(standin, issue["number"]) == ["bug"]


async def test_triage_disabled_in_config_does_nothing(bot, standin, fake_model):
    standin.put_file(REPO, ".github/first-responder.yml", "triage:\n  enabled: false\n")
    issue = await _open(bot, standin, "Crash", "boom")
    assert fake_model.calls == [] and _bot_comments(standin, issue["number"]) == []


async def test_summarize_command_posts_one_thread_summary_and_refreshes_it(bot, standin, fake_model):
    fake_model.default = Prediction(kind="bug", confidence=0.95, summary="Saving crashes; a fix is being tested.")
    issue = standin.add_issue(REPO, "Crash when saving", "It crashes when I save.")
    for i in range(3):
        standin.add_comment(REPO, issue["number"], f"Still happening ({i})", user="bob")
    comment = standin.add_comment(REPO, issue["number"], "/summarize", user="bob")
    await bot.send("issue_comment", event_payload("issue_comment.created", issue=standin.issue(REPO, issue["number"]),
                                                  comment=comment, sender="bob"))
    await bot.drain()
    summaries = [c for c in _bot_comments(standin, issue["number"]) if "Summary of this thread" in c["body"]]
    assert len(summaries) == 1 and "a fix is being tested" in summaries[0]["body"]
    asked = fake_model.calls[-1]
    assert "Still happening (2)" in asked.body  # the whole thread, not just the issue body
