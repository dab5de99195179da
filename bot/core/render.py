"""The one way to build text the bot posts: trusted templates plus escaped values, as ``Safe`` strings.

GitHub renders what the bot posts as GitHub-flavoured Markdown and then turns ``@name`` and
``owner/repo#N`` in the rendered text into mentions and cross-references, and URLs, ``www.`` and
e-mail addresses into links. Safety is therefore a property of the whole rendered text, not of each
piece, and no regex over Markdown can promise it. This module promises it by construction instead:

* every value that came from an issue, a comment, a model or a repository's config goes through
  ``text`` (escaped plain text: Markdown punctuation backslash-escaped, ``@`` / cross-references /
  URL and e-mail triggers broken with an invisible U+200B, controls removed) or ``code`` /
  ``code_block`` (a code span or fence longer than any backtick run inside, so nothing closes it);
* links are only made by ``link`` and ``issue_link``, into ``https://github.com/OWNER/REPO/`` with a
  path checked segment by segment; a link the user wrote stays inert text;
* templates (our own wording, module constants at the call sites) are combined with those pieces by
  ``fmt`` and ``join``, which accept only ``Safe`` pieces and numbers.

The result is a ``Safe`` (a ``str`` subclass that only this module makes). ``bot.actions`` refuses to
post a body that is not ``Safe`` and, as the last line of defence, renders it with GitHub's own parser
(``bot.core.render_check``) and refuses it if the HTML holds a foreign mention, an image, raw HTML,
a link out of the repository or a cross-repository reference. Pure: no I/O.
"""
from __future__ import annotations

import re
from typing import Iterable

__all__ = ["Safe", "EMPTY", "ZWSP", "MARKER_PATTERN", "text", "line", "title", "code", "code_block", "link",
           "issue_link", "issue_ref", "repo_url", "mention", "fmt", "join", "marker", "with_marker"]

ZWSP = "\u200b"
"""U+200B ZERO WIDTH SPACE: invisible, not whitespace to Markdown, and not a name character to
GitHub's mention and autolink filters, so ``@\u200bname`` or ``www\u200b.`` link and ping nothing."""

MAX_TEXT = 3000
"""Default cap (characters of the value, before escaping) of one ``text`` piece."""

_KEY = object()  # only this module holds it, so only this module makes Safe strings


class Safe(str):
    """Text this module built to be posted as is. ``Safe("x")`` outside this module raises.

    ``mentions`` holds the logins a template deliberately mentions (``mention``); the final check in
    ``bot.actions`` allows those and no others. Every ``str`` operation (``+``, slicing, ``strip``,
    ``%``) returns a plain ``str``, so text edited after rendering is no longer ``Safe`` and
    ``bot.actions`` refuses it.
    """

    mentions: frozenset[str]

    def __new__(cls, value: str = "", key: object = None, mentions: frozenset[str] = frozenset()) -> "Safe":
        if key is not _KEY:
            raise TypeError("Safe text is made by bot.core.render (text, code, fmt, join...), not directly")
        made = super().__new__(cls, value)
        made.mentions = frozenset(mentions)
        return made

    def __repr__(self) -> str:
        return f"Safe({str.__repr__(self)})"

    def __reduce__(self):  # pickling/copying gives a plain str: Safe is never revived from data
        return (str, (str(self),))


def _safe(value: str, mentions: Iterable[str] = ()) -> Safe:
    return Safe(value, _KEY, frozenset(login.lower() for login in mentions))


def _mentions_of(pieces: Iterable[object]) -> frozenset[str]:
    found: set[str] = set()
    for piece in pieces:
        found |= getattr(piece, "mentions", frozenset())
    return frozenset(found)


EMPTY = _safe("")

# -------------------------------------------------------------------------------------------- cleaning

# C0/C1 controls (but tab and newline), DEL, bidi embeddings/overrides/isolates (text that displays in
# another order than it reads), the BOM, and lone surrogates (which cannot be encoded to send).
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")


def _clean(value: object, *, multiline: bool) -> str:
    raw = "" if value is None else str(value)
    raw = raw.replace("\r\n", "\n").replace("\r", "\n").replace("\x0b", "\n").replace("\x0c", "\n")
    raw = raw.replace("\u2028", "\n").replace("\u2029", "\n").replace("\x85", "\n")
    raw = _INVISIBLE.sub("", raw)
    if not multiline:
        return " ".join(raw.split())
    lines = [" ".join(part.split()) for part in raw.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def _cap(value: str, max_length: int) -> str:
    """Cut ``value`` to ``max_length`` characters, at a space when one is near, and mark the cut."""
    if max_length <= 0 or len(value) <= max_length:
        return value
    cut = value[: max(1, max_length - 1)]
    space = cut.rfind(" ")
    if space > len(cut) - 80 and space > 0:
        cut = cut[:space]
    return cut.rstrip() + "…"


# ------------------------------------------------------------------------------------------ plain text

# Markdown punctuation that can open a construct anywhere in a line: emphasis, code, links and images,
# raw HTML and autolinks, entities, tables, strikethrough, GitHub's math, and the escape itself.
_ESCAPE_ANYWHERE = re.compile(r"([\\`*_\[\]<>&|~$])")
# What opens a block at the start of a line: ATX headings, quotes, bullet and ordered list items,
# setext underlines and thematic breaks (``*`` and ``_`` are escaped everywhere already). Only the
# real openers: "+2", "-5" or "39.79" read as they are.
_LINE_START = re.compile(r"^(#)(?=#{0,5}(?:[ \t]|$))|^(>)|^([-+])(?=[ \t]|$)|^([-=])(?=[-= \t]*$)"
                         r"|^(\d{1,9})([.)])(?=[ \t]|$)", re.M)
_MENTION_SIGN = "@"
_NAME_CHAR = re.compile(r"[A-Za-z0-9_/-]")
_EMAIL_LOCAL_CHAR = re.compile(r"[A-Za-z0-9._+-]")
# owner/repo#N and owner/repo@sha: GitHub links them across repositories (and notifies there).
_CROSS_REF = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]*)/([A-Za-z0-9_.-]+)#")
_SCHEME = re.compile(r"(?<=:)(?=//)")  # ://, whatever the scheme: GFM autolinks http(s) and ftp
_WWW = re.compile(r"(?i)(?<=www)(?=\.)")
_PROTOCOL_ONLY = re.compile(r"(?i)(mailto|xmpp)(?=:)")


def _neutralise_mentions(value: str, author: str) -> str:
    """Insert U+200B after every ``@`` except in ``@author`` itself (not ``@author/team``)."""
    if _MENTION_SIGN not in value:
        return value
    out: list[str] = []
    allowed = author.lower()
    index = 0
    while True:
        found = value.find(_MENTION_SIGN, index)
        if found < 0:
            out.append(value[index:])
            return "".join(out)
        out.append(value[index: found + 1])
        after = found + 1 + len(allowed)
        keep = bool(allowed) and value[found + 1: after].lower() == allowed \
            and not (after < len(value) and _NAME_CHAR.match(value[after])) \
            and not (found > 0 and _EMAIL_LOCAL_CHAR.match(value[found - 1]))  # a@alice.x is an e-mail
        if not keep:
            out.append(ZWSP)
        index = found + 1


def _neutralise_cross_refs(value: str, repo: str) -> str:
    """``other/repo#12`` becomes ``other/repo#\u200b12`` (plain text); this repository's refs stay."""
    wanted = repo.lower()

    def replace(match: re.Match[str]) -> str:
        if wanted and f"{match.group(1)}/{match.group(2)}".lower() == wanted:
            return match.group(0)
        return match.group(0) + ZWSP

    return _CROSS_REF.sub(replace, value)


def _escape_line_start(match: re.Match[str]) -> str:
    if match.group(5):
        return match.group(5) + "\\" + match.group(6)
    return "\\" + match.group(0)


def _escape_markdown(value: str) -> str:
    value = _ESCAPE_ANYWHERE.sub(r"\\\1", value)
    return _LINE_START.sub(_escape_line_start, value)


def _plain(segment: str, author: str, repo: str) -> str:
    """One stretch of text outside code spans, made inert (see ``text``)."""
    segment = _neutralise_mentions(segment, author)
    segment = _neutralise_cross_refs(segment, repo)
    segment = _SCHEME.sub(ZWSP, segment)
    segment = _WWW.sub(ZWSP, segment)
    segment = _PROTOCOL_ONLY.sub(lambda m: m.group(1) + ZWSP, segment)
    return _escape_markdown(segment)


def _code_spans(value: str) -> Iterable[tuple[bool, str]]:
    """Split ``value`` into ``(is_code, text)`` stretches by CommonMark's code-span rule: a backtick run
    closed by the next run of the same length (never across a blank line). Only where the author's
    spans are matters here, not their safety: each is re-emitted by ``code`` with its own fence."""
    index = 0
    plain_from = 0
    while True:
        run = _BACKTICK_RUN.search(value, index)
        if run is None:
            break
        width = len(run.group())
        limit = value.find("\n\n", run.end())
        limit = len(value) if limit < 0 else limit
        closing = next((candidate for candidate in _BACKTICK_RUN.finditer(value, run.end(), limit)
                        if len(candidate.group()) == width), None)
        if closing is None:
            index = run.end()
            continue
        if run.start() > plain_from:
            yield False, value[plain_from: run.start()]
        content = value[run.end(): closing.start()]
        if len(content) > 2 and content[0] == content[-1] == " " and content.strip():
            content = content[1:-1]
        yield True, content
        plain_from = index = closing.end()
    if plain_from < len(value):
        yield False, value[plain_from:]


def text(value: object, *, author: str = "", repo: str = "", multiline: bool = False,
         max_length: int = MAX_TEXT, table: bool = False) -> Safe:
    """``value`` (from a user, a model or a config) as inert plain text.

    Renders as the same characters the user typed, minus control and bidi characters, but cannot start
    any Markdown construct, raw HTML or entity, and pings, links and cross-references nothing: every
    ``@`` but the one in ``@author`` gets an invisible U+200B after it (that also kills e-mail
    autolinks), as do ``://``, ``www.`` and ``owner/repo#`` of other repositories. The author's own
    inline code spans stay code, each re-fenced by ``code`` so nothing inside can close it. Whitespace
    is collapsed to one line unless ``multiline`` (then lines are kept, leading indentation dropped so
    no line becomes a code block). ``max_length`` caps the value before escaping; ``table`` escapes
    ``|`` inside code too, for a table cell.
    """
    cleaned = _cap(_clean(value, multiline=multiline), max_length)
    author = author.strip().lstrip("@")
    pieces = []
    for is_code, stretch in _code_spans(cleaned):
        if is_code:
            pieces.append(code(stretch, table=table, max_length=0) if stretch.strip() else _plain(stretch, "", repo))
        else:
            pieces.append(_plain(stretch, author, repo))
    rendered = "".join(pieces)
    kept = [author] if author and re.search(rf"(?<![A-Za-z0-9_`])@{re.escape(author)}(?![A-Za-z0-9_/-])",
                                            rendered, re.I) else []
    return _safe(rendered, kept)


def line(value: object, max_length: int = 200, **kwargs: object) -> Safe:
    """``text`` on one line, capped at ``max_length`` (titles, summaries, table cells)."""
    return text(value, max_length=max_length, **kwargs)  # type: ignore[arg-type]


def title(value: object, max_length: int = 256) -> Safe:
    """An issue title: one line, no mention or link triggers. Titles are not Markdown (only code
    spans render), so no backslash escapes; ``@``, ``#``, ``://`` and ``www.`` are broken with U+200B."""
    cleaned = _cap(_clean(value, multiline=False), max_length)
    cleaned = cleaned.replace("@", "@" + ZWSP).replace("#", "#" + ZWSP)
    cleaned = _WWW.sub(ZWSP, _SCHEME.sub(ZWSP, cleaned))
    cleaned = _PROTOCOL_ONLY.sub(lambda m: m.group(1) + ZWSP, cleaned)
    return _safe(cleaned)


# ------------------------------------------------------------------------------------------------ code

_BACKTICK_RUN = re.compile(r"`+")


def _longest_backtick_run(value: str) -> int:
    return max((len(run) for run in _BACKTICK_RUN.findall(value)), default=0)


def code(value: object, *, table: bool = False, max_length: int = 200) -> Safe:
    """``value`` as one inline code span that nothing inside can close.

    The span's backtick fence is one longer than the longest backtick run in the value, and the value
    is collapsed to one line (a blank line or a line that opens a block would end the paragraph, and the
    span with it). Mentions and links never fire inside code. ``table=True`` escapes ``|``, which GFM
    reads as a cell border even inside code. An empty value gives an empty string.
    """
    cleaned = _cap(_clean(value, multiline=False), max_length)
    if not cleaned:
        return EMPTY
    if table:
        cleaned = cleaned.replace("|", "\\|")
    fence = "`" * (_longest_backtick_run(cleaned) + 1)
    pad = " " if cleaned[0] in "` " or cleaned[-1] in "` " else ""
    return _safe(f"{fence}{pad}{cleaned}{pad}{fence}")


_INFO = re.compile(r"^[a-z0-9_+-]*$")


def code_block(value: object, *, lang: str = "", max_length: int = 20000) -> Safe:
    """``value`` verbatim in a fenced code block whose fence is longer than any backtick run inside.

    Must stand on its own lines at the top level of a message (``join`` with ``\\n``). ``lang`` is
    our own info string (``mermaid``), letters and digits only.
    """
    if not _INFO.match(lang):
        raise ValueError(f"code block language must be [a-z0-9_+-], got {lang[:40]!r}")
    raw = "" if value is None else str(value)
    raw = raw.replace("\r\n", "\n").replace("\r", "\n")
    cleaned = _INVISIBLE.sub("", raw.replace("\t", "    "))
    cleaned = _cap(cleaned, max_length).strip("\n")
    fence = "`" * max(3, _longest_backtick_run(cleaned) + 1)
    return _safe(f"{fence}{lang}\n{cleaned}\n{fence}")


# ----------------------------------------------------------------------------------------------- links

_REPO = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9_.-]{1,100}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_~-][A-Za-z0-9_.~-]*$")
_FRAGMENT = re.compile(r"^[A-Za-z0-9_-]*$")


def repo_url(repo: str, path: str = "", fragment: str = "") -> str:
    """``https://github.com/OWNER/REPO/<path>#<fragment>`` after checking every part.

    ``repo`` must be a GitHub ``owner/name``; ``path`` is made of plain segments (letters, digits,
    ``_ . ~ -``; never ``.`` or ``..``, nothing percent-encoded), so the URL cannot leave the
    repository however a browser normalises it. Raises ``ValueError`` otherwise.
    """
    if not _REPO.match(repo or "") or repo.split("/")[1] in (".", ".."):
        raise ValueError(f"not a repository: {str(repo)[:80]!r}")
    segments = [segment for segment in str(path).split("/") if segment != ""] if path else []
    for segment in segments:
        if not _SEGMENT.match(segment):
            raise ValueError(f"unsafe path segment: {segment[:40]!r}")
    if not _FRAGMENT.match(fragment):
        raise ValueError(f"unsafe fragment: {fragment[:40]!r}")
    url = f"https://github.com/{repo}" + "".join(f"/{segment}" for segment in segments)
    return url + (f"#{fragment}" if fragment else "")


def link(label: Safe, repo: str, path: str = "", fragment: str = "") -> Safe:
    """A Markdown link with a ``Safe`` label into this repository (see ``repo_url``)."""
    if not isinstance(label, Safe):
        raise TypeError("link labels must be Safe (render.text(...))")
    if "\n" in label:
        raise ValueError("link labels are one line")
    return _safe(f"[{label}]({repo_url(repo, path, fragment)})", label.mentions)


def issue_link(repo: str, number: int) -> Safe:
    """``[#N](https://github.com/OWNER/REPO/issues/N)``."""
    number = int(number)
    if number <= 0:
        raise ValueError("issue numbers are positive")
    return link(_safe(f"#{number}"), repo, f"issues/{number}")


def issue_ref(number: int) -> Safe:
    """``#N``: GitHub links it to issue N of this repository."""
    number = int(number)
    if number <= 0:
        raise ValueError("issue numbers are positive")
    return _safe(f"#{number}")


_LOGIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")


def mention(login: str) -> Safe:
    """``@login``, the one live mention a message may carry (the author or actor it answers).

    An App's login (``name[bot]``) and anything that is not a GitHub login gives plain ``text``."""
    login = str(login or "").strip().lstrip("@")
    if not _LOGIN.match(login):
        return text(login)
    return _safe(f"@{login}", [login])


# ------------------------------------------------------------------------------------------ templates

def _piece(name: str, value: object) -> object:
    if isinstance(value, Safe):
        return str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"template value {name!r} is {type(value).__name__}, not Safe: pass it through "
                        "render.text/code/line first")
    return value  # a number, so format specs such as {delta:+d} work


def fmt(template: str, /, **values: object) -> Safe:
    """Fill our own ``template`` (``str.format`` fields) with ``Safe`` pieces or numbers only.

    The template is trusted wording from the code, never from a user; a plain ``str`` value raises
    ``TypeError`` so a forgotten escape fails loudly in tests rather than posting raw text.
    """
    filled = template.format_map({name: _piece(name, value) for name, value in values.items()})
    return _safe(filled, _mentions_of(values.values()))


def join(separator: str, pieces: Iterable[Safe]) -> Safe:
    """``separator.join(pieces)`` where every piece is ``Safe``; the separator is our own literal."""
    parts = list(pieces)
    for index, piece in enumerate(parts):
        if not isinstance(piece, Safe):
            raise TypeError(f"piece {index} is {type(piece).__name__}, not Safe")
    return _safe(separator.join(parts), _mentions_of(parts))


# --------------------------------------------------------------------------------------------- markers

_MARKER_PART = re.compile(r"[^A-Za-z0-9._:+#-]")
MARKER_PATTERN = re.compile(r"<!-- first-responder:[A-Za-z0-9._:+#-]+ -->")
"""Exactly what ``marker`` makes: the only raw HTML the bot ever posts."""


def marker(kind: str, key: str | int = "") -> Safe:
    """The hidden HTML comment that lets the bot find its own text again.

    ``kind`` and ``key`` keep letters, digits and ``. _ : + # -`` (anything else becomes ``_``), so a
    key taken from a request header or a config value can never close the comment."""
    suffix = f":{key}" if key != "" else ""
    body = _MARKER_PART.sub("_", f"{kind}{suffix}")[:200] or "_"
    return _safe(f"<!-- first-responder:{body} -->")


def with_marker(body: Safe, marker_text: str) -> Safe:
    """``body`` ending with ``marker_text`` on its own line (unchanged if it already carries it)."""
    if not isinstance(body, Safe):
        raise TypeError("body must be Safe")
    if not MARKER_PATTERN.fullmatch(marker_text or ""):
        raise ValueError("not a first-responder marker")
    if marker_text in body:
        return body
    return _safe(f"{body}\n\n{marker_text}", body.mentions)
