"""The weekly digest against the GitHub stand-in (issue #7): what it fetches, what it posts, and when.

The pure parts (score, counts, chart, markdown) are tested in test_core_digest.py; here the seeded
repository goes through the real client: search with date qualifiers, comments, permissions, the
timeline, then ``apply``. The markdown for the seeded repository is pinned below.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from bot.app import Services
from bot.db import open_db, set_flag
from bot.features import digest
from bot.models.base import Prediction
from tests.conftest import INSTALLATION_ID, REPO
from tests.test_core_digest import assert_valid_xychart, mermaid_blocks

NOW = datetime(2024, 3, 11, 9, 30, tzinfo=timezone.utc)  # half an hour after 2024-W10 ended
CONFIG = "digest:\n  enabled: true\n  exclude_labels: [meta]\n"


def at(month: int, day: int, hour: int = 12, year: int = 2024) -> str:
    return datetime(year, month, day, hour, tzinfo=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def seed(standin) -> None:
    """A small repository: every section of the digest has something to show."""
    standin.now = lambda: NOW
    standin.put_file(REPO, ".github/first-responder.yml", CONFIG)
    standin.set_permission(REPO, "eve", "write")
    add = standin.add_issue
    add(REPO, "Crash when the path has a | pipe", labels=["bug"], user="ann", created_at=at(12, 1, year=2023),
        reactions={"+1": 10, "heart": 2, "-1": 1},
        comments=[{"body": "same here", "user": "bob", "created_at": at(3, 8)},
                  {"body": "me too", "user": "carol", "created_at": at(3, 9)},
                  {"body": "any news?", "user": "bob", "created_at": at(3, 9, 14)}])          # 1
    add(REPO, "Dark mode", labels=["enhancement"], user="dan", created_at=at(3, 5),
        reactions={"+1": 3, "eyes": 1},
        comments=[{"body": "Thanks, it is on the roadmap.", "user": "maint", "created_at": at(3, 6)}])  # 2
    add(REPO, "How do I configure X?", state="closed", state_reason="completed", created_at=at(3, 4),
        closed_at=at(3, 6))                                                                      # 3
    add(REPO, "Rewrite in Rust", state="closed", state_reason="not_planned", created_at=at(2, 1),
        closed_at=at(3, 7))                                                                      # 4
    add(REPO, "Crash on pipes", state="closed", state_reason="duplicate", created_at=at(3, 8),
        closed_at=at(3, 8, 13))                                                                  # 5
    add(REPO, "Typo in README", state="closed", created_at=at(2, 27), closed_at=at(2, 28))       # 6
    add(REPO, "Sync fails on large files", labels=["needs-info"], user="fay", created_at=at(2, 20),
        reactions={"confused": 2},
        comments=[{"body": "Could you attach the logs?", "user": "maint", "created_at": at(3, 8)}])  # 7
    standin.add_event(REPO, 7, "labeled", created_at=at(3, 8), actor="maint", label="needs-info")
    add(REPO, "Docs: document the cache", user="maint", author_association="COLLABORATOR",
        created_at=at(3, 1))                                                                     # 8
    add(REPO, "Export as CSV", user="gus", created_at=at(3, 10), reactions={"rocket": 1})        # 9
    add(REPO, "Meta: roadmap 2024", labels=["meta"], user="ann", created_at=at(1, 2),
        reactions={"+1": 40})                                                                    # 10
    add(REPO, "Old question about proxies", user="hal", created_at=at(6, 1, year=2023),
        comments=[{"body": "Set HTTPS_PROXY.", "user": "eve", "created_at": at(6, 2, year=2023)}])  # 11


@pytest.fixture
async def services(settings, standin, fake_model):
    seed(standin)
    services = Services(settings, models=fake_model)
    await services.start()
    yield services
    await services.close()


async def context(services):
    return await services.context_for(REPO, INSTALLATION_ID, "test-digest")


def section(markdown: str, heading: str) -> str:
    return markdown.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def top_numbers(markdown: str) -> list[int]:
    return [int(n) for n in re.findall(r"^\| \d+ \| \[#(\d+)\]", section(markdown, "Top issues"), re.M)]


def listed_numbers(markdown: str, heading: str) -> list[int]:
    return [int(n) for n in re.findall(r"^- \[#(\d+)\]", section(markdown, heading), re.M)]


def digest_issues(standin) -> list[dict]:
    return [issue for issue in standin.issues(REPO) if any(label["name"] == "digest" for label in issue["labels"])]


EXPECTED_MARKDOWN = "\n".join([
    "<!-- first-responder:digest:2024-W10 -->",
    "",
    "# Weekly digest for octo-org/hello: 2024-W10 (2024-03-04 09:00 – 2024-03-11 09:00 UTC)",
    "",
    "## Counts",
    "",
    "| | this week | change from the week before |",
    "|---|---:|---:|",
    "| Opened | 4 | +2 |",
    "| Closed as completed | 1 | ±0 |",
    "| Closed as not planned | 1 | +1 |",
    "| Closed as duplicate | 1 | +1 |",
    "| Still open | 6 | +1 |",
    "",
    "## Top issues (6)",
    "",
    "Score = reactions (👍 ❤️ 2, 🎉 🚀 😄 👀 1, 👎 😕 0.5) + 1.5 per commenter + recent activity (up to 10) "
    "+ age (up to 6).",
    "",
    "| # | issue | labels | score | reactions | discussion | recent | age |",
    "|---:|---|---|---:|---|---:|---:|---:|",
    "| 1 | [#1](https://github.com/octo-org/hello/issues/1) Crash when the path has a \\| pipe | `bug` | 38.33 | "
    "👍 10 ❤️ 2 👎 1 (24.5) | 3 | 9.15 | 1.68 |",
    "| 2 | [#2](https://github.com/octo-org/hello/issues/2) Dark mode | `enhancement` | 16.46 | 👍 3 👀 1 (7) "
    "| 1.5 | 7.86 | 0.1 |",
    "| 3 | [#7](https://github.com/octo-org/hello/issues/7) Sync fails on large files | `needs-info` | 11.5 "
    "| 😕 2 (1) | 1.5 | 8.67 | 0.33 |",
    "| 4 | [#9](https://github.com/octo-org/hello/issues/9) Export as CSV | – | 10.59 | 🚀 1 (1) | 0 | 9.58 "
    "| 0.01 |",
    "| 5 | [#8](https://github.com/octo-org/hello/issues/8) Docs: document the cache | – | 6.29 | – (0) | 0 "
    "| 6.13 | 0.16 |",
    "| 6 | [#11](https://github.com/octo-org/hello/issues/11) Old question about proxies | – | 6.23 | – (0) "
    "| 1.5 | 0 | 4.73 |",
    "",
    "## Needs a maintainer (2)",
    "",
    "Open issues with no reply from anyone with write access, oldest first.",
    "",
    "- [#1](https://github.com/octo-org/hello/issues/1) Crash when the path has a \\| pipe (opened 2023-12-01)",
    "- [#9](https://github.com/octo-org/hello/issues/9) Export as CSV (opened 2024-03-10)",
    "",
    "## Waiting on authors (1)",
    "",
    "- [#7](https://github.com/octo-org/hello/issues/7) Sync fails on large files: ping on 2024-03-15",
    "",
    "## Opened and closed per day, last 8 weeks",
    "",
    "```mermaid",
    "xychart-beta",
    '    title "Issues opened (bars) and closed (line) per day"',
    "    x-axis [" + ", ".join(f'"{(datetime(2024, 1, 15) + timedelta(days=d)):%m-%d}"' for d in range(56)) + "]",
    '    y-axis "Issues" 0 --> 1',
    # opened: #4 02-01, #7 02-20, #6 02-27, #8 03-01, #3 03-04, #2 03-05, #5 03-08, #9 03-10
    "    bar [" + ", ".join("1" if d in (17, 36, 43, 46, 49, 50, 53, 55) else "0" for d in range(56)) + "]",
    # closed: #6 02-28, #3 03-06, #4 03-07, #5 03-08
    "    line [" + ", ".join("1" if d in (44, 51, 52, 53) else "0" for d in range(56)) + "]",
    "```",
    "",
])


async def test_markdown_pinned_for_seeded_repository(services, standin):
    title, markdown, week = await digest.build_digest(await context(services), "2024-W10", now=NOW)
    assert (title, week) == ("Weekly digest: 2024-03-04 – 2024-03-11", "2024-W10")
    assert markdown == EXPECTED_MARKDOWN


async def test_ranking_order_follows_the_score_and_leaves_out_excluded_labels(services):
    _title, markdown, _week = await digest.build_digest(await context(services), "2024-W10", now=NOW)
    assert top_numbers(markdown) == [1, 2, 7, 9, 8, 11]  # #10 has 40 👍 but the `meta` label is excluded
    rows = re.findall(r"^\| \d+ \| .*? \| ([\d.]+) \|", section(markdown, "Top issues"), re.M)
    assert [float(score) for score in rows] == [38.33, 16.46, 11.5, 10.59, 6.29, 6.23]
    # #1's discussion part counts distinct people: bob twice and carol are 2 commenters, not 3 comments.
    assert "(24.5) | 3 |" in markdown


async def test_counts_split_closed_issues_by_state_reason(services):
    _title, markdown, _week = await digest.build_digest(await context(services), "2024-W10", now=NOW)
    counts = section(markdown, "Counts")
    assert "| Opened | 4 | +2 |" in counts
    assert "| Closed as completed | 1 | ±0 |" in counts
    assert "| Closed as not planned | 1 | +1 |" in counts
    assert "| Closed as duplicate | 1 | +1 |" in counts
    assert "| Still open | 6 | +1 |" in counts


async def test_needs_maintainer_lists_issues_without_a_writer_reply_oldest_first(services, standin):
    _title, markdown, _week = await digest.build_digest(await context(services), "2024-W10", now=NOW)
    # #2 has maint's reply, #11 eve's (write), #8 was opened by maint; #7 has maint's question.
    assert listed_numbers(markdown, "Needs a maintainer") == [1, 9]
    permission_checks = [r["path"] for r in standin.requests if r["path"].endswith("/permission")]
    assert len(permission_checks) == len(set(permission_checks)), "each login is asked once per run"


async def test_waiting_on_authors_shows_the_next_needs_info_step(services):
    _title, markdown, _week = await digest.build_digest(await context(services), "2024-W10", now=NOW)
    assert listed_numbers(markdown, "Waiting on authors") == [7]
    assert "ping on 2024-03-15" in markdown  # labeled 03-08 + ping_after_days 7


async def test_mermaid_block_is_valid_xychart(services):
    _title, markdown, _week = await digest.build_digest(await context(services), "2024-W10", now=NOW)
    [block] = mermaid_blocks(markdown)
    assert_valid_xychart(block)
    assert block[2].count(",") == 55  # 56 days


async def test_build_reads_only_search_and_a_few_threads(services, standin):
    ctx = await context(services)
    before = len(standin.requests)
    await digest.build_digest(ctx, "2024-W10", now=NOW)
    made = standin.requests[before:]
    paths = [r["path"] for r in made]
    assert not any(path == f"/repos/{REPO}/issues" for path in paths), "never lists every issue"
    assert len(made) <= 30, paths
    assert all(r["method"] == "GET" for r in made)


async def test_searches_split_ranges_over_the_result_cap(services, standin, monkeypatch):
    ctx = await context(services)
    _title, whole, _week = await digest.build_digest(ctx, "2024-W10", now=NOW)
    monkeypatch.setattr(digest, "SEARCH_CAP", 2)
    _title, split, _week = await digest.build_digest(ctx, "2024-W10", now=NOW)
    assert split == whole


async def test_post_twice_for_the_same_week_edits_instead_of_posting_again(services, standin):
    ctx = await context(services)
    first = await digest.post_digest(ctx, "2024-W10", now=NOW)
    standin.issue(REPO, 9)["reactions"].update({"+1": 8, "total_count": 9})  # the week's data changes
    second = await digest.post_digest(await context(services), "2024-W10", now=NOW)
    assert first["number"] == second["number"]
    [posted] = digest_issues(standin)
    assert posted["number"] == first["number"] and posted["title"] == "Weekly digest: 2024-03-04 – 2024-03-11"
    assert posted["body"] == second["markdown"] != first["markdown"]
    created = [r for r in standin.writes() if r["method"] == "POST" and r["path"] == f"/repos/{REPO}/issues"]
    assert len(created) == 1
    third = await digest.post_digest(await context(services), "2024-W10", now=NOW)
    assert [r["result"] for r in third["results"]] == ["skipped", "skipped"]  # label exists, body unchanged


async def test_previous_week_digest_is_closed_with_a_link_to_the_new_one(services, standin):
    previous = await digest.post_digest(await context(services), "2024-W09", now=NOW)
    assert previous["previous_closed"] is None
    current = await digest.post_digest(await context(services), "2024-W10", now=NOW)
    assert current["previous_closed"] == previous["number"]
    old = standin.issue(REPO, previous["number"])
    assert (old["state"], old["state_reason"]) == ("closed", "completed")
    [note] = standin.comments(REPO, previous["number"])
    assert f"#{current['number']}" in note["body"]
    assert standin.issue(REPO, current["number"])["state"] == "open"
    again = await digest.post_digest(await context(services), "2024-W10", now=NOW)
    assert again["previous_closed"] is None and len(standin.comments(REPO, previous["number"])) == 1


async def test_close_previous_false_leaves_last_week_open(services, standin):
    standin.put_file(REPO, ".github/first-responder.yml", CONFIG + "  close_previous: false\n")
    previous = await digest.post_digest(await context(services), "2024-W09", now=NOW)
    await digest.post_digest(await context(services), "2024-W10", now=NOW)
    assert standin.issue(REPO, previous["number"])["state"] == "open"


async def test_scheduled_posts_once_after_the_week_end_and_matches_post_digest(services, standin):
    early = await digest.scheduled_digest(services, REPO, INSTALLATION_ID, now=datetime(2024, 3, 11, 8, 59,
                                                                                          tzinfo=timezone.utc))
    assert early["week"] == "2024-W09"  # W10 has not ended at 08:59: the latest finished week is W09
    result = await digest.scheduled_digest(services, REPO, INSTALLATION_ID, now=NOW)
    assert result["week"] == "2024-W10"
    writes = len(standin.writes())
    for later in (NOW + timedelta(minutes=10), NOW + timedelta(days=6)):
        assert await digest.scheduled_digest(services, REPO, INSTALLATION_ID, now=later) is None
    assert len(standin.writes()) == writes
    _title, markdown, _week = await digest.build_digest(await context(services), "2024-W10", now=NOW)
    assert standin.issue(REPO, result["number"])["body"] == markdown == result["markdown"]
    assert markdown == EXPECTED_MARKDOWN


async def test_scheduled_after_downtime_posts_the_latest_week_once(services, standin):
    await digest.scheduled_digest(services, REPO, INSTALLATION_ID, now=NOW)
    back = NOW + timedelta(days=15)  # down for two weekly runs
    result = await digest.scheduled_digest(services, REPO, INSTALLATION_ID, now=back)
    assert result["week"] == "2024-W12"
    assert await digest.scheduled_digest(services, REPO, INSTALLATION_ID, now=back + timedelta(minutes=10)) is None
    assert sorted(issue["title"] for issue in digest_issues(standin)) == [
        "Weekly digest: 2024-03-04 – 2024-03-11", "Weekly digest: 2024-03-18 – 2024-03-25"]


async def test_scheduled_does_nothing_when_disabled(settings, standin, fake_model):
    seed(standin)
    standin.put_file(REPO, ".github/first-responder.yml", "digest:\n  enabled: false\n")
    services = Services(settings, models=fake_model)
    await services.start()
    try:
        assert await digest.scheduled_digest(services, REPO, INSTALLATION_ID, now=NOW) is None
    finally:
        await services.close()
    assert standin.writes() == []


async def test_scheduled_respects_day_hour_and_timezone(services, standin):
    standin.put_file(REPO, ".github/first-responder.yml",
                     CONFIG + "  day: friday\n  hour: 17\n  timezone: Europe/Berlin\n")
    # Friday 15 March 2024, 17:00 in Berlin is 16:00 UTC.
    before = datetime(2024, 3, 15, 15, 59, tzinfo=timezone.utc)
    after = datetime(2024, 3, 15, 16, 1, tzinfo=timezone.utc)
    assert (await digest.scheduled_digest(services, REPO, INSTALLATION_ID, now=before))["week"] == "2024-W10"
    result = await digest.scheduled_digest(services, REPO, INSTALLATION_ID, now=after)
    assert result["week"] == "2024-W11"
    assert "(2024-03-08 17:00 – 2024-03-15 17:00 CET)" in result["markdown"]


async def test_summaries_come_from_the_model_and_are_cached_per_issue(services, standin, fake_model):
    fake_model.default = Prediction(kind="bug", confidence=0.9, summary="Asks for a fix.")
    ctx = await context(services)
    set_flag(ctx.db, REPO, 2, "no-ai", True)
    _title, markdown, _week = await digest.build_digest(ctx, "2024-W10", now=NOW)
    assert "Crash when the path has a \\| pipe — Asks for a fix." in markdown
    assert "Dark mode —" not in markdown  # no-ai: the title stands alone
    asked = sorted(call.number for call in fake_model.calls)
    assert asked == [1, 7, 8, 9, 11]
    await digest.build_digest(ctx, "2024-W10", now=NOW)
    assert len(fake_model.calls) == 5, "unchanged issues are not summarised again"
    standin.add_comment(REPO, 9, "I need this too", user="ivy", created_at=NOW)
    await digest.build_digest(ctx, "2024-W10", now=NOW)
    assert [call.number for call in fake_model.calls[5:]] == [9]


async def test_a_failing_model_leaves_the_title(services, fake_model):
    fake_model.default = None
    fake_model.queue(RuntimeError("model down"))
    _title, markdown, _week = await digest.build_digest(await context(services), "2024-W10", now=NOW)
    assert markdown == EXPECTED_MARKDOWN


async def test_cli_dry_run_prints_and_writes_nothing(settings, standin, monkeypatch, capsys):
    seed(standin)
    db = open_db(settings.database_path)
    db["installations"].insert({"repo": REPO, "installation_id": INSTALLATION_ID, "added_at": 0})
    for name, value in {"GITHUB_APP_ID": settings.app_id, "GITHUB_PRIVATE_KEY": settings.private_key,
                        "GITHUB_WEBHOOK_SECRET": settings.webhook_secret, "GITHUB_API_URL": settings.api_url,
                        "DATABASE_PATH": settings.database_path}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(Services, "models", property(lambda self: None))
    assert await digest.digest_main([REPO, "--week", "2024-W10", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed == EXPECTED_MARKDOWN + "\n"
    assert standin.writes() == []
    assert db.execute("SELECT count(*) FROM audit").fetchone()[0] == 0

    assert await digest.digest_main([REPO, "--week", "2024-W10"]) == 0
    assert capsys.readouterr().out == printed
    [posted] = digest_issues(standin)
    assert posted["body"] + "\n" == printed


async def test_cli_rejects_a_malformed_week(capsys):
    with pytest.raises(SystemExit):
        await digest.digest_main([REPO, "--week", "2024-10"])
    assert "2024-W05" in capsys.readouterr().err


async def test_dry_run_repository_posts_nothing(services, standin):
    standin.put_file(REPO, ".github/first-responder.yml", "dry_run: true\n" + CONFIG)
    result = await digest.post_digest(await context(services), "2024-W10", now=NOW)
    assert result["number"] is None and standin.writes() == []
    assert {r["result"] for r in result["results"]} == {"dry-run"}


async def test_second_build_reads_no_unchanged_thread_again(services, standin):
    ctx = await context(services)
    await digest.build_digest(ctx, "2024-W10", now=NOW)
    before = len(standin.requests)
    await digest.build_digest(ctx, "2024-W10", now=NOW)
    again = [r["path"] for r in standin.requests[before:]]
    assert not [path for path in again if path.endswith(("/comments", "/timeline"))], again
    standin.add_comment(REPO, 7, "Here are the logs.", user="fay", created_at=NOW)
    before = len(standin.requests)
    _title, markdown, _week = await digest.build_digest(ctx, "2024-W10", now=NOW)
    changed = [r["path"] for r in standin.requests[before:] if r["path"].endswith(("/comments", "/timeline"))]
    assert sorted(changed) == [f"/repos/{REPO}/issues/7/comments", f"/repos/{REPO}/issues/7/timeline"]
    assert listed_numbers(markdown, "Waiting on authors") == []  # the author answered
