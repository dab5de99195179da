"""Nothing the bot posts can ping, embed, link out or carry raw HTML (issue #11, items 1-4).

Property-based: hypothesis feeds arbitrary Unicode, Markdown- and HTML-shaped text and every line of
``tests/data/injection_corpus.txt`` to each rendering helper of ``bot.core.render`` and to each real
message builder (triage comment with summary, duplicates and a cached answer; every command reply and
refusal; the help table; the needs-info request; lifecycle reminders and closes; the digest's title
and body; ``/summarize``). Each output is rendered with cmark-gfm, GitHub's own parser
(``bot.core.render_check``), and must hold no mention but the one the template meant, no image, no
raw HTML, no link outside ``https://github.com/OWNER/REPO/`` and no cross-repository reference.
The exact cases reported in the issue come first, as plain examples.
"""
from __future__ import annotations

import copy
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.config import DEFAULTS
from bot.core import commands as core_commands
from bot.core import digest as core_digest
from bot.core import lifecycle as core_lifecycle
from bot.core import render, render_check
from bot.core.plan import Comment, CreateIssue, marker
from bot.core.triage import decide as triage_decide
from bot.features.lifecycle import request_message
from bot.features.triage import summary_body
from bot.models.base import KINDS, Prediction

REPO = "octo-org/hello"
AUTHOR = "alice"
ACTOR = "mallory"
BOT = "first-responder[bot]"
# Modest by default (2 cores shared); RENDER_FUZZ_SCALE=10 runs ten times as many for a deeper search.
_SCALE = max(1, int(os.environ.get("RENDER_FUZZ_SCALE", "1") or 1))
PROPERTY = settings(max_examples=250 * _SCALE, deadline=None)
FEW = settings(max_examples=120 * _SCALE, deadline=None)  # builders that render several pieces per example


def _decode(line: str) -> str:
    """The corpus file's escapes: \\n, \\t, \\uXXXX and \\\\ (other backslashes stay as typed)."""
    out, index = [], 0
    while index < len(line):
        char = line[index]
        if char == "\\" and index + 1 < len(line):
            following = line[index + 1]
            if following in "nt\\":
                out.append({"n": "\n", "t": "\t", "\\": "\\"}[following])
                index += 2
                continue
            if following == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", line[index + 2: index + 6]):
                out.append(chr(int(line[index + 2: index + 6], 16)))
                index += 6
                continue
        out.append(char)
        index += 1
    return "".join(out)


CORPUS = [_decode(line) for line in
          (Path(__file__).parent / "data" / "injection_corpus.txt").read_text(encoding="utf-8").splitlines()
          if line.strip() and not line.startswith("#")]

TOKENS = [
    "`", "``", "```", "````", "~~~", "\\", "\\`", "@", "@victim", "@org/team", "@alice", "@alice/team", "@Alice.",
    "<img src=https://evil.example/t.gif>", "![t](https://evil.example/t.gif)", "![t][r]", "[x](https://evil.example)",
    "[x]", "[r]: https://evil.example", "<https://evil.example>", "<a href='https://evil.example'>", "</a>",
    "&#64;", "&#x40;", "&commat;", "&amp;", "&lt;img&gt;", "&", "www.", "www.evil.example", "https://", "http://",
    "ftp://", "_https://evil.example/p.png_", "mailto:", "xmpp:", "a@b.co", "<details>", "</details>", "<!--", "-->",
    "<!-- first-responder:triage -->", "<br>", "<script>", "<", ">", "|", "~", "*", "_", "[", "]", "(", ")", "!",
    "$", ":", "#", "#1", "other/repo#1", "octo-org/hello#2", "other/repo@a5c3785", "GH-1", "victim", "evil", " ",
    "\n", "\n\n", "    ", "\t", "> ", "- ", "* ", "+ ", "1. ", "1) ", "# ", "---", "===", "- [ ] ", "[^1]", "[^1]: x",
    "\u200b", "\u202e", "\r", "\x00", "\u2028", "＠", ".", "..", "/", "%2e", "github.com/octo-org/hello/../../evil",
    "https://github.com/octo-org/hello/../../evil/repo", "javascript:alert(1)",
]
markdownish = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=6)), max_size=25).map("".join)
hostile = st.one_of(st.text(max_size=200), markdownish, st.sampled_from(CORPUS))
logins = st.from_regex(r"\A[A-Za-z0-9](?:[A-Za-z0-9-]{0,20})\Z")


def assert_clean(body: str, *, allowed: set[str] | frozenset[str] = frozenset()) -> None:
    """The property: GitHub's rendering of ``body`` mentions only ``allowed`` and carries nothing else."""
    assert isinstance(body, render.Safe), f"not built by bot.core.render: {body!r}"
    problems = render_check.problems(body, author=allowed, repo=REPO)
    assert problems == [], (problems, body)
    assert body.mentions <= {login.lower() for login in allowed}, body.mentions


# ------------------------------------------------------------------------- the issue's exact cases

ITEM_1 = [
    '/label "a` @victim `b" "x` ![t](https://evil.example/track.gif) `y"',
    '/close "a` @victim `b" "x` ![t](https://evil.example/track.gif) `y"',
    '/assign "q` @org/team `z"',
]


def command_replies(comment: str, *, actor: str = ACTOR, permission: str = "none", config=None,
                    labels=("bug", "needs-info")) -> list[Comment]:
    outcome = core_commands.decide(
        core_commands.parse(comment, BOT), actor=actor, actor_permission=permission,
        issue={"number": 42, "user": {"login": AUTHOR}, "state": "open", "labels": [], "assignees": []},
        repo_labels=set(labels), config=config or copy.deepcopy(DEFAULTS["commands"]),
        enabled_features={"triage", "summarize", "lifecycle", "digest", "no-ai"}, bot_closed=False,
        comment_id=1000, issue_exists={7}, can_be_assigned={"maint", ACTOR}, bot_login=BOT)
    return [action for action in outcome.plan.actions if isinstance(action, Comment)]


@pytest.mark.parametrize("comment", ITEM_1)
def test_refusal_quoting_a_mention_or_image_pings_and_embeds_nothing(comment):
    replies = command_replies(comment)
    assert replies, "an unpermitted command gets a refusal"
    for reply in replies:
        assert_clean(reply.body, allowed={ACTOR})
        html = render_check.render_html(reply.body)
        assert "<img" not in html
        texts, _ = render_check.rendered(reply.body, repo=REPO)
        assert not any(re.search(r"@(victim|org)", chunk) for chunk in texts)


def triage_comment(title: str = "It crashes", body: str = "", summary: str = "", duplicates=(), answer=None,
                   kind: str = "bug") -> Comment:
    prediction = Prediction(kind=kind, confidence=0.95, probs={k: 0.95 if k == kind else 0.0 for k in KINDS},
                            tier="combined", summary=summary)
    section = copy.deepcopy(DEFAULTS["triage"])
    # Always a comment, and the model's summary when one is given: the most text to check.
    section.update(comment="always", summary="model" if summary else "extractive")
    if summary:  # the summary's words in the body too, so the faithfulness guard lets the model's text through
        body = f"{body}\n{summary}"
    plan = triage_decide({"number": 7, "title": title, "body": body, "user": {"login": AUTHOR}, "labels": []},
                         section, {"bug", "enhancement", "question", "needs-triage"}, prediction,
                         list(duplicates), answer, repo=REPO)
    [comment] = [action for action in plan.actions if isinstance(action, Comment)]
    return comment


def test_inline_code_in_the_authors_text_stays_code_and_pings_nobody():
    body = "I run `make @org/security-team` today"
    for comment in (triage_comment(body=body + " and it fails badly."),  # quoted (extractive) summary
                    triage_comment(summary=body)):  # the fallback model's summary
        assert_clean(comment.body, allowed={AUTHOR})
        assert "<code>make @org/security-team</code>" in render_check.render_html(comment.body)


def test_digest_titles_with_images_html_and_links_render_inert():
    title = "![pwn](https://evil.example/x.png) <img src=https://evil.example/t.gif> [click](https://evil.example)"
    body = digest_body([title], summaries=[title], labels=["<img src=x>"])
    assert_clean(body)
    html = render_check.render_html(body)
    assert "<img" not in html and "evil.example\"" not in html
    assert "![pwn]" in html  # the maintainer still reads what the author typed


@pytest.mark.parametrize("payload", [
    "_https://evil.example/p.png_",
    "[x](https://github.com/OWNER/REPO/../../evil/repo)",
    f"[x](https://github.com/{REPO}/../../evil/repo)",
    "&#64;victim",
])
def test_link_filter_holes_are_closed(payload):
    comment = triage_comment(title=payload, summary=payload, duplicates=[{"number": 3, "title": payload}],
                             answer={"answer": payload, "number": 2})
    assert_clean(comment.body, allowed={AUTHOR})


def test_checker_sees_the_holes_the_regex_sanitiser_missed():
    """The last line of defence flags each hole of item 4 even in a body built without render."""
    assert render_check.problems("_https://evil.example/p.png_", repo=REPO)
    assert render_check.problems(f"[x](https://github.com/{REPO}/../../evil/repo)", repo=REPO)
    assert render_check.problems(f"[x](https://github.com/{REPO}/%2e%2e/%2e%2e/evil/repo)", repo=REPO)
    assert render_check.problems("&#64;victim", repo=REPO)
    assert render_check.problems("I run `make `@org/security-team`` today", repo=REPO)
    assert render_check.problems("<details>x</details>", repo=REPO)
    assert render_check.problems("<em>x</em>", repo=REPO)  # raw HTML even when Markdown makes the same tag
    assert render_check.problems("x\n<!-- first-responder:x --> <img src=y>", repo=REPO)
    assert render_check.problems("other/repo#1", repo=REPO)
    assert render_check.problems("www.evil.example", repo=REPO)
    assert not render_check.problems(f"[#1](https://github.com/{REPO}/issues/1) @alice\n\n"
                                     "<!-- first-responder:triage -->", author="alice", repo=REPO)


# ----------------------------------------------------------------------------------- the helpers

@PROPERTY
@given(hostile, st.sampled_from(["", AUTHOR]), st.booleans())
@example("I run `make @org/security-team` today", AUTHOR, False)
@example("_https://evil.example/p.png_", "", False)
@example("&#64;victim", "", True)
def test_text_is_inert_whatever_the_input(value, author, multiline):
    piece = render.text(value, author=author, repo=REPO, multiline=multiline)
    assert_clean(piece, allowed={author} if author else set())
    # Embedded mid-sentence, at the start of a line, in a list item and in a quote: still inert.
    for template in ("Before {x} after", "{x}", "- {x}", "> {x}", "**{x}**", "_{x}_", "[{x}]"):  # our templates never leave a backtick run open
        assert_clean(render.fmt(template, x=piece), allowed={author} if author else set())


@PROPERTY
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp")), max_size=120))
def test_text_reads_as_typed(value):
    """Escapes are invisible: GitHub shows the same characters (U+200B aside) as were typed."""
    if "`" in value:
        value = value.replace("`", "'")  # the author's code spans become code, tested elsewhere
    texts, _ = render_check.rendered(render.text(value, max_length=1000), repo=REPO)
    assert "".join(texts).replace(render.ZWSP, "").strip() == " ".join(value.split())


@PROPERTY
@given(hostile, st.booleans())
def test_code_span_cannot_be_closed_from_inside(value, table):
    span = render.code(value, table=table, max_length=10_000)
    assert_clean(render.fmt("x {span} y", span=span))
    if table:
        assert_clean(render.fmt("| a | b |\n|---|---|\n| {span} | z |", span=span))
    html = render_check.render_html(span)
    if span:
        assert html.count("<code>") == 1 and html.startswith("<p><code>") and html.rstrip().endswith("</code></p>")


@PROPERTY
@given(hostile)
def test_code_block_keeps_everything_inside(value):
    block = render.code_block(value)
    assert_clean(render.join("\n", [render.fmt("before"), block, render.fmt("after {x}", x=render.text("@v"))]))
    html = render_check.render_html(block)
    assert html.count("<pre>") == 1 and html.rstrip().endswith("</code></pre>")


@PROPERTY
@given(hostile)
def test_title_is_inert(value):
    assert render_check.title_problems(render.title(value), repo=REPO) == []


@PROPERTY
@given(hostile)
def test_mention_only_mentions_a_login(value):
    piece = render.mention(value)
    allowed = piece.mentions
    assert_clean(piece, allowed=allowed)
    assert len(allowed) <= 1


@PROPERTY
@given(hostile, st.text(max_size=40))
def test_links_never_leave_the_repository(label, path):
    try:
        made = render.link(render.text(label), REPO, path)
    except ValueError:
        return  # refused to build it: fine
    assert_clean(made)


def test_fmt_and_join_take_only_safe_pieces():
    with pytest.raises(TypeError):
        render.fmt("{x}", x="@victim")
    with pytest.raises(TypeError):
        render.join(" ", [render.text("a"), "@victim"])
    with pytest.raises(TypeError):
        render.Safe("@victim")
    assert not isinstance(render.text("a") + "@victim", render.Safe)  # editing drops Safe


@PROPERTY
@given(st.text(max_size=80), st.one_of(st.integers(), st.text(max_size=80)))
def test_markers_cannot_close_the_comment(kind, key):
    made = render.marker(kind, key)
    assert render.MARKER_PATTERN.fullmatch(made)
    assert_clean(render.join("\n", [render.fmt("text"), made]))


# --------------------------------------------------------------------------- the message builders

@FEW
@given(hostile, hostile, hostile, hostile, hostile, st.sampled_from(list(KINDS)))
@example(*(["I run `make @org/security-team` today"] * 5), "bug")
def test_triage_comment_is_clean(title, body, summary, duplicate_title, answer, kind):
    for model_summary in (summary, ""):  # the model's text, or the author's own first sentence
        comment = triage_comment(title=title, body=body + "\nThis sentence has enough words in it.",
                                 summary=model_summary, duplicates=[{"number": 3, "title": duplicate_title}],
                                 answer={"answer": answer, "number": 2}, kind=kind)
        assert_clean(comment.body, allowed={AUTHOR})


COMMAND_TEMPLATES = ["/label {x}", "/unlabel {x}", "/close {x}", "/reopen {x}", "/duplicate {x}", "/assign {x}",
                     "/unassign {x}", "/triage {x}", "/needs-info {x}", "/help {x}", "@first-responder {x}",
                     '/label "{x}" bug', "/assign @{x}", "/close\n/label {x}\n/assign {x}"]


@FEW
@given(hostile, st.sampled_from(["none", "read", "triage", "write"]), st.sampled_from([ACTOR, AUTHOR]))
@example(ITEM_1[0][len("/label "):], "none", ACTOR)
def test_every_command_reply_and_refusal_is_clean(value, permission, actor):
    flat = " ".join(value.split()) or "x"
    for template in COMMAND_TEMPLATES:
        for reply in command_replies(template.format(x=flat), actor=actor, permission=permission):
            assert_clean(reply.body, allowed={actor})


@FEW
@given(st.lists(hostile, max_size=3), st.sampled_from(["", BOT, "first-responder"]))
def test_help_table_is_clean(open_labels, bot_login):
    config = {**copy.deepcopy(DEFAULTS["commands"]), "open_labels": open_labels}
    help_block = core_commands.help_text(config, {"triage", "summarize", "lifecycle", "digest"}, bot_login)
    assert_clean(help_block)
    body = core_commands.reply_body(ACTOR, [core_commands.refusal_line(
        core_commands.Command("label", (), "/label x"), render.text("is not enabled here"))], help_block)
    assert_clean(body, allowed={ACTOR})
    html = render_check.render_html(help_block)
    rows = re.findall(r"<tr>(.*?)</tr>", html, re.S)
    assert all(row.count("<td") == 3 for row in rows[1:])  # no label or usage can split a cell


@FEW
@given(hostile, hostile)
def test_late_refusals_from_feature_calls_are_clean(line, reason):
    command = core_commands.Command("summarize", (), line)
    body = core_commands.reply_body(ACTOR, [core_commands.refusal_line(command, reason),
                                            core_commands.refusal_line(command, render.text(reason))])
    assert_clean(body, allowed={ACTOR})


@FEW
@given(logins, hostile, hostile, st.booleans())
def test_needs_info_request_is_clean(author, what, label, enabled):
    body = request_message(author, what, label, {"enabled": enabled, "ping_after_days": 7, "close_after_days": 7})
    assert_clean(body, allowed={author})


def _lifecycle_decision(author: str, label: str, now_days: float, comments=()):
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)

    def stamp(days: float) -> str:
        return (t0 + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")

    config = copy.deepcopy(DEFAULTS["lifecycle"])
    config["needs_info"]["label"] = label
    issue = {"number": 7, "title": "t", "body": "b", "user": {"login": author, "type": "User"},
             "labels": [{"name": label}], "state": "open", "state_reason": None, "created_at": stamp(-30),
             "updated_at": stamp(-1), "closed_at": None, "assignees": [], "milestone": None, "comments": 0}
    timeline = [{"event": "labeled", "label": {"name": label}, "actor": {"login": "maint", "type": "User"},
                 "created_at": stamp(0)}]
    bot_comments = [{"user": {"login": BOT, "type": "Bot"}, "created_at": stamp(days), "updated_at": stamp(days),
                     "body": "reminder\n" + marker(core_lifecycle.PING_MARKER, stamp(0))} for days in comments]
    return core_lifecycle.due(issue, timeline, bot_comments, t0 + timedelta(days=now_days), config,
                              write_logins={"maint"}, frozen=False, bot_login=BOT)


@FEW
@given(logins, hostile.filter(lambda label: label.strip() != ""))
def test_lifecycle_reminder_and_close_are_clean(author, label):
    for decision in (_lifecycle_decision(author, label, 7), _lifecycle_decision(author, label, 14, comments=[7])):
        for action in decision.plan.actions:
            if isinstance(action, Comment):
                assert_clean(action.body, allowed={author})


@FEW
@given(hostile, st.integers(min_value=1, max_value=365), st.integers(min_value=1, max_value=365))
def test_stale_messages_are_clean(label, days, close_days):
    for template in (core_lifecycle.STALE_MESSAGE_CLOSE, core_lifecycle.STALE_MESSAGE_LABEL_ONLY):
        assert_clean(render.fmt(template, days=days, label=render.code(label), close_days=close_days))
    assert_clean(render.fmt(core_lifecycle.STALE_CLOSE_MESSAGE, days=days))


def digest_body(titles: list[str], *, summaries: list[str] | None = None, labels: list[str] = (),
                repo: str = REPO) -> render.Safe:
    start, end = core_digest.week_bounds("2024-W10")
    issues = [{"number": index + 1, "title": title, "labels": [{"name": name} for name in labels],
               "created_at": "2024-03-05T10:00:00Z", "updated_at": "2024-03-06T10:00:00Z", "state": "open",
               "reactions": {"+1": 2}, "comments": 1,
               **({"summary": summaries[index]} if summaries and index < len(summaries) else {})}
              for index, title in enumerate(titles)]
    counts = core_digest.counts(issues, start, end)
    top = core_digest.rank(issues, end, top=10)
    waiting = [(issue, "ping", end) for issue in issues]
    daily = core_digest.daily_opened_closed(issues, end)
    return core_digest.render(repo, "2024-W10", counts, top, issues, waiting, [(2, 1)], daily, bounds=(start, end))


@FEW
@given(st.lists(hostile, min_size=1, max_size=3), st.lists(hostile, max_size=3), st.lists(hostile, max_size=2))
def test_digest_body_and_title_are_clean(titles, summaries, labels):
    body = digest_body(titles, summaries=summaries, labels=labels)
    assert_clean(body)
    html = render_check.render_html(body)
    for table in re.findall(r"<tbody>(.*?)</tbody>", html, re.S)[1:]:  # the top-issues table keeps 8 columns
        assert all(row.count("<td") == 8 for row in re.findall(r"<tr>(.*?)</tr>", table, re.S))
    start, end = core_digest.week_bounds("2024-W10")
    action = CreateIssue(core_digest.title(start, end), body, ("digest",), marker=marker("digest", "2024-W10"))
    assert render_check.title_problems(action.title, repo=REPO) == []


@PROPERTY
@given(hostile, st.integers(min_value=0, max_value=500))
def test_summary_comment_is_clean(summary, comments):
    assert_clean(summary_body(summary, comments))


@pytest.mark.parametrize("payload", CORPUS)
def test_corpus_through_every_builder(payload):
    assert_clean(render.text(payload, repo=REPO, multiline=True))
    assert_clean(render.code(payload))
    assert_clean(render.code_block(payload))
    assert_clean(triage_comment(title=payload, body=payload + "\nEnough words in this sentence here.",
                                summary=payload, duplicates=[{"number": 3, "title": payload}],
                                answer={"answer": payload, "number": 2}).body, allowed={AUTHOR})
    assert_clean(triage_comment(body=payload + "\nEnough words in this sentence here.").body, allowed={AUTHOR})
    flat = " ".join(payload.split())
    for template in COMMAND_TEMPLATES:
        for reply in command_replies(template.format(x=flat)):
            assert_clean(reply.body, allowed={ACTOR})
    assert_clean(request_message("alice", payload, payload, {"enabled": True}), allowed={"alice"})
    assert_clean(digest_body([payload], summaries=[payload], labels=[payload]))
    assert_clean(summary_body(payload, 3))
    assert render_check.title_problems(render.title(payload), repo=REPO) == []
