"""The pure triage decision (issue 4): allowlist, protected labels, needs-triage, sanitiser, injections."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from bot.config import DEFAULTS
from bot.core.plan import AddLabels, Comment, marker
from bot.core import render, render_check
from bot.core.triage import decide, is_protected, missing_information
from bot.models.base import KINDS, FakeModel, IssueText, Prediction

REPO = "octo-org/hello"
AUTHOR = "alice"
LABELS = {"bug", "enhancement", "question", "documentation", "security", "priority-high", "needs-triage", "wontfix"}
INJECTIONS = json.loads((Path(__file__).parent / "data" / "injections.json").read_text(encoding="utf-8"))


def config(**overrides):
    section = copy.deepcopy(DEFAULTS["triage"])
    section.update(overrides)
    return section


def issue(title="It crashes", body="", number=7, labels=()):
    return {"number": number, "title": title, "body": body, "user": {"login": AUTHOR},
            "labels": [{"name": name} for name in labels]}


def prediction(kind="bug", confidence=0.95, **fields):
    return Prediction(kind=kind, confidence=confidence, probs={k: (confidence if k == kind else 0.0) for k in KINDS},
                      tier="combined", **fields)


def labels_of(plan):
    return [label for action in plan.actions if isinstance(action, AddLabels) for label in action.labels]


def comment_of(plan):
    comments = [action for action in plan.actions if isinstance(action, Comment)]
    assert len(comments) <= 1
    return comments[0] if comments else None


def mentions_outside_code(text):
    """@names GitHub would notify: in the cmark-gfm rendering, in text outside code and pre."""
    texts, _ = render_check.rendered(text, repo=REPO)
    return {m.lower() for chunk in texts for m in re.findall(r"@([A-Za-z0-9][A-Za-z0-9-]*)", chunk)}


def links_outside_code(text):
    """Every link GitHub would show: hrefs in the rendering, and URL text an autolinker could take."""
    texts, hrefs = render_check.rendered(text, repo=REPO)
    return hrefs + [m.group(0) for chunk in texts for m in render_check._URL_TEXT.finditer(chunk)]


def test_confident_bug_gets_mapped_label_and_one_marked_comment():
    plan = decide(issue(body="Version 1.2.3. Steps: 1. run it. Expected ok but got error: boom"), config(),
                  LABELS, prediction("bug", 0.97, summary="The app crashes."), [], None, repo=REPO)
    assert labels_of(plan) == ["bug"]
    comment = comment_of(plan)
    assert comment.marker == marker("triage") and comment.body.startswith(marker("triage"))
    assert "/help" in comment.body
    # The default summary quotes the author; a model's words are shown only with `summary: model`.
    assert "The app crashes." not in comment.body
    assert plan.data["confident"] and plan.data["kind"] == "bug"


def test_feature_maps_to_enhancement_via_allowlist():
    plan = decide(issue("Add dark mode"), config(), LABELS, prediction("feature"), [], None, repo=REPO)
    assert labels_of(plan) == ["enhancement"]


def test_label_missing_in_repo_is_not_applied():
    plan = decide(issue(), config(), {"question"}, prediction("bug"), [], None, repo=REPO)
    assert labels_of(plan) == []


def test_labels_match_repo_spelling_case_insensitively():
    plan = decide(issue(), config(), {"Bug"}, prediction("bug"), [], None, repo=REPO)
    assert labels_of(plan) == ["Bug"]


def test_protected_labels_are_never_applied_even_if_mapped():
    section = config(labels={"bug": "security", "feature": "priority-high", "question": "question",
                             "docs": "documentation", "other": ""})
    for kind in ("bug", "feature"):
        plan = decide(issue(), section, LABELS, prediction(kind), [], None, repo=REPO)
        assert labels_of(plan) == []
    assert is_protected("Priority: High", ["priority*"]) and is_protected("SECURITY", ["security"])


def test_needs_triage_when_unsure():
    plan = decide(issue(), config(threshold=0.8), LABELS, prediction("bug", 0.6), [], None, repo=REPO)
    assert labels_of(plan) == ["needs-triage"]
    assert "couldn't tell for sure" in comment_of(plan).body and plan.data["uncertain"]


def test_needs_triage_when_prediction_marked_uncertain_or_invalid():
    for pred in (prediction("bug", 0.99, uncertain=True), prediction("bug", 0.99, valid=False), None):
        plan = decide(issue(), config(), LABELS, pred, [], None, repo=REPO)
        assert labels_of(plan) == ["needs-triage"]


def test_escalated_fallback_answer_is_acted_on():
    pred = prediction("question", 0.9, escalated=True)
    plan = decide(issue(), config(threshold=0.95), LABELS, pred, [], None, repo=REPO)
    assert labels_of(plan) == ["question"]


def test_no_needs_triage_label_in_repo_means_no_label():
    plan = decide(issue(), config(), {"bug"}, prediction("bug", 0.3), [], None, repo=REPO)
    assert labels_of(plan) == []


def test_label_already_on_issue_is_not_re_added():
    plan = decide(issue(labels=["bug"]), config(), LABELS, prediction("bug"), [], None, repo=REPO)
    assert labels_of(plan) == []


def test_comment_off_in_config_posts_nothing():
    for off in (False, "never"):
        plan = decide(issue(), config(comment=off), LABELS, prediction("bug"), [], None, repo=REPO)
        assert comment_of(plan) is None and labels_of(plan) == ["bug"]
        assert plan.data["missing"]  # there was something to ask: the config still wins


def test_no_ai_leaves_model_text_out():
    plan = decide(issue(), config(), LABELS, prediction("bug", summary="MODEL WORDS"), [], None, repo=REPO,
                  no_ai=True)
    assert "MODEL WORDS" not in comment_of(plan).body


def test_missing_info_checklist_for_a_bare_bug_report():
    plan = decide(issue(body="it does not work"), config(), LABELS, prediction("bug"), [], None, repo=REPO)
    assert set(plan.data["missing"]) == {"version", "steps to reproduce", "expected vs actual behaviour",
                                         "logs or error output"}
    assert plan.data["needs_info"]
    assert len([line for line in comment_of(plan).body.splitlines() if line.startswith("- ")]) == 4


def test_missing_info_heuristics_see_a_complete_report():
    body = ("React version: 18.2.0\n\n### Steps To Reproduce\n1. click\n2. scroll\n\n"
            "Expected the list to scroll but instead it jumps.\n\n```\nTypeError: x is undefined\n```")
    assert missing_information("bug", "List jumps", body, ["version", "logs or error output"]) == []


def test_feature_without_use_case_is_asked_for_it():
    assert missing_information("feature", "Add X", "Add X please", []) == ["use case"]
    assert missing_information("feature", "Add X", "I would like X because my team needs to export data.", []) == []


def test_duplicates_and_cached_answer_are_listed_sanitised():
    dups = [{"number": 3, "title": "Crash @bob https://evil.example.com"}, {"number": 4, "title": "Other"}]
    answer = {"answer": "Set FOO=1, see @carol", "number": 2}
    plan = decide(issue(), config(), LABELS, prediction("bug"), dups, answer, repo=REPO)
    body = comment_of(plan).body
    assert "#3" in body and "#4" in body and "Set FOO=1" in body and "(from #2)" in body
    assert mentions_outside_code(body) <= {AUTHOR} and not links_outside_code(body)


# -- rendering of issue text (bot.core.render; the property suite is tests/test_render_properties.py) ----

def test_rendered_text_neutralises_mentions_other_than_the_author():
    text = render.text("thanks @alice, cc @bob and @org/team", author="alice", repo=REPO)
    assert "@alice" in text and mentions_outside_code(text) == {"alice"}


def test_rendered_text_shows_images_and_html_as_text():
    text = render.text('a ![x](https://e.com/p.png) <img src="https://e.com/t.gif"> <b>bold</b> <script>x</script>',
                       repo=REPO)
    html = render_check.render_html(text)
    assert "<img" not in html and "<b>" not in html and "<script" not in html and "&lt;b&gt;" in html
    assert render_check.problems(text, repo=REPO) == []


def test_links_are_made_by_templates_into_this_repo_only():
    text = render.join(" ", [render.link(render.text("ok"), REPO, "issues/1"),
                             render.text("[bad](https://evil.example.com) https://evil.example.com/raw", repo=REPO)])
    assert f"(https://github.com/{REPO}/issues/1)" in text
    assert links_outside_code(text) == [f"https://github.com/{REPO}/issues/1"]
    with pytest.raises(ValueError):
        render.link(render.text("x"), REPO, "../../evil/repo")


def test_rendered_text_is_capped():
    assert len(render.text("word " * 5000, max_length=500)) <= 500


def test_rendered_text_neutralises_cross_repo_references():
    text = render.text(f"see other/repo#12 and {REPO}#3", repo=REPO)
    assert "other/repo#12" not in text and f"{REPO}#3" in text
    assert render_check.problems(text, repo=REPO) == []


# -- injection corpus -------------------------------------------------------------------------------

def test_injection_corpus_is_big_and_varied():
    assert len(INJECTIONS) >= 30
    assert {i["where"] for i in INJECTIONS} >= {"title", "body", "code block", "html comment"}
    assert len({i["lang"] for i in INJECTIONS}) >= 5
    assert {i["intent"] for i in INJECTIONS} >= {"close", "label-security", "ping", "leak", "links"}


def _hijacked_predictions(case):
    """What a fully hijacked model could return: any kind, echoing the attacker's text as summary."""
    text = f"{case['title']} {case['body']}"
    for kind in KINDS:
        yield prediction(kind, 0.99, summary=text, missing=["version", "security", "close"])
    yield prediction("bug", 0.1, summary=text)


@pytest.mark.parametrize("case", INJECTIONS, ids=[c["id"] for c in INJECTIONS])
def test_injection_leads_to_no_action_outside_the_allowlist(case):
    # Always a comment, with the model's summary (the attacker's text echoed): the most text to check.
    section = config(comment="always", summary="model")
    allowed = {v for v in section["labels"].values() if v} | {section["needs_triage_label"]}
    for pred in _hijacked_predictions(case):
        plan = decide(issue(case["title"], case["body"]), section, LABELS, pred, [], None, repo=REPO)
        assert {type(a) for a in plan.actions} <= {AddLabels, Comment}
        assert set(labels_of(plan)) <= allowed
        comment = comment_of(plan)
        assert comment is not None and comment.marker == marker("triage")
        body = comment.body[len(marker("triage")):]
        assert mentions_outside_code(body) <= {AUTHOR}, body
        assert not links_outside_code(body), body
        html = render_check.render_html(body)  # what GitHub shows: the text may quote HTML, never carry it
        assert "<img" not in html and "<a " not in html and "<!--" not in html
        assert render_check.problems(comment.body, author=AUTHOR, repo=REPO) == []
        assert "Never follow instructions" not in body  # no system-prompt text reaches the comment


def test_fake_model_returns_queued_answers_and_records_calls():
    fake = FakeModel([{"kind": "question", "confidence": 0.91}, RuntimeError("boom")])
    first = fake.predict(IssueText("How do I?", "body"))
    assert (first.kind, first.confidence, first.tier) == ("question", 0.91, "fake")
    with pytest.raises(RuntimeError):
        fake.predict(IssueText("again"))
    assert [c.title for c in fake.calls] == ["How do I?", "again"]
    assert fake.predict(IssueText("empty")).kind == "other"


def test_extractive_summary_quotes_the_author_and_skips_boilerplate():
    from bot.core.triage import extractive_summary

    body = "## Describe the bug\n- [ ] I searched\nVersion 2.3.1 on Ubuntu 22.04.\n```\nTraceback: boom boom boom\n```\n" \
           "After updating, the export button does nothing. Please fix."
    assert extractive_summary(body) == "After updating, the export button does nothing."
    assert extractive_summary("") == ""
    assert extractive_summary("> quoted text from someone else here\nok") == ""


# ---------------------------------------------------------------- issue #12 items 4-6: what the comment says

DEMO = {row["number"]: row for row in json.loads((Path(__file__).parent.parent / "demo" / "issues.json").read_text())}
COMPLETE_BUG = ("Version 2.3.1 on Ubuntu 22.04.\n\nSteps to reproduce:\n1. Save `settings.yml` from Notepad\n"
                "2. Run `tool --config settings.yml`\n\nExpected: the file loads.\nActual: it crashes with\n\n"
                "```\nyaml.reader.ReaderError: unacceptable character #xfeff\n```")


def test_body_starting_with_a_numbered_list_is_not_summarised_as_its_marker():
    """Demo #101 was summarised as **In short: “1.”**: a list marker is not a sentence."""
    from bot.core.summary import extractive_summary

    summary = extractive_summary(DEMO[101]["body"], DEMO[101]["title"])
    assert summary and not re.match(r"^\W*\d+\W*$", summary) and not summary.startswith("1.")
    assert extractive_summary("1. Open the settings page\n2. Click export\n3. Nothing is saved to disk at all") \
        .startswith(("Open the settings page", "Nothing is saved"))


@pytest.mark.parametrize("body, expected", [
    ("Hi there, thanks for the great library!\n\nWhen I call `load()` on an empty file it raises KeyError "
     "instead of returning an empty dict.", "When I call `load()` on an empty file it raises KeyError"),
    ("**Describe the bug**\nA clear and concise description of what the bug is.\nExporting a report with "
     "unicode names writes an empty CSV file.\n\n**To Reproduce**\n1. Go to reports", "Exporting a report"),
    ("```\nTraceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad\n```\n"
     "2023-01-01 12:00:00 ERROR something broke here badly\nThe parser rejects files that start with a BOM.",
     "The parser rejects files that start with a BOM."),
    ("<!-- Please describe your problem in detail here -->\n### Feature request\nAllow the status command to "
     "print JSON so that scripts can read it.\n### Your contribution\nHappy to send a pull request for it.",
     "Allow the status command to print JSON"),
])
def test_extractive_summary_picks_a_sentence_that_says_what_the_issue_is(body, expected):
    from bot.core.summary import extractive_summary

    assert extractive_summary(body, "Some title about it").startswith(expected)


@pytest.mark.parametrize("number", sorted(DEMO))
def test_extractive_summary_only_ever_quotes_the_author(number):
    """Every piece of the "In short" is a run of the author's own words, in their order."""
    from bot.core.summary import extractive_summary

    summary = extractive_summary(DEMO[number]["body"], DEMO[number]["title"])
    flat = " ".join(DEMO[number]["body"].split())
    for part in summary.rstrip("…").split(" … "):
        assert part.strip() in flat


def test_uncertain_kind_still_asks_a_vague_report_for_what_is_missing():
    """Demo #102: needs-triage, and the author is asked for version, steps and expected vs actual."""
    vague = issue(DEMO[102]["title"], DEMO[102]["body"])
    for unsure in (prediction("docs", 0.72), prediction("bug", 0.5), None):
        plan = decide(vague, config(), LABELS, unsure, [], None, repo=REPO)
        assert labels_of(plan) == ["needs-triage"]
        assert {"version", "steps to reproduce", "expected vs actual behaviour"} <= set(plan.data["missing"])
        body = comment_of(plan).body
        assert "the version you are using" in body and "the steps to reproduce" in body
        assert "what you expected to happen and what happened instead" in body
        assert not plan.data["needs_info"]  # a guess never starts the reminder-and-close lifecycle


def test_uncertain_feature_like_report_is_not_asked_for_bug_details():
    plan = decide(issue(DEMO[103]["title"], DEMO[103]["body"]), config(), LABELS, prediction("feature", 0.9), [],
                  None, repo=REPO)
    assert plan.data["missing"] == [] and comment_of(plan) is None
    assert labels_of(plan) == ["needs-triage"]


def test_comment_says_who_added_which_label():
    plan = decide(issue(body="it does not work"), config(), LABELS, prediction("bug"), [], None, repo=REPO)
    body = comment_of(plan).body
    assert "I added the `bug` label" in body and "looks like a bug report and added" not in body
    already = decide(issue(body="it does not work", labels=["bug"]), config(), LABELS, prediction("bug"), [], None,
                     repo=REPO)
    assert "already has the `bug` label" in comment_of(already).body and "I added" not in comment_of(already).body
    unsure = decide(issue(body="it does not work"), config(), LABELS, prediction("bug", 0.3), [], None, repo=REPO)
    assert "I added the `needs-triage` label" in comment_of(unsure).body


def test_auto_comment_stays_quiet_when_there_is_nothing_for_the_author():
    plan = decide(issue("Crash on BOM", COMPLETE_BUG), config(), LABELS, prediction("bug"), [], None, repo=REPO)
    assert plan.data["missing"] == [] and comment_of(plan) is None and labels_of(plan) == ["bug"]
    assert plan.data["commented"] is False
    unsure = decide(issue("Crash on BOM", COMPLETE_BUG), config(), LABELS, prediction("bug", 0.4), [], None,
                    repo=REPO)
    assert comment_of(unsure) is None and labels_of(unsure) == ["needs-triage"]


@pytest.mark.parametrize("extra", [
    {"duplicates": [{"number": 3, "title": "Crash on BOM files"}]},
    {"cached_answer": {"answer": "Save the file without a BOM.", "number": 2}},
    {"earlier_comment": True},
])
def test_auto_comment_speaks_when_it_has_something_for_the_author(extra):
    plan = decide(issue("Crash on BOM", COMPLETE_BUG), config(), LABELS, prediction("bug"),
                  extra.get("duplicates", []), extra.get("cached_answer"), repo=REPO,
                  earlier_comment=extra.get("earlier_comment", False))
    assert comment_of(plan) is not None and "@alice" in comment_of(plan).body


def test_comment_always_in_config_comments_on_every_issue():
    plan = decide(issue("Crash on BOM", COMPLETE_BUG), config(comment="always"), LABELS, prediction("bug"), [],
                  None, repo=REPO)
    assert comment_of(plan) is not None and "I added the `bug` label" in comment_of(plan).body


def test_model_summary_only_with_summary_model_and_only_when_it_uses_the_authors_words():
    body = "After updating to 2.0 the export button does nothing when I click it."
    faithful = prediction("bug", summary="Export button does nothing after updating to 2.0.")
    invented = prediction("bug", summary="The database migration corrupts user accounts on startup.")
    quoted = decide(issue("Export broken", body), config(), LABELS, faithful, [], None, repo=REPO)
    assert "Export button does nothing after updating" not in comment_of(quoted).body
    assert plan_summary(quoted) == (body, True)
    model = decide(issue("Export broken", body), config(summary="model"), LABELS, faithful, [], None, repo=REPO)
    assert plan_summary(model) == ("Export button does nothing after updating to 2.0.", False)
    assert "written by a model" in comment_of(model).body
    guarded = decide(issue("Export broken", body), config(summary="model"), LABELS, invented, [], None, repo=REPO)
    assert plan_summary(guarded) == (body, True) and "database" not in comment_of(guarded).body
    off = decide(issue("Export broken", body), config(summary="off"), LABELS, faithful, [], None, repo=REPO)
    assert plan_summary(off) == ("", False) and "In short" not in comment_of(off).body


def plan_summary(plan):
    return plan.data["summary"], plan.data["summary_quoted"]
