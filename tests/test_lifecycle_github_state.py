"""The lifecycles read what they already did from GitHub, not only from the database (issue #11 item 16).

A database restored from an older backup, or a fresh one, knows nothing of the reminders, stale marks
and closes the bot already made. Each test below starts the sweep with an empty database (or wipes the
local rows mid-way, as a restore would) while the stand-in holds what the bot did on GitHub: its marked
comments, its label and close events. No reminder, stale mark or close may happen twice, and each still
happens on schedule, once.
"""
from __future__ import annotations

from bot.core.lifecycle import (
    CLOSE_MARKER,
    PING_MARKER,
    PING_MESSAGE,
    STALE_CLOSE_MARKER,
    STALE_MARKER,
    STALE_MESSAGE_CLOSE,
    iso,
)
from bot.core.plan import marker
from tests.conftest import REPO
from tests.test_lifecycle_feature import BOT, STALE_CONFIG, at, bot_comments, day, labels, needs_info_issue, \
    old_issue, sweep


AUTOMATION = "reopener[bot]"


def forget_everything(db) -> None:
    """What restoring a backup taken before the bot acted does to the lifecycle's local state."""
    db.execute("DELETE FROM lifecycle_memo")
    db.execute("DELETE FROM kv WHERE key LIKE 'lifecycle:%'")
    db.execute("DELETE FROM audit")


def seed_bot_ping(standin, number: int, labeled: float, posted: float) -> dict:
    """The reminder the bot posted ``posted`` days after T0 (before the backup the database came from)."""
    body = PING_MESSAGE.format(author="alice", label="needs-info", close_after_days=7)
    return standin.add_comment(REPO, number, f"{body}\n\n{marker(PING_MARKER, iso(day(labeled)))}", user=BOT,
                               user_type="Bot", created_at=day(posted))


def close_comments(standin, number: int) -> list[dict]:
    return bot_comments(standin, number, CLOSE_MARKER)


def state(standin, number: int) -> str:
    return standin.issue(REPO, number)["state"]


def reopen_as(standin, number: int, moment: float, actor: str = "maint") -> None:
    """A person reopens the issue (state and the ``reopened`` event)."""
    at(standin, moment)
    issue = standin.issue(REPO, number)
    issue.update(state="open", state_reason="reopened", closed_at=None, updated_at=iso(day(moment)))
    standin.add_event(REPO, number, "reopened", created_at=day(moment), actor=actor)


# ------------------------------------------------------------------------------------------ needs-info
async def test_empty_database_and_a_reminder_from_8_days_ago_no_second_reminder_and_close_on_time(bot, standin):
    issue = needs_info_issue(standin)
    number = issue["number"]
    seed_bot_ping(standin, number, labeled=0, posted=7)
    report = await sweep(bot, standin, 8)  # a fresh database: it never pinged, as far as it knows
    assert report.done == [] and len(bot_comments(standin, number, PING_MARKER)) == 1
    report = await sweep(bot, standin, 13.9)
    assert report.done == [] and state(standin, number) == "open"
    report = await sweep(bot, standin, 15)  # 8 days after the reminder: the close was due at 14
    assert [e.kind for e in report.done] == ["close"]
    assert len(bot_comments(standin, number, PING_MARKER)) == 1 and len(close_comments(standin, number)) == 1
    assert state(standin, number) == "closed"
    forget_everything(bot.db)
    for later in (15.5, 20, 40):
        assert (await sweep(bot, standin, later)).done == []
    assert len(bot_comments(standin, number)) == 2


async def test_restore_from_backup_mid_waiting_period_never_duplicates_ping_or_close(bot, standin):
    issue = needs_info_issue(standin)
    number = issue["number"]
    assert [e.kind for e in (await sweep(bot, standin, 7.5)).done] == ["ping"]
    forget_everything(bot.db)
    assert (await sweep(bot, standin, 8)).done == []
    assert (await sweep(bot, standin, 12)).done == []
    assert [e.kind for e in (await sweep(bot, standin, 14.6)).done] == ["close"]
    forget_everything(bot.db)
    reopen_as(standin, number, 16)  # a maintainer reopens without the author answering
    for later in (16.5, 25, 60):
        assert (await sweep(bot, standin, later)).done == []
    assert len(bot_comments(standin, number, PING_MARKER)) == 1 and len(close_comments(standin, number)) == 1
    assert state(standin, number) == "open"


async def test_a_bot_close_whose_comment_was_deleted_is_known_from_the_close_event(bot, standin):
    """The close event is GitHub's record that the bot closed the issue; the comment may be gone."""
    issue = needs_info_issue(standin)
    number = issue["number"]
    await sweep(bot, standin, 7.5)
    await sweep(bot, standin, 14.6)
    assert state(standin, number) == "closed"
    [closing] = close_comments(standin, number)
    ctx = await bot.services.context_for(REPO, 1, delivery_id="cleanup")
    await ctx.gh.delete(f"/repos/{REPO}/issues/comments/{closing['id']}")  # a maintainer tidied the thread
    forget_everything(bot.db)
    reopen_as(standin, number, 16)
    for later in (16.5, 30):
        assert (await sweep(bot, standin, later)).done == []
    assert state(standin, number) == "open"
    assert close_comments(standin, number) == []
    assert sum(1 for event in standin.events(REPO, number) if event["event"] == "closed") == 1


async def test_author_reply_after_a_bot_close_reopens_even_when_the_close_comment_is_gone(bot, standin):
    issue = needs_info_issue(standin)
    number = issue["number"]
    await sweep(bot, standin, 7.5)
    await sweep(bot, standin, 14.6)
    [closing] = close_comments(standin, number)
    ctx = await bot.services.context_for(REPO, 1, delivery_id="cleanup")
    await ctx.gh.delete(f"/repos/{REPO}/issues/comments/{closing['id']}")
    forget_everything(bot.db)
    standin.add_comment(REPO, number, "Here is the version: 2.1", user="alice", created_at=day(18))
    report = await sweep(bot, standin, 18.5)
    assert [e.kind for e in report.done] == ["reopen"]
    assert state(standin, number) == "open" and "needs-info" not in labels(standin, number)


# ------------------------------------------------------------------------------------------------ stale
async def test_empty_database_and_a_stale_mark_from_8_days_ago_no_second_mark_and_close_once(bot, standin):
    standin.put_file(REPO, ".github/first-responder.yml", STALE_CONFIG)
    issue = old_issue(standin, "Asked the author")
    number = issue["number"]
    # The bot marked it stale at T0 (label event and comment), before the backup the database came from.
    at(standin, 0)
    standin.issue(REPO, number)["labels"].append(standin.add_label(REPO, "stale"))
    standin.add_event(REPO, number, "labeled", created_at=day(0), actor=BOT, label="stale")
    body = STALE_MESSAGE_CLOSE.format(days=30, label="stale", close_days=7)
    standin.add_comment(REPO, number, f"{body}\n\n{marker(STALE_MARKER, iso(day(-40)))}", user=BOT,
                        user_type="Bot", created_at=day(0))
    for later in (1, 6.9):
        assert (await sweep(bot, standin, later)).done == []
    assert len(bot_comments(standin, number, STALE_MARKER + ":")) == 1
    report = await sweep(bot, standin, 8)
    assert [e.kind for e in report.done] == ["close"]
    forget_everything(bot.db)
    reopen_as(standin, number, 9, actor=AUTOMATION)  # reopened, but no person did anything
    for later in (9.5, 20):
        assert (await sweep(bot, standin, later)).done == []
    assert len(bot_comments(standin, number, STALE_CLOSE_MARKER)) == 1
    assert state(standin, number) == "open"


async def test_restore_from_backup_during_stale_never_marks_or_closes_twice(bot, standin):
    standin.put_file(REPO, ".github/first-responder.yml", STALE_CONFIG)
    issue = old_issue(standin, "Asked the author")
    number = issue["number"]
    assert [e.kind for e in (await sweep(bot, standin, 0)).done] == ["mark_stale"]
    forget_everything(bot.db)
    assert (await sweep(bot, standin, 1)).done == []
    assert [e.kind for e in (await sweep(bot, standin, 7.5)).done] == ["close"]
    [closing] = bot_comments(standin, number, STALE_CLOSE_MARKER)
    ctx = await bot.services.context_for(REPO, 1, delivery_id="cleanup")
    await ctx.gh.delete(f"/repos/{REPO}/issues/comments/{closing['id']}")
    forget_everything(bot.db)
    reopen_as(standin, number, 9, actor=AUTOMATION)  # another App reopens it: not a person's activity
    for later in (9.5, 30):
        assert (await sweep(bot, standin, later)).done == []
    assert state(standin, number) == "open"
    assert sum(1 for event in standin.events(REPO, number) if event["event"] == "closed") == 1


async def test_a_person_reopening_a_stale_close_starts_over_rather_than_closing_again(bot, standin):
    standin.put_file(REPO, ".github/first-responder.yml", STALE_CONFIG)
    issue = old_issue(standin, "Asked the author")
    number = issue["number"]
    await sweep(bot, standin, 0)
    await sweep(bot, standin, 7.5)
    forget_everything(bot.db)
    reopen_as(standin, number, 9)
    assert [e.kind for e in (await sweep(bot, standin, 9.5)).done] == ["remove_label"]
    assert (await sweep(bot, standin, 20)).done == []
    assert sum(1 for event in standin.events(REPO, number) if event["event"] == "closed") == 1


# ------------------------------------------------------------------------------------------- /freeze
async def test_a_freeze_the_restored_database_lost_is_read_from_the_thread(bot, standin):
    issue = needs_info_issue(standin)
    number = issue["number"]
    # A maintainer's /freeze ran at day 1 (it set the flag in a database since restored without it);
    # a bystander's /freeze never counted (freezing needs write access).
    standin.add_comment(REPO, number, "/freeze", user="carol", created_at=day(0.5))
    standin.add_comment(REPO, number, "Keeping this open.\n/freeze", user="maint", created_at=day(1))
    assert [e.kind for e in (await sweep(bot, standin, 7.5)).done] == ["ping"]  # frozen issues are still pinged
    for later in (14.6, 30):
        assert (await sweep(bot, standin, later)).done == []
    assert state(standin, number) == "open"
    standin.add_comment(REPO, number, "/unfreeze", user="maint", created_at=day(31))
    assert [e.kind for e in (await sweep(bot, standin, 31.5)).done] == ["close"]


async def test_freeze_commands_from_people_without_write_access_or_in_quotes_do_not_freeze(bot, standin):
    issue = needs_info_issue(standin)
    number = issue["number"]
    standin.add_comment(REPO, number, "/freeze", user="carol", created_at=day(0.5))
    standin.add_comment(REPO, number, "> /freeze\n\nQuoting the docs.", user="maint", created_at=day(1))
    await sweep(bot, standin, 7.5)
    assert [e.kind for e in (await sweep(bot, standin, 14.6)).done] == ["close"]


# ------------------------------------------------------------------- the pure core, with no server at all
def _core_case(*, closed: bool = False):
    """An issue labeled needs-info at T0 and pinged at T0+7 (as GitHub shows them), and the config."""
    from bot.config import DEFAULTS

    issue = {"number": 7, "user": {"login": "alice", "type": "User"}, "labels": [{"name": "needs-info"}],
             "state": "closed" if closed else "open", "created_at": iso(day(-30)), "assignees": [],
             "milestone": None, "closed_at": iso(day(14.5)) if closed else None}
    timeline = [{"event": "labeled", "label": {"name": "needs-info"}, "actor": {"login": "maint"},
                 "created_at": iso(day(0))}]
    comments = [{"user": {"login": BOT, "type": "Bot"}, "created_at": iso(day(7)),
                 "body": f"reminder {marker(PING_MARKER, iso(day(0)))}"}]
    return issue, timeline, comments, DEFAULTS["lifecycle"]


def _bot_closed(moment: float) -> dict:
    return {"event": "closed", "actor": {"login": BOT, "type": "Bot"}, "created_at": iso(day(moment))}


def test_core_the_bots_close_event_counts_as_closed_once_in_this_period():
    from bot.core.lifecycle import due

    issue, timeline, comments, config = _core_case()
    assert due(issue, timeline, comments, day(15), config, write_logins=set(), frozen=False,
               bot_login=BOT).kind == "close"
    timeline += [_bot_closed(14.5), {"event": "reopened", "actor": {"login": "maint"}, "created_at": iso(day(16))}]
    decision = due(issue, timeline, comments, day(17), config, write_logins=set(), frozen=False, bot_login=BOT)
    assert decision.kind is None and "already closed" in decision.reason


def test_core_a_closed_issue_reopens_on_the_authors_reply_only_if_the_last_close_was_the_bots():
    from bot.core.lifecycle import due

    issue, timeline, comments, config = _core_case(closed=True)
    comments.append({"user": {"login": "alice", "type": "User"}, "created_at": iso(day(18)), "body": "v2.1"})
    timeline.append(_bot_closed(14.5))
    assert due(issue, timeline, comments, day(19), config, write_logins=set(), frozen=False,
               bot_login=BOT).kind == "reopen"
    # A maintainer reopened, then closed it themselves: the author's reply does not undo that.
    timeline += [{"event": "reopened", "actor": {"login": "maint"}, "created_at": iso(day(15))},
                 {"event": "closed", "actor": {"login": "maint"}, "created_at": iso(day(16))}]
    issue["closed_at"] = iso(day(16))
    assert due(issue, timeline, comments, day(19), config, write_logins=set(), frozen=False,
               bot_login=BOT).kind is None


def test_core_freeze_is_the_last_freeze_command_by_a_writer():
    from bot.core.lifecycle import freeze_commands, frozen_in_thread

    def said(login: str, body: str, when: float) -> dict:
        return {"user": {"login": login, "type": "User"}, "created_at": iso(day(when)), "body": body}

    comments = [said("maint", "/freeze", 1), said("carol", "/unfreeze", 2), said("maint", "```\n/unfreeze\n```", 3)]
    commands = freeze_commands(comments, BOT)
    assert [(login, on) for login, on, _ in commands] == [("maint", True), ("carol", False)]
    assert frozen_in_thread(commands, {"maint"}) is True
    assert frozen_in_thread(commands, set()) is False
    comments.append(said("MAINT", "/unfreeze", 4))
    assert frozen_in_thread(freeze_commands(comments, BOT), {"maint"}) is False
