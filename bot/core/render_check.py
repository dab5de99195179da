"""The last line of defence: render a body as GitHub does and say what in it is not allowed.

``bot.core.render`` builds posted text safely by construction; this module checks the result the way
GitHub will read it, so a mistake in a template or a new code path cannot slip through. It renders
the body with cmark-gfm (GitHub's own parser, through ``bot.core.cmark``) with the extensions GitHub uses
for issues (table, autolink, tagfilter, strikethrough, tasklist; hard line breaks, footnotes) and
walks the HTML. A body is refused when it holds

* a mention of anyone but the one allowed login: GitHub's mention filter reads ``@name`` and
  ``@org/team`` in text outside ``code`` and ``pre``;
* a cross-repository reference (``owner/repo#N``, ``owner/repo@sha``) to another repository;
* an image, or any raw HTML from the input (everything but the tags Markdown itself produces and the
  bot's own ``<!-- first-responder:… -->`` marker on a line of its own);
* a link anywhere but ``https://github.com/OWNER/REPO/`` (checked segment by segment, no ``..``,
  nothing percent-encoded) or a fragment of the same page; or URL / ``www.`` / e-mail text that an
  autolinker could still pick up.

Pure (cmark-gfm is a C library doing no I/O): the same function runs in ``bot.actions`` before every
write and in the property tests.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from html.parser import HTMLParser
from urllib.parse import urlsplit

from cmarkgfm.cmark import Options

from bot.core.cmark import gfm_to_html
from bot.core.render import MARKER_PATTERN

# As github.com renders comments: hard line breaks, footnotes, <pre lang> for fenced code.
_SAFE = Options.CMARK_OPT_HARDBREAKS | Options.CMARK_OPT_FOOTNOTES | Options.CMARK_OPT_GITHUB_PRE_LANG
_UNSAFE = _SAFE | Options.CMARK_OPT_UNSAFE
_OMITTED = "<!-- raw HTML omitted -->"
_MARKER_LINE = re.compile(r"^" + MARKER_PATTERN.pattern + r"$", re.M)

# What cmark-gfm itself emits, and the attributes it gives them.
_ALLOWED: dict[str, frozenset[str]] = {
    **{tag: frozenset() for tag in ("p", "br", "hr", "em", "strong", "del", "blockquote", "ul", "thead",
                                    "tbody", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table")},
    "code": frozenset({"class"}),
    "pre": frozenset({"lang"}),
    "ol": frozenset({"start"}),
    "li": frozenset({"id"}),
    "th": frozenset({"align"}),
    "td": frozenset({"align"}),
    "a": frozenset({"href", "title", "id", "class", "data-footnote-ref", "data-footnote-backref",
                    "data-footnote-backref-idx", "aria-label"}),
    "input": frozenset({"type", "checked", "disabled"}),
    "section": frozenset({"class", "data-footnotes"}),
    "sup": frozenset({"class"}),
}
_VOID = frozenset({"br", "hr", "input", "img"})

# GitHub's mention filter: @login (letters, digits, hyphens) and @org/team; conservative (any @).
_MENTION = re.compile(r"@([A-Za-z0-9][A-Za-z0-9-]*)(/[A-Za-z0-9][A-Za-z0-9_-]*)?")
_CROSS_REF = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]*)/([A-Za-z0-9_.-]+)(?:#\d|@[0-9a-fA-F]{7})")
_URL_TEXT = re.compile(r"(?i)[a-z][a-z0-9+.-]*:/{2}|(?<![a-z0-9])www\.|(?:mailto|xmpp):"
                       r"|[A-Za-z0-9._+-]@[A-Za-z0-9-]+\.[A-Za-z0-9]")
_SEGMENT = re.compile(r"^[A-Za-z0-9_~-][A-Za-z0-9_.~-]*$")
_FRAGMENT = re.compile(r"^#[A-Za-z0-9_-]*$")

MAX_REPORTED = 10
"""Problems listed per body (a hostile body could have thousands; one is enough to refuse)."""


def render_html(body: str, *, unsafe: bool = True) -> str:
    """``body`` rendered as GitHub renders issue comments (raw HTML kept when ``unsafe``)."""
    return gfm_to_html(body, _UNSAFE if unsafe else _SAFE)  # bot.core.cmark frees what cmark allocates


def inside_repo(url: str, repo: str) -> bool:
    """Is ``url`` ``https://github.com/<repo>[/plain/segments][#fragment]`` (or ``#fragment``)?"""
    if _FRAGMENT.match(url):
        return True
    if not repo or any(char in url for char in "\\%\t\n\r "):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme != "https" or parts.netloc.lower() != "github.com" or parts.query:
        return False
    if parts.fragment and not _FRAGMENT.match("#" + parts.fragment):
        return False
    segments = parts.path.split("/")[1:]
    owner_repo = "/".join(segments[:2]).lower()
    if owner_repo != repo.lower():
        return False
    rest = segments[2:]
    if rest and rest[-1] == "":
        rest = rest[:-1]
    return all(_SEGMENT.match(segment) and segment not in (".", "..") for segment in rest)


def _allowed(author: str | Iterable[str]) -> frozenset[str]:
    logins = [author] if isinstance(author, str) else list(author)
    return frozenset(login.lower().lstrip("@") for login in logins if login)


def text_problems(data: str, *, author: str | Iterable[str], repo: str) -> list[str]:
    """Mentions, cross-references and autolinkable URLs in rendered text outside code."""
    problems = []
    allowed = _allowed(author)
    for match in _MENTION.finditer(data):
        if match.group(2) or match.group(1).lower() not in allowed:
            problems.append(f"mention {match.group(0)[:60]!r}")
    for match in _CROSS_REF.finditer(data):
        if f"{match.group(1)}/{match.group(2)}".lower() != repo.lower():
            problems.append(f"cross-repository reference {match.group(0)[:60]!r}")
    for match in _URL_TEXT.finditer(data):
        problems.append(f"autolinkable text {data[max(0, match.start() - 10): match.end() + 20]!r}")
    return problems


class _Walker(HTMLParser):
    def __init__(self, author: frozenset[str], repo: str) -> None:
        super().__init__(convert_charrefs=True)
        self.author, self.repo = author, repo
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.texts: list[str] = []  # text outside code and pre, entities decoded
        self.hrefs: list[str] = []

    def _in_code(self) -> bool:
        return "code" in self.stack or "pre" in self.stack

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, attrs)
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, attrs)

    def _tag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.problems.append("image")
            return
        allowed = _ALLOWED.get(tag)
        if allowed is None:
            self.problems.append(f"raw HTML <{tag[:20]}>")
            return
        for name, value in attrs:
            if name not in allowed:
                self.problems.append(f"attribute {name[:20]!r} on <{tag}>")
            elif tag == "a" and name == "href" and not self.hrefs.append(value or "") \
                    and not inside_repo(value or "", self.repo):
                self.problems.append(f"link out of the repository {str(value)[:80]!r}")
            elif tag == "input" and name == "type" and value != "checkbox":
                self.problems.append(f"input of type {str(value)[:20]!r}")
        if tag == "a" and not any(name == "href" for name, _ in attrs):
            self.problems.append("anchor without href")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.stack:
            while self.stack:
                if self.stack.pop() == tag:
                    break

    def handle_data(self, data: str) -> None:
        if not self._in_code():
            self.texts.append(data)
            self.problems += text_problems(data, author=self.author, repo=self.repo)

    def handle_comment(self, data: str) -> None:
        self.problems.append("HTML comment")

    def handle_decl(self, decl: str) -> None:
        self.problems.append("HTML declaration")

    def handle_pi(self, data: str) -> None:
        self.problems.append("processing instruction")

    def unknown_decl(self, data: str) -> None:
        self.problems.append("HTML declaration")


def problems(body: str, *, author: str | Iterable[str] = "", repo: str = "") -> list[str]:
    """What in ``body`` GitHub would render as a foreign mention, image, raw HTML, outside link or
    cross-repository reference; empty when the body may be posted. ``author`` is the login (or the
    logins) it may mention, ``repo`` the ``owner/name`` it may link into."""
    body = str(body)
    # Our own marker is the only raw HTML allowed, and only alone on its line (an HTML block of its own).
    stripped = _MARKER_LINE.sub("", body)
    found: list[str] = []
    if _OMITTED in render_html(stripped, unsafe=False):
        found.append("raw HTML")
    walker = _Walker(_allowed(author), repo)
    walker.feed(render_html(stripped))
    walker.close()
    found += walker.problems
    unique = list(dict.fromkeys(found))
    return unique[:MAX_REPORTED]


def rendered(body: str, *, repo: str = "") -> tuple[list[str], list[str]]:
    """``(texts outside code and pre, link hrefs)`` of ``body`` as GitHub renders it (for tests)."""
    walker = _Walker(frozenset(), repo)
    walker.feed(render_html(str(body)))
    walker.close()
    return walker.texts, walker.hrefs


def title_problems(title: str, *, repo: str = "") -> list[str]:
    """An issue title is one line of plain text: no mention, cross-reference or link trigger."""
    found = ["newline in title"] if "\n" in title or "\r" in title else []
    found += text_problems(title, author="", repo=repo)
    return list(dict.fromkeys(found))[:MAX_REPORTED]
