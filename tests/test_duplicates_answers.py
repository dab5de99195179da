"""Duplicates and the answer cache end to end (issue 3): through signed webhooks and the stand-in."""
from __future__ import annotations

from bot.index import store
from tests.conftest import REPO, event_payload


def _bot_comments(standin, number):
    return [c for c in standin.comments(REPO, number) if c["user"]["type"] == "Bot"]


async def _open(bot, standin, title, body, user="alice", created_at=None):
    issue = standin.add_issue(REPO, title, body, user=user, created_at=created_at)
    await bot.send("issues", event_payload("issues.opened", issue=issue, sender=user))
    await bot.drain()
    return issue


async def test_a_seeded_near_duplicate_is_found_and_mentioned(bot, standin, fake_model):
    standin.put_file(REPO, ".github/first-responder.yml", "duplicates:\n  threshold: 0.2\n")
    original = await _open(bot, standin, "ICE: unexpected panic in borrowck with closures returning references",
                           "thread 'rustc' panicked at 'assertion failed: region_scope_tree'\n"
                           "borrowck crashes when a closure returns a reference to a captured Vec",
                           created_at="2024-01-01T00:00:00Z")
    await _open(bot, standin, "Add colour output to the test runner", "It would be nice to have colours.",
                created_at="2024-01-02T00:00:00Z")
    dup = await _open(bot, standin, "Internal compiler error: panic in borrowck for closure returning reference",
                      "borrowck panicked: assertion failed: region_scope_tree when a closure returns a "
                      "reference to a captured vector", created_at="2024-01-03T00:00:00Z")
    [comment] = _bot_comments(standin, dup["number"])
    assert f"#{original['number']}" in comment["body"]
    assert "Possibly related" in comment["body"]
    assert standin.issue(REPO, dup["number"])["state"] == "open"  # never closed on similarity alone
    suggested = bot.db.execute("SELECT duplicate_of FROM duplicate_suggestions WHERE issue = ?",
                               [dup["number"]]).fetchall()
    assert (original["number"],) in suggested  # for the digest's "possible duplicates" section


async def test_template_text_does_not_create_false_matches(bot, standin, fake_model):
    template = "## Describe the bug\n\n## Steps to reproduce\n\n## Expected behavior\n\n## Environment\n"
    standin.put_file(REPO, ".github/ISSUE_TEMPLATE/bug_report.md", template)
    standin.put_file(REPO, ".github/first-responder.yml", "duplicates:\n  threshold: 0.2\n")
    await _open(bot, standin, "Login page is slow",
                "## Describe the bug\nThe login page takes ten seconds\n## Steps to reproduce\nopen /login\n"
                "## Expected behavior\nfast\n## Environment\nFirefox", created_at="2024-01-01T00:00:00Z")
    other = await _open(bot, standin, "Exported CSV has wrong delimiter",
                        "## Describe the bug\nsemicolons instead of commas\n## Steps to reproduce\nexport\n"
                        "## Expected behavior\ncommas\n## Environment\nWindows")
    [comment] = _bot_comments(standin, other["number"])
    assert "Possibly related" not in comment["body"]


async def _answered_question(bot, standin):
    question = standin.add_issue(REPO, "How do I change the output directory?", "I want results in ~/reports.",
                                 user="gus", created_at="2024-01-01T00:00:00Z")
    answer = standin.add_comment(REPO, question["number"], "Set `output_dir` in settings.yml.", user="maint",
                                 author_association="MEMBER")
    closed = {**standin.issue(REPO, question["number"]), "state": "closed", "state_reason": "completed",
              "closed_at": None}
    await bot.send("issues", event_payload("issues.closed", issue=closed, sender="maint"))
    await bot.drain()
    assert store.get_issue(bot.db, REPO, question["number"])["answer"] == answer["body"]
    return question, answer


async def test_an_exact_repeat_question_is_answered_from_the_cache_without_a_model_call(bot, standin, fake_model):
    question, _answer = await _answered_question(bot, standin)
    before = len(fake_model.calls)
    repeat = await _open(bot, standin, "How do I change the output directory?", "I want results in ~/reports.",
                         user="zoe")
    assert len(fake_model.calls) == before  # the model layer was not invoked
    [comment] = _bot_comments(standin, repeat["number"])
    assert "output_dir" in comment["body"] and f"#{question['number']}" in comment["body"]
    calls = bot.db.execute("SELECT count(*) FROM model_calls WHERE issue = ?", [repeat["number"]]).fetchone()[0]
    assert calls == 0


async def test_editing_the_source_question_invalidates_the_cached_answer(bot, standin, fake_model):
    question, _answer = await _answered_question(bot, standin)
    edited = {**standin.issue(REPO, question["number"]), "body": "I want results somewhere else entirely."}
    await bot.send("issues", event_payload("issues.edited", issue=edited, sender="gus",
                                           changes={"body": {"from": question["body"]}}))
    await bot.drain()
    before = len(fake_model.calls)
    await _open(bot, standin, "How do I change the output directory?", "I want results in ~/reports.", user="zoe")
    assert len(fake_model.calls) == before + 1  # no cache hit: the model was asked


async def test_a_thumbs_down_from_the_new_author_invalidates_the_reused_answer(bot, standin, fake_model):
    await _answered_question(bot, standin)
    repeat = await _open(bot, standin, "How do I change the output directory?", "I want results in ~/reports.",
                         user="zoe")
    [comment] = _bot_comments(standin, repeat["number"])
    standin.add_reaction(REPO, "-1", user="zoe", comment_id=comment["id"])
    reply = standin.add_comment(REPO, repeat["number"], "That didn't work for me.", user="zoe")
    await bot.send("issue_comment", event_payload("issue_comment.created", issue=standin.issue(REPO, repeat["number"]),
                                                  comment=reply, sender="zoe"))
    await bot.drain()
    assert bot.db.execute("SELECT count(*) FROM answers_cache").fetchone()[0] == 0
    before = len(fake_model.calls)
    await _open(bot, standin, "How do I change the output directory?", "I want results in ~/reports.", user="yan")
    assert len(fake_model.calls) == before + 1
