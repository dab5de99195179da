"""The "In short" of the first response: sentences chosen from the author's own text, never rewritten.

Pure: no I/O. A summary a model writes can read well and be wrong (the bundled 135M model wrote 5 bad
summaries out of 10); a sentence the author wrote cannot misstate the issue, only be more or less to the
point. So the default summary is *extractive*: the body is cut into sentences, the ones that cannot be a
summary are dropped (greetings and thanks, template headings and their instructions, list markers,
"Version: ..." lines, code, logs and stack traces, quotes, tables, checkboxes), and the rest are scored by

* similarity to the title (TF-IDF cosine: the title names the subject, the best sentence explains it),
* centrality (mean TF-IDF cosine to the other sentences: what the body keeps coming back to),
* position (authors tend to state the problem first), with list items and "Expected:" lines discounted.

The best sentence is quoted, with a second one when the first is short and the pair still fits.
The only edits to the author's words are whitespace, dropped list markers, Markdown emphasis markers and a
trailing "…" where a sentence is cut to length. ``docs/summaries.md`` has the hand-judged sample.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

MAX_LENGTH = 240          # characters of the quoted summary (one line in the comment)
SECOND_SENTENCE_BELOW = 90  # a best sentence shorter than this gets a second one, when both fit

_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)   # issue-template instructions
_FENCE = re.compile(r"^\s*(```|~~~)")
_SKIP_LINE = re.compile(
    r"^\s*(?:#|>|\||[-*+]\s+\[[ xX]\]|<[a-zA-Z/!]|\t|\s{4})"      # heading, quote, table, checkbox, HTML, code
    r"|^\s*(?:\*\*|__)[^*_]{1,80}(?:\*\*|__)\s*:?\s*$"                # a bold template heading alone
    r"|^\s*[^\s:]{1,30}(?:\s+[^\s:]+){0,3}\s*:\s*$",                   # "Steps to reproduce:" alone
)
# Lines that are output, not prose: stack frames, tracebacks, log lines, prompts, key=value dumps.
_LOG_LINE = re.compile(
    r"^\s*(?:-+> |at\s+[\w.$<>]+[.(]|File (?:[\"\[]|\S+:\d+)|Cell In ?\[|Traceback\b|[\w.]*(?:Error|Exception|Warning)\b:|\$ |>>> |C:\\|/usr/"
    r"|\[?\d{4}-\d\d-\d\d[ T]\d|\[?\d\d:\d\d:\d\d|(?:INFO|DEBUG|WARN|WARNING|ERROR|FATAL|TRACE)\b"
    r"|E\d{4}|\w+(?:\.\w+)+\(.*\)\s*$|[\w.-]+==\d)",
)
# "Version: 2.3", "OS: Windows 10", "- Python version: 3.11": environment fields, not a summary.
_FIELD_LINE = re.compile(
    r"^\s*(?:[-*+]\s+)?\**(?:[\w./ -]{0,25}\s)?(?:version|os|platform|environment|python|node|browser|"
    r"system|device|cuda|gpu|cpu|commit|build|release|arch(?:itecture)?|compiler|distro|kernel|package|"
    r"tensorflow|bazel|gcc|react|vs ?code|electron|opencv|bitcoin(?: core)?|datasets|library|framework)"
    r"(?:\s[\w./ -]{0,15})?\**\s*[:=]", re.IGNORECASE)
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+(.*?)\s*#*\s*$|(?:\*\*|__)([^*_]{1,80})(?:\*\*|__)\s*:?\s*$)")
# Template sections that hold output, code or environment details: nothing in them is a summary.
_SKIP_SECTION = re.compile(
    r"log|output|trace|environment|system info|version|platform|screenshot|contribution|checklist|device|"
    r"compiler|cuda|gpu|bazel|have you|custom code|^source|before submitting|code of conduct|install|"
    r"how often|automated", re.IGNORECASE)
# Sections that hold prose but rarely the point (steps, alternatives): discounted, not skipped.
_SIDE_SECTION = re.compile(r"reproduc|steps|code|alternative|workaround|additional|context|note", re.IGNORECASE)
# Sections where authors state the issue itself: their sentences count a little more.
_MAIN_SECTION = re.compile(r"describ|description|summary|problem|current behaviou?r|what happened|"
                           r"feature request|the bug|issue|question|motivation|proposal", re.IGNORECASE)
_TEMPLATE_HEADING = re.compile(r"^#{2,6} [A-Z]")
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)|<img\b[^>]*>", re.IGNORECASE)
_LINK = re.compile(r"\[([^\]]+)\]\((?:[^()\s]|\([^()\s]*\))+\)")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)]|[a-zA-Z][.)](?=\s))\s+")
_LABEL_PREFIX = re.compile(r"^\s*(?:\*\*|__)?(expected|actual|current|observed|desired)(?: behaviou?r| result)?"
                           r"(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*", re.IGNORECASE)
_EMPHASIS = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_GREETING = re.compile(
    r"^(?:hi|hello|hey|hiya|dear|greetings|good (?:morning|afternoon|evening)|thanks?|thank you|thx|cheers|"
    r"first of all|i hope|hope you|any (?:help|ideas?|suggestions?)|please help|please fix|kind regards|regards|"
    r"best|looking forward|let me know|sorry)\b", re.IGNORECASE)
_TEMPLATE_TEXT = re.compile(
    r"^(?:a clear and concise description|do you want to request|describe the (?:bug|issue|feature|problem|solution)|"
    r"is your feature request related|steps to reproduce|to reproduce|expected behaviou?r|"
    r"additional context|provide (?:a|the)|please (?:provide|describe|make sure|search|include|fill|check)|"
    r"if applicable|this template|system information|which version|what (?:version|happened|did you)|"
    r"does this issue occur|before (?:filing|submitting|opening)|(?:i have )?searched)", re.IGNORECASE)
_ENV_SENTENCE = re.compile(r"^(?:version|v?\d+\.\d+\S*|os|platform|environment|env|tested (?:on|with))\b", re.I)
# A sentence ends at . ! ? followed by space and a capital/quote/bracket, unless the word before is an
# abbreviation, an initial or a number ("e.g. this", "v2. It", "No. 5").
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]?\s+(?=[\"“'(\[`]?[A-Z0-9])")
_ABBREVIATION = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|cf|approx|mr|mrs|dr|no|fig|eq|ver|incl|resp|st)\.|"
                           r"\b[A-Za-z]\.|\d\.)$", re.IGNORECASE)
_WORD = re.compile(r"[a-z][a-z0-9_']+")
_STOP = frozenset("""a an the and or but if then else of to in on at by for with from into onto as is are was were be been
being am do does did doing have has had having i me my we our you your he she it its they them their this that these
those there here what which who whom when where why how not no nor so than too very can could should would will
just also only any some such more most other all both each few own same s t don't doesn't isn't it's i'm i've
get got use using used when while after before about up down out over under again further once""".split())


@dataclass
class _Sentence:
    text: str
    position: int        # order in the body
    discount: float      # < 1 for list items and "Expected:" lines
    paragraph: int


def _clean(text: str) -> str:
    text = _IMAGE.sub("", text)
    text = _LINK.sub(r"\1", text)     # the author's link text, not the address
    text = _EMPHASIS.sub(r"\2", text)
    return " ".join(text.split())


def _split(paragraph: str) -> list[str]:
    """Sentences of one paragraph, without splitting after "e.g.", "v2." or an initial."""
    pieces: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(paragraph):
        head = paragraph[start:match.start()].rstrip()
        if _ABBREVIATION.search(head.rstrip("\"'”’)]")):
            continue
        pieces.append(paragraph[start:match.start()].strip())
        start = match.end()
    pieces.append(paragraph[start:].strip())
    return [piece for piece in pieces if piece]


def candidate_sentences(body: str) -> list[_Sentence]:
    """The sentences of the body that could be a summary, in order (see the module docstring)."""
    text = _HTML_COMMENT.sub("", (body or "").replace("\r\n", "\n"))
    blocks: list[tuple[str, float]] = []   # (prose, discount); a block is a paragraph or one list item
    current: list[str] = []
    in_code = False
    section: float | None = 1.0   # weight of the current template section; None: skip it

    def flush() -> None:
        if current:
            blocks.append((" ".join(current), section or 1.0))
            current.clear()

    previous = ""
    for line in text.split("\n"):
        line_before, previous = previous, line
        if _FENCE.match(line):
            in_code = not in_code
            flush()
            continue
        if in_code and not line_before.strip() and _TEMPLATE_HEADING.match(line):
            in_code = False   # an unclosed fence: a template's "### Section" after a blank line ends it
        heading = None if in_code else _HEADING.match(line)
        if heading:
            flush()
            name = heading.group(1) or heading.group(2) or ""
            section = (None if _SKIP_SECTION.search(name) else 0.8 if _SIDE_SECTION.search(name)
                       else 1.15 if _MAIN_SECTION.search(name) else 1.0)
            continue
        if in_code or section is None or not line.strip() or _SKIP_LINE.match(line) or _LOG_LINE.match(line) \
                or _FIELD_LINE.match(line):
            flush()
            continue
        marker = _LIST_MARKER.match(line)
        label = _LABEL_PREFIX.match(line)
        if marker or label:
            flush()
            rest = line[(marker or label).end():]
            if marker and _LABEL_PREFIX.match(rest):
                rest = rest[_LABEL_PREFIX.match(rest).end():]
            blocks.append((rest, (0.75 if marker else 0.85) * section))
            continue
        current.append(line.strip())
    flush()

    sentences: list[_Sentence] = []
    for paragraph_number, (block, discount) in enumerate(blocks):
        for piece in _split(_clean(block)):
            words = piece.split()
            letters = sum(ch.isalpha() for ch in piece)
            if len(words) < 4 or letters < 0.5 * len(piece):
                continue
            if _GREETING.match(piece) and len(words) < 14:
                continue
            if _TEMPLATE_TEXT.match(piece) or _ENV_SENTENCE.match(piece):
                continue
            if piece.endswith(":"):   # it introduces code or output that is not quoted with it
                discount *= 0.6
            sentences.append(_Sentence(piece, len(sentences), discount, paragraph_number))
    return sentences


def _terms(text: str) -> list[str]:
    return [word for word in _WORD.findall(text.lower()) if word not in _STOP]


def _cosine(a: dict[str, float], b: dict[str, float]) -> float:
    if not a or not b:
        return 0.0
    dot = sum(weight * b.get(term, 0.0) for term, weight in a.items())
    norm = math.sqrt(sum(w * w for w in a.values())) * math.sqrt(sum(w * w for w in b.values()))
    return dot / norm if norm else 0.0


def _cut(text: str, max_length: int) -> str:
    return text if len(text) <= max_length else text[: max_length - 1].rstrip() + "…"


def extractive_summary(body: str, title: str = "", max_length: int = MAX_LENGTH) -> str:
    """One or two of the author's own sentences that best say what the issue is about ("" if none can)."""
    sentences = candidate_sentences(body)
    if not sentences:
        return ""
    documents = [Counter(_terms(s.text)) for s in sentences]
    title_terms = Counter(_terms(title))
    frequency = Counter(term for doc in documents + [title_terms] for term in doc)
    total = len(documents) + 1

    def tfidf(counts: Counter) -> dict[str, float]:
        return {term: (1 + math.log(n)) * math.log(1 + total / frequency[term]) for term, n in counts.items()}

    vectors = [tfidf(doc) for doc in documents]
    title_vector = tfidf(title_terms)
    scores = []
    for index, (sentence, vector) in enumerate(zip(sentences, vectors)):
        others = [_cosine(vector, other) for j, other in enumerate(vectors) if j != index]
        centrality = sum(others) / len(others) if others else 0.0
        relevance = _cosine(vector, title_vector)
        position = 1.0 / (1.0 + 0.15 * sentence.position)
        length = min(1.0, len(sentence.text.split()) / 8)     # a five-word fragment says little
        score = (0.45 * relevance + 0.25 * centrality + 0.30 * position) * sentence.discount * length
        scores.append(score)
    order = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))
    chosen = [order[0]]
    if len(sentences[order[0]].text) < SECOND_SENTENCE_BELOW and len(order) > 1:
        # The sentence right after a short best one usually completes it; else the next best.
        follower = order[0] + 1
        second = follower if follower < len(sentences) and \
            sentences[follower].paragraph == sentences[order[0]].paragraph else order[1]
        if len(sentences[order[0]].text) + len(sentences[second].text) + 3 <= max_length \
                and not sentences[second].text.endswith(":"):
            chosen.append(second)
    chosen.sort()
    parts = [sentences[chosen[0]].text]
    for previous, index in zip(chosen, chosen[1:]):
        adjacent = index == previous + 1 and sentences[index].paragraph == sentences[previous].paragraph
        parts.append(("" if adjacent else "… ") + sentences[index].text)
    return _cut(" ".join(parts), max_length)


def faithful_enough(summary: str, title: str, body: str, *, min_overlap: float = 0.7) -> bool:
    """Does a model-written summary use the issue's own words (at least ``min_overlap`` of its content
    words appear in the title or body)? A cheap guard against a model inventing a product, an error
    or a cause; it cannot prove the summary right, only catch the grossest inventions."""
    words = set(_terms(summary))
    if not words:
        return False
    source = set(_terms(f"{title}\n{body}"))
    stems = {word[:5] for word in source}
    found = sum(1 for word in words if word in source or word[:5] in stems)
    return found / len(words) >= min_overlap
