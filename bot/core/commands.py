"""Slash commands in issue comments: parse them, then decide what each one may do.

Comment text is untrusted, so commands are found by plain code and never by a model. The parser asks
cmark-gfm (GitHub's own Markdown library) how the text renders, so *quoting* a comment never re-runs
it: a command must start a line of a top-level paragraph; lines in code (fenced, indented, inline,
``<pre>``, ``<code>``), block quotes (lazy continuation lines too), lists, tables, ``<details>`` and
other HTML, and HTML comments are not commands. Other
bots in the same repository (Prow, triagebot, ...) use slash commands too, which is why an unknown
``/word`` is ignored unless it addresses this bot by name.

``decide`` is pure: it gets the permission of the actor, the issue as GitHub returns it and the
repository's labels, and returns a ``Plan`` plus an audit list and the feature calls (triage,
summaries, the needs-info lifecycle, digests) that the webhook handler runs itself. Permissions
follow Prow and triagebot: write access (admin, maintain, write) may do everything, authors may
steer their own issue, and config can disable a command or widen/narrow who may run it.
"""
from __future__ import annotations

import re
import shlex
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from html.parser import HTMLParser
from typing import Any, NamedTuple

from bot.core import render
from cmarkgfm.cmark import Options as _CmarkOptions

from bot.core.cmark import gfm_to_html

from bot.core.plan import (
    marker,
    AddLabels,
    Assign,
    Close,
    Comment,
    Plan,
    React,
    RemoveLabel,
    Reopen,
    Unassign,
)

WRITE_PERMISSIONS = frozenset({"admin", "maintain", "write"})
"""GitHub's ``permission`` values that count as write access."""

ANYONE, AUTHOR, WRITE = "anyone", "author", "write"
"""Who may run a command: everyone; write access or the issue's author; write access only."""

MAX_COMMANDS_PER_COMMENT = 20
"""A comment with more commands than this is probably a paste; the rest are refused, not run."""

CLOSE_REASONS = {
    "completed": "completed",
    "complete": "completed",
    "not-planned": "not_planned",
    "not_planned": "not_planned",
    "notplanned": "not_planned",
}


@dataclass(frozen=True)
class CommandSpec:
    """What a command is for and who may run it by default (before ``commands.permissions``)."""

    usage: str
    does: str
    who: str
    feature: str | None = None


COMMANDS: dict[str, CommandSpec] = {
    "label": CommandSpec('/label a b "with space"', "add labels that exist in this repository", WRITE),
    "unlabel": CommandSpec("/unlabel a", "remove labels", WRITE),
    "close": CommandSpec("/close [completed|not-planned]", "close this issue (default: not planned)", AUTHOR),
    "reopen": CommandSpec("/reopen", "reopen this issue", WRITE),
    "duplicate": CommandSpec("/duplicate #N", "close this issue as a duplicate of #N", WRITE),
    "assign": CommandSpec("/assign [@user ...]", "assign people (alone: yourself)", WRITE),
    "unassign": CommandSpec("/unassign [@user ...]", "unassign people (alone: yourself)", WRITE),
    "triage": CommandSpec("/triage", "run triage again now", AUTHOR, "triage"),
    "summarize": CommandSpec("/summarize", "post or refresh a summary of this thread", ANYONE, "summarize"),
    "needs-info": CommandSpec("/needs-info [what]", "ask the author for more information", WRITE, "lifecycle"),
    "info-provided": CommandSpec("/info-provided", "end the wait for information", AUTHOR, "lifecycle"),
    "freeze": CommandSpec("/freeze", "never close this issue as stale or for missing information", WRITE,
                          "lifecycle"),
    "unfreeze": CommandSpec("/unfreeze", "undo `/freeze`", WRITE, "lifecycle"),
    "no-ai": CommandSpec("/no-ai", "stop posting model-written text on this issue", AUTHOR, "no-ai"),
    "digest": CommandSpec("/digest", "post this week's digest now", WRITE, "digest"),
    "help": CommandSpec("/help", "this list", ANYONE),
}
"""Every command, in the order ``/help`` lists them."""

FEATURE_COMMANDS = frozenset(name for name, spec in COMMANDS.items() if spec.feature)
"""Commands that the webhook handler carries out itself (``CommandOutcome.calls``)."""

_LOGIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_ISSUE_REF = re.compile(r"^#?(\d{1,10})$")
_NAME = r"([A-Za-z][A-Za-z0-9_-]*)"
# Raw HTML passes through (so the reader sees it as GitHub would) and cmark's own blocks carry
# data-sourcepos, which tells a paragraph cmark made from a <p> someone typed.
_RENDER_OPTIONS = _CmarkOptions.CMARK_OPT_UNSAFE | _CmarkOptions.CMARK_OPT_SOURCEPOS
_SLASH_COMMAND = re.compile(rf"^/{_NAME}(?=\s|$)")


@dataclass(frozen=True)
class Command:
    """One command line: ``/name args`` or ``@bot name args``.

    ``line`` is the command's source line (stripped), used to quote it in replies and the audit log;
    ``addressed`` is true when the line named the bot (``@first-responder close``).
    """

    name: str
    args: tuple[str, ...]
    line: str
    addressed: bool = False
    lineno: int = 0


class Verdict(NamedTuple):
    """The audit record of one command: whether it ran, and why (or why not)."""

    command: Command
    allowed: bool
    reason: str


@dataclass(frozen=True)
class FeatureCall:
    """A command another feature carries out; ``name`` is the command (``triage``, ``needs-info``...)."""

    name: str
    command: Command
    args: tuple[str, ...] = ()


@dataclass
class CommandOutcome:
    """What ``decide`` settled: the plan to apply, one verdict per command, and the feature calls."""

    plan: Plan = field(default_factory=Plan)
    verdicts: list[Verdict] = field(default_factory=list)
    calls: list[FeatureCall] = field(default_factory=list)
    refusals: list[render.Safe] = field(default_factory=list)
    want_help: bool = False


# --------------------------------------------------------------------------------------------------
# Parsing


def _bot_name_pattern(bot_login: str) -> re.Pattern[str] | None:
    """``@name`` or ``@name[bot]`` at the start of a line; an App's login carries ``[bot]``."""
    base = re.sub(r"\[bot\]$", "", bot_login.strip().lstrip("@"), flags=re.IGNORECASE)
    if not base:
        return None
    return re.compile(rf"^@{re.escape(base)}(?:\[bot\])?[,:]?\s+/?{_NAME}(?=\s|$)", re.IGNORECASE)


# Every element GitHub lets through its HTML sanitiser, plus what cmark itself emits: inside any of them a
# line is not a top-level paragraph line. Other tags (``Vec<String>``) are stripped by GitHub, text kept.
_HTML_ELEMENTS = frozenset("""
    a abbr b bdo blockquote caption cite code dd del details dfn div dl dt em figcaption figure h1 h2 h3 h4
    h5 h6 i ins kbd li mark ol p pre q rp rt ruby s samp small span strike strong sub summary sup table
    tbody td tfoot th thead time tr tt ul var
""".split())
# Elements whose end tag browsers infer: written raw and left open they do not wrap later blocks.
_OPTIONAL_END = frozenset("p li dt dd rt rp tr td th thead tbody tfoot".split())
# Left open inside a paragraph, browsers re-open these in the following blocks (HTML's "active
# formatting elements"), so ``text <code>`` with no ``</code>`` turns the rest of the comment into code.
_FORMATTING = frozenset("a b code em i s small strike strong tt".split())

_SENTINEL = "\ue000"  # a private-use character marks each candidate line start (plus two index digits)
_DIGIT_BASE = 0xE100
_DIGITS = 4096
_CANDIDATE = re.compile(r"^[ \t]*[/@]")
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|$)")


def _mark(index: int) -> str:
    return _SENTINEL + chr(_DIGIT_BASE + index // _DIGITS) + chr(_DIGIT_BASE + index % _DIGITS)


class _LineStarts(HTMLParser):
    """Reads cmark-gfm's HTML and collects the marked lines that start a line of a top-level paragraph.

    That is: directly in a ``<p>`` cmark made (it carries ``data-sourcepos``; raw ``<p>`` does not),
    with no other element open around it (no quote, list, table, ``<details>``, raw HTML, ...) and no
    formatting element left open earlier, right after the paragraph starts or after a line break.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []  # (tag, made by cmark)
        self.active_formatting: list[str] = []
        self.at_line_start = False
        self.found: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.at_line_start = False
        if tag not in _HTML_ELEMENTS:
            return
        ours = tag == "p" and any(name == "data-sourcepos" for name, _ in attrs)
        if tag in _OPTIONAL_END and not ours:
            return
        self.stack.append((tag, ours))
        self.at_line_start = ours

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.at_line_start = False  # <br /> is followed by the line break itself

    def handle_endtag(self, tag: str) -> None:
        self.at_line_start = False
        for depth in range(len(self.stack) - 1, -1, -1):
            if self.stack[depth][0] == tag:
                closed = self.stack[depth + 1:]
                del self.stack[depth:]
                self.active_formatting.extend(name for name, _ in closed if name in _FORMATTING)
                return
        if tag in self.active_formatting:
            self.active_formatting.remove(tag)

    def handle_data(self, data: str) -> None:
        top_level = len(self.stack) == 1 and self.stack[0] == ("p", True) and not self.active_formatting
        if top_level:
            position = data.find(_SENTINEL)
            while position != -1 and position + 2 < len(data):
                if (data[position - 1] == "\n") if position else self.at_line_start:
                    high, low = ord(data[position + 1]) - _DIGIT_BASE, ord(data[position + 2]) - _DIGIT_BASE
                    self.found.append(high * _DIGITS + low)
                position = data.find(_SENTINEL, position + 1)
        if data:
            self.at_line_start = top_level and data.endswith("\n")


def _top_level_lines(lines: list[str]) -> list[int]:
    """Indexes of the lines that start a line of a top-level paragraph as GitHub renders the text.

    Each line that could hold a command (first non-blank character ``/`` or ``@``) gets an invisible
    private-use marker in front of that character; cmark-gfm (GitHub's own Markdown library) renders the
    text, and the marked lines that come out at the start of a line of a top-level paragraph are the
    ones returned. The marker sits where no Markdown construct begins or ends, so it cannot change how
    the text parses: a line inside a code block, quote (lazy continuation lines included), list,
    table, raw HTML element or HTML comment stays inside it.
    """
    candidates = [index for index, line in enumerate(lines) if _CANDIDATE.match(line)]
    if not candidates:
        return []
    marked = list(lines)
    for index in candidates:
        line = lines[index]
        indent = len(line) - len(line.lstrip(" \t"))
        marked[index] = line[:indent] + _mark(index) + line[indent:]
    text = "\n".join(line.replace(_SENTINEL, "\ufffd") if i not in candidates else line
                     for i, line in enumerate(marked))
    # Lone surrogates (possible in JSON) are not UTF-8; cmark never sees them, lines keep their numbers.
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    html = gfm_to_html(text, _RENDER_OPTIONS)
    reader = _LineStarts()
    reader.feed(html)
    reader.close()
    wanted = set(candidates)
    return sorted({index for index in reader.found if index in wanted})


def _split_args(text: str) -> tuple[str, ...]:
    """Split arguments like a shell would (``"with space"`` is one); unbalanced quotes split on spaces."""
    try:
        parts = shlex.split(text, comments=False, posix=True)
    except ValueError:
        parts = text.split()
    cleaned = []
    for part in parts:
        if len(part) >= 2 and part[0] == part[-1] == "`":
            part = part.strip("`")
        if part:
            cleaned.append(part)
    return tuple(cleaned)


def parse(text: str, bot_login: str) -> list[Command]:
    """Return the commands in a comment or issue body, in order.

    A command is a line that starts a line of a top-level paragraph as GitHub renders the text, with
    ``/name`` or ``@<bot_login> name``; names are case-insensitive (returned lower-case, ``_`` read as
    ``-``). Anything rendered as code (fenced, indented, inline, ``<pre>``, ``<code>``), quoted (block
    quotes and their lazy continuation lines), inside a list, table, ``<details>`` or other HTML element,
    or inside an HTML comment is not a command. Unknown names are returned too: ``decide`` ignores
    them unless they address the bot.
    """
    if not text:
        return []
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    addressed_pattern = _bot_name_pattern(bot_login)
    commands: list[Command] = []
    for index in _top_level_lines(lines):
        original = lines[index]
        offset = len(original) - len(original.lstrip(" \t"))
        body = original[offset:]
        match = _SLASH_COMMAND.match(body)
        addressed = False
        if match is None and addressed_pattern is not None:
            match = addressed_pattern.match(body)
            addressed = match is not None
        if match is None:
            continue
        # Hidden text is no argument: an HTML comment (to the line's end when it runs on) is dropped.
        rest = _HTML_COMMENT.sub("", body[match.end():])
        name = match.group(1).lower().replace("_", "-")
        commands.append(Command(name, _split_args(rest), original.strip(), addressed, index + 1))
    return commands


def _same_login(first: str, second: str) -> bool:
    """Logins compare case-insensitively, and an App may be named with or without ``[bot]``."""

    def base(login: str) -> str:
        return re.sub(r"\[bot\]$", "", login.strip().lstrip("@").lower())

    return base(first) == base(second)


def _command_key(command: Command) -> tuple[str, tuple[str, ...]]:
    return command.name, command.args


def new_commands(old_text: str | None, new_text: str, bot_login: str) -> list[Command]:
    """The commands of an edited comment that were not in its previous text (``changes.body.from``).

    Commands compare by name and arguments, counted: a second ``/label bug`` added next to an old one
    is new, while re-saving a comment re-runs nothing.
    """
    seen = Counter(_command_key(command) for command in parse(old_text or "", bot_login))
    fresh: list[Command] = []
    for command in parse(new_text, bot_login):
        key = _command_key(command)
        if seen[key] > 0:
            seen[key] -= 1
        else:
            fresh.append(command)
    return fresh


# --------------------------------------------------------------------------------------------------
# Deciding


def effective_who(name: str, config: dict[str, Any]) -> str:
    """Who may run ``name``: its default unless ``commands.permissions`` names a valid override."""
    override = (config.get("permissions") or {}).get(name)
    if isinstance(override, str) and override.lower() in (ANYONE, AUTHOR, WRITE):
        return override.lower()
    return COMMANDS[name].who


def _may(who: str, *, is_write: bool, is_author: bool) -> bool:
    if who == ANYONE:
        return True
    if who == AUTHOR:
        return is_write or is_author
    return is_write


def _needs(who: str) -> str:
    return "needs write access or authorship of this issue" if who == AUTHOR else "needs write access"


def _feature_enabled(name: str, enabled_features: Collection[str]) -> bool:
    """A feature command runs when its command name or its feature's name is enabled."""
    return name in enabled_features or COMMANDS[name].feature in enabled_features


def _is_enabled(name: str, config: dict[str, Any], enabled_features: Collection[str]) -> bool:
    disabled = {str(item).lower() for item in config.get("disabled") or []}
    if name in disabled:
        return False
    return name not in FEATURE_COMMANDS or _feature_enabled(name, enabled_features)


def _quote(line: str, limit: int = 120) -> render.Safe:
    """A command line as inline code that nothing in it can close (``render.code``); mentions,
    images and links in it stay inert text."""
    return render.code(line, max_length=limit)


def _reply_text(reply: str | render.Safe) -> render.Safe:
    """A refusal reason: ``Safe`` from a template, or a plain constant shown as escaped text."""
    return reply if isinstance(reply, render.Safe) else render.text(reply)


def refusal_line(command: Command, reply: str | render.Safe) -> render.Safe:
    """One refused command: its quoted line and why (``: why`` or `` why``)."""
    text = _reply_text(reply)
    separator = "" if text.startswith(":") else " "
    return render.join(separator, [_quote(command.line), text])


def reply_body(actor: str, refusals: list[render.Safe], help_block: render.Safe | None = None) -> render.Safe:
    """The ONE reply to a comment's commands: refusals (one sentence, or a list) and/or the help table.

    The only live mention is the actor's; everything quoted from the comment is code or escaped text.
    """
    mention = render.mention(actor)
    parts: list[render.Safe] = []
    if len(refusals) == 1:
        parts.append(render.fmt("{mention} {refusal}.", mention=mention, refusal=refusals[0]))
    elif refusals:
        listed = render.join("\n", [render.fmt("- {line}", line=line) for line in refusals])
        parts.append(render.fmt("{mention} these commands were not run:\n\n{listed}", mention=mention,
                                listed=listed))
    if help_block is not None:
        if not refusals:
            parts.append(render.fmt("{mention} here is what I can do in this repository:", mention=mention))
        parts.append(help_block)
    return render.join("\n\n", parts)


def _label_lookup(names: Iterable[str]) -> dict[str, str]:
    """GitHub label names are case-insensitive; map the lower-case name to the repo's spelling."""
    return {name.lower(): name for name in names}


def _is_protected(label: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(label.lower(), str(pattern).lower()) for pattern in patterns)


def _check_membership(check: Callable[[Any], bool] | Collection[Any] | None, value: Any) -> bool:
    """Ask a callback or look in a collection; ``None`` means the caller did not check (allow)."""
    if check is None:
        return True
    if callable(check):
        return bool(check(value))
    return value in check


def help_text(config: dict[str, Any], enabled_features: Collection[str], bot_login: str = "") -> render.Safe:
    """Markdown listing the commands this repository has enabled and who may use each."""
    rows: list[render.Safe] = []
    open_labels = [str(label) for label in config.get("open_labels") or []]
    for name, spec in COMMANDS.items():
        if not _is_enabled(name, config, enabled_features):
            continue
        who = effective_who(name, config)
        text = render.fmt({ANYONE: "anyone", AUTHOR: "write access or the issue's author",
                           WRITE: "write access"}[who])
        if name in ("label", "unlabel") and open_labels and who != ANYONE:
            labels = render.join(", ", [render.code(label, table=True) for label in open_labels])
            text = render.fmt("{text}; anyone for {labels}", text=text, labels=labels)
        if name == "reopen" and who == WRITE:
            text = render.fmt("{text}, or the author when the bot closed it on its own (needs-info, stale)", text=text)
        if name in ("assign", "unassign") and who != ANYONE and config.get("self_assign", True):
            text = render.fmt("{text}; anyone may " + name + " themselves", text=text)
        rows.append(render.fmt("| {usage} | " + spec.does + " | {text} |", usage=render.code(spec.usage, table=True),
                               text=text))
    mention = re.sub(r"\[bot\]$", "", bot_login, flags=re.IGNORECASE)
    addressed = render.fmt(" (or {example})", example=render.code(f"@{mention} <command>")) if mention \
        else render.EMPTY
    header = render.fmt(
        "Start a line with a command{addressed}; several lines run in order. "
        "Commands in code blocks and quotes are ignored.", addressed=addressed,
    )
    return render.join("\n", [header, render.EMPTY, render.fmt("| command | does | who may use it |"),
                              render.fmt("|---|---|---|"), *rows])


@dataclass
class _IssueState:
    """The issue as the plan so far leaves it, so later commands in one comment see earlier ones."""

    number: int
    author: str
    open: bool
    labels: dict[str, str]
    assignees: set[str]


def decide(
    commands: list[Command],
    *,
    actor: str,
    actor_permission: str,
    issue: dict[str, Any],
    repo_labels: Collection[str],
    config: dict[str, Any],
    enabled_features: Collection[str],
    bot_closed: bool,
    comment_id: int | None,
    issue_exists: Callable[[int], bool] | Collection[int] | None = None,
    can_be_assigned: Callable[[str], bool] | Collection[str] | None = None,
    bot_login: str = "",
) -> CommandOutcome:
    """Decide what the commands of one comment (or issue body) do.

    ``actor_permission`` is GitHub's collaborator permission (``admin``, ``maintain``, ``write``,
    ``triage``, ``read`` or ``none``); ``config`` is the ``commands`` config section. Allowed commands
    become actions in order, feature commands become ``calls``; refusals and ``/help`` share ONE reply
    comment that quotes each refused command and says why; a 👍 reaction on the comment (on the issue
    when ``comment_id`` is None) closes the plan when anything ran. ``issue_exists`` validates
    ``/duplicate #N`` and ``can_be_assigned`` validates ``/assign`` targets (a set or a callback;
    ``None`` skips that check).
    """
    outcome = CommandOutcome()
    plan = outcome.plan
    if not config.get("enabled", True):
        plan.reason = "commands are disabled in this repository"
        return outcome

    if bot_login and _same_login(actor, bot_login):
        plan.reason = "the bot's own text is never read as commands"
        return outcome
    number = int(issue["number"])
    author = ((issue.get("user") or {}).get("login") or "")
    is_write = actor_permission.lower() in WRITE_PERMISSIONS
    is_author = bool(author) and actor.lower() == author.lower()
    state = _IssueState(
        number=number,
        author=author,
        open=issue.get("state", "open") == "open",
        labels=_label_lookup(label["name"] for label in issue.get("labels") or []),
        assignees={(user.get("login") or "").lower() for user in issue.get("assignees") or []},
    )
    repo_label_names = _label_lookup(repo_labels)
    refusals = outcome.refusals
    want_help = False
    ran = 0

    def verdict(command: Command, allowed: bool, reason: str, reply: str | render.Safe | None = None) -> None:
        nonlocal ran
        outcome.verdicts.append(Verdict(command, allowed, reason))
        if allowed:
            ran += 1
        if reply:
            refusals.append(refusal_line(command, reply))

    for index, command in enumerate(commands):
        name = command.name
        if name not in COMMANDS:
            if command.addressed:
                want_help = True
                verdict(command, False, "unknown command addressed to the bot; answered with help")
            continue  # another bot's command, or just text
        if index >= MAX_COMMANDS_PER_COMMENT:
            verdict(command, False, f"more than {MAX_COMMANDS_PER_COMMENT} commands in one comment",
                    f"was not run: more than {MAX_COMMANDS_PER_COMMENT} commands in one comment")
            continue
        disabled = {str(item).lower() for item in config.get("disabled") or []}
        if name in disabled:
            # Another bot may own this command here, so only answer when we were named.
            reply = "is not enabled here" if command.addressed else None
            verdict(command, False, "disabled by commands.disabled", reply)
            continue
        if name in FEATURE_COMMANDS and not _feature_enabled(name, enabled_features):
            verdict(command, False, f"feature {COMMANDS[name].feature!r} is not enabled", "is not enabled here")
            continue
        who = effective_who(name, config)
        allowed_by_role = _may(who, is_write=is_write, is_author=is_author)

        if name == "help":
            want_help = True
            verdict(command, True, "help requested")
        elif name in ("label", "unlabel"):
            _label_command(command, who, is_write, is_author, state, repo_label_names, config, plan, verdict)
        elif name in ("assign", "unassign"):
            _assign_command(command, actor, who, is_write, is_author, state, config, can_be_assigned, plan,
                            verdict)
        elif name == "reopen":
            if not (allowed_by_role or (is_author and bot_closed)):
                why = _needs(who)
                if who == WRITE:
                    why += " (the author may reopen an issue the bot closed on its own)"
                verdict(command, False, why, why)
            elif state.open:
                verdict(command, True, "already open")
            else:
                plan.add(Reopen(number))
                state.open = True
                verdict(command, True, "reopened")
        elif not allowed_by_role:
            verdict(command, False, _needs(who), _needs(who))
        elif name == "close":
            reason_arg = command.args[0].lower() if command.args else "not-planned"
            state_reason = CLOSE_REASONS.get(reason_arg)
            if state_reason is None:
                why = render.fmt("takes `completed` or `not-planned`")
                verdict(command, False, f"unknown close reason {reason_arg!r}", why)
            elif not state.open:
                verdict(command, True, "already closed")
            else:
                plan.add(Close(number, state_reason))
                state.open = False
                verdict(command, True, f"closed as {state_reason}")
        elif name == "duplicate":
            _duplicate_command(command, state, repo_label_names, issue_exists, plan, verdict)
        else:  # feature commands
            outcome.calls.append(FeatureCall(name, command, command.args))
            verdict(command, True, f"handed to {COMMANDS[name].feature}")

    outcome.want_help = want_help
    if refusals or want_help:
        # Keyed by the comment that held the commands, so a retried delivery edits rather than re-posts.
        reply_key = comment_id if comment_id is not None else f"issue-{number}"
        body = reply_body(actor, refusals, help_text(config, enabled_features, bot_login) if want_help else None)
        plan.add(Comment(number, body, marker=marker("reply", reply_key)))
    if ran:
        plan.add(React(number, "+1", comment_id))
    plan.reason = "commands: " + ", ".join(
        f"{item.command.name}={'ok' if item.allowed else 'refused'}" for item in outcome.verdicts
    )
    plan.data["verdicts"] = [
        {"command": item.command.line, "allowed": item.allowed, "reason": item.reason}
        for item in outcome.verdicts
    ]
    return outcome


def _label_command(command: Command, who: str, is_write: bool, is_author: bool, state: _IssueState,
                   repo_labels: dict[str, str], config: dict[str, Any], plan: Plan,
                   verdict: Callable[..., None]) -> None:
    """``/label`` and ``/unlabel``: per-label checks; what is allowed runs, the rest is explained."""
    if not command.args:
        verdict(command, False, "no label given", "needs at least one label name")
        return
    adding = command.name == "label"
    open_labels = {str(label).lower() for label in config.get("open_labels") or []}
    protected = [str(pattern) for pattern in config.get("protected_labels") or []]
    allowed_by_role = _may(who, is_write=is_write, is_author=is_author)
    done: list[str] = []
    problems: list[render.Safe] = []
    for wanted in dict.fromkeys(command.args):
        key = wanted.lower()
        label = repo_labels.get(key)
        if label is None:
            problems.append(render.fmt("{label} does not exist in this repository", label=render.code(wanted)))
        elif _is_protected(label, protected) and not is_write:
            problems.append(render.fmt("{label} is protected: needs write access", label=render.code(label)))
        elif not (allowed_by_role or key in open_labels):
            problems.append(render.fmt("{label} " + _needs(who), label=render.code(label)))
        elif adding:
            if key not in state.labels:
                state.labels[key] = label
                done.append(label)
        elif key in state.labels:
            del state.labels[key]
            plan.add(RemoveLabel(state.number, label))
            done.append(label)
    if adding and done:
        plan.add(AddLabels(state.number, tuple(done)))
    verb = "added" if adding else "removed"
    summary = f"{verb} {', '.join(done) or 'nothing new'}"
    if problems:
        # Some labels may have been applied; the verdict says the command ran unless nothing could.
        applied_any = bool(done) or len(problems) < len(dict.fromkeys(command.args))
        verdict(command, applied_any, f"{summary}; " + "; ".join(problems),
                render.fmt(": {problems}", problems=render.join("; ", problems)))
    else:
        verdict(command, True, summary)


def _assign_command(command: Command, actor: str, who: str, is_write: bool, is_author: bool,
                    state: _IssueState, config: dict[str, Any],
                    can_be_assigned: Callable[[str], bool] | Collection[str] | None, plan: Plan,
                    verdict: Callable[..., None]) -> None:
    """``/assign`` and ``/unassign``: alone means the actor; self-assignment per ``self_assign``."""
    assigning = command.name == "assign"
    allowed_by_role = _may(who, is_write=is_write, is_author=is_author)
    self_ok = bool(config.get("self_assign", True)) or not assigning  # removing yourself is always fine
    targets = command.args or ("me",)
    done: list[str] = []
    problems: list[render.Safe] = []
    refused_others: list[str] = []
    for raw in dict.fromkeys(targets):
        login = actor if raw.lower() in ("me", "@me") else raw.lstrip("@")
        if not _LOGIN.match(login):
            problems.append(render.fmt("{raw} is not a GitHub login", raw=render.code(raw)))
            continue
        is_self = login.lower() == actor.lower()
        if not (allowed_by_role or (is_self and self_ok)):
            if is_self:
                problems.append(render.fmt(f"{'assigning' if assigning else 'unassigning'} yourself needs write access"))
            else:
                refused_others.append(login)
            continue
        if assigning:
            if login.lower() in state.assignees:
                continue
            if not _check_membership(can_be_assigned, login):
                problems.append(render.fmt("{login} can't be assigned to issues here", login=render.code(login)))
                continue
            state.assignees.add(login.lower())
        else:
            if login.lower() not in state.assignees:
                continue
            state.assignees.discard(login.lower())
        done.append(login)
    if refused_others:
        whom = render.join(", ", [render.code(login) for login in refused_others])
        problems.append(render.fmt(f"{'assigning' if assigning else 'unassigning'} others ({{whom}}) needs write access",
                                   whom=whom))
    if done:
        action = Assign if assigning else Unassign
        plan.add(action(state.number, tuple(done)))
    verb = "assigned" if assigning else "unassigned"
    summary = f"{verb} {', '.join(done) or 'nobody new'}"
    if problems:
        applied_any = len(problems) < len(dict.fromkeys(targets))
        verdict(command, applied_any, f"{summary}; " + "; ".join(problems),
                render.fmt(": {problems}", problems=render.join("; ", problems)))
    else:
        verdict(command, True, summary)


def _duplicate_command(command: Command, state: _IssueState, repo_labels: dict[str, str],
                       issue_exists: Callable[[int], bool] | Collection[int] | None, plan: Plan,
                       verdict: Callable[..., None]) -> None:
    """``/duplicate #N``: link, label ``duplicate`` when the repo has it, close as duplicate."""
    match = _ISSUE_REF.match(command.args[0]) if len(command.args) == 1 else None
    if match is None:
        verdict(command, False, "no issue number", render.fmt("needs one issue number, like `/duplicate #123`"))
        return
    original = int(match.group(1))
    if original == state.number:
        verdict(command, False, "points at itself", "can't mark an issue as a duplicate of itself")
        return
    if original <= 0 or not _check_membership(issue_exists, original):
        verdict(command, False, f"#{original} does not exist",
                render.fmt(": {ref} is not an issue in this repository", ref=render.text(f"#{original}")))
        return
    # "Duplicate of #N" is the phrase GitHub itself recognises to link the two issues.
    plan.add(Comment(state.number, render.fmt("Duplicate of {ref}", ref=render.issue_ref(original)),
                     marker=marker("duplicate", original)))
    label = repo_labels.get("duplicate")
    if label and "duplicate" not in state.labels:
        state.labels["duplicate"] = label
        plan.add(AddLabels(state.number, (label,)))
    if state.open:
        plan.add(Close(state.number, "duplicate"))
        state.open = False
    verdict(command, True, f"duplicate of #{original}")


# --------------------------------------------------------------------------------------------------
# Who decided a close (for ``/reopen`` by the author)

LIFECYCLE = ":lifecycle"
"""``who_closed`` answer for a close the bot made on its own (needs-info or stale)."""

LIFECYCLE_CLOSE_MARKERS = ("needs-info-close", "stale-close")
"""Markers of the comment the lifecycle posts just before it closes an issue."""


def who_closed(events: list[dict[str, Any]], comments: list[dict[str, Any]], *, bot_login: str,
               audit_requester: str | None, audit_has_close: bool) -> str | None:
    """Who decided the issue's last close: a login, ``LIFECYCLE`` (the bot on its own) or ``None`` (unknown).

    GitHub names the bot as the closer whether the lifecycle closed the issue or a maintainer's
    ``/close`` or ``/duplicate`` did, so the bot's closes are told apart by durable records:
    ``audit_requester`` is who ran the command behind the bot's last recorded close (``None`` when that
    close came from no command), and a lifecycle close always posts its marked comment first (on
    GitHub, so it survives a lost database). A bot close that neither explains is ``None``: the author
    may not undo what nobody can show was the bot's own decision.
    """
    last_close: dict[str, Any] | None = None
    period_start = boundary = ""  # the last close's open period starts at the close or reopen before it
    for event in events:
        if event.get("event") == "closed":
            period_start, last_close = boundary, event
        if event.get("event") in ("closed", "reopened"):
            boundary = str(event.get("created_at") or "")
    if last_close is not None:
        closer = ((last_close.get("actor") or {}).get("login") or "")
        if not _same_login(closer, bot_login):
            return closer or None
    if audit_requester is not None:
        return audit_requester
    if last_close is None:  # GitHub shows no close (history not returned): the audit log alone
        return LIFECYCLE if audit_has_close else None
    closed_at = str(last_close.get("created_at") or "")
    for comment in comments:
        created = str(comment.get("created_at") or "")
        body = comment.get("body") or ""
        if (_same_login((comment.get("user") or {}).get("login") or "", bot_login)
                and period_start <= created <= closed_at
                and any(marker(kind).removesuffix(" -->") + ":" in body for kind in LIFECYCLE_CLOSE_MARKERS)):
            return LIFECYCLE
    return None


def author_may_reopen(decider: str | None, author: str) -> bool:
    """The author may undo only the bot's own close, or a close they asked for themselves."""
    return decider == LIFECYCLE or (bool(decider) and bool(author) and _same_login(decider or "", author))
