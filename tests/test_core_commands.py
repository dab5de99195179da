"""Slash commands: parsing (what is and is not a command) and deciding (who may do what).

Pure tests: no server, no GitHub stand-in. Issue #6 is the specification.
"""
from __future__ import annotations

import copy

import pytest

from bot.config import DEFAULTS
from bot.core.commands import (
    COMMANDS,
    Command,
    FeatureCall,
    decide,
    help_text,
    new_commands,
    parse,
)
from bot.core.plan import AddLabels, Assign, Close, Comment, React, RemoveLabel, Reopen, Unassign, marker

BOT = "first-responder[bot]"
ALL_FEATURES = {"triage", "summarize", "lifecycle", "no-ai", "digest"}
REPO_LABELS = {"bug", "enhancement", "question", "duplicate", "good first issue", "security", "priority-high",
               "needs-info"}


def names(text: str) -> list[str]:
    return [command.name for command in parse(text, BOT)]


def make_issue(**overrides):
    issue = {
        "number": 42,
        "title": "Crash on start",
        "body": "It crashes.",
        "user": {"login": "alice", "type": "User"},
        "labels": [{"name": "bug"}],
        "state": "open",
        "state_reason": None,
        "assignees": [],
        "milestone": None,
    }
    issue.update(overrides)
    return issue


def run(text: str, *, actor: str = "maint", permission: str = "write", issue=None, config=None,
        features=ALL_FEATURES, bot_closed: bool = False, comment_id: int | None = 1000, **kwargs):
    return decide(
        parse(text, BOT),
        actor=actor,
        actor_permission=permission,
        issue=issue or make_issue(),
        repo_labels=REPO_LABELS,
        config=config or copy.deepcopy(DEFAULTS["commands"]),
        enabled_features=features,
        bot_closed=bot_closed,
        comment_id=comment_id,
        bot_login=BOT,
        **kwargs,
    )


def config_with(**changes):
    config = copy.deepcopy(DEFAULTS["commands"])
    config.update(changes)
    return config


def comments(outcome):
    return [action for action in outcome.plan.actions if isinstance(action, Comment)]


# ---------------------------------------------------------------------------------------------- parse


def test_parse_slash_command_with_quoted_args():
    [command] = parse('/label bug "good first issue"', BOT)
    assert command == Command("label", ("bug", "good first issue"), '/label bug "good first issue"', False, 1)


def test_parse_several_commands_in_order():
    assert names("Thanks!\n/label bug\n/assign @bob\n/close completed\n") == ["label", "assign", "close"]


def test_parse_names_are_case_insensitive():
    assert names("/CLOSE\n/Label bug\n/Needs_Info") == ["close", "label", "needs-info"]


def test_parse_addressed_to_bot_by_name():
    for text in ("@first-responder close", "@First-Responder[bot] close", "@first-responder: /close"):
        [command] = parse(text, BOT)
        assert command.name == "close" and command.addressed


def test_parse_other_mentions_are_not_commands():
    assert names("@someone close\n@first-responder-fork close") == []


def test_parse_command_must_start_the_line():
    assert names("please /close this\nsee /usr/bin/python\n- /close") == []


def test_parse_allows_up_to_three_spaces_of_indent():
    assert names("   /close") == ["close"]


def test_parse_ignores_fenced_code_blocks():
    text = "```\n/close\n```\n~~~python\n/label bug\n~~~\n````\n```\n/close\n````\n/reopen"
    assert names(text) == ["reopen"]


def test_parse_unclosed_fence_runs_to_the_end():
    assert names("```\n/close\n/label bug") == []


def test_parse_ignores_indented_code_blocks():
    assert names("Run:\n\n    /close\n\t/close") == []


def test_parse_ignores_inline_code():
    assert names("`/close`\n``/close``\ntext `with\n/close` span") == []


def test_parse_ignores_block_quotes():
    assert names("> /close\n>/label bug\n  > /reopen\n> > /close") == []


def test_parse_ignores_html_comments_also_multi_line():
    text = "<!-- /close -->\n<!--\n/close\n/label bug\n-->\n/reopen\n<!-- unclosed\n/close"
    assert names(text) == ["reopen"]


def test_parse_drops_trailing_html_comment_from_args():
    [command] = parse("/label bug <!-- because -->", BOT)
    assert command.args == ("bug",)


def test_parse_unbalanced_quote_falls_back_to_spaces():
    [command] = parse('/label "bug', BOT)
    assert command.args == ('"bug',)


def test_parse_returns_unknown_words_for_decide_to_ignore():
    assert names("/lgtm\n/retest") == ["lgtm", "retest"]


def test_parse_empty_text():
    assert parse("", BOT) == [] and parse(None, BOT) == []  # type: ignore[arg-type]


def test_new_commands_only_runs_commands_not_in_previous_text():
    old = "/label bug\nthanks"
    new = "/label bug\nthanks\n/close"
    assert [command.name for command in new_commands(old, new, BOT)] == ["close"]


def test_new_commands_counts_repeats_and_ignores_resaves():
    assert new_commands("/label bug", "/label bug", BOT) == []
    assert [c.args for c in new_commands("/label bug", "/label bug\n/label bug", BOT)] == [("bug",)]
    assert [c.args for c in new_commands("/label bug", "/label bug docs", BOT)] == [("bug", "docs")]


def test_new_commands_when_command_leaves_a_code_block():
    assert [c.name for c in new_commands("```\n/close\n```", "/close", BOT)] == ["close"]


# ---------------------------------------------------------------------------------------------- decide


def test_label_by_write_user_adds_existing_labels_and_reacts():
    outcome = run('/label enhancement "good first issue"')
    assert outcome.plan.actions == [
        AddLabels(42, ("enhancement", "good first issue")),
        React(42, "+1", 1000),
    ]
    assert [(v.command.name, v.allowed) for v in outcome.verdicts] == [("label", True)]


def test_label_matches_repo_spelling_case_insensitively():
    outcome = run("/label Enhancement")
    assert outcome.plan.actions[0] == AddLabels(42, ("enhancement",))


def test_label_unknown_label_is_refused_with_reply():
    outcome = run("/label nosuch")
    [reply] = comments(outcome)
    assert reply.body == "@maint `/label nosuch`: `nosuch` does not exist in this repository."
    assert outcome.verdicts[0].allowed is False
    assert not any(isinstance(action, React) for action in outcome.plan.actions)


def test_label_partially_allowed_runs_the_rest_and_explains():
    outcome = run("/label enhancement nosuch")
    assert AddLabels(42, ("enhancement",)) in outcome.plan.actions
    assert "`nosuch` does not exist" in comments(outcome)[0].body
    assert outcome.verdicts[0].allowed is True
    assert isinstance(outcome.plan.actions[-1], React)


def test_label_refused_for_read_user():
    outcome = run("/label enhancement", actor="carol", permission="read")
    [reply] = comments(outcome)
    assert reply.body == "@carol `/label enhancement`: `enhancement` needs write access."
    assert not any(isinstance(action, AddLabels) for action in outcome.plan.actions)


def test_open_labels_may_be_set_by_anyone():
    outcome = run("/label question", actor="carol", permission="none",
                  config=config_with(open_labels=["question"]))
    assert outcome.plan.actions[0] == AddLabels(42, ("question",))


def test_protected_labels_need_write_access_even_if_open():
    config = config_with(open_labels=["security", "priority-high"], permissions={"label": "anyone"})
    outcome = run("/label security priority-high enhancement", actor="carol", permission="read", config=config)
    assert outcome.plan.actions[0] == AddLabels(42, ("enhancement",))
    body = comments(outcome)[0].body
    assert "`security` is protected: needs write access" in body
    assert "`priority-high` is protected" in body  # fnmatch "priority*"


def test_protected_labels_allowed_for_maintainers():
    outcome = run("/label security", permission="maintain")
    assert outcome.plan.actions[0] == AddLabels(42, ("security",))


def test_label_without_names_is_refused():
    outcome = run("/label")
    assert "needs at least one label name" in comments(outcome)[0].body


def test_unlabel_removes_only_labels_on_the_issue():
    outcome = run("/unlabel bug question")
    assert outcome.plan.actions == [RemoveLabel(42, "bug"), React(42, "+1", 1000)]


def test_label_already_present_is_not_added_again():
    outcome = run("/label bug")
    assert outcome.plan.actions == [React(42, "+1", 1000)]


def test_close_defaults_to_not_planned():
    outcome = run("/close")
    assert outcome.plan.actions[0] == Close(42, "not_planned")


@pytest.mark.parametrize("arg,reason", [("completed", "completed"), ("not-planned", "not_planned"),
                                        ("NOT_PLANNED", "not_planned")])
def test_close_with_reason(arg, reason):
    assert run(f"/close {arg}").plan.actions[0] == Close(42, reason)


def test_close_with_unknown_reason_is_refused():
    outcome = run("/close because I said so")
    assert not any(isinstance(action, Close) for action in outcome.plan.actions)
    assert "takes `completed` or `not-planned`" in comments(outcome)[0].body


def test_close_by_author_allowed():
    outcome = run("/close completed", actor="alice", permission="read")
    assert outcome.plan.actions[0] == Close(42, "completed")


def test_close_by_stranger_refused_with_exact_message():
    outcome = run("/close", actor="mallory", permission="read")
    [reply] = comments(outcome)
    assert reply.body == "@mallory `/close` needs write access or authorship of this issue."
    assert outcome.verdicts[0] == (outcome.verdicts[0].command, False,
                                  "needs write access or authorship of this issue")


def test_close_already_closed_is_a_no_op():
    outcome = run("/close", issue=make_issue(state="closed"))
    assert outcome.plan.actions == [React(42, "+1", 1000)]


def test_reopen_by_write_user():
    outcome = run("/reopen", issue=make_issue(state="closed"))
    assert outcome.plan.actions[0] == Reopen(42)


def test_reopen_by_author_only_when_bot_closed():
    closed = make_issue(state="closed", state_reason="not_planned")
    allowed = run("/reopen", actor="alice", permission="read", issue=closed, bot_closed=True)
    assert allowed.plan.actions[0] == Reopen(42)
    refused = run("/reopen", actor="alice", permission="read", issue=closed, bot_closed=False)
    assert not any(isinstance(action, Reopen) for action in refused.plan.actions)
    assert "needs write access (the author may reopen an issue the bot closed on its own)" in comments(refused)[0].body


def test_duplicate_comments_labels_and_closes_as_duplicate():
    outcome = run("/duplicate #7", issue_exists={7, 42})
    assert outcome.plan.actions == [
        Comment(42, "Duplicate of #7", marker=marker("duplicate", 7)),
        AddLabels(42, ("duplicate",)),
        Close(42, "duplicate"),
        React(42, "+1", 1000),
    ]


def test_duplicate_of_itself_is_refused():
    outcome = run("/duplicate #42", issue_exists={42})
    assert "can't mark an issue as a duplicate of itself" in comments(outcome)[0].body


def test_duplicate_of_missing_issue_is_refused_via_callback():
    outcome = run("/duplicate 9", issue_exists=lambda number: number == 7)
    assert "#9 is not an issue in this repository" in comments(outcome)[0].body
    assert not any(isinstance(action, Close) for action in outcome.plan.actions)


def test_duplicate_needs_write_access():
    outcome = run("/duplicate #7", actor="alice", permission="read", issue_exists={7})
    assert comments(outcome)[0].body == "@alice `/duplicate #7` needs write access."


def test_duplicate_without_label_in_repo_only_closes():
    outcome = decide(parse("/duplicate #7", BOT), actor="maint", actor_permission="admin", issue=make_issue(),
                     repo_labels={"bug"}, config=DEFAULTS["commands"], enabled_features=set(),
                     bot_closed=False, comment_id=5, issue_exists={7})
    assert [type(action).__name__ for action in outcome.plan.actions] == ["Comment", "Close", "React"]


def test_assign_alone_means_me():
    outcome = run("/assign", actor="maint")
    assert outcome.plan.actions[0] == Assign(42, ("maint",))


def test_assign_others_by_write_user():
    outcome = run("/assign @bob carol")
    assert outcome.plan.actions[0] == Assign(42, ("bob", "carol"))


def test_self_assign_by_anyone_when_config_allows():
    outcome = run("/assign me", actor="dave", permission="read")
    assert outcome.plan.actions[0] == Assign(42, ("dave",))


def test_self_assign_refused_when_config_forbids():
    outcome = run("/assign", actor="dave", permission="read", config=config_with(self_assign=False))
    assert "assigning yourself needs write access" in comments(outcome)[0].body


def test_assign_others_refused_for_non_write():
    outcome = run("/assign @bob", actor="dave", permission="triage")
    assert "assigning others (`bob`) needs write access" in comments(outcome)[0].body
    assert not any(isinstance(action, Assign) for action in outcome.plan.actions)


def test_assign_validates_logins_and_assignability():
    outcome = run("/assign @bob not/a/login @eve", can_be_assigned={"bob"})
    assert outcome.plan.actions[0] == Assign(42, ("bob",))
    body = comments(outcome)[0].body
    assert "`not/a/login` is not a GitHub login" in body
    assert "`eve` can't be assigned to issues here" in body


def test_unassign_self_and_others():
    issue = make_issue(assignees=[{"login": "dave"}, {"login": "bob"}])
    assert run("/unassign", actor="dave", permission="read", issue=issue).plan.actions[0] == Unassign(42, ("dave",))
    refused = run("/unassign @bob", actor="dave", permission="read", issue=issue)
    assert "unassigning others (`bob`) needs write access" in comments(refused)[0].body


@pytest.mark.parametrize("name", ["triage", "summarize", "needs-info", "info-provided", "freeze", "unfreeze",
                                  "no-ai", "digest"])
def test_feature_commands_become_calls(name):
    outcome = run(f"/{name} logs please", permission="admin")
    assert outcome.calls == [FeatureCall(name, outcome.verdicts[0].command, ("logs", "please"))]
    assert outcome.plan.actions == [React(42, "+1", 1000)]


@pytest.mark.parametrize("name", ["triage", "summarize", "needs-info", "freeze", "digest", "no-ai"])
def test_feature_not_enabled_answers_so(name):
    outcome = run(f"/{name}", features=set())
    assert outcome.calls == []
    assert comments(outcome)[0].body == f"@maint `/{name}` is not enabled here."


def test_feature_enabled_by_command_name_too():
    assert run("/summarize", features={"summarize"}).calls[0].name == "summarize"


@pytest.mark.parametrize("name,author_ok", [("triage", True), ("info-provided", True), ("no-ai", True),
                                            ("needs-info", False), ("freeze", False), ("digest", False),
                                            ("summarize", True)])
def test_feature_command_permissions_for_author(name, author_ok):
    outcome = run(f"/{name}", actor="alice", permission="read")
    assert bool(outcome.calls) is author_ok


def test_summarize_allowed_for_anyone():
    assert run("/summarize", actor="stranger", permission="none").calls[0].name == "summarize"


def test_several_refusals_give_one_reply_quoting_each():
    outcome = run("/close\n/label enhancement\n/duplicate #3\n/summarize", actor="mallory", permission="read",
                  issue_exists={3})
    [reply] = comments(outcome)
    assert reply.body == (
        "@mallory these commands were not run:\n\n"
        "- `/close` needs write access or authorship of this issue\n"
        "- `/label enhancement`: `enhancement` needs write access\n"
        "- `/duplicate #3` needs write access"
    )
    assert [v.allowed for v in outcome.verdicts] == [False, False, False, True]
    assert outcome.calls[0].name == "summarize"
    assert outcome.plan.actions[-1] == React(42, "+1", 1000)


def test_commands_run_in_order_and_see_earlier_effects():
    outcome = run("/close\n/reopen\n/label enhancement\n/unlabel enhancement")
    assert outcome.plan.actions == [
        Close(42, "not_planned"), Reopen(42), AddLabels(42, ("enhancement",)), RemoveLabel(42, "enhancement"),
        React(42, "+1", 1000),
    ]


def test_react_on_issue_when_commands_come_from_the_issue_body():
    outcome = run("/label enhancement", comment_id=None)
    assert outcome.plan.actions[-1] == React(42, "+1", None)


def test_unknown_command_is_ignored_silently():
    outcome = run("/lgtm\n/retest")
    assert outcome.plan.actions == [] and outcome.verdicts == []


def test_unknown_command_addressed_to_bot_gets_help():
    outcome = run("@first-responder dance")
    [reply] = comments(outcome)
    assert reply.body.startswith("@maint here is what I can do in this repository:")
    # The pipe is escaped: GFM splits table cells at a bare | even inside code.
    assert "| `/close [completed\\|not-planned]` |" in reply.body


def test_help_lists_enabled_commands_and_who_may_use_them():
    outcome = run("/help", actor="x", permission="none", features={"triage"},
                  config=config_with(disabled=["duplicate"], open_labels=["question"]))
    body = comments(outcome)[0].body
    assert "`/duplicate #N`" not in body
    assert "`/summarize`" not in body  # feature not enabled
    assert "| `/triage` | run triage again now | write access or the issue's author |" in body
    assert "write access; anyone for `question`" in body
    assert "| `/help` | this list | anyone |" in body
    assert "anyone may assign themselves" in body


def test_help_text_lists_every_command_with_all_features():
    text = help_text(DEFAULTS["commands"], ALL_FEATURES, BOT)
    for spec in COMMANDS.values():
        assert f"`{spec.usage}`".replace("|", "\\|") in text  # a bare | would split the table cell
    assert "`@first-responder <command>`" in text


def test_disabled_command_is_ignored_unless_addressed():
    config = config_with(disabled=["assign"])
    silent = run("/assign", config=config)
    assert silent.plan.actions == []
    assert silent.verdicts[0].allowed is False and "commands.disabled" in silent.verdicts[0].reason
    answered = run("@first-responder assign", config=config)
    assert comments(answered)[0].body == "@maint `@first-responder assign` is not enabled here."


def test_permissions_override_widens():
    outcome = run("/duplicate #7", actor="alice", permission="read", issue_exists={7},
                  config=config_with(permissions={"duplicate": "author"}))
    assert Close(42, "duplicate") in outcome.plan.actions


def test_permissions_override_narrows():
    outcome = run("/close", actor="alice", permission="read", config=config_with(permissions={"close": "write"}))
    assert comments(outcome)[0].body == "@alice `/close` needs write access."


def test_invalid_permission_override_falls_back_to_default():
    outcome = run("/close", actor="alice", permission="read", config=config_with(permissions={"close": "nobody"}))
    assert Close(42, "not_planned") in outcome.plan.actions


def test_commands_section_disabled_does_nothing():
    outcome = run("/close", config=config_with(enabled=False))
    assert outcome.plan.actions == [] and outcome.verdicts == []


def test_bot_never_obeys_its_own_text():
    outcome = run("/close", actor="first-responder[bot]", permission="write")
    assert outcome.plan.actions == []


@pytest.mark.parametrize("permission", ["admin", "maintain", "write", "WRITE"])
def test_write_access_levels(permission):
    assert Close(42, "not_planned") in run("/close", actor="x", permission=permission).plan.actions


@pytest.mark.parametrize("permission", ["triage", "read", "none"])
def test_non_write_levels(permission):
    assert not any(isinstance(a, Close) for a in run("/close", actor="x", permission=permission).plan.actions)


def test_quoted_refusal_cannot_ping_or_become_a_command():
    outcome = run("/assign @bob `x`", actor="mallory", permission="read")
    body = comments(outcome)[0].body
    assert body == "@mallory `` /assign @bob `x` ``: assigning others (`bob`, `x`) needs write access."
    assert parse(body, BOT) == []


def test_too_many_commands_in_one_comment():
    text = "\n".join(["/label enhancement"] * 25)
    outcome = run(text)
    assert sum(1 for v in outcome.verdicts if not v.allowed) == 5
    assert len(comments(outcome)) == 1


def test_audit_verdicts_are_in_plan_data():
    outcome = run("/close\n/label nosuch")
    assert outcome.plan.data["verdicts"][0] == {"command": "/close", "allowed": True, "reason": "closed as not_planned"}
    assert outcome.plan.data["verdicts"][1]["allowed"] is False


def test_core_modules_import_no_io():
    """The decision cores stay pure: nothing that talks to the network, the disk or a database."""
    import ast
    from pathlib import Path

    forbidden = {"aiohttp", "gidgethub", "sqlite3", "sqlite_utils", "requests", "httpx", "socket", "openai",
                 "subprocess", "os", "bot.github", "bot.actions", "bot.db", "bot.models", "bot.index"}
    core = Path(__file__).resolve().parent.parent / "bot" / "core"
    for name in ("commands.py", "lifecycle.py", "digest.py"):
        tree = ast.parse((core / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert not any(module == bad or module.startswith(bad + ".") for bad in forbidden), (name, module)
