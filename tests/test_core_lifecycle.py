"""needs-info and stale lifecycles, as pure decisions. Issue #5 is the specification.

Tests are named after the complaints users file against probot/no-response, probot/stale and
actions/stale, and after the behaviours issue #5 lists. Complaints 4 (per-run ceiling), 5 (dry run)
and 7 (spaced writes) concern the sweep and ``bot.actions`` and are tested there.
"""
from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import pytest

from bot.config import DEFAULTS
from bot.core.lifecycle import (
    CLOSE_MARKER,
    PING_MARKER,
    asks_author,
    due,
    is_human,
    next_needs_info_step,
    on_author_activity,
    parse_time,
    waiting_on_author,
)
from bot.core.plan import AddLabels, Close, Comment, CreateLabel, RemoveLabel, Reopen, marker

BOT = "first-responder[bot]"
BOT_USER = {"login": BOT, "type": "Bot"}
AUTHOR = {"login": "alice", "type": "User"}
MAINTAINER = {"login": "maint", "type": "User"}
STRANGER = {"login": "bystander", "type": "User"}
OTHER_BOT = {"login": "dependabot[bot]", "type": "Bot"}
WRITERS = {"maint"}
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)  # label added


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


def stamp(days: float) -> str:
    return at(days).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_issue(labels=("needs-info",), **overrides):
    issue = {
        "number": 7,
        "title": "It breaks",
        "body": "Steps: none",
        "user": AUTHOR,
        "labels": [{"name": name} for name in labels],
        "state": "open",
        "state_reason": None,
        "created_at": stamp(-30),
        "updated_at": stamp(-1),
        "closed_at": None,
        "assignees": [],
        "milestone": None,
        "comments": 0,
    }
    issue.update(overrides)
    return issue


def labeled(days: float, label: str = "needs-info", actor=MAINTAINER) -> dict:
    return {"event": "labeled", "label": {"name": label}, "actor": actor, "created_at": stamp(days)}


def comment(user, days: float, body: str = "ok") -> dict:
    return {"user": user, "created_at": stamp(days), "updated_at": stamp(days), "body": body}


def ping_comment(days: float, key_days: float = 0) -> dict:
    return comment(BOT_USER, days, "@alice a friendly reminder\n" + marker(PING_MARKER, stamp(key_days)))


def close_comment(days: float, key_days: float = 0) -> dict:
    return comment(BOT_USER, days, "Closing\n" + marker(CLOSE_MARKER, stamp(key_days)))


def config(**stale):
    values = copy.deepcopy(DEFAULTS["lifecycle"])
    values["stale"].update(stale)
    return values


def run(issue, timeline, comments, now_days, cfg=None, frozen=False, writers=WRITERS):
    return due(issue, timeline, comments, at(now_days), cfg or config(), write_logins=writers, frozen=frozen,
               bot_login=BOT)


# ------------------------------------------------------------------------------------------ needs-info


def test_pings_author_once_after_ping_after_days():
    decision = run(make_issue(), [labeled(0)], [], 7)
    assert decision.kind == "ping"
    [action] = decision.plan.actions
    assert isinstance(action, Comment) and action.issue == 7
    assert action.body.startswith("@alice ")
    assert action.marker == marker(PING_MARKER, stamp(0))


def test_no_ping_before_ping_after_days():
    decision = run(make_issue(), [labeled(0)], [], 6.9)
    assert decision.kind is None and not decision
    assert decision.plan.actions == []


def test_time_counts_from_label_not_issue_creation():
    # Created 30 days ago, labeled 3 days ago: nothing is due yet.
    decision = run(make_issue(), [labeled(0)], [], 3)
    assert decision.kind is None


def test_relabeling_starts_a_new_waiting_period():
    timeline = [labeled(-20), {"event": "unlabeled", "label": {"name": "needs-info"}, "actor": MAINTAINER,
                               "created_at": stamp(-15)}, labeled(0)]
    assert run(make_issue(), timeline, [ping_comment(-13, key_days=-20)], 3).kind is None
    assert run(make_issue(), timeline, [ping_comment(-13, key_days=-20)], 7).kind == "ping"


def test_no_second_ping_in_one_waiting_period():
    decision = run(make_issue(), [labeled(0)], [ping_comment(7)], 10)
    assert decision.kind is None


def test_crash_after_ping_before_audit_row_does_not_ping_twice():
    # The ping reached GitHub but the process died: the marker in the thread is the record.
    decision = run(make_issue(), [labeled(0)], [ping_comment(7.01)], 8)
    assert decision.kind is None


def test_ping_marker_from_other_login_is_not_trusted():
    forged = comment(STRANGER, 1, marker(PING_MARKER, stamp(0)))
    assert run(make_issue(), [labeled(0)], [forged], 7).kind == "ping"


def test_closes_as_not_planned_not_completed():
    decision = run(make_issue(), [labeled(0)], [ping_comment(7)], 14)
    assert decision.kind == "close"
    comment_action, close_action = decision.plan.actions
    assert close_action == Close(7, "not_planned")
    assert comment_action.marker == marker(CLOSE_MARKER, stamp(0))
    assert "just reply" in comment_action.body and "@alice" in comment_action.body


def test_close_counts_from_the_ping_not_the_label():
    # The sweep was down: the ping went out late, the author still gets close_after_days.
    assert run(make_issue(), [labeled(0)], [ping_comment(12)], 14).kind is None
    assert run(make_issue(), [labeled(0)], [ping_comment(12)], 19).kind == "close"


def test_never_a_second_close_comment():
    # A maintainer reopened the issue without removing the label; the bot leaves it alone.
    decision = run(make_issue(), [labeled(0)], [ping_comment(7), close_comment(14)], 30)
    assert decision.kind is None
    assert "already closed once" in decision.reason


def test_author_reply_removes_label():
    decision = run(make_issue(), [labeled(0)], [comment(AUTHOR, 2, "here are the logs")], 9)
    assert decision.kind == "remove_label"
    assert decision.plan.actions == [RemoveLabel(7, "needs-info")]


def test_author_reply_before_label_does_not_count():
    decision = run(make_issue(), [labeled(0)], [comment(AUTHOR, -1, "first report")], 7)
    assert decision.kind == "ping"


def test_maintainer_comment_does_not_count_as_the_authors():
    decision = run(make_issue(), [labeled(0)], [comment(MAINTAINER, 2, "any news?")], 7)
    assert decision.kind == "ping"


def test_bot_comments_do_not_count_as_activity():
    comments = [comment(BOT_USER, 1, "thanks"), comment(OTHER_BOT, 2, "bump"),
                comment({"login": "alice[bot]", "type": "Bot"}, 3, "lookalike")]
    assert run(make_issue(), [labeled(0)], comments, 7).kind == "ping"


def test_author_reply_after_close_reopens():
    closed = make_issue(state="closed", state_reason="not_planned", closed_at=stamp(14))
    comments = [ping_comment(7), close_comment(14), comment(AUTHOR, 20, "sorry, logs attached")]
    decision = run(closed, [labeled(0)], comments, 21)
    assert decision.kind == "reopen"
    assert decision.plan.actions == [RemoveLabel(7, "needs-info"), Reopen(7)]


def test_closed_by_a_person_is_not_reopened():
    closed = make_issue(state="closed", state_reason="completed", closed_at=stamp(3))
    decision = run(closed, [labeled(0)], [comment(AUTHOR, 5, "thanks")], 6)
    assert decision.kind is None


def test_frozen_issue_is_not_closed_for_missing_information():
    decision = run(make_issue(), [labeled(0)], [ping_comment(7)], 30, frozen=True)
    assert decision.kind is None and "frozen" in decision.reason


def test_needs_info_disabled_does_nothing():
    cfg = config()
    cfg["needs_info"]["enabled"] = False
    assert run(make_issue(), [labeled(0)], [], 30, cfg=cfg).kind is None


def test_needs_info_label_name_is_configurable():
    cfg = config()
    cfg["needs_info"]["label"] = "waiting-for-author"
    issue = make_issue(labels=("Waiting-For-Author",))
    assert run(issue, [labeled(0, "waiting-for-author")], [], 7, cfg=cfg).kind == "ping"


def test_missing_labeled_event_falls_back_to_creation():
    assert run(make_issue(), [], [], 0).kind == "ping"  # created 30 days before


def test_pull_requests_are_not_swept():
    assert run(make_issue(pull_request={"url": "x"}), [labeled(0)], [], 30).kind is None


def test_next_needs_info_step_for_the_digest():
    assert next_needs_info_step(make_issue(), [labeled(0)], [], config(), bot_login=BOT) == ("ping", at(7))
    assert next_needs_info_step(make_issue(), [labeled(0)], [ping_comment(8)], config(), bot_login=BOT) == (
        "close", at(15))
    assert next_needs_info_step(make_issue(labels=()), [], [], config(), bot_login=BOT) is None


# ------------------------------------------------------------------------------------------ webhooks


def test_on_author_comment_removes_label():
    decision = on_author_activity(make_issue(), AUTHOR, config(), bot_login=BOT, bot_closed=False)
    assert decision.kind == "remove_label"
    assert decision.plan.actions == [RemoveLabel(7, "needs-info")]


def test_on_author_comment_after_bot_close_reopens():
    closed = make_issue(state="closed", state_reason="not_planned")
    decision = on_author_activity(closed, AUTHOR, config(), bot_login=BOT, bot_closed=True)
    assert decision.kind == "reopen"
    assert decision.plan.actions == [RemoveLabel(7, "needs-info"), Reopen(7)]


def test_on_author_comment_after_a_person_closed_does_not_reopen():
    closed = make_issue(state="closed", state_reason="completed")
    decision = on_author_activity(closed, AUTHOR, config(), bot_login=BOT, bot_closed=False)
    assert decision.plan.actions == [RemoveLabel(7, "needs-info")]


def test_on_author_edit_with_new_information_removes_label():
    issue = make_issue(body="Steps: none\n\nLogs: attached below")
    decision = on_author_activity(issue, AUTHOR, config(), bot_login=BOT, bot_closed=False, old_body="Steps: none")
    assert decision.kind == "remove_label"


def test_on_author_edit_without_new_content_keeps_label():
    issue = make_issue(body="- [x] I searched\nSteps:  none")
    decision = on_author_activity(issue, AUTHOR, config(), bot_login=BOT, bot_closed=False,
                                  old_body="- [ ] I searched\nSteps: none")
    assert decision.kind is None


def test_on_maintainer_comment_keeps_needs_info():
    decision = on_author_activity(make_issue(), MAINTAINER, config(), bot_login=BOT, bot_closed=False)
    assert decision.kind is None


@pytest.mark.parametrize("actor", [BOT_USER, OTHER_BOT])
def test_on_bot_comment_changes_nothing(actor):
    decision = on_author_activity(make_issue(labels=("needs-info", "stale")), actor, config(enabled=True),
                                  bot_login=BOT, bot_closed=False)
    assert decision.kind is None


def test_on_any_human_comment_removes_stale_label():
    decision = on_author_activity(make_issue(labels=("stale",)), STRANGER, config(enabled=True), bot_login=BOT,
                                  bot_closed=False)
    assert decision.plan.actions == [RemoveLabel(7, "stale")]


def test_stale_label_untouched_when_stale_is_off():
    # With stale disabled, "stale" is just a label people use; the bot does not own it.
    decision = on_author_activity(make_issue(labels=("stale",)), STRANGER, config(), bot_login=BOT,
                                  bot_closed=False)
    assert decision.kind is None


# ------------------------------------------------------------------------------------------ stale


def asked(days: float) -> dict:
    return comment(MAINTAINER, days, "Can you share the config file?")


def stale_issue(**overrides):
    issue = make_issue(labels=("bug",), created_at=stamp(-400))
    issue.update(overrides)
    return issue


def test_stale_is_off_by_default():
    assert run(stale_issue(), [], [asked(-100)], 0).kind is None


def test_marks_stale_when_waiting_on_author():
    decision = run(stale_issue(), [], [asked(-60)], 0, cfg=config(enabled=True))
    assert decision.kind == "mark_stale"
    create, add, note = decision.plan.actions
    assert isinstance(create, CreateLabel) and create.name == "stale"
    assert add == AddLabels(7, ("stale",))
    assert note.marker == marker("stale", stamp(-60)) and "14 days" in note.body


def test_not_stale_before_days_until_stale():
    assert run(stale_issue(), [], [asked(-59)], 0, cfg=config(enabled=True)).kind is None


def test_stale_bots_close_valid_issues_nobody_triaged():
    # Nobody with write access has said anything: the issue waits on maintainers, forever if need be.
    untriaged = stale_issue(created_at=stamp(-400))
    assert run(untriaged, [], [comment(STRANGER, -300, "+1 same here")], 0, cfg=config(enabled=True)).kind is None


def test_maintainer_comment_that_asks_nothing_means_waiting_on_maintainers():
    comments = [comment(MAINTAINER, -100, "Confirmed, we will look into it.")]
    assert run(stale_issue(), [], comments, 0, cfg=config(enabled=True)).kind is None


def test_author_answered_last_means_waiting_on_maintainers():
    comments = [asked(-120), comment(AUTHOR, -100, "Here it is.")]
    assert run(stale_issue(), [], comments, 0, cfg=config(enabled=True)).kind is None


def test_third_party_comment_does_not_change_whose_turn_it_is():
    comments = [asked(-120), comment(STRANGER, -90, "same here")]
    assert run(stale_issue(), [], comments, 0, cfg=config(enabled=True)).kind == "mark_stale"


def test_mention_of_author_counts_as_asking():
    comments = [comment(MAINTAINER, -70, "@alice please attach the logs.")]
    assert run(stale_issue(), [], comments, 0, cfg=config(enabled=True)).kind == "mark_stale"


def test_only_waiting_on_author_off_stales_untriaged_issues():
    decision = run(stale_issue(created_at=stamp(-90)), [], [], 0, cfg=config(enabled=True,
                                                                            only_waiting_on_author=False))
    assert decision.kind == "mark_stale"


def test_bot_activity_does_not_reset_the_stale_clock():
    comments = [asked(-70), comment(BOT_USER, -5, "digest mention"), comment(OTHER_BOT, -3, "ci")]
    timeline = [labeled(-2, "bug", actor=OTHER_BOT)]
    assert run(stale_issue(), timeline, comments, 0, cfg=config(enabled=True)).kind == "mark_stale"


def test_human_timeline_activity_resets_the_stale_clock():
    timeline = [{"event": "renamed", "actor": STRANGER, "created_at": stamp(-10)}]
    assert run(stale_issue(), timeline, [asked(-70)], 0, cfg=config(enabled=True)).kind is None


@pytest.mark.parametrize("overrides,frozen,reason", [
    ({"labels": [{"name": "pinned"}]}, False, "exempt label"),
    ({"labels": [{"name": "Security"}]}, False, "exempt label"),
    ({"milestone": {"title": "v2"}}, False, "milestone"),
    ({"in_project": True}, False, "project"),
    ({"assignees": [{"login": "maint"}]}, False, "assignees"),
    ({}, True, "frozen"),
])
def test_exemptions_missing_milestones_projects_assignees_pinned_security(overrides, frozen, reason):
    decision = run(stale_issue(**overrides), [], [asked(-200)], 0, cfg=config(enabled=True), frozen=frozen)
    assert decision.kind is None and reason in decision.reason


def test_configured_exempt_labels_and_patterns():
    cfg = config(enabled=True, exempt_labels=["keep-*"])
    assert run(stale_issue(labels=[{"name": "keep-open"}]), [], [asked(-200)], 0, cfg=cfg).kind is None


@pytest.mark.parametrize("switch,overrides", [
    ("exempt_milestones", {"milestone": {"title": "v2"}}),
    ("exempt_projects", {"in_project": True}),
    ("exempt_assignees", {"assignees": [{"login": "maint"}]}),
])
def test_each_exemption_is_switchable(switch, overrides):
    cfg = config(enabled=True, **{switch: False})
    assert run(stale_issue(**overrides), [], [asked(-200)], 0, cfg=cfg).kind == "mark_stale"


def test_exempt_issue_loses_a_stale_label():
    issue = stale_issue(labels=[{"name": "stale"}], milestone={"title": "v2"})
    decision = run(issue, [labeled(-10, "stale", BOT_USER)], [asked(-80)], 0, cfg=config(enabled=True))
    assert decision.plan.actions == [RemoveLabel(7, "stale")]


def test_stale_closes_as_not_planned_after_days_until_close():
    issue = stale_issue(labels=[{"name": "stale"}])
    decision = run(issue, [labeled(-14, "stale", BOT_USER)], [asked(-74)], 0, cfg=config(enabled=True))
    assert decision.kind == "close"
    note, close = decision.plan.actions
    assert close == Close(7, "not_planned")
    assert note.marker == marker("stale-close", stamp(-14))


def test_stale_not_closed_before_days_until_close():
    issue = stale_issue(labels=[{"name": "stale"}])
    assert run(issue, [labeled(-13, "stale", BOT_USER)], [asked(-74)], 0, cfg=config(enabled=True)).kind is None


def test_stale_close_false_only_labels():
    cfg = config(enabled=True, close=False)
    marked = run(stale_issue(), [], [asked(-61)], 0, cfg=cfg)
    assert marked.kind == "mark_stale" and "stays open" in marked.plan.actions[-1].body
    issue = stale_issue(labels=[{"name": "stale"}])
    assert run(issue, [labeled(-100, "stale", BOT_USER)], [asked(-200)], 0, cfg=cfg).kind is None


def test_any_human_activity_after_stale_label_removes_it():
    issue = stale_issue(labels=[{"name": "stale"}])
    comments = [asked(-80), comment(STRANGER, -2, "still happens on 2.1")]
    decision = run(issue, [labeled(-10, "stale", BOT_USER)], comments, 0, cfg=config(enabled=True))
    assert decision.kind == "remove_label" and decision.plan.actions == [RemoveLabel(7, "stale")]


def test_adding_the_stale_label_is_not_activity_that_removes_it():
    issue = stale_issue(labels=[{"name": "stale"}])
    decision = run(issue, [labeled(-20, "stale", MAINTAINER)], [asked(-90)], 0, cfg=config(enabled=True))
    assert decision.kind == "close"


def test_stale_never_a_second_close_comment():
    issue = stale_issue(labels=[{"name": "stale"}])
    comments = [asked(-90), comment(BOT_USER, -5, "closing " + marker("stale-close", stamp(-20)))]
    decision = run(issue, [labeled(-20, "stale", BOT_USER)], comments, 0, cfg=config(enabled=True))
    assert decision.kind is None


def test_needs_info_issue_is_left_to_needs_info_not_stale():
    decision = run(make_issue(), [labeled(0)], [ping_comment(7)], 10, cfg=config(enabled=True, days_until_stale=1))
    assert decision.kind is None


# ------------------------------------------------------------------------------------------ helpers


@pytest.mark.parametrize("body,expected", [
    ("Can you share logs?", True),
    ("@alice the logs please", True),
    ("@alice-two the logs please", False),
    ("Thanks, confirmed.", False),
    ("> Why?\nThanks.", False),
    ("```\nwhat?\n```\nFixed.", False),
    ("See `a?b`.", False),
])
def test_asks_author(body, expected):
    assert asks_author(body, "alice") is expected


def test_is_human():
    assert is_human(AUTHOR, BOT)
    assert not is_human(BOT_USER, BOT)
    assert not is_human({"login": "first-responder", "type": "User"}, BOT)
    assert not is_human(OTHER_BOT, BOT)
    assert not is_human(None, BOT)


def test_waiting_on_author_ignores_bots():
    comments = [asked(-5), comment(BOT_USER, -1, "ok?")]
    assert waiting_on_author(stale_issue(), comments, write_logins=WRITERS, bot_login=BOT)


def test_parse_time_reads_github_timestamps():
    assert parse_time("2024-05-01T12:00:00Z") == T0
    assert parse_time(None) is None
