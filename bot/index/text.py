"""Issue text preparation: normalisation, template stripping, code/log stripping and query terms.

Everything here is pure (str in, str/list out) so retrieval and the answer cache can share it and
tests need no database. The same tokenisation as SQLite FTS5's ``unicode61`` tokenizer is used for
query terms (runs of letters and digits; ``_`` and punctuation separate), so a term we send always
exists as a token in the index.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable

# Common English words plus issue-tracker filler. They carry no signal about *which* issue this is,
# and in an OR query each one drags in thousands of postings (slow and noisy).
STOPWORDS = frozenset(
    """
a about above after again against all also am an and any are aren as at be because been before being
below between both but by can cannot could couldn did didn do does doesn doing don down during each
few for from further had hadn has hasn have haven having he her here hers herself him himself his how
i if in into is isn it its itself just let ll me might more most must mustn my myself no nor not now
of off on once only or other ought our ours ourselves out over own re same shall she should shouldn so
some such than that the their theirs them themselves then there these they this those through to too
under until up us ve very was wasn we were weren what when where which while who whom why will with
won would wouldn you your yours yourself yourselves
s t d m e g eg ie etc via per
issue issues bug bugs problem problems please thanks thank hi hello seems seem like get gets got
using use used work works working try tried trying want need example following currently still
something way think know see also thing things one two new make makes made
""".split()
)

_FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?(^\1[ \t]*$|\Z)", re.S | re.M)
_HTML_COMMENT = re.compile(r"<!--.*?(-->|\Z)", re.S)
_URL = re.compile(r"https?://\S+")
_TOKEN = re.compile(r"[^\W_]+", re.U)
_CHECKBOX = re.compile(r"^\s*[-*+]\s*\[[ xX]?\]\s*")
_LIST_MARK = re.compile(r"^\s*(?:[-*+>]|\d+[.)])\s+")
_HEADING = re.compile(r"^\s*#{1,6}\s*")
# A line that looks like compiler/runtime output worth keeping out of a fenced block.
_ERROR_LINE = re.compile(r"(error(\[E\d{4}\])?:|panicked at|internal compiler error|assertion failed)", re.I)
# Lines of a code block or log that identify *which* failure this is, in any language: compiler errors,
# panics, assertions, aborts, a Python exception line (``KeyError: 'x'``) or traceback frame
# (``File "a/b.py", line 3, in f``), a JS/Java ``TypeError``/``...Exception``.
_SIGNAL_LINE = re.compile(
    r"(error(\[E\d{4}\])?:|panicked at|internal compiler error|assert|abort|segmentation fault|stack overflow|"
    r"fatal|\b[A-Za-z_][A-Za-z0-9_]*(Error|Exception|Warning)\b|^\s*File \"[^\"]+\", line \d+)", re.I)
MAX_SIGNAL_LINES = 5


def fold(text: str) -> str:
    """Lower-case and strip diacritics (what FTS5 unicode61 does to tokens)."""
    text = unicodedata.normalize("NFKD", text or "")
    return "".join(ch for ch in text if not unicodedata.combining(ch)).lower()


def tokens(text: str) -> list[str]:
    """FTS5-compatible tokens of ``text`` (folded), in order, duplicates kept."""
    return _TOKEN.findall(fold(text))


def content_terms(text: str, min_len: int = 2) -> list[str]:
    """Tokens without stopwords, pure numbers or one-letter noise, de-duplicated in first-seen order."""
    seen: dict[str, None] = {}
    for tok in tokens(text):
        if len(tok) < min_len or tok in STOPWORDS or tok.isdigit():
            continue
        seen.setdefault(tok, None)
    return list(seen)


def normalize(text: str) -> str:
    """Canonical form for exact matching: folded, punctuation dropped, whitespace collapsed."""
    return " ".join(tokens(text))


def _template_key(line: str) -> str:
    """A template line's identity: markup (heading hashes, checkbox, list marker) and case ignored."""
    line = _HEADING.sub("", line)
    line = _CHECKBOX.sub("", line)
    line = _LIST_MARK.sub("", line)
    return normalize(line)


def template_lines(templates: Iterable[str]) -> frozenset[str]:
    """The set of normalised lines of a repo's issue templates (YAML forms included: their labels,
    descriptions and placeholders are lines too, after dropping ``key:`` prefixes)."""
    keys: set[str] = set()
    for template in templates:
        template = _HTML_COMMENT.sub("\n", template or "")
        for raw in template.splitlines():
            stripped = raw.strip()
            if stripped == "---":  # front matter fences
                continue
            # YAML issue forms: `label: Steps to reproduce`, `description: ...`, `placeholder: ...`
            m = re.match(r"^\s*-?\s*(label|description|placeholder|value|name|about|title)\s*:\s*[|>]?\s*(.*)$", raw)
            candidates = [stripped]
            if m:
                candidates.append(m.group(2).strip().strip("'\""))
            for line in candidates:
                key = _template_key(line)
                if key:
                    keys.add(key)
    return frozenset(keys)


def strip_template(body: str, templates: Iterable[str] | frozenset[str]) -> str:
    """Remove from ``body`` every line that is a line of one of ``templates`` (headings, checklist
    items, prompts), and all HTML comments. What the author wrote themselves stays.

    ``templates`` is either the raw template texts or an already computed :func:`template_lines` set.
    """
    keys = templates if isinstance(templates, frozenset) else template_lines(templates)
    body = _HTML_COMMENT.sub("\n", body or "")
    if not keys:
        return body
    kept = [line for line in body.splitlines() if _template_key(line) not in keys]
    return "\n".join(kept)


def strip_code(body: str, keep_error_lines: bool = True) -> str:
    """Drop fenced code blocks and URLs; keep error/panic lines found inside them, because the
    error message is often the one thing two reports of the same bug share verbatim."""

    def replace(match: re.Match[str]) -> str:
        if not keep_error_lines:
            return "\n"
        errors = [line for line in match.group(0).splitlines()[1:] if _SIGNAL_LINE.search(line)]
        return "\n" + "\n".join(errors[:MAX_SIGNAL_LINES]) + "\n"

    body = _FENCE.sub(replace, body or "")
    return _URL.sub(" ", body)


def clean_body(body: str, templates: Iterable[str] | frozenset[str] = frozenset()) -> str:
    """The body as used for matching: template and code removed, error lines kept."""
    return strip_code(strip_template(body or "", templates))


def head_tokens(text: str, max_tokens: int) -> str:
    """The first ``max_tokens`` whitespace words of ``text`` (for cheap embedding of long bodies)."""
    words = (text or "").split()
    return " ".join(words[:max_tokens])
