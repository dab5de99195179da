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


SMALL_REPO_HISTORY = [
    ("Crash when exporting a report to PDF",
     "Clicking *Export → PDF* on a report with charts crashes the app:\n\n```\nTraceback (most recent call last):\n"
     "  File \"reportly/export/pdf_writer.py\", line 88, in render_chart\n    canvas.drawImage(chart.png_bytes)\n"
     "KeyError: 'font_family'\n```\n\nSteps: open any report with a chart, choose Export, pick PDF."),
    ("Dark mode for the settings page", "The settings page is still white when the rest of the app is dark."),
    ("Add a CSV import wizard", "It would help to import expenses from a bank CSV with a column mapping step."),
    ("Typo in the README install section", "It says `pip install reportlyy` with two y's."),
    ("Support Python 3.13", "The wheel metadata caps the Python version below 3.13."),
    ("Charts do not respect the locale's decimal separator",
     "With a German locale the axis labels show 1.5 instead of 1,5."),
    ("Slow startup with many saved reports", "With about 400 saved reports the app takes 20 seconds to start."),
]


async def _small_repo(bot, standin):
    """A repository with seven issues of its own history (no other data): the small-repository case."""
    opened = []
    for day, (title, body) in enumerate(SMALL_REPO_HISTORY, start=1):
        opened.append(await _open(bot, standin, title, body, created_at=f"2024-03-{day:02d}T09:00:00Z"))
    return opened


async def test_an_obvious_duplicate_in_a_small_repository_is_mentioned_at_the_default_threshold(bot, standin, fake_model):
    # Eight issues in all; no `duplicates.threshold` configured: the shipped default decides.
    history = await _small_repo(bot, standin)
    original = history[0]
    # Same error, same file, same steps, in the reporter's own words (no copy of the first report).
    dup = await _open(bot, standin, "Report export to PDF dies with font_family KeyError",
                      "Since yesterday I cannot save reports as PDF files. If a report contains a chart and I pick "
                      "PDF from the Export menu, the program closes. The log ends in pdf_writer.py (render_chart) "
                      "with `KeyError: 'font_family'`.",
                      user="bob", created_at="2024-03-20T10:00:00Z")
    [comment] = _bot_comments(standin, dup["number"])
    assert "Possibly related" in comment["body"]
    assert f"#{original['number']}" in comment["body"]
    for other in history[1:]:  # only the real original is offered
        assert f"#{other['number']}" not in comment["body"]
    assert standin.issue(REPO, dup["number"])["state"] == "open"


async def test_an_unrelated_issue_in_a_small_repository_gets_no_duplicate_mention(bot, standin, fake_model):
    # The flip side of the small-repository case: the best of seven candidates is not a duplicate just
    # because it is the best there is.
    await _small_repo(bot, standin)
    other = await _open(bot, standin, "Keyboard shortcut to duplicate a report",
                        "I often copy a report to change one filter. A Ctrl+D shortcut that makes a copy of the "
                        "open report would save me a few clicks each time.",
                        user="bob", created_at="2024-03-20T10:00:00Z")
    for comment in _bot_comments(standin, other["number"]):
        assert "Possibly related" not in comment["body"]
