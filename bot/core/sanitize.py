"""Make text safe to post as the bot: pure string functions, no I/O.

Anything the bot posts may contain words that came from an issue or a model, so before posting:
@-mentions of anyone but the issue's author are neutralised (GitHub does not notify inside code spans),
cross-references to other repositories are neutralised too (they would create back-links there), images and
raw HTML are removed, links are kept only when they point into this repository (others become plain,
unclickable text), and the length is capped.
"""
from __future__ import annotations

import re

MAX_LENGTH = 3000

_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_IMAGE_REF = re.compile(r"!\[([^\]]*)\]\[[^\]]*\]")
_MD_LINK = re.compile(r"\[([^\]]*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_MD_LINK_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*\S+.*$", re.M)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
_AUTOLINK = re.compile(r"<((?:[a-z][a-z0-9+.-]*:|www\.)[^<>\s]*)>", re.IGNORECASE)
_EMAIL = re.compile(r"(?<![`\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_URL = re.compile(r"(?<![`\w])(?:(?:https?|ftp|javascript|data|file|vbscript):(?://)?|mailto:)[^\s<>`)\]]+|(?<![`\w/@.])www\.[^\s<>`)\]]+",
                  re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w`/])@([A-Za-z0-9](?:[A-Za-z0-9-]{0,38})(?:/[A-Za-z0-9_.-]+)?)")
_CROSS_REF = re.compile(r"(?<![\w`/])([A-Za-z0-9-]+/[A-Za-z0-9_.-]+)(#\d+)")


def _inline_code(text: str) -> str:
    """Wrap in a code span that cannot be closed by backticks inside it."""
    text = text.replace("`", "'")
    return f"`{text}`"


def _internal(url: str, repo: str) -> bool:
    """Is this a link into this repository on GitHub (or a relative/anchor link)?"""
    if not repo:
        return False
    lowered = url.lower()
    base = f"https://github.com/{repo.lower()}"
    return lowered == base or lowered.startswith(base + "/") or lowered.startswith(base + "#")


def sanitize(text: str, author: str = "", repo: str = "", max_length: int = MAX_LENGTH) -> str:
    """Return ``text`` made safe to post on ``repo`` in reply to ``author`` (see module docstring)."""
    text = str(text or "").replace("\r\n", "\n").replace("\x00", "")
    text = _HTML_COMMENT.sub("", text)
    text = _MD_IMAGE.sub(lambda m: m.group(1), text)
    text = _MD_IMAGE_REF.sub(lambda m: m.group(1), text)
    text = _MD_LINK_DEF.sub("", text)

    def link(match: re.Match[str]) -> str:
        label, url = match.group(1), match.group(2)
        if _internal(url, repo):
            return f"[{label}]({url})"
        return label if label.strip() else _inline_code(url)

    text = _MD_LINK.sub(link, text)
    text = _AUTOLINK.sub(lambda m: " " + m.group(1) + " ", text)
    text = _HTML_TAG.sub("", text)

    def bare_url(match: re.Match[str]) -> str:
        url = match.group(0)
        return url if _internal(url, repo) else _inline_code(url)

    text = _URL.sub(bare_url, text)
    text = _EMAIL.sub(lambda m: _inline_code(m.group(0)), text)
    text = text.replace("<", "&lt;").replace(">", "&gt;")

    def mention(match: re.Match[str]) -> str:
        name = match.group(1)
        if author and name.lower() == author.lower():
            return match.group(0)
        return _inline_code("@" + name)

    text = _MENTION.sub(mention, text)

    def cross_ref(match: re.Match[str]) -> str:
        if repo and match.group(1).lower() == repo.lower():
            return match.group(0)
        return _inline_code(match.group(0))

    text = _CROSS_REF.sub(cross_ref, text)
    if len(text) > max_length:
        cut = text[: max_length - 1]
        cut = cut[: cut.rfind(" ")] if " " in cut[-80:] else cut
        text = cut.rstrip() + "…"
    return text.strip()


def one_line(text: str, max_length: int = 200) -> str:
    """Collapse whitespace to one line and cap it (for titles and summaries inside a comment)."""
    line = " ".join(str(text or "").split())
    return line if len(line) <= max_length else line[: max_length - 1].rstrip() + "…"
