"""The ground everything stands on (issue 2): signed intake, the durable queue, App auth,
GitHub hygiene (retries, rate limits), dry run, audit log, installations, config validation."""
from __future__ import annotations

import asyncio
import time

from gidgethub.routing import Router

from bot.actions import apply
from bot.app import signature_for, verify_signature
from bot.config import parse_repo_config
from bot.core import render
from bot.core.plan import Comment, Plan, marker
from bot.queue import Worker
from tests.conftest import REPO, event_payload, start_server


def add_echo_router(server, calls: list):
    """A minimal feature: comment once (with a marker) on every opened issue."""
    router = Router()

    @router.register("issues", action="opened")
    async def on_opened(event, gh, ctx):
        calls.append(event.delivery_id)
        number = event.data["issue"]["number"]
        await apply(Plan([Comment(number, render.fmt("Thanks for the report!"), marker=marker("echo", number))]), ctx)

    server.services.routers.append(("echo", router))
    return router


def opened(standin, title="Crash on start", user="alice"):
    issue = standin.add_issue(REPO, title, "It crashes.", user=user)
    return issue, event_payload("issues.opened", issue={"number": issue["number"], "title": title,
                                                         "user": {"login": user, "type": "User"}})


def comment_writes(standin):
    """Comments the echo feature posted (other features, e.g. triage, answer the same events)."""
    return [r for r in standin.writes() if r["method"] == "POST" and r["path"].endswith("/comments")
            and "first-responder:echo" in (r["json"] or {}).get("body", "")]


def echo_comments(standin, number):
    return [c for c in standin.comments(REPO, number) if "first-responder:echo" in c["body"]]


def test_github_documented_signature_vector():
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    secret, body = "It's a Secret to Everybody", b"Hello, World!"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signature_for(secret, body) == expected
    assert verify_signature(secret, body, expected)
    assert not verify_signature(secret, body + b" ", expected)


async def test_bad_and_missing_signature_are_401_and_store_nothing(bot, standin):
    _issue, payload = opened(standin)
    resp = await bot.send("issues", payload, secret="wrong-secret")
    assert resp.status == 401
    resp = await bot.send("issues", payload, secret=None)
    assert resp.status == 401
    assert bot.db.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0


async def test_malformed_body_and_missing_headers_are_400(bot):
    resp = await bot.send("issues", b"{not json")
    assert resp.status == 400
    resp = await bot.send("issues", b"[1, 2]")
    assert resp.status == 400
    resp = await bot.send("issues", {"action": "opened"}, headers={"X-GitHub-Event": None})
    assert resp.status == 400
    assert bot.db.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0


async def test_ping_answers_200(bot):
    resp = await bot.send("ping", event_payload("ping"))
    assert resp.status == 200


async def test_oversized_body_is_413(bot):
    resp = await bot.send("issues", b"{" + b" " * (25 * 1024 * 1024 + 10) + b"}")
    assert resp.status == 413


async def test_delivery_is_queued_before_the_202_and_handled_once_on_redelivery(bot, standin):
    calls = []
    add_echo_router(bot, calls)
    _issue, payload = opened(standin)
    first = await bot.send("issues", payload, delivery="d-1")
    again = await bot.send("issues", payload, delivery="d-1")
    assert (first.status, again.status) == (202, 202)
    await bot.drain()
    assert calls == ["d-1"]
    assert len(comment_writes(standin)) == 1
    row = bot.db.execute("SELECT status FROM deliveries WHERE id = 'd-1'").fetchone()
    assert row[0] == "done"


async def test_a_second_delivery_for_the_same_issue_edits_not_reposts(bot, standin):
    calls = []
    add_echo_router(bot, calls)
    issue, payload = opened(standin)
    await bot.send("issues", payload, delivery="a")
    await bot.drain()
    # A later delivery about the same issue (the same body under a new id is a replay: not queued).
    payload["issue"]["updated_at"] = "2030-01-01T00:00:00Z"
    await bot.send("issues", payload, delivery="b")
    await bot.drain()
    assert calls == ["a", "b"]
    assert len(echo_comments(standin, issue["number"])) == 1


async def test_killed_after_202_then_restarted_handles_delivery_exactly_once(settings, standin):
    # First process: accepts the delivery but its worker never runs (as if killed right after the 202).
    server, runner = await start_server(settings, run_worker=False)
    _issue, payload = opened(standin)
    resp = await server.send("issues", payload, delivery="survivor")
    assert resp.status == 202
    await server.session.close()
    await runner.cleanup()
    assert comment_writes(standin) == []
    # Second process on the same database file: resumes and does the work once.
    server, runner = await start_server(settings)
    calls = []
    add_echo_router(server, calls)
    server.services.worker.wake.set()
    await server.drain()
    # And a third start finds nothing left to do.
    await server.session.close()
    await runner.cleanup()
    server, runner = await start_server(settings)
    add_echo_router(server, calls)
    await server.drain()
    await server.session.close()
    await runner.cleanup()
    assert calls == ["survivor"]
    assert len(comment_writes(standin)) == 1


async def test_502_then_success_writes_once(bot, standin):
    calls = []
    add_echo_router(bot, calls)
    issue, payload = opened(standin)
    standin.fail_next("POST", r"/issues/\d+/comments$", 502)
    await bot.send("issues", payload)
    await bot.drain()
    assert len(echo_comments(standin, issue["number"])) == 1


async def test_secondary_rate_limit_with_retry_after_waits_then_succeeds(bot, standin):
    calls = []
    add_echo_router(bot, calls)
    issue, payload = opened(standin)
    standin.fail_next("POST", r"/issues/\d+/comments$", 403, headers={"Retry-After": "1"},
                      body={"message": "You have exceeded a secondary rate limit. Please wait a few minutes."})
    started = time.monotonic()
    await bot.send("issues", payload)
    await bot.drain()
    assert time.monotonic() - started >= 1.0
    assert len(echo_comments(standin, issue["number"])) == 1


async def test_events_sent_by_bots_are_ignored(bot, standin):
    calls = []
    add_echo_router(bot, calls)
    _issue, payload = opened(standin)
    payload["sender"] = {"login": "first-responder[bot]", "type": "Bot"}
    await bot.send("issues", payload)
    payload["sender"] = {"login": "dependabot[bot]", "type": "Bot"}
    await bot.send("issues", payload)
    await bot.drain()
    assert calls == []
    assert standin.writes() == []


async def test_repo_not_installed_is_ignored(bot, standin):
    calls = []
    add_echo_router(bot, calls)
    standin.add_repo("someone/else")
    payload = event_payload("issues.opened", repo="someone/else", issue={"number": 1})
    await bot.send("issues", payload)
    await bot.drain()
    assert calls == []


async def test_dry_run_writes_nothing_but_fills_the_audit_log(settings, standin):
    settings.dry_run = True
    server, runner = await start_server(settings)
    calls = []
    add_echo_router(server, calls)
    _issue, payload = opened(standin)
    await server.send("issues", payload)
    await server.drain()
    await server.session.close()
    await runner.cleanup()
    assert calls and standin.writes() == []
    rows = list(server.db.query("SELECT action, result, repo, details FROM audit"))
    assert rows and all(row["result"] == "dry-run" for row in rows)
    assert any(row["action"] == "Comment" and "first-responder:echo" in row["details"] for row in rows)


async def test_repo_config_dry_run_applies_to_that_repo_only(bot, standin):
    standin.put_file(REPO, ".github/first-responder.yml", "dry_run: true\n")
    calls = []
    add_echo_router(bot, calls)
    _issue, payload = opened(standin)
    await bot.send("issues", payload)
    await bot.drain()
    assert calls and comment_writes(standin) == []


async def test_unknown_config_key_is_reported_in_health(bot, standin):
    standin.put_file(REPO, ".github/first-responder.yml", "triage:\n  treshold: 0.5\n  comment: 3\n")
    calls = []
    add_echo_router(bot, calls)
    _issue, payload = opened(standin)
    await bot.send("issues", payload)
    await bot.drain()
    bot.services.settings.health_token = "health-secret"  # details (config warnings) need the token
    async with bot.session.get(f"{bot.url}/health", headers={"Authorization": "Bearer health-secret"}) as resp:
        health = await resp.json()
    warnings = health["config_warnings"][REPO]
    assert any("triage.treshold: unknown key" in w for w in warnings)
    assert any("triage.comment" in w for w in warnings)
    assert health["checks"]["database"] == "ok" and health["queue_depth"] == 0


def test_broken_config_falls_back_to_defaults_with_a_warning():
    config = parse_repo_config("triage: [unclosed")
    assert config.section("triage")["enabled"] is True
    assert "not valid YAML" in config.warnings[0]
    config = parse_repo_config("duplicates:\n  max_candidates: 'many'\n")
    assert config.section("duplicates")["max_candidates"] == 3
    assert "duplicates.max_candidates" in config.warnings[0]


async def test_failing_delivery_retries_then_parks_as_failed(settings, tmp_path):
    from bot.db import open_db
    from bot.queue import enqueue, list_deliveries, retry

    db = open_db(str(tmp_path / "q.db"))
    attempts = []

    async def handler(row):
        attempts.append(row["id"])
        raise RuntimeError("boom")

    worker = Worker(db, handler, max_attempts=3, base_delay=0.01)
    enqueue(db, "x", "issues", {"action": "opened"})
    task = asyncio.create_task(worker.run())
    for _ in range(200):
        await asyncio.sleep(0.02)
        if db.execute("SELECT status FROM deliveries").fetchone()[0] == "failed":
            break
    await worker.stop()
    task.cancel()
    assert attempts == ["x", "x", "x"]
    [row] = list_deliveries(db)
    assert row["status"] == "failed" and "boom" in row["error"]
    assert retry(db, "x")
    assert list_deliveries(db)[0]["status"] == "pending"


async def test_same_issue_in_order_different_issues_concurrently(tmp_path):
    from bot.db import open_db
    from bot.queue import enqueue

    db = open_db(str(tmp_path / "q.db"))
    log: list[tuple[str, str]] = []

    async def handler(row):
        log.append(("start", row["id"]))
        await asyncio.sleep(0.05)
        log.append(("end", row["id"]))

    for i, issue in enumerate([1, 1, 2]):
        enqueue(db, f"d{i}", "issues", {"action": "edited", "repository": {"full_name": REPO},
                                        "issue": {"number": issue, "updated_at": f"2024-01-0{i + 1}"}})
    worker = Worker(db, handler, concurrency=4)
    task = asyncio.create_task(worker.run())
    await worker.drain()
    await worker.stop()
    task.cancel()
    order = [x for x in log if x[1] in ("d0", "d1")]
    assert order == [("start", "d0"), ("end", "d0"), ("start", "d1"), ("end", "d1")]
    assert log.index(("start", "d2")) < log.index(("end", "d0"))  # issue 2 did not wait for issue 1


async def test_installation_events_record_and_forget_repos(bot, standin):
    payload = event_payload("installation.created")
    payload["repositories"] = [{"id": 9, "name": "new", "full_name": "octo-org/new", "private": False}]
    await bot.send("installation", payload)
    await bot.drain()
    repos = {r["repo"] for r in bot.db.query("SELECT repo FROM installations")}
    assert "octo-org/new" in repos
    payload = event_payload("installation.deleted")
    await bot.send("installation", payload)
    await bot.drain()
    assert bot.db.execute("SELECT count(*) FROM installations").fetchone()[0] == 0


async def test_installation_token_cached_and_refreshed_once_on_401(bot, standin):
    calls = []
    add_echo_router(bot, calls)
    for _ in range(2):
        _issue, payload = opened(standin)
        await bot.send("issues", payload)
        await bot.drain()
    token_requests = [r for r in standin.requests if r["path"].endswith("/access_tokens")]
    assert len(token_requests) == 1
    standin.revoke_tokens()
    _issue, payload = opened(standin)
    await bot.send("issues", payload)
    await bot.drain()
    token_requests = [r for r in standin.requests if r["path"].endswith("/access_tokens")]
    assert len(token_requests) == 2
    assert len(calls) == 3 and len(comment_writes(standin)) == 3


async def test_metrics_expose_deliveries_and_api_calls(bot, standin):
    calls = []
    add_echo_router(bot, calls)
    _issue, payload = opened(standin)
    await bot.send("issues", payload)
    await bot.drain()
    bot.services.settings.metrics_token = "metrics-secret"  # per-installation series need the token
    async with bot.session.get(f"{bot.url}/metrics", headers={"Authorization": "Bearer metrics-secret"}) as resp:
        text = await resp.text()
    assert 'fr_deliveries_received_total{event="issues"} 1.0' in text
    assert 'fr_deliveries_done_total{event="issues"} 1.0' in text
    assert "fr_github_api_calls_total" in text and "fr_github_rate_limit_remaining" in text


def test_serve_refuses_to_start_without_variables(tmp_path):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "DATABASE_PATH": str(tmp_path / "x.db")}
    out = subprocess.run([sys.executable, "-m", "bot", "serve"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "GITHUB_APP_ID is not set" in out.stderr
    env.update({"GITHUB_APP_ID": "1", "GITHUB_PRIVATE_KEY": "not a key", "GITHUB_WEBHOOK_SECRET": "x"})
    out = subprocess.run([sys.executable, "-m", "bot", "serve"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "does not parse" in out.stderr


def test_app_manifest_subscribes_to_exactly_the_routed_events():
    import yaml
    from pathlib import Path

    from bot.features import routed_events

    manifest = yaml.safe_load((Path(__file__).parent.parent / "app.yml").read_text())
    always_delivered = {"installation", "installation_repositories"}  # Apps get these without subscribing
    assert set(manifest["default_events"]) == routed_events() - always_delivered
    assert manifest["default_permissions"]["issues"] == "write"
    for key in ("name", "url", "hook_attributes", "redirect_url", "public", "default_events",
                "default_permissions", "description"):
        assert key in manifest
    assert (Path(__file__).parent.parent / "Procfile").read_text().strip() == "web: python -m bot serve"


def test_queue_and_audit_cli(tmp_path):
    import subprocess
    import sys

    from bot.db import open_db
    from bot.queue import enqueue

    path = str(tmp_path / "cli.db")
    db = open_db(path)
    enqueue(db, "abc-123", "issues", {"action": "opened", "repository": {"full_name": REPO}, "issue": {"number": 7}})
    db.execute("UPDATE deliveries SET status = 'failed', error = 'RuntimeError: boom'")
    db["audit"].insert({"ts": time.time(), "delivery_id": "abc-123", "repo": REPO, "issue": 7,
                        "action": "Comment", "details": "{}", "result": "dry-run"})
    env = {"PATH": "/usr/bin:/bin", "DATABASE_PATH": path}
    run = lambda *args: subprocess.run([sys.executable, "-m", "bot", *args], env=env, capture_output=True, text=True)
    out = run("queue")
    assert out.returncode == 0 and "abc-123" in out.stdout and "failed" in out.stdout and "boom" in out.stdout
    assert run("queue", "retry", "abc-123").returncode == 0
    assert db.execute("SELECT status FROM deliveries").fetchone()[0] == "pending"
    assert run("queue", "retry", "nope").returncode == 1
    out = run("audit", "--repo", REPO)
    assert out.returncode == 0 and "Comment" in out.stdout and "dry-run" in out.stdout
    assert "Comment" not in run("audit", "--repo", "other/repo").stdout
    assert "Comment" not in run("audit", "--since", "2999-01-01").stdout


def test_every_cli_command_is_documented_in_the_readme():
    from pathlib import Path

    from bot.__main__ import COMMANDS

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    undocumented = [name for name in COMMANDS if f"python -m bot {name}" not in readme]
    assert undocumented == []
    assert readme.splitlines()[3:6] == [
        "make demo   # triage the sample issues with the bundled local model: no GitHub account, no network",
        "make test   # create .venv, install with test extras, run the whole suite",
        "make serve  # create .venv, install, run the webhook server (needs the variables below)",
    ]
