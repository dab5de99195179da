"""The needs-info and stale lifecycles against the stand-in (issue 5): webhooks and the sweep.

Timelines are set in the past with a virtual clock shared by the stand-in and the sweep. Tests are
named after the complaints issue 5 lists against probot/no-response, probot/stale and actions/stale:
1 closing untriaged issues, 2 bots' comments counting as activity, 3 missing exemptions, 4 per-run
limits leaving work silently undone, 5 dry runs that write, 6 "completed" closes, 7 secondary rate
limits; and after the behaviours it specifies.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from bot import actions as actions_module
from bot.core.lifecycle import CLOSE_MARKER, PING_MARKER
from bot.db import kv_get, set_flag
from bot.features.lifecycle import (
    scheduled_sweep,
    start_needs_info,
    stop_needs_info,
    sweep_main,
    sweep_repo,
)
from tests.conftest import APP_ID, INSTALLATION_ID, REPO, SECRET, event_payload

BOT = "first-responder[bot]"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)  # when the needs-info label goes on
STALE_CONFIG = """\
lifecycle:
  stale:
    enabled: true
    days_until_stale: 30
    days_until_close: 7
    exempt_labels: [pinned, security, keep-open]
"""


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def at(standin, n: float) -> None:
    moment = day(n)
    standin.now = lambda: moment


async def sweep(bot, standin, days: float, *, dry_run: bool | None = None, delivery: str | None = None):
    """One sweep at T0 + ``days`` (the stand-in's clock set to the same moment)."""
    at(standin, days)
    ctx = await bot.services.context_for(REPO, INSTALLATION_ID, delivery_id=delivery or f"sweep-test-{days}")
    return await sweep_repo(ctx.gh, ctx.db, REPO, ctx.config.section("lifecycle"), now=day(days),
                            dry_run=ctx.dry_run if dry_run is None else dry_run, bot_login=BOT, ctx=ctx)


def needs_info_issue(standin, labeled: float = 0, user: str = "alice", title: str = "Crash on start") -> dict:
    """An issue opened 20 days before a maintainer added needs-info at T0 + ``labeled``."""
    at(standin, labeled)
    issue = standin.add_issue(REPO, title, "It crashes.", user=user, labels=["needs-info"],
                              created_at=day(labeled - 20), updated_at=day(labeled))
    standin.add_event(REPO, issue["number"], "labeled", created_at=day(labeled), actor="maint", label="needs-info")
    return issue


def bot_comments(standin, number: int, marker_kind: str | None = None) -> list[dict]:
    return [c for c in standin.comments(REPO, number) if c["user"]["login"] == BOT
            and (marker_kind is None or f"first-responder:{marker_kind}" in c["body"])]


def labels(standin, number: int) -> set[str]:
    return {label["name"] for label in standin.issue(REPO, number)["labels"]}


async def send_comment(bot, standin, number: int, user: str, body: str, user_type: str = "User") -> None:
    comment = standin.add_comment(REPO, number, body, user=user, user_type=user_type)
    payload = event_payload("issue_comment.created", issue=standin.issue(REPO, number), comment=comment,
                            sender=user, sender_type=user_type)
    await bot.send("issue_comment", payload)
    await bot.drain()


# ------------------------------------------------------------------------------------ needs-info
async def test_ping_after_seven_days_counted_from_the_label_and_never_a_second_ping(bot, standin):
    issue = needs_info_issue(standin)
    report = await sweep(bot, standin, 6)
    assert report.done == [] and bot_comments(standin, issue["number"]) == []
    report = await sweep(bot, standin, 7.5)
    assert [(e.number, e.kind) for e in report.done] == [(issue["number"], "ping")]
    [ping] = bot_comments(standin, issue["number"])
    assert ping["body"].startswith("@alice ") and f"first-responder:{PING_MARKER}" in ping["body"]
    for later in (7.6, 9, 13):
        await sweep(bot, standin, later)
    assert len(bot_comments(standin, issue["number"])) == 1
    assert standin.issue(REPO, issue["number"])["state"] == "open"


async def test_complaint6_close_after_fourteen_days_is_not_planned_and_says_a_reply_reopens(bot, standin):
    issue = needs_info_issue(standin)
    await sweep(bot, standin, 7.1)
    await sweep(bot, standin, 13)
    assert standin.issue(REPO, issue["number"])["state"] == "open"
    report = await sweep(bot, standin, 14.2)
    assert [e.kind for e in report.done] == ["close"]
    closed = standin.issue(REPO, issue["number"])
    assert (closed["state"], closed["state_reason"]) == ("closed", "not_planned")
    [close_comment] = bot_comments(standin, issue["number"], CLOSE_MARKER)
    assert "reply" in close_comment["body"] and "@alice" in close_comment["body"]
    await sweep(bot, standin, 15)
    await sweep(bot, standin, 30)
    assert len(bot_comments(standin, issue["number"], CLOSE_MARKER)) == 1  # never a second close comment


async def test_author_reply_through_webhook_removes_the_label_at_once(bot, standin):
    issue = needs_info_issue(standin)
    standin.now = lambda: datetime.now(timezone.utc)
    await send_comment(bot, standin, issue["number"], "alice", "Here is the log you asked for.")
    assert "needs-info" not in labels(standin, issue["number"])
    assert standin.issue(REPO, issue["number"])["state"] == "open"
    assert [w["method"] for w in standin.writes()] == ["DELETE"]


async def test_author_reply_after_the_bot_closed_reopens(bot, standin):
    issue = needs_info_issue(standin)
    await sweep(bot, standin, 7.1)
    await sweep(bot, standin, 14.2)
    assert standin.issue(REPO, issue["number"])["state"] == "closed"
    at(standin, 20)
    await send_comment(bot, standin, issue["number"], "alice", "Sorry, was away. Version 1.2.3.")
    reopened = standin.issue(REPO, issue["number"])
    assert reopened["state"] == "open" and "needs-info" not in labels(standin, issue["number"])


async def test_author_reply_after_a_person_closed_does_not_reopen(bot, standin):
    issue = needs_info_issue(standin)
    standin.issue(REPO, issue["number"])["state"] = "closed"
    standin.add_event(REPO, issue["number"], "closed", created_at=day(1), actor="maint")
    await send_comment(bot, standin, issue["number"], "alice", "But it still crashes")
    assert standin.issue(REPO, issue["number"])["state"] == "closed"


async def test_reply_after_close_missed_by_webhooks_is_reopened_by_the_sweep(bot, standin):
    issue = needs_info_issue(standin)
    await sweep(bot, standin, 7.1)
    await sweep(bot, standin, 14.2)
    at(standin, 16)
    standin.add_comment(REPO, issue["number"], "Here it is", user="alice", created_at=day(16))
    report = await sweep(bot, standin, 16.1)
    assert [e.kind for e in report.done] == ["reopen"]
    assert standin.issue(REPO, issue["number"])["state"] == "open"


async def test_maintainers_comment_is_not_the_authors_reply(bot, standin):
    issue = needs_info_issue(standin)
    at(standin, 2)
    await send_comment(bot, standin, issue["number"], "maint", "Any news? We need the version.")
    assert "needs-info" in labels(standin, issue["number"])
    report = await sweep(bot, standin, 7.5)
    assert [e.kind for e in report.done] == ["ping"]


async def test_author_edit_with_new_information_removes_the_label_and_a_ticked_box_does_not(bot, standin):
    issue = needs_info_issue(standin)
    standin.now = lambda: datetime.now(timezone.utc)
    edited = {**standin.issue(REPO, issue["number"]), "body": "It crashes.\n- [x] I searched"}
    standin.issue(REPO, issue["number"])["body"] = edited["body"]
    payload = event_payload("issues.edited", issue=edited, sender="alice",
                            changes={"body": {"from": "It crashes.\n- [ ] I searched"}})
    await bot.send("issues", payload)
    await bot.drain()
    assert "needs-info" in labels(standin, issue["number"])
    edited = {**edited, "body": "It crashes.\n- [x] I searched\nVersion 2.0.1 on Debian 12"}
    payload = event_payload("issues.edited", issue=edited, sender="alice",
                            changes={"body": {"from": "It crashes.\n- [x] I searched"}})
    await bot.send("issues", payload)
    await bot.drain()
    assert "needs-info" not in labels(standin, issue["number"])


async def test_complaint2_bot_comments_do_not_count_as_the_authors_reply(bot, standin):
    issue = needs_info_issue(standin)
    standin.add_comment(REPO, issue["number"], "I am a helpful bot", user="helper[bot]", user_type="Bot",
                        created_at=day(3))
    await send_comment(bot, standin, issue["number"], "helper[bot]", "still here", user_type="Bot")
    assert "needs-info" in labels(standin, issue["number"])
    report = await sweep(bot, standin, 7.5)
    assert [e.kind for e in report.done] == ["ping"]


async def test_a_maintainer_labeling_needs_info_writes_nothing(bot, standin):
    issue = needs_info_issue(standin)
    payload = event_payload("issues.labeled", issue=standin.issue(REPO, issue["number"]), sender="maint",
                            label={"name": "needs-info", "color": "ededed"})
    await bot.send("issues", payload)
    await bot.drain()
    assert standin.writes() == []


async def test_start_and_stop_needs_info_for_other_features(bot, standin):
    standin.now = lambda: datetime.now(timezone.utc)
    issue = standin.add_issue(REPO, "It fails", "no details", user="alice")
    ctx = await bot.services.context_for(REPO, INSTALLATION_ID, delivery_id="triage-1")
    await start_needs_info(ctx, issue["number"], "- the version you run\n- the full error", actor=BOT)
    assert "needs-info" in {label["name"] for label in standin.labels(REPO)}  # created: it did not exist
    assert "needs-info" in labels(standin, issue["number"])
    [question] = bot_comments(standin, issue["number"])
    assert question["body"].startswith("@alice") and "the version you run" in question["body"]
    await start_needs_info(ctx, issue["number"], "- the version you run\n- the full error", actor=BOT)
    assert len(bot_comments(standin, issue["number"])) == 1  # a retried delivery edits, never reposts
    ctx = await bot.services.context_for(REPO, INSTALLATION_ID, delivery_id="command-1")
    await stop_needs_info(ctx, issue["number"], actor="maint")
    assert "needs-info" not in labels(standin, issue["number"])


async def test_stop_needs_info_reopens_when_the_bot_closed(bot, standin):
    issue = needs_info_issue(standin)
    await sweep(bot, standin, 7.1)
    await sweep(bot, standin, 14.2)
    ctx = await bot.services.context_for(REPO, INSTALLATION_ID, delivery_id="command-2")
    await stop_needs_info(ctx, issue["number"], actor="maint")
    assert standin.issue(REPO, issue["number"])["state"] == "open"
    assert "needs-info" not in labels(standin, issue["number"])


# ------------------------------------------------------------------------------------------ stale
def old_issue(standin, title: str, *, asked: bool = True, **kwargs) -> dict:
    """Opened 100 days before T0; with ``asked``, a maintainer asked the author something 40 days before."""
    at(standin, -100)
    issue = standin.add_issue(REPO, title, "Something odd", user="alice", created_at=day(-100), **kwargs)
    if asked:
        standin.add_comment(REPO, issue["number"], "Which version is this?", user="maint", created_at=day(-40))
    return issue


async def test_complaint1_stale_never_closes_issues_waiting_on_maintainers(bot, standin):
    standin.put_file(REPO, ".github/first-responder.yml", STALE_CONFIG)
    waiting = old_issue(standin, "Asked the author")
    untriaged = old_issue(standin, "Nobody looked", asked=False)
    report = await sweep(bot, standin, 0)
    assert [(e.number, e.kind) for e in report.done] == [(waiting["number"], "mark_stale")]
    assert "stale" in labels(standin, waiting["number"]) and labels(standin, untriaged["number"]) == set()
    report = await sweep(bot, standin, 8)
    assert [(e.number, e.kind) for e in report.done] == [(waiting["number"], "close")]
    closed = standin.issue(REPO, waiting["number"])
    assert (closed["state"], closed["state_reason"]) == ("closed", "not_planned")
    assert standin.issue(REPO, untriaged["number"])["state"] == "open"


async def test_stale_is_off_by_default(bot, standin):
    old_issue(standin, "Asked the author")
    report = await sweep(bot, standin, 0)
    assert report.done == [] and standin.writes() == []


async def test_complaint3_every_stale_exemption(bot, standin):
    standin.put_file(REPO, ".github/first-responder.yml", STALE_CONFIG)
    control = old_issue(standin, "No exemption")
    exempt = [
        old_issue(standin, "Pinned", labels=["pinned"]),
        old_issue(standin, "Security", labels=["security"]),
        old_issue(standin, "Configured label", labels=["keep-open"]),
        old_issue(standin, "Milestone", milestone="v1"),
        old_issue(standin, "Assigned", assignees=["maint"]),
        old_issue(standin, "In a project"),
        old_issue(standin, "Frozen"),
    ]
    standin.add_event(REPO, exempt[5]["number"], "added_to_project", created_at=day(-45), actor="maint")
    set_flag(bot.db, REPO, exempt[6]["number"], "frozen", True, by="maint")
    report = await sweep(bot, standin, 0)
    assert [(e.number, e.kind) for e in report.done] == [(control["number"], "mark_stale")]
    for issue in exempt:
        assert "stale" not in labels(standin, issue["number"]), issue["title"]


async def test_complaint3_exemptions_can_be_switched_off(bot, standin):
    standin.put_file(REPO, ".github/first-responder.yml", STALE_CONFIG + "    exempt_assignees: false\n")
    assigned = old_issue(standin, "Assigned", assignees=["maint"])
    report = await sweep(bot, standin, 0)
    assert [(e.number, e.kind) for e in report.done] == [(assigned["number"], "mark_stale")]


async def test_complaint2_bot_comments_are_not_activity_for_stale(bot, standin):
    standin.put_file(REPO, ".github/first-responder.yml", STALE_CONFIG)
    issue = old_issue(standin, "Kept fresh by bots")
    standin.add_comment(REPO, issue["number"], "Linked to a PR", user="ci-helper[bot]", user_type="Bot",
                        created_at=day(-2))
    standin.add_comment(REPO, issue["number"], "Thanks!", user=BOT, user_type="Bot", created_at=day(-1))
    report = await sweep(bot, standin, 0)
    assert [(e.number, e.kind) for e in report.done] == [(issue["number"], "mark_stale")]


async def test_an_issue_touched_by_a_bot_is_marked_when_its_time_comes(bot, standin):
    standin.put_file(REPO, ".github/first-responder.yml", STALE_CONFIG)
    at(standin, -100)
    issue = standin.add_issue(REPO, "Recently asked", "Something odd", user="alice", created_at=day(-100))
    standin.add_comment(REPO, issue["number"], "Which version is this?", user="maint", created_at=day(-20))
    standin.add_comment(REPO, issue["number"], "Linked", user="ci-helper[bot]", user_type="Bot", created_at=day(-1))
    assert (await sweep(bot, standin, 0)).done == []
    report = await sweep(bot, standin, 5)
    assert report.examined == 0 and report.done == []  # unchanged and not due yet: not read again
    report = await sweep(bot, standin, 10.1)
    assert [(e.number, e.kind) for e in report.done] == [(issue["number"], "mark_stale")]


async def test_any_human_comment_removes_the_stale_label(bot, standin):
    standin.put_file(REPO, ".github/first-responder.yml", STALE_CONFIG)
    issue = old_issue(standin, "Asked the author")
    await sweep(bot, standin, 0)
    assert "stale" in labels(standin, issue["number"])
    await send_comment(bot, standin, issue["number"], "bystander", "I see this too on 2.0")
    assert "stale" not in labels(standin, issue["number"])


async def test_idle_issues_are_not_read_again_until_they_change(bot, standin):
    standin.put_file(REPO, ".github/first-responder.yml", STALE_CONFIG)
    untriaged = old_issue(standin, "Nobody looked", asked=False)
    timeline = f"/repos/{REPO}/issues/{untriaged['number']}/timeline"
    await sweep(bot, standin, 0)
    await sweep(bot, standin, 1)
    await sweep(bot, standin, 2)
    assert sum(1 for r in standin.requests if r["path"] == timeline) == 1


# ------------------------------------------------------------------------------------ the sweep
async def test_complaint4_ceiling_resumes_where_it_stopped_and_says_how_many_left(bot, standin, caplog):
    standin.put_file(REPO, ".github/first-responder.yml", "lifecycle:\n  max_writes_per_run: 2\n")
    issues = [needs_info_issue(standin, title=f"Crash {i}") for i in range(5)]
    caplog.set_level(logging.INFO, logger="bot.features.lifecycle")
    first = await sweep(bot, standin, 7.5)
    assert len(first.done) == 2 and first.writes == 2 and len(first.left) == 3
    assert "3 left for the next run" in first.summary()
    assert any("3 left for the next run" in record.getMessage() for record in caplog.records)
    left = [e.number for e in first.left]
    assert kv_get(bot.db, f"lifecycle:sweep:{REPO}")["pending"] == left
    second = await sweep(bot, standin, 7.6)
    assert [e.number for e in second.done] == left[:2] and len(second.left) == 1  # the leftovers go first
    third = await sweep(bot, standin, 7.7)
    assert [e.number for e in third.done] == left[2:] and third.left == []
    for issue in issues:
        assert len(bot_comments(standin, issue["number"])) == 1


async def test_complaint5_dry_run_changes_nothing(bot, standin, capsys):
    standin.put_file(REPO, ".github/first-responder.yml", STALE_CONFIG)
    needs_info_issue(standin)
    old_issue(standin, "Asked the author")
    report = await sweep(bot, standin, 7.5, dry_run=True)
    assert sorted(e.kind for e in report.done) == ["mark_stale", "ping"]
    assert standin.writes() == []
    results = {row["result"] for row in bot.db.query("SELECT result FROM audit")}
    assert results == {"dry-run"}
    assert any("would ping" in line for line in report.lines())
    assert kv_get(bot.db, f"lifecycle:sweep:{REPO}") is None


async def test_crash_between_ping_and_audit_row_does_not_ping_twice(bot, standin, monkeypatch):
    issue = needs_info_issue(standin)
    real_audit = actions_module.audit
    failures = []

    def audit_dies_once(ctx, action, number, details, result):
        if not failures:
            failures.append(action)
            raise RuntimeError("process killed before the audit row")
        real_audit(ctx, action, number, details, result)

    monkeypatch.setattr(actions_module, "audit", audit_dies_once)
    report = await sweep(bot, standin, 7.5)
    assert [e.kind for e in report.errors] == ["ping"]
    assert len(bot_comments(standin, issue["number"])) == 1  # the ping reached GitHub
    monkeypatch.setattr(actions_module, "audit", real_audit)
    report = await sweep(bot, standin, 7.6)
    assert report.done == []
    assert len(bot_comments(standin, issue["number"])) == 1  # the marker in the thread says "already pinged"


async def test_audit_log_prevents_a_second_ping_when_the_marker_left_the_thread(bot, standin):
    issue = needs_info_issue(standin)
    await sweep(bot, standin, 7.5)
    [ping] = bot_comments(standin, issue["number"])
    ctx = await bot.services.context_for(REPO, INSTALLATION_ID, delivery_id="cleanup")
    await ctx.gh.delete(f"/repos/{REPO}/issues/comments/{ping['id']}")  # someone deleted the ping
    report = await sweep(bot, standin, 8)
    assert [e.kind for e in report.skipped] == ["ping"] and report.done == []
    assert bot_comments(standin, issue["number"]) == []


async def test_close_interrupted_after_its_comment_is_finished_without_a_second_comment(bot, standin):
    issue = needs_info_issue(standin)
    await sweep(bot, standin, 7.1)
    standin.fail_next("PATCH", rf"/issues/{issue['number']}$", 422,
                      body={"message": "Validation Failed", "documentation_url": "https://docs.github.com/rest"})
    report = await sweep(bot, standin, 14.2)
    assert [e.kind for e in report.errors] == ["close"]
    assert standin.issue(REPO, issue["number"])["state"] == "open"
    report = await sweep(bot, standin, 14.3)
    assert [e.kind for e in report.done] == ["close"]
    closed = standin.issue(REPO, issue["number"])
    assert (closed["state"], closed["state_reason"]) == ("closed", "not_planned")
    assert len(bot_comments(standin, issue["number"], CLOSE_MARKER)) == 1


async def test_complaint7_secondary_rate_limit_on_the_ping_waits_and_pings_once(bot, standin):
    issue = needs_info_issue(standin)
    standin.fail_next("POST", r"/issues/\d+/comments$", 403, headers={"Retry-After": "1"})
    at(standin, 7.5)
    ctx = await bot.services.context_for(REPO, INSTALLATION_ID, delivery_id="sweep-rate-limit")
    report = await sweep_repo(ctx.gh, ctx.db, REPO, ctx.config.section("lifecycle"), now=day(7.5),
                              dry_run=False, bot_login=BOT, ctx=ctx)
    assert [e.kind for e in report.done] == ["ping"]
    assert 1.0 in ctx.gh.sleeps
    assert len(bot_comments(standin, issue["number"])) == 1


async def test_the_sweep_finds_candidates_with_a_few_searches(bot, standin):
    for i in range(3):
        needs_info_issue(standin, title=f"Crash {i}")
    standin.add_issue(REPO, "Unrelated", "fine", created_at=day(-50))
    await sweep(bot, standin, 7.5)
    searches = [r for r in standin.requests if r["path"] == "/search/issues"]
    assert len(searches) == 2 and all('label:"needs-info"' in r["query"]["q"] for r in searches)
    timelines = {r["path"] for r in standin.requests if r["path"].endswith("/timeline")}
    assert len(timelines) == 3  # the unrelated issue is never read


async def test_scheduled_sweep_runs_with_the_repo_config_and_the_real_clock(bot, standin):
    now = datetime.now(timezone.utc)
    standin.now = lambda: now - timedelta(days=8)
    issue = standin.add_issue(REPO, "Crash", "It crashes", user="alice", labels=["needs-info"],
                              created_at=now - timedelta(days=9))
    standin.add_event(REPO, issue["number"], "labeled", created_at=now - timedelta(days=8), label="needs-info")
    standin.now = lambda: datetime.now(timezone.utc)
    report = await scheduled_sweep(bot.services, REPO, INSTALLATION_ID)
    assert [e.kind for e in report.done] == ["ping"]
    delivery = bot.db.execute("SELECT delivery_id FROM audit").fetchone()[0]
    assert delivery.startswith("sweep-")


@pytest.fixture
def cli_env(monkeypatch, settings, standin):
    for name, value in {"GITHUB_APP_ID": str(APP_ID), "GITHUB_PRIVATE_KEY": settings.private_key,
                        "GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_API_URL": standin.url,
                        "DATABASE_PATH": settings.database_path, "WRITE_SPACING_SECONDS": "0"}.items():
        monkeypatch.setenv(name, value)


async def test_sweep_cli_dry_run_prints_what_it_would_do_for_every_installed_repo(cli_env, standin, capsys):
    now = datetime.now(timezone.utc)
    issue = standin.add_issue(REPO, "Crash", "It crashes", user="alice", labels=["needs-info"],
                              created_at=now - timedelta(days=9), updated_at=now - timedelta(days=8))
    standin.add_event(REPO, issue["number"], "labeled", created_at=now - timedelta(days=8), label="needs-info")
    assert await sweep_main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{REPO} (dry run)" in out and f"#{issue['number']} would ping" in out
    assert standin.writes() == []
    assert await sweep_main([REPO]) == 0
    out = capsys.readouterr().out
    assert f"#{issue['number']} pinged" in out and "0 left for the next run" in out
    assert len(bot_comments(standin, issue["number"])) == 1
    assert await sweep_main(["someone/else"]) == 1


async def test_sweep_repo_without_a_context_builds_one_and_honours_dry_run(bot, standin):
    issue = needs_info_issue(standin)
    at(standin, 7.5)
    await bot.services.start()
    gh = await bot.services.github.for_installation(INSTALLATION_ID)
    report = await sweep_repo(gh, bot.db, REPO, {"max_writes_per_run": 5, "needs_info": {"enabled": True}},
                              now=day(7.5), dry_run=True, bot_login=BOT, settings=bot.services.settings,
                              installation_id=INSTALLATION_ID)
    assert [(e.number, e.kind) for e in report.done] == [(issue["number"], "ping")] and report.dry_run
    assert standin.writes() == []
