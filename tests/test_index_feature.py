"""The issue index against the stand-in (issue 3): paginated backfill, crash and resume, since=,
and webhook updates."""
from __future__ import annotations

import pytest

from bot.features.index import backfill
from bot.index import store
from bot.models.base import IssueText
from tests.conftest import REPO, event_payload


async def _gh(bot):
    await bot.services.start()
    return await bot.services.github.for_installation(1)


def _pages(standin):
    return [r["query"].get("page") for r in standin.requests
            if r["method"] == "GET" and r["path"] == f"/repos/{REPO}/issues"]


async def test_backfill_paginates_and_resumes_after_a_crash(bot, standin):
    for i in range(250):
        standin.add_issue(REPO, f"Issue number {i}", f"Body {i}", created_at=f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}Z")
    gh = await _gh(bot)
    seen = []

    def crash_after_first_page(done, total, rate):
        seen.append((done, total))
        raise KeyboardInterrupt("process killed")

    with pytest.raises(KeyboardInterrupt):
        await backfill(gh, bot.db, REPO, progress=crash_after_first_page)
    assert seen == [(100, 250)]
    assert bot.db.execute("SELECT count(*) FROM issues").fetchone()[0] == 100
    result = await backfill(gh, bot.db, REPO)
    assert result["indexed"] == 250 and result["fetched"] == 150
    assert _pages(standin) == ["1", "2", "3"]  # page 1 was not fetched again
    row = store.get_issue(bot.db, REPO, 17)
    assert row["title"] == "Issue number 16" or row["title"].startswith("Issue number")


async def test_backfill_rerun_fetches_only_what_changed(bot, standin):
    for i in range(5):
        standin.add_issue(REPO, f"Old issue {i}", "text", created_at="2024-01-01T00:00:00Z",
                          updated_at="2024-01-01T00:00:00Z")
    gh = await _gh(bot)
    await backfill(gh, bot.db, REPO)
    standin.add_issue(REPO, "Brand new issue", "fresh")
    result = await backfill(gh, bot.db, REPO)
    last = [r for r in standin.requests if r["path"] == f"/repos/{REPO}/issues"][-1]
    assert "since" in last["query"]
    assert result["fetched"] == 1
    assert bot.db.execute("SELECT count(*) FROM issues").fetchone()[0] == 6


async def test_webhooks_keep_the_index_current(bot, standin):
    issue = standin.add_issue(REPO, "Parser panics on empty input", "thread 'main' panicked")
    payload = event_payload("issues.opened", issue=issue)
    await bot.send("issues", payload)
    await bot.drain()
    assert store.get_issue(bot.db, REPO, issue["number"])["title"] == "Parser panics on empty input"

    edited = {**issue, "title": "Parser panics on empty input file"}
    await bot.send("issues", event_payload("issues.edited", issue=edited))
    await bot.drain()
    assert store.get_issue(bot.db, REPO, issue["number"])["title"] == "Parser panics on empty input file"

    closed = {**edited, "state": "closed", "state_reason": "completed"}
    await bot.send("issues", event_payload("issues.closed", issue=closed))
    await bot.drain()
    row = store.get_issue(bot.db, REPO, issue["number"])
    assert (row["state"], row["state_reason"]) == ("closed", "completed")

    await bot.send("issues", event_payload("issues.deleted", issue=closed))
    await bot.drain()
    assert store.get_issue(bot.db, REPO, issue["number"]) is None


async def test_template_text_is_stripped_before_indexing(bot, standin):
    standin.put_file(REPO, ".github/ISSUE_TEMPLATE/bug.md",
                     "---\nname: Bug\n---\n## Steps to reproduce\n\n## Expected behaviour\n\n- [ ] I searched existing issues\n")
    issue = standin.add_issue(REPO, "Crash", "## Steps to reproduce\nrun it twice\n## Expected behaviour\n"
                                            "- [ ] I searched existing issues\nno crash")
    await bot.send("issues", event_payload("issues.opened", issue=issue))
    await bot.drain()
    row = store.get_issue(bot.db, REPO, issue["number"])
    assert "Steps to reproduce" not in row["search_body"]
    assert "searched existing issues" not in row["search_body"]
    assert "run it twice" in row["search_body"]


async def test_installing_the_app_backfills_and_trains_the_repo_classifier(bot, standin):
    from bot.features.index import on_repo_added
    from bot.models.classifier import load_classifier

    words = {"bug": ("crash", "error", "traceback", "fails", "broken"),
             "enhancement": ("add", "support", "option", "would be nice", "request"),
             "question": ("how do I", "is it possible", "why does", "what is", "help")}
    for label, phrases in words.items():
        for i in range(25):
            phrase = phrases[i % len(phrases)]
            standin.add_issue(REPO, f"{phrase} {label} case {i}", f"{phrase} in module {i} {label}", labels=(label,),
                              state="closed", state_reason="completed")
    await bot.services.start()
    await on_repo_added(bot.services, REPO, 1)
    assert bot.db.execute("SELECT count(*) FROM issues").fetchone()[0] == 75
    classifier = load_classifier(bot.db, REPO)
    assert classifier is not None and classifier.usable()
    assert classifier.predict(IssueText("error crash traceback", "it fails", REPO)).kind == "bug"
