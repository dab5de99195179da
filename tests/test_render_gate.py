"""What reaches GitHub (issue #11, items 1-4), end to end through the real server and the stand-in.

Signed webhooks in; the bodies the stand-in stored are rendered with cmark-gfm and checked the way
GitHub would read them. And ``bot.actions`` itself refuses a body that was not built by
``bot.core.render`` or that renders unsafe: logged, audited as ``error``, never posted.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from bot.actions import apply
from bot.app import Services
from bot.core import render, render_check
from bot.core.plan import Comment, CreateIssue, EditIssueBody, Plan, marker
from bot.features import digest as digest_feature
from bot.features.lifecycle import start_needs_info
from bot.models.base import Prediction
from tests.conftest import INSTALLATION_ID, REPO, event_payload

BOT = "first-responder[bot]"


def bot_bodies(standin, number: int) -> list[str]:
    return [comment["body"] for comment in standin.comments(REPO, number) if comment["user"]["login"] == BOT]


def assert_posted_clean(body: str, *, allowed: set[str]) -> None:
    assert render_check.problems(body, author=allowed, repo=REPO) == [], body


async def say(bot, standin, number: int, body: str, user: str) -> None:
    comment = standin.add_comment(REPO, number, body, user=user)
    await bot.send("issue_comment", event_payload("issue_comment.created", issue=standin.issue(REPO, number),
                                                  comment=comment, sender=user))
    await bot.drain()


async def test_refusals_posted_for_hostile_commands_ping_and_embed_nothing(bot, standin):
    issue = standin.add_issue(REPO, "Crash on start", "It crashes.", user="alice")
    number = issue["number"]
    await say(bot, standin, number, '/label "a` @victim `b" "x` ![t](https://evil.example/track.gif) `y"', "bob")
    await say(bot, standin, number, '/close "a` @victim `b" "x` ![t](https://evil.example/track.gif) `y"', "carl")
    await say(bot, standin, number, '/assign "q` @org/team `z"', "dana")
    bodies = bot_bodies(standin, number)
    replies = [body for body in bodies if "first-responder:reply" in body]
    assert len(replies) == 3
    for body, actor in zip(replies, ("bob", "carl", "dana")):
        assert body.startswith(f"@{actor} ")
        assert_posted_clean(body, allowed={actor})
        assert "<img" not in render_check.render_html(body)


async def test_triage_comment_keeps_the_authors_code_span_closed(bot, standin, fake_model):
    fake_model.default = Prediction(kind="bug", confidence=0.95, summary="Runs `make @org/security-team` & fails")
    title, body = "Build fails", "I run `make @org/security-team` today and it fails with an error."
    issue = standin.add_issue(REPO, title, body, user="alice")
    await bot.send("issues", event_payload("issues.opened", issue=standin.issue(REPO, issue["number"])))
    await bot.drain()
    [comment] = [text for text in bot_bodies(standin, issue["number"]) if "first-responder:triage" in text]
    assert_posted_clean(comment, allowed={"alice"})
    assert "<code>make @org/security-team</code>" in render_check.render_html(comment)


async def test_digest_issue_shows_hostile_titles_as_text(settings, standin):
    now = datetime(2024, 3, 11, 9, 30, tzinfo=timezone.utc)
    standin.now = lambda: now
    standin.put_file(REPO, ".github/first-responder.yml", "digest:\n  enabled: true\n")
    hostile = ("![pwn](https://evil.example/x.png) <img src=https://evil.example/t.gif> "
               "[click](https://evil.example) _https://evil.example/p.png_ &#64;victim @org/team other/repo#1")
    standin.add_issue(REPO, hostile, user="mallory", created_at="2024-03-05T12:00:00Z", labels=["bug"],
                      reactions={"+1": 3})
    services = Services(settings, models=None)
    await services.start()
    try:
        ctx = await services.context_for(REPO, INSTALLATION_ID, "test-render-digest")
        result = await digest_feature.post_digest(ctx, "2024-W10", now=now)
    finally:
        await services.close()
    [posted] = [issue for issue in standin.issues(REPO) if issue["number"] == result["number"]]
    assert_posted_clean(posted["body"], allowed=set())
    assert render_check.title_problems(posted["title"], repo=REPO) == []
    assert "![pwn]" in render_check.render_html(posted["body"])  # still readable as what was typed


async def _context(settings, delivery: str = "test-render-gate"):
    services = Services(settings, models=None)
    await services.start()
    return services, await services.context_for(REPO, INSTALLATION_ID, delivery)


async def test_actions_refuse_text_not_built_by_render(settings, standin, caplog):
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    services, ctx = await _context(settings)
    try:
        with caplog.at_level(logging.ERROR, logger="bot.actions"):
            results = await apply(Plan([
                Comment(issue["number"], "@victim ![x](https://evil.example/x.png)"),  # a plain str
                Comment(issue["number"], render.fmt("hi @victim ![x](https://evil.example/x.png)")),  # bad template
                CreateIssue(render.title("t"), "raw body"),
                CreateIssue("raw @title", render.fmt("body")),
                EditIssueBody(issue["number"], render.fmt("<img src=https://evil.example/x.png>")),
                Comment(issue["number"], render.fmt("ok"), marker="<!-- not ours -->"),
                Comment(issue["number"], render.fmt("fine, {who}", who=render.mention("alice"))),
            ]), ctx)
        rows = ctx.db.execute("SELECT action, details, result FROM audit ORDER BY id").fetchall()
    finally:
        await services.close()
    assert [result["result"] for result in results] == ["error"] * 6 + ["ok"]
    assert all(result.get("refused") for result in results[:6])
    assert [result for _, _, result in rows] == ["error"] * 6 + ["ok"]
    assert all("refused" in json.loads(details) for _, details, _ in rows[:6])
    assert "refused to post" in caplog.text
    writes = [r for r in standin.writes() if r["method"] in ("POST", "PATCH")]
    assert len(writes) == 1 and writes[0]["json"]["body"] == "fine, @alice"  # only the clean one went out
    assert [body for body in bot_bodies(standin, issue["number"])] == ["fine, @alice"]


async def test_a_forged_delivery_id_cannot_close_the_hidden_marker(settings, standin):
    """The delivery header is not signed: whatever it holds, the marker stays one HTML comment."""
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    forged = "x --> <img src=https://evil.example/t.gif> @victim <!--"
    services, ctx = await _context(settings, forged)
    try:
        await start_needs_info(ctx, issue["number"], "the `version` @victim ![x](https://evil.example/x.png)", "maint")
    finally:
        await services.close()
    [body] = bot_bodies(standin, issue["number"])
    assert_posted_clean(body, allowed={"alice"})
    assert marker("needs-info-request", forged) in body and "-->" not in marker("x", forged)[:-3]
