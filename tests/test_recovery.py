"""Deliveries missed while the server was down (issue #11 item 17).

GitHub does not redeliver on its own. These tests let the stand-in play GitHub's App hook: it POSTs
signed deliveries to the bot's real server (or to a port where nothing listens: the server is down),
records each try as a hook delivery, lists them (``GET /app/hook/deliveries``, App JWT, cursor
pages) and, when asked (``POST /app/hook/deliveries/{id}/attempts``), sends the same body again with
the same guid. The bot's recovery run must ask for each missed delivery once, and each must then be
processed exactly once.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from datetime import datetime, timedelta, timezone

import pytest

from bot import scheduler
from bot.config import ConfigError, Settings
from bot.core.recovery import delivery_failed, plan_redeliveries
from bot.features.recovery import recover_missed_deliveries
from tests.conftest import REPO, SECRET, event_payload, free_port, start_server

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def item(guid: str, minutes_ago: float, *, code: int = 0, status: str | None = None, item_id: int = 1,
         redelivery: bool = False) -> dict:
    """A hook-delivery item as GitHub lists it."""
    moment = NOW - timedelta(minutes=minutes_ago)
    return {"id": item_id, "guid": guid, "delivered_at": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "redelivery": redelivery, "duration": 0.1,
            "status": status if status is not None else ("OK" if 200 <= code < 300 else "failed to connect to host"),
            "status_code": code, "event": "issues", "action": "opened", "installation_id": 1, "repository_id": 2}


# ---------------------------------------------------------------------------------------- the pure core
def test_a_try_is_failed_unless_its_status_is_ok_and_its_code_2xx_or_3xx():
    assert delivery_failed(item("a", 1, code=0))
    assert delivery_failed(item("a", 1, code=503, status="Invalid HTTP Response: 503"))
    assert delivery_failed(item("a", 1, code=401, status="Invalid HTTP Response: 401"))
    assert delivery_failed(item("a", 1, code=202, status="timed out"))
    assert delivery_failed({"guid": "a", "status": "OK"})  # no code at all: not known to have arrived
    assert not delivery_failed(item("a", 1, code=202))
    assert not delivery_failed(item("a", 1, code=200, status="ok"))


def test_plan_skips_delivered_queued_requested_and_old_guids_and_bounds_the_run():
    items = [
        item("new-1", 5, item_id=10),
        item("new-2", 10, item_id=9),
        item("later-ok", 12, code=202, item_id=8, redelivery=True),  # a redelivery got through
        item("later-ok", 60, item_id=7),
        item("queued", 20, item_id=6),
        item("asked", 30, item_id=5),
        item("asked", 31, item_id=4),
        item("new-3", 40, item_id=3),
        item("too-old", 25 * 60, item_id=2),
        item("fine", 50, code=202, item_id=1),
    ]
    decision = plan_redeliveries(items, now=NOW, window=timedelta(hours=24), in_queue={"queued"},
                                 requested={"asked"}, limit=2)
    # Oldest first, so one issue's events arrive again in the order they happened.
    assert [entry["guid"] for entry in decision.redeliver] == ["new-3", "new-2"]
    assert (decision.failed_guids, decision.in_queue, decision.already_requested, decision.too_old,
            decision.over_limit) == (5, 1, 1, 1, 1)
    everything = plan_redeliveries(items, now=NOW, window=timedelta(hours=24), in_queue=set(), requested=set(),
                                   limit=50)
    assert {entry["guid"] for entry in everything.redeliver} == {"new-1", "new-2", "new-3", "queued", "asked"}
    assert plan_redeliveries(items, now=NOW, window=timedelta(hours=24), in_queue=set(), requested=set(),
                             limit=0).redeliver == []


def test_plan_redelivers_the_latest_try_of_a_guid_that_failed_twice():
    items = [item("g", 5, code=502, status="Invalid HTTP Response: 502", item_id=2, redelivery=True),
             item("g", 90, item_id=1)]
    [chosen] = plan_redeliveries(items, now=NOW, window=timedelta(hours=1), in_queue=set(), requested=set(),
                                 limit=5).redeliver
    assert chosen["id"] == 2  # its last try is inside the window even though the first is not


def test_settings_read_and_check_the_recovery_bounds():
    base = {"GITHUB_APP_ID": "1"}
    settings = Settings.from_env(base, require_app=False)
    assert (settings.redelivery_window_hours, settings.redelivery_max_per_run) == (24.0, 50)
    settings = Settings.from_env({**base, "REDELIVERY_WINDOW_HOURS": "6", "REDELIVERY_MAX_PER_RUN": "0"},
                                 require_app=False)
    assert (settings.redelivery_window_hours, settings.redelivery_max_per_run) == (6.0, 0)
    for name, value in (("REDELIVERY_WINDOW_HOURS", "abc"), ("REDELIVERY_WINDOW_HOURS", "100"),
                        ("REDELIVERY_WINDOW_HOURS", "nan"), ("REDELIVERY_MAX_PER_RUN", "1.5"),
                        ("REDELIVERY_MAX_PER_RUN", "-1")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({**base, name: value}, require_app=False)


# ------------------------------------------------------------------------------ against the stand-in
def label_comment(standin, number: int, label: str) -> dict:
    """A maintainer's ``/label`` comment and the ``issue_comment.created`` payload GitHub would send."""
    comment = standin.add_comment(REPO, number, f"/label {label}", user="maint")
    return event_payload("issue_comment.created", issue=standin.issue(REPO, number), comment=comment,
                         sender="maint")


def label_posts(standin, number: int) -> int:
    return sum(1 for r in standin.writes(ok_only=True) if r["method"] == "POST"
               and r["path"] == f"/repos/{REPO}/issues/{number}/labels")


def rows(db) -> dict[str, dict]:
    return {row["id"]: row for row in db.query("SELECT id, status, attempts FROM deliveries")}


async def test_server_down_then_up_recovery_redelivers_and_each_delivery_is_processed_once(
        standin, settings, fake_model, caplog):
    caplog.set_level(logging.INFO, logger="bot.features.recovery")
    port = free_port()
    standin.set_webhook(f"http://127.0.0.1:{port}/webhook", SECRET)
    issues = [standin.add_issue(REPO, f"Crash {n}", "It crashes.") for n in range(3)]
    # The server is down: nothing listens on its port, every delivery fails at GitHub.
    missed = [await standin.deliver("issue_comment", label_comment(standin, issue["number"], "bug"))
              for issue in issues]
    assert [entry["status_code"] for entry in missed] == [0, 0, 0]

    bot, runner = await start_server(settings, models=fake_model, port=port)
    try:
        # Up again: a delivery made now arrives normally and must not be asked for again.
        live_issue = standin.add_issue(REPO, "Live", "Fine.")
        live = await standin.deliver("issue_comment", label_comment(standin, live_issue["number"], "question"))
        assert live["status"] == "OK"
        # GitHub gave up on this one (say, a slow answer), though the bot stored it: not asked for.
        slow_issue = standin.add_issue(REPO, "Slow", "Fine.")
        slow_payload = label_comment(standin, slow_issue["number"], "question")
        standin.set_webhook(None, SECRET)
        slow = await standin.deliver("issue_comment", slow_payload)
        standin.set_webhook(f"http://127.0.0.1:{port}/webhook", SECRET)
        await bot.send("issue_comment", slow_payload, delivery=slow["guid"])
        await bot.drain()
        report = await recover_missed_deliveries(bot.services)
        assert report.requested == 3 and report.errors == 0 and report.decision.in_queue == 1
        await standin.settle()
        await bot.drain()
        stored = rows(bot.db)
        assert set(stored) == {entry["guid"] for entry in missed} | {live["guid"], slow["guid"]}
        assert {row["status"] for row in stored.values()} == {"done"}
        for issue in issues:
            assert "bug" in {label["name"] for label in standin.issue(REPO, issue["number"])["labels"]}
            assert label_posts(standin, issue["number"]) == 1
        redelivered = [d["item"] for d in standin.hook_deliveries if d["item"]["redelivery"]]
        assert sorted(entry["guid"] for entry in redelivered) == sorted(entry["guid"] for entry in missed)
        assert all(entry["status"] == "OK" for entry in redelivered)
        asks = [r for r in standin.requests if r["path"].startswith("/app/hook/deliveries/")]
        assert len(asks) == 3 and all(r["headers"]["authorization"].lower().startswith("bearer ") for r in asks)
        audit = [json.loads(row["details"]) for row in bot.db.query(
            "SELECT details FROM audit WHERE action = 'Redeliver' AND result = 'ok'")]
        assert sorted(entry["guid"] for entry in audit) == sorted(entry["guid"] for entry in missed)
        assert any("asked GitHub to redeliver 3" in record.getMessage() for record in caplog.records)

        # Hourly runs after that ask for nothing: each missed guid now has a try that got through.
        again = await recover_missed_deliveries(bot.services)
        assert again.requested == 0 and again.decision.failed_guids == 1 and again.decision.in_queue == 1
        await standin.settle()
        assert len([r for r in standin.requests if r["path"].startswith("/app/hook/deliveries/")]) == 3
        for issue in issues:
            assert label_posts(standin, issue["number"]) == 1
    finally:
        await bot.session.close()
        await runner.cleanup()


async def test_a_guid_is_asked_for_once_even_when_its_redelivery_fails_too(standin, settings, fake_model):
    standin.set_webhook(None, SECRET)  # the server stays unreachable
    issue = standin.add_issue(REPO, "Crash", "It crashes.")
    await standin.deliver("issue_comment", label_comment(standin, issue["number"], "bug"))
    bot, runner = await start_server(settings, models=fake_model)
    try:
        first = await recover_missed_deliveries(bot.services)
        await standin.settle()
        assert first.requested == 1
        assert [d["item"]["status_code"] for d in standin.hook_deliveries] == [0, 0]  # failed again
        for _ in range(2):
            later = await recover_missed_deliveries(bot.services)
            await standin.settle()
            assert later.requested == 0 and later.decision.already_requested == 1
        assert len(standin.hook_deliveries) == 2
        [row] = bot.db.query("SELECT result FROM redelivery_requests")
        assert row["result"] == "ok"
    finally:
        await bot.session.close()
        await runner.cleanup()


async def test_recovery_is_bounded_per_run_and_by_the_window_and_follows_cursor_pages(standin, settings,
                                                                                      fake_model, caplog):
    caplog.set_level(logging.WARNING, logger="bot.features.recovery")
    port = free_port()
    standin.set_webhook(f"http://127.0.0.1:{port}/webhook", SECRET)
    issue = standin.add_issue(REPO, "Crash", "It crashes.")
    real_now = standin.now
    old = datetime.now(timezone.utc) - timedelta(hours=30)
    standin.now = lambda: old
    stale = await standin.deliver("issue_comment", label_comment(standin, issue["number"], "old"))
    standin.now = real_now
    recent = [await standin.deliver("issue_comment", label_comment(standin, issue["number"], f"l{n}"))
              for n in range(5)]
    settings = dataclasses.replace(settings, redelivery_max_per_run=2)
    bot, runner = await start_server(settings, models=fake_model, port=port)
    try:
        from bot.features import recovery

        recovery_per_page = recovery.PER_PAGE
        recovery.PER_PAGE = 2  # three pages for six deliveries: the cursor must be followed
        try:
            runs = []
            for _ in range(4):
                runs.append(await recover_missed_deliveries(bot.services))
                await standin.settle()
                await bot.drain()
        finally:
            recovery.PER_PAGE = recovery_per_page
        assert [run.requested for run in runs] == [2, 2, 1, 0]
        assert runs[0].decision.over_limit == 3
        assert any("left for the next run" in record.getMessage() for record in caplog.records)
        listed = [r for r in standin.requests if r["path"] == "/app/hook/deliveries"]
        assert any("cursor" in r["query"] for r in listed)
        assert set(rows(bot.db)) == {entry["guid"] for entry in recent}  # the 30-hour-old one is out of reach
        assert stale["guid"] not in rows(bot.db)
    finally:
        await bot.session.close()
        await runner.cleanup()


async def test_dry_run_asks_for_nothing_and_remembers_nothing(standin, settings, fake_model):
    standin.set_webhook(None, SECRET)
    issue = standin.add_issue(REPO, "Crash", "It crashes.")
    await standin.deliver("issue_comment", label_comment(standin, issue["number"], "bug"))
    bot, runner = await start_server(dataclasses.replace(settings, dry_run=True), models=fake_model)
    try:
        report = await recover_missed_deliveries(bot.services)
        assert report.requested == 1 and report.dry_run
        assert [r for r in standin.requests if r["method"] == "POST" and "/app/hook" in r["path"]] == []
        assert bot.db.execute("SELECT count(*) FROM redelivery_requests").fetchone()[0] == 0
        [row] = bot.db.query("SELECT result FROM audit WHERE action = 'Redeliver'")
        assert row["result"] == "dry-run"
    finally:
        await bot.session.close()
        await runner.cleanup()


async def test_a_rejected_redelivery_is_logged_audited_and_not_retried(standin, settings, fake_model):
    standin.set_webhook(None, SECRET)
    issue = standin.add_issue(REPO, "Crash", "It crashes.")
    await standin.deliver("issue_comment", label_comment(standin, issue["number"], "bug"))
    standin.fail_next("POST", r"/app/hook/deliveries/\d+/attempts$", 422,
                      body={"message": "Validation Failed", "documentation_url": "https://docs.github.com/rest"})
    bot, runner = await start_server(settings, models=fake_model)
    try:
        report = await recover_missed_deliveries(bot.services)
        assert (report.requested, report.errors) == (0, 1)
        [row] = bot.db.query("SELECT result, error FROM redelivery_requests")
        assert row["result"] == "error" and "Validation Failed" in row["error"]
        assert (await recover_missed_deliveries(bot.services)).decision.already_requested == 1
    finally:
        await bot.session.close()
        await runner.cleanup()


async def test_the_scheduler_runs_recovery_soon_after_start(standin, settings, fake_model, monkeypatch):
    standin.set_webhook(None, SECRET)
    issue = standin.add_issue(REPO, "Crash", "It crashes.")
    await standin.deliver("issue_comment", label_comment(standin, issue["number"], "bug"))

    async def no_repo_jobs(*args, **kwargs):
        return None

    monkeypatch.setattr(scheduler, "_every", no_repo_jobs)  # only the App-wide job is under test here
    monkeypatch.setattr(scheduler, "RECOVERY_FIRST_DELAY", (0.0, 0.01))
    bot, runner = await start_server(settings, models=fake_model)
    tasks = scheduler.start_schedulers(bot.services)
    try:
        for _ in range(500):
            if bot.db.execute("SELECT count(*) FROM redelivery_requests").fetchone()[0]:
                break
            await asyncio.sleep(0.02)
        assert bot.db.execute("SELECT count(*) FROM redelivery_requests").fetchone()[0] == 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bot.session.close()
        await runner.cleanup()


async def test_recover_cli_says_what_it_did(standin, settings, monkeypatch, capsys):
    from bot.features.recovery import recover_main
    from tests.conftest import APP_ID

    for name, value in {"GITHUB_APP_ID": str(APP_ID), "GITHUB_PRIVATE_KEY": settings.private_key,
                        "GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_API_URL": standin.url,
                        "DATABASE_PATH": settings.database_path, "WRITE_SPACING_SECONDS": "0"}.items():
        monkeypatch.setenv(name, value)
    standin.set_webhook(None, SECRET)
    issue = standin.add_issue(REPO, "Crash", "It crashes.")
    await standin.deliver("issue_comment", label_comment(standin, issue["number"], "bug"))
    assert await recover_main(["--dry-run"]) == 0
    assert "would ask GitHub to redeliver 1" in capsys.readouterr().out
    assert await recover_main([]) == 0
    assert "asked GitHub to redeliver 1" in capsys.readouterr().out
    await standin.settle()
    assert len(standin.hook_deliveries) == 2
    monkeypatch.setenv("REDELIVERY_MAX_PER_RUN", "lots")
    assert await recover_main([]) == 2
    assert "REDELIVERY_MAX_PER_RUN" in capsys.readouterr().err
