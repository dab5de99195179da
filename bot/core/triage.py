"""The triage decision: from an issue, the repo's config and labels and the model's output, a Plan.

Pure: no I/O, no model calls. The structure is what keeps untrusted issue text harmless: whatever the
model says, the only actions this function can produce are ``AddLabels`` with labels from the config's
kind mapping (or the needs-triage label) that exist in the repo and are not protected, and one
``Comment`` carrying ``marker('triage')`` built by ``bot.core.render`` (issue and model text are
escaped plain text; the only live mention is the author's, in our greeting).
"""
from __future__ import annotations

import fnmatch
import re
from typing import Any, Iterable, Mapping

from bot.core import render
from bot.core.plan import AddLabels, Comment, Plan, marker
from bot.core.render import Safe
from bot.core.summary import extractive_summary, faithful_enough

TRIAGE_MARKER = marker("triage")

# What a maintainer needs in a bug report, with the checklist wording asked of the author.
BUG_CHECKLIST: dict[str, str] = {
    "version": "the version you are using (and your OS / environment)",
    "steps to reproduce": "the steps to reproduce the problem (ideally a minimal example)",
    "expected vs actual behaviour": "what you expected to happen and what happened instead",
    "logs or error output": "the full error message, log output or stack trace, if there is one",
}
FEATURE_CHECKLIST: dict[str, str] = {
    "use case": "the use case: what you are trying to do and why the current behaviour is not enough",
}
ESSENTIAL_FOR_BUG = ("version", "steps to reproduce")

_VERSION = re.compile(
    r"\bv?\d+\.\d+(?:\.\d+)?(?:[-.+]?[a-z0-9]+)?\b|\bversion\b|\bcommit [0-9a-f]{7,40}\b|\b[0-9a-f]{7,40}\b"
    r"|\b(?:windows|macos|mac os|ubuntu|linux|debian|android|ios|chrome|firefox|safari)\b",
    re.IGNORECASE,
)
_STEPS = re.compile(
    r"steps to reproduce|to reproduce|repro(?:duction)?\b|minimal (?:example|code)|^\s*(?:1[.)]|-|\*)\s+\S"
    r"|^\s*(?:\$ |>>> )|```", re.IGNORECASE | re.MULTILINE,
)
_EXPECTED = re.compile(r"\bexpect(?:ed|ing|s)?\b|\bshould\b|\bintended\b", re.IGNORECASE)
_ACTUAL = re.compile(r"\bactual(?:ly)?\b|\binstead\b|\bbut\b|\bcurrent(?:ly)? behaviou?r\b|\bhappens\b"
                     r"|\bgot\b|\breturns?\b|\bfails?\b|\bcrash", re.IGNORECASE)
_LOGS = re.compile(
    r"```|traceback|exception|error[:\s]|\berr(?:or)?s?\b|stack ?trace|\bat [\w.$<>]+\(|\blog(?:s|ged)?\b"
    r"|panic|segfault|warning:", re.IGNORECASE,
)
_USE_CASE = re.compile(r"use ?case|because|so that|in order to|would (?:like|love|be (?:nice|useful|great))"
                       r"|motivation|need to|want to|currently|workaround|problem|have to|would (?:let|allow|make|help)"
                       r"|so (?:I|we|you) can|I'd (?:like|love)|for example|e\.g\.", re.IGNORECASE)


def missing_information(kind: str, title: str, body: str, model_missing: Iterable[str] = ()) -> list[str]:
    """Checklist keys a report of this kind lacks, by plain heuristics on the text.

    The heuristics decide for the bug checklist (a model that says "version is missing" next to
    "v2.3.1" is wrong); the model's list only adds ``use case`` for a feature whose text is short.
    """
    text = f"{title}\n{body or ''}"
    if kind == "bug":
        missing = []
        if not _VERSION.search(text):
            missing.append("version")
        if not _STEPS.search(body or ""):
            missing.append("steps to reproduce")
        if not (_EXPECTED.search(text) and _ACTUAL.search(text)):
            missing.append("expected vs actual behaviour")
        if not _LOGS.search(body or ""):
            missing.append("logs or error output")
        return missing
    if kind == "feature":
        says_missing = "use case" in set(model_missing)
        if not _USE_CASE.search(text) and (says_missing or len((body or "").strip()) < 200):
            return ["use case"]
    return []


def is_protected(label: str, patterns: Iterable[str]) -> bool:
    """Does the label match any protected pattern (fnmatch, case-insensitive)?"""
    lowered = label.lower()
    return any(fnmatch.fnmatchcase(lowered, str(p).lower()) for p in patterns)


def allowed_label(name: str, repo_labels: Iterable[str], protected: Iterable[str]) -> str | None:
    """The repo's spelling of ``name`` if it exists there and is not protected; else ``None``."""
    if not name:
        return None
    by_lower = {label.lower(): label for label in repo_labels}
    existing = by_lower.get(name.lower())
    if existing is None or is_protected(existing, protected) or is_protected(name, protected):
        return None
    return existing


def one_line(text: Any, max_length: int = 200) -> str:
    """Collapse whitespace to one line and cap it (plain data; ``render`` escapes it for posting)."""
    line = " ".join(str(text or "").split())
    return line if len(line) <= max_length else line[: max_length - 1].rstrip() + "…"


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _duplicate_lines(duplicates: list[Any], limit: int = 3) -> list[Safe]:
    lines = []
    for candidate in duplicates[:limit]:
        number = _field(candidate, "number")
        if not isinstance(number, int) or isinstance(number, bool) or number <= 0:
            continue
        title = render.line(_field(candidate, "title", ""), 120)
        lines.append(render.fmt("- {ref} {title}" if title else "- {ref}", ref=render.issue_ref(number), title=title))
    return lines


def _answer_text(cached_answer: Any) -> Safe:
    if not cached_answer:
        return render.EMPTY
    if isinstance(cached_answer, str):
        return render.line(cached_answer, 500)
    text = _field(cached_answer, "answer") or _field(cached_answer, "text") or ""
    number = _field(cached_answer, "number") or _field(cached_answer, "issue")
    if not text:
        return render.EMPTY
    if isinstance(number, int) and not isinstance(number, bool) and number > 0:
        return render.fmt("{text} (from {ref})", text=render.line(text, 500), ref=render.issue_ref(number))
    return render.line(text, 500)


COMMENT_MODES = ("auto", "always", "never")
SUMMARY_MODES = ("extractive", "model", "off")

# Words of a report that something went wrong, whatever kind the classifier settles on.
_PROBLEM = re.compile(
    r"\b(?:does(?:n't| not) work|not working|(?:stopped|stops|no longer|doesn't|does not|won't|will not|can't|"
    r"cannot|can not|unable to)\s+\w+|does nothing|nothing happens|broken|break[s]?|crash\w*|error\w*|"
    r"fail\w*|exception|bug|regression|wrong|incorrect|hangs?|freez\w*|stuck)\b", re.IGNORECASE)


def looks_like_problem(title: str, body: str) -> bool:
    """Does the report say something went wrong (crash, error, "doesn't work", "does nothing")?"""
    return bool(_PROBLEM.search(f"{title}\n{body or ''}"))


def comment_mode(value: Any) -> str:
    """``triage.comment`` as one of COMMENT_MODES (``true`` is ``auto``, ``false`` is ``never``)."""
    if value is True:
        return "auto"
    if value is False or value is None:
        return "never"
    return value if value in COMMENT_MODES else "auto"


def choose_summary(mode: str, title: str, body: str, model_summary: str = "", no_ai: bool = False
                   ) -> tuple[str, bool]:
    """The summary for the comment and whether it quotes the author (``True``) or is the model's words.

    ``extractive`` (the default) and ``no_ai`` quote the author (``bot.core.summary``); ``model`` uses the
    model's summary when it passes ``faithful_enough`` and quotes the author otherwise; ``off`` gives none."""
    if mode == "off":
        return "", False
    if mode == "model" and model_summary and not no_ai and faithful_enough(model_summary, title, body):
        return model_summary, False
    quote = extractive_summary(body, title)
    return quote, bool(quote)


def decide(issue: dict[str, Any], config_section: dict[str, Any], repo_labels: set[str], prediction: Any,
           duplicates: list[Any] | None = None, cached_answer: Any = None, *, repo: str = "",
           no_ai: bool = False, earlier_comment: bool = False) -> Plan:
    """The triage plan for one issue.

    ``prediction`` is a ``bot.models.base.Prediction`` (or ``None`` when no model ran). A prediction is
    acted on only when it is valid, not ``uncertain`` and at or above ``config_section['threshold']`` (or
    came from the escalated fallback); otherwise only the needs-triage label is applied. ``no_ai`` leaves
    model-written text (the summary) out of the comment.

    The missing-information checklist runs whatever the kind decision: a vague report that says something
    went wrong is asked for the bug checklist even when the kind is uncertain. With ``comment: auto`` (the
    default) the comment is posted only when it holds something for the author (missing information,
    possible duplicates, an earlier answer), or to update an ``earlier_comment`` the bot already posted;
    ``always`` posts it on every issue, ``never`` (or ``false``) never.
    """
    number = int(issue.get("number") or 0)
    author = str((issue.get("user") or {}).get("login") or issue.get("author") or "")
    repo = repo or str(issue.get("repo") or "")
    title = str(issue.get("title") or "")
    body = str(issue.get("body") or "")
    present = {str(_field(label, "name", label)).lower() for label in issue.get("labels") or []}
    protected = list(config_section.get("protected_labels") or [])
    mapping: dict[str, str] = dict(config_section.get("labels") or {})
    threshold = float(config_section.get("threshold", 0.8))

    kind = _field(prediction, "kind") if prediction is not None else None
    confidence = float(_field(prediction, "confidence", 0.0) or 0.0) if prediction is not None else 0.0
    confident = bool(
        prediction is not None and kind in mapping and _field(prediction, "valid", True)
        and not _field(prediction, "uncertain", False)
        and (confidence >= threshold or _field(prediction, "escalated", False))
    )

    labels: list[str] = []
    why = ""
    if confident:
        label = allowed_label(mapping.get(kind, ""), repo_labels, protected)
        if label:
            labels.append(label)
        why = f"{kind} ({confidence:.0%} confident, {_field(prediction, 'tier', '') or 'model'})"
    else:
        label = allowed_label(str(config_section.get("needs_triage_label") or ""), repo_labels, protected)
        if label:
            labels.append(label)
        why = "unsure of the kind" if prediction is not None else "no model available"
    new_labels = tuple(label for label in labels if label.lower() not in present)

    missing: list[str] = []
    guessed = ""   # the checklist asked for on an uncertain kind: the author is asked all the same
    if config_section.get("ask_for_missing", True):
        model_missing = _field(prediction, "missing", []) or [] if prediction is not None else []
        if confident:
            missing = missing_information(kind, title, body, model_missing)
        elif looks_like_problem(title, body) or kind == "bug":
            guessed, missing = "bug", missing_information("bug", title, body)
        elif kind == "feature":
            guessed, missing = "feature", missing_information("feature", title, body, model_missing)
    # The needs-info lifecycle (reminder, then close) starts only on a decided bug, never on a guess.
    needs_info = kind == "bug" and any(item in missing for item in ESSENTIAL_FOR_BUG) if confident else False

    plan = Plan(reason=f"triage: {why}")
    if new_labels:
        plan.add(AddLabels(issue=number, labels=new_labels))
    model_summary = one_line(_field(prediction, "summary", "") or "", 300) if prediction is not None else ""
    summary, quoted = choose_summary(str(config_section.get("summary", "extractive")), title, body,
                                     model_summary, no_ai)
    dup_lines = _duplicate_lines(duplicates or [])
    answer = _answer_text(cached_answer)
    for_the_author = bool(missing or dup_lines or answer)
    mode = comment_mode(config_section.get("comment", "auto"))
    if mode == "always" or (mode == "auto" and (for_the_author or earlier_comment)):
        body_text = _comment(author=author, confident=confident, kind=kind, labels=labels,
                             added=[label for label in labels if label in new_labels], summary=summary,
                             quoted=quoted, missing=missing, guessed=guessed, dup_lines=dup_lines, answer=answer)
        plan.add(Comment(issue=number, body=render.join("\n", [TRIAGE_MARKER, body_text]), marker=TRIAGE_MARKER))
    plan.data = {
        "kind": kind if confident else None,
        "predicted_kind": kind,
        "confidence": round(confidence, 4),
        "confident": confident,
        "tier": _field(prediction, "tier", None) if prediction is not None else None,
        "labels": list(new_labels),
        "missing": missing,
        "needs_info": needs_info,
        "summary": summary,
        "summary_quoted": quoted,
        "commented": any(isinstance(action, Comment) for action in plan.actions),
        "uncertain": not confident,
    }
    return plan


KIND_NAMES = {"bug": "a bug report", "feature": "a feature request", "question": "a question",
              "docs": "a documentation issue"}


def _comment(*, author: str, confident: bool, kind: str | None, labels: list[str], added: list[str],
             summary: str, quoted: bool, missing: list[str], guessed: str, dup_lines: list[Safe],
             answer: Safe) -> Safe:
    """The first-response text, written to the author: what the bot did (in the first person), what it
    needs from them, and what it found. Short.

    Our wording is the template; the summary, duplicate titles, the earlier answer and label names
    are values rendered by ``bot.core.render``, so none of them can mention, link or embed anything.
    """
    fmt = render.fmt
    if author:
        greeting = fmt("Thanks for opening this issue, {author}!", author=render.mention(author))
    else:
        greeting = fmt("Thanks for opening this issue!")
    lines: list[Safe] = [greeting, render.EMPTY]
    if summary:
        if quoted:  # the author's own words, chosen from the body; not the bot's reading of it
            lines += [fmt("**In short:** “{summary}”", summary=render.line(summary, 500)), render.EMPTY]
        else:
            lines += [fmt("**What I understood** (written by a model, may be wrong): {summary}",
                          summary=render.line(summary, 500)), render.EMPTY]
    label = labels[0] if labels else ""
    if confident and kind:
        what = KIND_NAMES.get(kind, "an issue outside the usual kinds")
        if label and label in added:
            line = fmt("I think this is " + what + ", so I added the {label} label.", label=render.code(label))
        elif label:
            line = fmt("I think this is " + what + "; it already has the {label} label.", label=render.code(label))
        else:
            line = fmt("I think this is " + what + ".")
    elif label and label in added:
        line = fmt("I couldn't tell for sure what kind of issue this is, so I added the {label} label for a "
                   "maintainer to sort it out.", label=render.code(label))
    else:
        line = fmt("I couldn't tell for sure what kind of issue this is, so I left that to a maintainer.")
    lines += [line, render.EMPTY]
    checklist = {**BUG_CHECKLIST, **FEATURE_CHECKLIST}
    items = [fmt("- " + checklist[item]) for item in missing if item in checklist]
    if items:
        if guessed == "bug":
            lines.append(fmt("If something isn't working as it should, a maintainer will need a few details to "
                             "look into it. Could you edit the issue or reply with:"))
        elif confident and kind == "bug":
            lines.append(fmt("To look into it, a maintainer will need a few more details. Could you edit the "
                             "issue or reply with:"))
        else:
            lines.append(fmt("To help a maintainer decide on it, could you edit the issue or reply with:"))
        lines += items
        lines.append(render.EMPTY)
    if dup_lines:
        lines.append(fmt("**Possibly related issues:**"))
        lines += dup_lines
        lines.append(render.EMPTY)
    if answer:
        lines += [fmt("**An earlier answer that may help:** {answer}", answer=answer), render.EMPTY]
    lines.append(fmt("_I'm a bot, and this is an automatic first response. Comment `/help` to see what I can "
                     "do._"))
    return render.join("\n", lines)
