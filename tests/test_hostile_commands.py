"""Issue 11, commands and spend: what an issue author (or anyone holding a signed body) can make the bot do.

Items covered: 5 (fallback spend: operator ceilings, per-repo caps, /triage and /summarize limits), 6 (the
author cannot undo a maintainer's close), 8 (a comment's commands run once per comment version, not per
delivery), 10 (commands inside code, quotes and HTML do not run; property-based over arbitrary text) and
15 (one refusal reply per user per issue per hour). Through the real server and the GitHub stand-in
where commands are concerned; the cascade and its budget on a real SQLite file.
"""
from __future__ import annotations

import json
import re
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from bot import limits
from bot.config import ConfigError, Settings
from bot.core.commands import parse
from bot.db import open_db
from bot.models.base import FakeModel, IssueText
from bot.models.cascade import Cascade
from bot.models.factory import build_cascade, wrap
from bot.models.remote import DailyBudget
from tests.conftest import REPO, event_payload
from tests.test_commands_feature import (  # noqa: F401 - fake_features is a fixture
    BOT,
    command_audit,
    configure,
    fake_features,
    replies,
    say,
)

BOT_LOGIN = "first-responder[bot]"


# ------------------------------------------------------------------------ 8: replayed bodies
async def test_replayed_close_under_a_new_delivery_id_does_not_close_again(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    number = issue["number"]
    comment = standin.add_comment(REPO, number, "/close", user="maint")
    body = json.dumps(event_payload("issue_comment.created", issue=standin.issue(REPO, number), comment=comment,
                                    sender="maint")).encode()
    await bot.send("issue_comment", body, delivery="first")
    await bot.drain()
    assert standin.issue(REPO, number)["state"] == "closed"
    standin.issue(REPO, number).update(state="open", state_reason="reopened", closed_at=None)  # maintainer reopens
    for delivery in ("replay-1", "replay-2"):
        response = await bot.send("issue_comment", body, delivery=delivery)
        assert response.status in (200, 202)
    await bot.drain()
    assert standin.issue(REPO, number)["state"] == "open"
    assert [row["name"] for row in command_audit(bot)] == ["close"]
    assert len([w for w in standin.writes() if w["method"] == "PATCH"]) == 1


async def test_replayed_edit_runs_nothing_and_a_later_edit_runs_only_what_it_added(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x")
    number = issue["number"]
    comment = await say(bot, standin, number, "/label bug", user="maint")
    old_body = comment["body"]
    comment.update(body="/label bug\n/label question", updated_at="2030-01-01T00:00:01Z")
    edit = json.dumps(event_payload("issue_comment.edited", issue=standin.issue(REPO, number), comment=comment,
                                    sender="maint", changes={"body": {"from": old_body}})).encode()
    await bot.send("issue_comment", edit, delivery="edit-1")
    await bot.drain()
    standin.issue(REPO, number)["labels"] = []  # removed by hand since
    await bot.send("issue_comment", edit, delivery="edit-1-replayed")
    await bot.drain()
    assert standin.issue(REPO, number)["labels"] == []
    assert [row["command"] for row in command_audit(bot)] == ["/label bug", "/label question"]


async def test_replayed_issue_opened_does_not_rerun_the_body_commands(bot, standin):
    configure(standin, "triage:\n  enabled: false\n")
    issue = standin.add_issue(REPO, "Done already", "Fixed it myself.\n\n/close", user="alice")
    body = json.dumps(event_payload("issues.opened", issue=issue, sender="alice")).encode()
    await bot.send("issues", body, delivery="opened-1")
    await bot.drain()
    assert standin.issue(REPO, issue["number"])["state"] == "closed"
    standin.issue(REPO, issue["number"]).update(state="open", state_reason="reopened", closed_at=None)
    await bot.send("issues", body, delivery="opened-1-replayed")
    await bot.drain()
    assert standin.issue(REPO, issue["number"])["state"] == "open"


def test_a_claim_belongs_to_its_first_delivery_and_retries_of_it(tmp_path):
    db = open_db(str(tmp_path / "claims.db"))
    assert limits.claim(db, REPO, "comment:1", "created", "d1") == "d1"
    assert limits.claim(db, REPO, "comment:1", "created", "d1") == "d1"  # the queue retrying d1
    assert limits.claim(db, REPO, "comment:1", "created", "d2") == "d1"  # a replay
    assert limits.claim(db, REPO, "comment:1", "edit:t2:abc", "d3") == "d3"  # a real edit
    assert limits.claim(db, "o/other", "comment:1", "created", "d4") == "d4"


# ----------------------------------------------------------- 6: the author cannot undo a maintainer
@pytest.mark.parametrize("closing", ["/close", "/duplicate #{original}"])
async def test_author_cannot_reopen_after_a_maintainers_close(bot, standin, closing):
    original = standin.add_issue(REPO, "Original", "x")
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    number = issue["number"]
    await say(bot, standin, number, closing.format(original=original["number"]), user="maint")
    assert standin.issue(REPO, number)["state"] == "closed"
    await say(bot, standin, number, "/reopen", user="alice")
    assert standin.issue(REPO, number)["state"] == "closed"
    assert "needs write access" in replies(standin, number)[-1]
    [row] = [r for r in command_audit(bot) if r["name"] == "reopen"]
    assert (row["actor"], row["result"]) == ("alice", "refused")
    await say(bot, standin, number, "/reopen", user="maint")
    assert standin.issue(REPO, number)["state"] == "open"


async def test_author_cannot_reopen_a_bot_close_nothing_explains(bot, standin):
    """The bot closed it (GitHub says) but neither the audit log nor a lifecycle comment says why."""
    issue = standin.add_issue(REPO, "Closed", "x", user="alice", state="closed", state_reason="not_planned")
    standin.add_event(REPO, issue["number"], "closed", actor=BOT)
    await say(bot, standin, issue["number"], "/reopen", user="alice")
    assert standin.issue(REPO, issue["number"])["state"] == "closed"


async def test_author_reply_does_not_reopen_a_maintainers_close_of_a_needs_info_issue(bot, standin):
    """The sibling path: the needs-info lifecycle reopens on the author's reply only its own closes."""
    standin.add_label(REPO, "needs-info")
    issue = standin.add_issue(REPO, "Crash", "x", user="alice", labels=["needs-info"])
    number = issue["number"]
    await say(bot, standin, number, "/close", user="maint")
    assert standin.issue(REPO, number)["state"] == "closed"
    await say(bot, standin, number, "But here is the log you asked for.", user="alice")
    assert standin.issue(REPO, number)["state"] == "closed"


# --------------------------------------------------------------------- 10: grammar, end to end
async def test_commands_in_pre_code_details_and_lazy_quote_lines_do_nothing(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x")
    body = ("<pre>\n/close\n</pre>\n\n"
            "Try <code>\n/close\n</code> next time\n\n"
            "<details>\n<summary>old notes</summary>\n\n/close\n\n</details>\n\n"
            "> someone said\n/close\n")
    await say(bot, standin, issue["number"], body, user="maint")
    assert standin.issue(REPO, issue["number"])["state"] == "open"
    assert command_audit(bot) == [] and replies(standin, issue["number"]) == []


@pytest.mark.parametrize("text", [
    "<pre>\n/close\n</pre>",
    "x <code>\n/close\n</code>",
    "text <code>\n\n/close",  # left open: browsers carry the <code> into the next paragraph
    "<details>\n\n/close\n\n</details>",
    "<details><summary>s</summary>\n\n/close\n</details>",
    "> quoted\n/close",
    "> quoted\n> more\n/close\n/label bug",
    "<!--\n/close\n-->",
    "a <!-- x\n/close\n-->",
    "```\n/close\n```",
    "~~~~\n/close\n~~~",
    "    /close",
    "- /close",
    "1. item\n   /close",
    "| a | b |\n|---|---|\n/close | x",
    "[link\n/close](https://example.com)",
    "*emphasis\n/close*",
    "<div>\n\n/close\n\n</div>",
    "<p>\n/close\n</p>",
    "<blockquote>\n\n/close\n\n</blockquote>",
    "`a\n/close`",
])
def test_parser_finds_no_command_in_code_quotes_or_html(text):
    assert parse(text, BOT_LOGIN) == []


@pytest.mark.parametrize("text, expected", [
    ("/close", ["close"]),
    ("Thanks!\n/close", ["close"]),
    ("> quoted\n\n/close", ["close"]),
    ("```\n/x\n```\n/close", ["close"]),
    ("<!-- note -->\n/close", ["close"]),
    ("Vec<String> is fine\n/close", ["close"]),
    ("text <b>bold</b>\n/label bug", ["label"]),
    ("@first-responder close", ["close"]),
    ("line one  \n/close", ["close"]),  # after a hard line break
    ("\ud800 lone surrogate\n/close", ["close"]),
])
def test_parser_finds_commands_at_top_level(text, expected):
    assert [command.name for command in parse(text, BOT_LOGIN)] == expected


# Arbitrary text heavy on what Markdown and HTML care about.
_FRAGMENTS = ["/close", "/label bug", "@first-responder close", "```", "~~~", "    ", "> ", "<!--", "-->", "<pre>",
              "</pre>", "<details>", "</details>", "<code>", "</code>", "`", "``", "\n", "\n\n", "- ", "1. ", "|", "*",
              "_", "[", "](", "<p data-sourcepos=\"1:1-1:5\">", "</p>", "<div>", "\\", "&lt;", "\t", "#", "<b>", "</b>"]
_arbitrary = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=12)), max_size=25).map("".join)


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _strip_all(text: str, needles: list[str]) -> str:
    changed = True
    while changed:
        changed = False
        for needle in needles:
            cleaned = re.sub(re.escape(needle), "", text, flags=re.IGNORECASE)
            if cleaned != text:
                text, changed = cleaned, True
    return text


def _contained(kind: str, text: str) -> str:
    """``text`` inside one construct that GitHub renders as code, quote, hidden or HTML."""
    lines = _lines(text)
    if kind == "quote":
        return "\n".join("> " + line for line in lines)
    if kind == "fence":
        fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 3)
        return "\n".join([fence, *lines, fence])
    if kind == "indented":
        return "\n".join("    " + line for line in lines)
    if kind == "comment":
        return "<!--\n" + _strip_all(text, ["-->"]) + "\n-->"
    if kind == "pre":
        return "<pre>\n" + _strip_all(text, ["</pre", "</script", "</style", "</textarea"]) + "\n</pre>"
    if kind == "details":
        return "<details>\n" + _strip_all(text, ["</details"]) + "\n</details>"
    if kind == "code":
        return "Run <code>" + _strip_all(text, ["</code"]) + "</code>"
    raise AssertionError(kind)


_KINDS = ["quote", "fence", "indented", "comment", "pre", "details", "code"]


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(_KINDS), text=_arbitrary)
def test_property_nothing_inside_code_quote_or_html_is_a_command(kind, text):
    assert parse(_contained(kind, text), BOT_LOGIN) == []


_lazy_quote = st.from_regex(r"[a-z][a-z ,.]{0,20}", fullmatch=True)
_slash_line = st.from_regex(r"/[a-z][a-z0-9 -]{0,15}", fullmatch=True)


@hsettings(max_examples=150, deadline=None)
@given(quoted=_lazy_quote, lines=st.lists(_slash_line, min_size=1, max_size=5))
def test_property_lazy_continuation_lines_of_a_quote_are_never_commands(quoted, lines):
    assert parse("> " + quoted + "\n" + "\n".join(lines), BOT_LOGIN) == []


# Blocks without raw HTML (which may legitimately leave an element open over what follows).
_no_html = st.lists(st.one_of(st.sampled_from([f for f in _FRAGMENTS if "<" not in f]),
                              st.text(alphabet=st.characters(blacklist_characters="<"), max_size=12)),
                    max_size=15).map("".join)
_plain = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 .,!?]{0,30}", fullmatch=True)
_command = st.tuples(st.sampled_from(["close", "label", "assign", "triage", "lgtm", "needs-info"]),
                     st.lists(st.from_regex(r"[a-z0-9][a-z0-9-]{0,8}", fullmatch=True), max_size=3))


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.one_of(
    st.tuples(st.just("command"), _command),
    st.tuples(st.sampled_from(["quote", "fence", "indented", "comment"]), _no_html),
    st.tuples(st.just("plain"), _plain)), max_size=8))
def test_property_a_command_line_at_top_level_always_runs(blocks):
    parts, expected = [], []
    for kind, content in blocks:
        if kind == "command":
            name, args = content
            parts.append(" ".join([f"/{name}", *args]))
            expected.append((name, tuple(args)))
        elif kind == "plain":
            parts.append(content)
        else:
            parts.append(_contained(kind, content))
    found = parse("\n\n".join(parts), BOT_LOGIN)
    assert [(command.name, command.args) for command in found] == expected


# ------------------------------------------------------------- 15: one refusal reply per hour
async def test_a_flood_of_refused_commands_gets_one_reply(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    number = issue["number"]
    for _ in range(6):
        await say(bot, standin, number, "/close", user="bob")
    assert replies(standin, number) == ["@bob `/close` needs write access or authorship of this issue."]
    rows = command_audit(bot)
    assert [row["result"] for row in rows] == ["refused"] * 6
    assert [row["reply"] for row in rows] == ["posted"] + ["suppressed"] * 5
    assert not [w for w in standin.writes() if "reactions" in w["path"]]
    await say(bot, standin, number, "/close", user="carol")  # another person gets their one reply
    assert len(replies(standin, number)) == 2


async def test_maintainers_get_every_reply(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x")
    for _ in range(2):
        await say(bot, standin, issue["number"], "/label no-such-label", user="maint")
    assert len(replies(standin, issue["number"])) == 2


# ------------------------------------------------------------ 5: /triage and /summarize limits
async def test_triage_runs_once_per_issue_per_interval(bot, standin, fake_features):
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    for _ in range(4):
        await say(bot, standin, issue["number"], "/triage", user="alice")
    assert fake_features == [("run_triage", issue["number"], "alice", True)]
    [reply] = replies(standin, issue["number"])  # one polite refusal, later ones silent
    assert reply.startswith("@alice `/triage` ran less than 10 minutes ago on this issue; try again in about")
    assert [row["result"] for row in command_audit(bot)] == ["ok", "refused", "refused", "refused"]


async def test_paid_commands_are_limited_per_person_across_issues(bot, standin, fake_features):
    issues = [standin.add_issue(REPO, f"Crash {n}", "x", user="alice") for n in range(8)]
    for issue in issues:
        await say(bot, standin, issue["number"], "/triage", user="alice")
    assert len(fake_features) == 6
    assert "at most 6 times an hour per person" in replies(standin, issues[6]["number"])[0]


async def test_maintainers_are_limited_per_issue_but_not_per_person(bot, standin, fake_features):
    issues = [standin.add_issue(REPO, f"Crash {n}", "x") for n in range(8)]
    for issue in issues:
        await say(bot, standin, issue["number"], "/triage\n/summarize", user="maint")
    assert len(fake_features) == 16


def test_rate_limits_take_all_or_nothing(tmp_path):
    db = open_db(str(tmp_path / "limits.db"))
    issue_limit, user_limit = limits.Limit("issue", 1, 600), limits.Limit("user", 2, 3600)
    assert limits.take(db, [issue_limit, user_limit], now=1000) is None
    refused = limits.take(db, [issue_limit, user_limit], now=1100)
    assert refused.limit == issue_limit and refused.retry_after == pytest.approx(500)
    assert limits.take(db, [limits.Limit("other-issue", 1, 600), user_limit], now=1200) is None
    assert limits.take(db, [limits.Limit("third", 1, 600), user_limit], now=1300).limit == user_limit
    assert limits.take(db, [limits.Limit("third", 1, 600)], now=1300) is None  # nothing was taken before


# -------------------------------------------------------------------- 5: fallback spend ceilings
LOW = {"kind": "bug", "confidence": 0.5, "probs": {"bug": 0.5, "feature": 0.2, "question": 0.1, "docs": 0.1,
                                                   "other": 0.1}, "tier": "local"}
REMOTE = {"kind": "feature", "confidence": 0.9, "tier": "remote", "cost_usd": 0.0002, "summary": "s"}
GENEROUS = {"enabled": True, "max_calls_per_day": 1_000_000, "max_cost_per_day": 1_000_000.0}


def _escalate(cascade: Cascade, repo: str, config: dict, installation_id: int = 1):
    issue = IssueText("Crash", "It crashes.", repo=repo, number=1)
    return cascade.predict(issue, repo=repo, installation_id=installation_id, triage_config={"threshold": 0.9},
                           fallback_config=config)


def test_operator_call_ceiling_holds_whatever_a_repo_config_says(tmp_path):
    db = open_db(str(tmp_path / "bot.db"))
    remote = FakeModel(default=None, tier="remote")
    remote.queue(*[REMOTE] * 10)
    cascade = Cascade(local=FakeModel(default=None), remote=remote, db=db,
                      budget=DailyBudget(db, max_calls=3, max_cost=100.0))
    cascade.local.queue(*[LOW] * 10)
    results = [_escalate(cascade, repo, GENEROUS) for repo in ("o/a", "o/a", "o/b", "o/b", "o/c")]
    assert [result.escalated for result in results] == [True, True, True, False, False]
    assert "FALLBACK_MAX_CALLS_PER_DAY" in results[3].reason and len(remote.calls) == 3


def test_operator_cost_ceiling_holds_whatever_a_repo_config_says(tmp_path):
    db = open_db(str(tmp_path / "bot.db"))
    remote = FakeModel([REMOTE] * 5, tier="remote")
    cascade = Cascade(local=FakeModel([LOW] * 5), remote=remote, db=db,
                      budget=DailyBudget(db, max_calls=100, max_cost=0.0003))
    results = [_escalate(cascade, "o/a", GENEROUS) for _ in range(3)]
    assert [result.escalated for result in results] == [True, True, False]
    assert "FALLBACK_MAX_COST_PER_DAY" in results[2].reason


def test_repo_caps_are_counted_per_repo_not_per_installation(tmp_path):
    db = open_db(str(tmp_path / "bot.db"))
    remote = FakeModel([REMOTE] * 5, tier="remote")
    cascade = Cascade(local=FakeModel([LOW] * 5), remote=remote, db=db)
    one_a_day = {"enabled": True, "max_calls_per_day": 1, "max_cost_per_day": 1.0}
    greedy = _escalate(cascade, "o/greedy", GENEROUS, installation_id=7)
    modest = _escalate(cascade, "o/modest", one_a_day, installation_id=7)  # same installation
    again = _escalate(cascade, "o/modest", one_a_day, installation_id=7)
    assert (greedy.escalated, modest.escalated, again.escalated) == (True, True, False)


def test_concurrent_escalations_never_pass_the_call_ceiling(tmp_path):
    db = open_db(str(tmp_path / "bot.db"))

    class SlowRemote(FakeModel):
        def predict(self, issue):
            time.sleep(0.05)  # widens the window between the cap check and the call log
            return super().predict(issue)

    remote = SlowRemote(default=None, tier="remote")
    remote.queue(*[REMOTE] * 12)
    cascade = Cascade(local=FakeModel(default=None), remote=remote, db=db, budget=DailyBudget(db, max_calls=2))
    cascade.local.queue(*[LOW] * 12)
    threads = [threading.Thread(target=_escalate, args=(cascade, f"o/r{n}", GENEROUS)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(remote.calls) == 2
    assert db.execute("SELECT COUNT(*) FROM fallback_reservations").fetchone()[0] == 0


def test_ceilings_come_from_the_environment_and_reach_every_cascade(tmp_path):
    settings = Settings.from_env({"FALLBACK_MAX_CALLS_PER_DAY": "50", "FALLBACK_MAX_COST_PER_DAY": "2.5"},
                                 require_app=False)
    assert (settings.fallback_max_calls_per_day, settings.fallback_max_cost_per_day) == (50, 2.5)
    defaults = Settings.from_env({}, require_app=False)
    assert (defaults.fallback_max_calls_per_day, defaults.fallback_max_cost_per_day) == (1000, 5.0)
    db = open_db(str(tmp_path / "bot.db"))
    built = build_cascade(settings, db, local=FakeModel())
    assert (built.budget.max_calls, built.budget.max_cost) == (50, 2.5)
    given_cascade = wrap(Cascade(local=FakeModel(), remote=FakeModel(tier="remote")), db, settings)
    assert (given_cascade.budget.max_calls, given_cascade.budget.db) == (50, db)


@pytest.mark.parametrize("name, value", [("FALLBACK_MAX_CALLS_PER_DAY", "lots"),
                                         ("FALLBACK_MAX_CALLS_PER_DAY", "-1"),
                                         ("FALLBACK_MAX_COST_PER_DAY", "five dollars")])
def test_a_bad_ceiling_is_named(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value}, require_app=False)


def test_parsing_does_not_leak_memory():
    """cmarkgfm's own wrapper never frees cmark's tree and HTML (5,000 parses of 2 KB: +511 MB)."""
    import resource

    text = "Some text\n/close now\n> q\n/label bug\n```\n/x\n```\n" * 40
    parse(text, BOT_LOGIN)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2000):
        parse(text, BOT_LOGIN)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 50_000
