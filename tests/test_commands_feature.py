"""Slash commands end to end (issue 6): signed webhooks in, the GitHub stand-in's state out.

Each command allowed and refused, grammar cases that must not run, edits, feedback (one reply that
quotes refused commands, a 👍 when done), the audit log and dry run. Features that other issues
supply (triage, summaries, needs-info, digests) are replaced by small fake modules, so these tests
mean the same before and after those features land.
"""
from __future__ import annotations

import re

import json
import sys
import time
import types

import pytest

from bot import db as bot_db
from bot import limits
from bot.config import RepoConfig
from bot.features import commands as feature
from tests.conftest import REPO, event_payload

BOT = "first-responder[bot]"
CONFIG = ".github/first-responder.yml"


# ------------------------------------------------------------------------------------------ helpers
def configure(standin, text: str) -> None:
    standin.put_file(REPO, CONFIG, text)


async def say(bot, standin, number: int, body: str, *, user: str = "alice", issue_extra: dict | None = None,
              comment_user_type: str = "User") -> dict:
    """Post a comment as ``user`` in the stand-in and deliver its ``issue_comment.created`` webhook."""
    comment = standin.add_comment(REPO, number, body, user=user, user_type=comment_user_type)
    issue = {**standin.issue(REPO, number), **(issue_extra or {})}
    await bot.send("issue_comment", event_payload("issue_comment.created", issue=issue, comment=comment,
                                                  sender=user))
    await bot.drain()
    return comment


async def edit(bot, standin, comment: dict, new_body: str, *, user: str = "alice") -> None:
    old_body = comment["body"]
    comment["body"] = new_body
    number = int(comment["issue_url"].rsplit("/", 1)[1])
    payload = event_payload("issue_comment.edited", issue=standin.issue(REPO, number), comment=comment, sender=user,
                            changes={"body": {"from": old_body}})
    await bot.send("issue_comment", payload)
    await bot.drain()


def replies(standin, number: int) -> list[str]:
    """The bot's replies, without the hidden marker that lets a retry edit instead of re-post."""
    return [re.sub(r"\s*<!-- first-responder:[^>]*-->\s*$", "", c["body"])
            for c in standin.comments(REPO, number) if c["user"]["login"] == BOT]


def label_names(standin, number: int) -> set[str]:
    return {label["name"] for label in standin.issue(REPO, number)["labels"]}


def assignees(standin, number: int) -> set[str]:
    return {user["login"] for user in standin.issue(REPO, number)["assignees"]}


def command_audit(bot) -> list[dict]:
    rows = bot.db.execute("SELECT details, result FROM audit WHERE action = 'command' ORDER BY id").fetchall()
    return [{**json.loads(details), "result": result} for details, result in rows]


def thumbs_up(comment: dict) -> int:
    return comment["reactions"]["+1"]


@pytest.fixture
def fake_features(monkeypatch):
    """Fake triage / lifecycle / digest modules that record their calls (whatever the real ones do)."""
    calls: list[tuple] = []

    async def run_triage(ctx, number, *, actor, rerun):
        calls.append(("run_triage", number, actor, rerun))

    async def summarize(ctx, number):
        calls.append(("summarize", number))

    async def start_needs_info(ctx, number, what, actor):
        calls.append(("start_needs_info", number, what, actor))

    def stop_needs_info(ctx, number, actor):  # a plain function works too
        calls.append(("stop_needs_info", number, actor))

    async def post_digest(ctx):
        calls.append(("post_digest", ctx.repo))

    modules = {
        "bot.features.triage": {"run_triage": run_triage, "summarize": summarize},
        "bot.features.lifecycle": {"start_needs_info": start_needs_info, "stop_needs_info": stop_needs_info},
        "bot.features.digest": {"post_digest": post_digest},
    }
    for name, functions in modules.items():
        module = types.ModuleType(name)
        for attribute, function in functions.items():
            setattr(module, attribute, function)
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def without_features(monkeypatch, *module_names: str) -> None:
    """Make feature modules exist but carry none of the functions commands call."""
    for name in module_names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))


# --------------------------------------------------------------------------------------- /label
async def test_label_by_maintainer_adds_existing_labels_and_reacts(bot, standin):
    issue = standin.add_issue(REPO, "Crash on start", "It crashes.")
    comment = await say(bot, standin, issue["number"], '/label BUG "needs-triage"', user="maint")
    assert label_names(standin, issue["number"]) == {"bug", "needs-triage"}
    assert thumbs_up(comment) == 1
    assert replies(standin, issue["number"]) == []
    [row] = command_audit(bot)
    assert (row["command"], row["allowed"], row["result"], row["actor"]) == (
        '/label BUG "needs-triage"', True, "ok", "maint")


async def test_label_by_non_collaborator_is_refused_with_a_quoting_reply_and_audit_row(bot, standin):
    issue = standin.add_issue(REPO, "Crash on start", "It crashes.")
    comment = await say(bot, standin, issue["number"], "/label bug", user="bob")
    assert label_names(standin, issue["number"]) == set()
    assert thumbs_up(comment) == 0
    assert replies(standin, issue["number"]) == ["@bob `/label bug`: `bug` needs write access."]
    [row] = command_audit(bot)
    assert (row["allowed"], row["result"]) == (False, "refused")
    assert "needs write access" in row["reason"]


async def test_open_labels_may_be_set_by_anyone_but_protected_labels_may_not(bot, standin):
    configure(standin, "commands:\n  open_labels: [question, security]\n")
    issue = standin.add_issue(REPO, "How do I configure it?", "?")
    await say(bot, standin, issue["number"], "/label question security bug", user="bob")
    assert label_names(standin, issue["number"]) == {"question"}
    [reply] = replies(standin, issue["number"])
    assert "`security` is protected: needs write access" in reply
    assert "`bug` needs write access" in reply
    await say(bot, standin, issue["number"], "/label security", user="maint")
    assert label_names(standin, issue["number"]) == {"question", "security"}


async def test_protected_labels_come_from_config(bot, standin):
    configure(standin, "commands:\n  open_labels: [enhancement]\n  protected_labels: [enhance*]\n")
    issue = standin.add_issue(REPO, "Idea", "An idea")
    await say(bot, standin, issue["number"], "/label enhancement", user="bob")
    assert label_names(standin, issue["number"]) == set()
    assert "is protected" in replies(standin, issue["number"])[0]


async def test_unlabel_removes_a_label_and_is_refused_for_others(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x", labels=["bug", "question"])
    await say(bot, standin, issue["number"], "/unlabel question", user="bob")
    assert label_names(standin, issue["number"]) == {"bug", "question"}
    await say(bot, standin, issue["number"], "/unlabel question", user="maint")
    assert label_names(standin, issue["number"]) == {"bug"}


async def test_unknown_labels_are_named_and_the_rest_applied(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x")
    comment = await say(bot, standin, issue["number"], "/label no-such-label bug", user="maint")
    assert label_names(standin, issue["number"]) == {"bug"}
    assert {label["name"] for label in standin.labels(REPO)} >= {"bug"}
    assert "no-such-label" not in {label["name"] for label in standin.labels(REPO)}  # never created
    assert replies(standin, issue["number"]) == [
        "@maint `/label no-such-label bug`: `no-such-label` does not exist in this repository."]
    assert thumbs_up(comment) == 1


# --------------------------------------------------------------------------------- /close /reopen
async def test_close_by_author_defaults_to_not_planned(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    await say(bot, standin, issue["number"], "/close", user="alice")
    state = standin.issue(REPO, issue["number"])
    assert (state["state"], state["state_reason"]) == ("closed", "not_planned")


async def test_close_completed_by_maintainer(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    await say(bot, standin, issue["number"], "/close completed", user="maint")
    state = standin.issue(REPO, issue["number"])
    assert (state["state"], state["state_reason"]) == ("closed", "completed")
    closes = [w for w in standin.writes() if w["method"] == "PATCH"]
    assert closes[0]["json"] == {"state": "closed", "state_reason": "completed"}


async def test_close_by_someone_else_is_refused(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    await say(bot, standin, issue["number"], "/close", user="bob")
    assert standin.issue(REPO, issue["number"])["state"] == "open"
    assert replies(standin, issue["number"]) == [
        "@bob `/close` needs write access or authorship of this issue."]


async def test_close_with_an_unknown_reason_is_refused(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x")
    await say(bot, standin, issue["number"], "/close wontfix", user="maint")
    assert standin.issue(REPO, issue["number"])["state"] == "open"
    assert "takes `completed` or `not-planned`" in replies(standin, issue["number"])[0]


async def test_author_may_reopen_only_what_the_bot_closed(bot, standin):
    by_bot = standin.add_issue(REPO, "Closed by the bot", "x", state="closed", state_reason="not_planned")
    # The lifecycle posts its marked comment, then closes: that is what "closed on its own" looks like.
    standin.add_comment(REPO, by_bot["number"], "Closing for now.\n\n<!-- first-responder:needs-info-close:1 -->",
                        user=BOT, user_type="Bot")
    standin.add_event(REPO, by_bot["number"], "closed", actor=BOT)
    by_maint = standin.add_issue(REPO, "Closed by a maintainer", "x", state="closed", state_reason="not_planned")
    standin.add_event(REPO, by_maint["number"], "closed", actor="maint")

    await say(bot, standin, by_bot["number"], "/reopen", user="alice")
    assert standin.issue(REPO, by_bot["number"])["state"] == "open"

    await say(bot, standin, by_maint["number"], "/reopen", user="alice")
    assert standin.issue(REPO, by_maint["number"])["state"] == "closed"
    assert "the author may reopen an issue the bot closed" in replies(standin, by_maint["number"])[0]

    await say(bot, standin, by_maint["number"], "/reopen", user="maint")
    assert standin.issue(REPO, by_maint["number"])["state"] == "open"


async def test_reopen_falls_back_to_the_audit_log_when_events_show_no_close(bot, standin):
    issue = standin.add_issue(REPO, "Closed long ago", "x", state="closed", state_reason="not_planned")
    bot.db["audit"].insert({"ts": time.time(), "delivery_id": "earlier", "repo": REPO, "issue": issue["number"],
                            "action": "Close", "details": "{}", "result": "ok"})
    await say(bot, standin, issue["number"], "/reopen", user="alice")
    assert standin.issue(REPO, issue["number"])["state"] == "open"


async def test_author_closes_then_reopens_their_own_issue(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    await say(bot, standin, issue["number"], "/close", user="alice")
    assert standin.issue(REPO, issue["number"])["state"] == "closed"
    await say(bot, standin, issue["number"], "/reopen", user="alice")
    assert standin.issue(REPO, issue["number"])["state"] == "open"


# ------------------------------------------------------------------------------------- /duplicate
async def test_duplicate_links_labels_and_closes_as_duplicate(bot, standin):
    original = standin.add_issue(REPO, "Crash on start", "x")
    issue = standin.add_issue(REPO, "Crashes when starting", "y")
    await say(bot, standin, issue["number"], f"/duplicate #{original['number']}", user="maint")
    state = standin.issue(REPO, issue["number"])
    assert (state["state"], state["state_reason"]) == ("closed", "duplicate")
    assert label_names(standin, issue["number"]) == {"duplicate"}
    assert replies(standin, issue["number"]) == [f"Duplicate of #{original['number']}"]


async def test_duplicate_of_a_missing_issue_or_itself_is_refused(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x")
    await say(bot, standin, issue["number"], "/duplicate #99", user="maint")
    await say(bot, standin, issue["number"], f"/duplicate #{issue['number']}", user="maint")
    assert standin.issue(REPO, issue["number"])["state"] == "open"
    assert replies(standin, issue["number"]) == [
        "@maint `/duplicate #99`: #99 is not an issue in this repository.",
        f"@maint `/duplicate #{issue['number']}` can't mark an issue as a duplicate of itself.",
    ]


async def test_duplicate_needs_write_access(bot, standin):
    original = standin.add_issue(REPO, "Crash on start", "x")
    issue = standin.add_issue(REPO, "Crashes when starting", "y", user="alice")
    await say(bot, standin, issue["number"], f"/duplicate #{original['number']}", user="alice")
    assert standin.issue(REPO, issue["number"])["state"] == "open"
    assert "needs write access" in replies(standin, issue["number"])[0]


# --------------------------------------------------------------------------------- /assign /unassign
@pytest.mark.parametrize("actor, target", [("maint", " @tri"), ("tri", "")], ids=["maintainer", "alone-is-me"])
async def test_assign_then_unassign(bot, standin, actor, target):
    """A maintainer assigns others; anyone who can be assigned may ``/assign`` alone (themselves)."""
    standin.set_permission(REPO, "tri", "triage")
    issue = standin.add_issue(REPO, "Crash", "x")
    await say(bot, standin, issue["number"], f"/assign{target}", user=actor)
    assert assignees(standin, issue["number"]) == {"tri"}
    await say(bot, standin, issue["number"], f"/unassign{target}", user=actor)
    assert assignees(standin, issue["number"]) == set()


async def test_assign_refusals_others_and_unassignable_users(bot, standin):
    standin.set_permission(REPO, "tri", "triage")
    issue = standin.add_issue(REPO, "Crash", "x")
    await say(bot, standin, issue["number"], "/assign @maint", user="tri")
    await say(bot, standin, issue["number"], "/assign", user="bob")
    await say(bot, standin, issue["number"], "/assign @nobody-here", user="maint")
    assert assignees(standin, issue["number"]) == set()
    assert replies(standin, issue["number"]) == [
        "@tri `/assign @maint`: assigning others (`maint`) needs write access.",
        "@bob `/assign`: `bob` can't be assigned to issues here.",
        "@maint `/assign @nobody-here`: `nobody-here` can't be assigned to issues here.",
    ]


async def test_self_assign_can_be_switched_off(bot, standin):
    configure(standin, "commands:\n  self_assign: false\n")
    standin.set_permission(REPO, "tri", "triage")
    issue = standin.add_issue(REPO, "Crash", "x")
    await say(bot, standin, issue["number"], "/assign", user="tri")
    assert assignees(standin, issue["number"]) == set()
    assert "assigning yourself needs write access" in replies(standin, issue["number"])[0]


# --------------------------------------------------------------------------- /freeze /unfreeze /no-ai
async def test_freeze_and_unfreeze_set_the_flag(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x")
    number = issue["number"]
    comment = await say(bot, standin, number, "/freeze", user="maint")
    assert bot_db.has_flag(bot.db, REPO, number, "frozen")
    assert thumbs_up(comment) == 1
    await say(bot, standin, number, "/unfreeze", user="maint")
    assert not bot_db.has_flag(bot.db, REPO, number, "frozen")


async def test_freeze_needs_write_access(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    await say(bot, standin, issue["number"], "/freeze", user="alice")
    assert not bot_db.has_flag(bot.db, REPO, issue["number"], "frozen")
    assert replies(standin, issue["number"]) == ["@alice `/freeze` needs write access."]
    assert command_audit(bot)[0]["result"] == "refused"


async def test_no_ai_by_author_sets_the_flag_and_others_are_refused(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    await say(bot, standin, issue["number"], "/no-ai", user="bob")
    assert not bot_db.has_flag(bot.db, REPO, issue["number"], "no-ai")
    await say(bot, standin, issue["number"], "/no-ai", user="alice")
    assert bot_db.has_flag(bot.db, REPO, issue["number"], "no-ai")
    assert [row["result"] for row in command_audit(bot)] == ["refused", "ok"]


# ------------------------------------------------------------------------------------------- /help
async def test_help_lists_enabled_commands_and_who_may_use_them(bot, standin):
    configure(standin, "triage:\n  enabled: false\ncommands:\n  disabled: [duplicate]\n")
    issue = standin.add_issue(REPO, "How?", "x")
    comment = await say(bot, standin, issue["number"], "/help", user="bob")
    [reply] = replies(standin, issue["number"])
    assert reply.startswith("@bob here is what I can do in this repository:")
    assert "| `/label a b \"with space\"` |" in reply
    assert "| `/freeze` |" in reply and "| `/no-ai` |" in reply
    assert "`/triage`" not in reply  # triage switched off
    assert "`/duplicate" not in reply  # disabled by commands.disabled
    assert "`/digest`" not in reply  # digest is off by default
    assert thumbs_up(comment) == 1


async def test_unknown_command_addressed_to_the_bot_gets_help_and_others_are_ignored(bot, standin):
    issue = standin.add_issue(REPO, "How?", "x")
    await say(bot, standin, issue["number"], "/lgtm\n/retest", user="bob")  # other bots' commands
    assert replies(standin, issue["number"]) == []
    assert command_audit(bot) == []
    await say(bot, standin, issue["number"], "@first-responder frobnicate", user="bob")
    [reply] = replies(standin, issue["number"])
    assert "| command | does | who may use it |" in reply


# ------------------------------------------------------------------------------- feature commands
async def test_feature_commands_answer_not_enabled_here_when_their_feature_is_off(bot, standin, monkeypatch):
    configure(standin, "triage:\n  enabled: false\nlifecycle:\n  needs_info:\n    enabled: false\n"
                       "digest:\n  enabled: false\n")
    without_features(monkeypatch, "bot.features.triage")  # /summarize has no config switch: no function
    issue = standin.add_issue(REPO, "Crash", "x")
    comment = await say(bot, standin, issue["number"],
                        "/triage\n/summarize\n/needs-info logs\n/info-provided\n/digest", user="maint")
    [reply] = replies(standin, issue["number"])
    assert reply.startswith("@maint these commands were not run:")
    for line in ("/triage", "/summarize", "/needs-info logs", "/info-provided", "/digest"):
        assert f"- `{line}` is not enabled here" in reply
    assert thumbs_up(comment) == 0
    assert [row["result"] for row in command_audit(bot)] == ["refused"] * 5


async def test_feature_commands_answer_not_enabled_here_until_the_feature_exists(bot, standin, monkeypatch):
    without_features(monkeypatch, "bot.features.triage", "bot.features.lifecycle", "bot.features.digest")
    configure(standin, "digest:\n  enabled: true\n")
    issue = standin.add_issue(REPO, "Crash", "x")
    await say(bot, standin, issue["number"], "/triage\n/digest", user="maint")
    [reply] = replies(standin, issue["number"])
    assert "- `/triage` is not enabled here" in reply and "- `/digest` is not enabled here" in reply


@pytest.mark.parametrize("command", ["triage", "summarize", "needs-info", "digest"])
async def test_feature_commands_match_what_the_code_base_provides(bot, standin, command):
    """Whatever features exist today, /help and the answer agree with ``feature_function``."""
    issue = standin.add_issue(REPO, "Crash", "x")
    config = feature.enabled_features(RepoConfig())  # no config file: the defaults
    await say(bot, standin, issue["number"], "/help", user="maint")
    listed = f"`/{command}" in replies(standin, issue["number"])[0]
    assert listed == (command in config)
    if command not in config:
        await say(bot, standin, issue["number"], f"/{command}", user="maint")
        assert replies(standin, issue["number"])[-1] == f"@maint `/{command}` is not enabled here."


async def test_feature_commands_call_their_features(bot, standin, fake_features):
    configure(standin, "digest:\n  enabled: true\n")
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    number = issue["number"]
    comment = await say(bot, standin, number, "/triage\n/needs-info the full log\n/digest", user="maint")
    await say(bot, standin, number, "/info-provided", user="alice")
    await say(bot, standin, number, "/summarize", user="bob")
    assert fake_features == [
        ("run_triage", number, "maint", True),
        ("start_needs_info", number, "the full log", "maint"),
        ("post_digest", REPO),
        ("stop_needs_info", number, "alice"),
        ("summarize", number),
    ]
    assert thumbs_up(comment) == 1
    assert replies(standin, number) == []


async def test_feature_command_permissions(bot, standin, fake_features):
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    await say(bot, standin, issue["number"], "/triage\n/needs-info logs\n/info-provided", user="bob")
    assert fake_features == []
    [reply] = replies(standin, issue["number"])
    assert "- `/triage` needs write access or authorship of this issue" in reply
    assert "- `/needs-info logs` needs write access" in reply
    await say(bot, standin, issue["number"], "/triage", user="alice")  # the author may re-run triage
    assert fake_features == [("run_triage", issue["number"], "alice", True)]


async def test_summarize_is_rate_limited_per_issue(bot, standin, fake_features):
    first = standin.add_issue(REPO, "Crash", "x")
    second = standin.add_issue(REPO, "Another", "y")
    await say(bot, standin, first["number"], "/summarize", user="bob")
    again = await say(bot, standin, first["number"], "/summarize", user="carol")
    await say(bot, standin, second["number"], "/summarize", user="bob")
    assert fake_features == [("summarize", first["number"]), ("summarize", second["number"])]
    [reply] = replies(standin, first["number"])
    assert reply.startswith("@carol `/summarize` ran less than 10 minutes ago")
    assert thumbs_up(again) == 0
    assert [row["result"] for row in command_audit(bot)] == ["ok", "refused", "ok"]


async def test_summarize_respects_no_ai(bot, standin, fake_features):
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    await say(bot, standin, issue["number"], "/no-ai", user="alice")
    await say(bot, standin, issue["number"], "/summarize", user="bob")
    assert fake_features == []
    assert "`/no-ai` stopped model-written text here" in replies(standin, issue["number"])[0]


async def test_late_refusals_join_the_one_reply_in_order(bot, standin, fake_features):
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    limits.take(bot.db, [limits.Limit(f"command:summarize:{REPO}#{issue['number']}", 1, feature.PER_ISSUE_INTERVAL)])
    await say(bot, standin, issue["number"], "/close\n/summarize\n/help", user="bob")
    [reply] = replies(standin, issue["number"])
    head, _, rest = reply.partition("\n\n")
    assert head == "@bob these commands were not run:"
    bullets = rest.split("\n\n")[0].split("\n")
    assert bullets[0] == "- `/close` needs write access or authorship of this issue"
    assert bullets[1].startswith("- `/summarize` ran less than 10 minutes ago")
    assert "| command | does | who may use it |" in reply  # the help is still there


async def test_a_failing_feature_is_reported_and_the_rest_still_runs(bot, standin, fake_features, monkeypatch):
    async def broken(ctx, number, *, actor, rerun):
        raise RuntimeError("model server down")

    monkeypatch.setattr(sys.modules["bot.features.triage"], "run_triage", broken)
    issue = standin.add_issue(REPO, "Crash", "x")
    comment = await say(bot, standin, issue["number"], "/label bug\n/triage", user="maint")
    assert label_names(standin, issue["number"]) == {"bug"}
    assert replies(standin, issue["number"]) == ["@maint `/triage` failed; the error is in the bot's log."]
    assert thumbs_up(comment) == 1  # /label ran
    assert [row["result"] for row in command_audit(bot)] == ["ok", "error"]


# ---------------------------------------------------------------------------------------- grammar
async def test_commands_in_code_quotes_and_html_comments_do_nothing(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x")
    body = ("Quoting the earlier comment:\n> /close\n\n```\n/close\n```\n\n    /close\n\n"
            "<!-- /close -->\n`/close` is what you type\n")
    await say(bot, standin, issue["number"], body, user="maint")
    assert standin.issue(REPO, issue["number"])["state"] == "open"
    assert replies(standin, issue["number"]) == []
    assert command_audit(bot) == []
    assert not [w for w in standin.writes() if "/issues/" in w["path"]]


async def test_several_commands_run_in_order(bot, standin):
    standin.set_permission(REPO, "tri", "triage")
    issue = standin.add_issue(REPO, "Crash", "x")
    comment = await say(bot, standin, issue["number"], "/label question\n/assign @tri\n/close completed",
                        user="maint")
    state = standin.issue(REPO, issue["number"])
    assert label_names(standin, issue["number"]) == {"question"}
    assert assignees(standin, issue["number"]) == {"tri"}
    assert (state["state"], state["state_reason"]) == ("closed", "completed")
    assert [row["name"] for row in command_audit(bot)] == ["label", "assign", "close"]
    writes = [(w["method"], w["path"].rsplit("/", 1)[-1]) for w in standin.writes()]
    assert writes == [("POST", "labels"), ("POST", "assignees"), ("PATCH", str(issue["number"])),
                      ("POST", "reactions")]
    assert thumbs_up(comment) == 1


async def test_several_refusals_give_one_reply(bot, standin):
    original = standin.add_issue(REPO, "Original", "x")
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    await say(bot, standin, issue["number"], f"/close\n/label bug\n/duplicate #{original['number']}", user="bob")
    assert replies(standin, issue["number"]) == [
        "@bob these commands were not run:\n\n"
        "- `/close` needs write access or authorship of this issue\n"
        "- `/label bug`: `bug` needs write access\n"
        f"- `/duplicate #{original['number']}` needs write access"]
    assert [row["result"] for row in command_audit(bot)] == ["refused"] * 3


async def test_an_edit_runs_only_the_commands_it_added(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x")
    comment = await say(bot, standin, issue["number"], "/label bug", user="maint")
    standin.issue(REPO, issue["number"])["labels"] = []  # someone removed it by hand since
    await edit(bot, standin, comment, "/label bug\n/label question", user="maint")
    assert label_names(standin, issue["number"]) == {"question"}
    await edit(bot, standin, comment, "/label bug\n/label question\n\nfixed a typo", user="maint")
    assert [row["command"] for row in command_audit(bot)] == ["/label bug", "/label question"]


async def test_commands_in_a_new_issue_body_run_when_it_is_opened(bot, standin):
    configure(standin, "triage:\n  enabled: false\ncommands:\n  open_labels: [question]\n")
    issue = standin.add_issue(REPO, "How do I?", "I'd like to know how.\n\n/label question\n/assign me",
                              user="alice")
    await bot.send("issues", event_payload("issues.opened", issue=issue, sender="alice"))
    await bot.drain()
    assert label_names(standin, issue["number"]) == {"question"}
    assert standin.issue(REPO, issue["number"])["reactions"]["+1"] == 1  # feedback on the issue itself
    [reply] = replies(standin, issue["number"])
    assert "`alice` can't be assigned" in reply


async def test_pull_request_comments_and_bot_comments_are_ignored(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x")
    pull = {"url": f"{standin.url}/repos/{REPO}/pulls/1", "html_url": f"https://github.com/{REPO}/pull/1",
            "diff_url": f"https://github.com/{REPO}/pull/1.diff", "patch_url": f"https://github.com/{REPO}/pull/1.patch"}
    await say(bot, standin, issue["number"], "/close", user="maint", issue_extra={"pull_request": pull})
    await say(bot, standin, issue["number"], "/close", user="maint", comment_user_type="Bot")
    assert standin.issue(REPO, issue["number"])["state"] == "open"
    assert command_audit(bot) == []


async def test_commands_can_be_switched_off(bot, standin):
    configure(standin, "commands:\n  enabled: false\n")
    issue = standin.add_issue(REPO, "Crash", "x")
    await say(bot, standin, issue["number"], "/close\n/help", user="maint")
    assert standin.issue(REPO, issue["number"])["state"] == "open"
    assert replies(standin, issue["number"]) == []


async def test_permission_overrides_widen_who_may_run_a_command(bot, standin):
    configure(standin, "commands:\n  permissions:\n    close: anyone\n")
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    await say(bot, standin, issue["number"], "/close", user="bob")
    assert standin.issue(REPO, issue["number"])["state"] == "closed"


# -------------------------------------------------------------------------------- permission, dry run
async def test_permission_is_asked_once_and_cached(bot, standin):
    issue = standin.add_issue(REPO, "Crash", "x")
    await say(bot, standin, issue["number"], "/label bug", user="maint")
    await say(bot, standin, issue["number"], "/label question", user="maint")
    asked = [r for r in standin.requests if r["path"].endswith("/collaborators/maint/permission")]
    assert len(asked) == 1
    assert label_names(standin, issue["number"]) == {"bug", "question"}


async def test_admin_and_write_roles_count_as_write_access_and_triage_does_not(bot, standin):
    for login, role in (("ada", "admin"), ("wes", "write"), ("tri", "triage")):
        standin.set_permission(REPO, login, role)
    issue = standin.add_issue(REPO, "Crash", "x")
    await say(bot, standin, issue["number"], "/label bug", user="ada")
    await say(bot, standin, issue["number"], "/label question", user="wes")
    await say(bot, standin, issue["number"], "/label enhancement", user="tri")
    assert label_names(standin, issue["number"]) == {"bug", "question"}


async def test_dry_run_replies_and_acts_only_in_the_audit_log(bot, standin):
    configure(standin, "dry_run: true\n")
    issue = standin.add_issue(REPO, "Crash", "x", user="alice")
    await say(bot, standin, issue["number"], "/label bug\n/freeze\n/close", user="maint")
    await say(bot, standin, issue["number"], "/close", user="bob")
    assert standin.writes() == []
    assert standin.issue(REPO, issue["number"])["state"] == "open"
    assert not bot_db.has_flag(bot.db, REPO, issue["number"], "frozen")
    assert [(row["name"], row["result"]) for row in command_audit(bot)] == [
        ("label", "dry-run"), ("freeze", "dry-run"), ("close", "dry-run"), ("close", "refused")]
    actions = bot.db.execute("SELECT action, result, details FROM audit WHERE action != 'command' ORDER BY id").fetchall()
    assert [(action, result) for action, result, _ in actions] == [
        ("AddLabels", "dry-run"), ("Close", "dry-run"), ("React", "dry-run"), ("Comment", "dry-run")]
    assert "needs write access or authorship" in json.loads(actions[-1][2])["body"]
