"""Issue index core: FTS retrieval, template stripping, answer cache (small self-made fixtures)."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import sqlite_utils

from bot.index import answers, duplicates, store, text

REPO = "octo/widgets"

TEMPLATE = """---
name: Bug report
about: Create a report to help us improve
---
## Describe the bug
A clear and concise description of what the bug is.

## Steps to reproduce
1. Go to '...'
2. Click on '....'

## Expected behavior
- [ ] I searched existing issues
- [ ] I am using the latest version
"""


def issue(number, title, body, created, **extra):
    return {"number": number, "title": title, "body": body, "created_at": created, "state": "open",
            "user": {"login": "alice"}, "labels": [{"name": "bug"}], **extra}


@pytest.fixture
def db():
    database = sqlite_utils.Database(sqlite3.connect(":memory:"))
    store.ensure_schema(database)
    store.ensure_schema(database)  # idempotent
    return database


def seed(db, templates=()):
    issues = [
        issue(1, "Tooltip flickers when hovering the toolbar", "The tooltip on the toolbar flickers rapidly on hover in Firefox.", "2024-01-01T00:00:00Z"),
        issue(2, "Crash on startup with empty config file", "Segfault in config parser when widgets.toml is empty.", "2024-01-02T00:00:00Z"),
        issue(3, "Add dark mode", "Please add a dark theme for the settings page.", "2024-01-03T00:00:00Z"),
        issue(4, "Docs: typo in installation guide", "The install guide says 'pip instal'.", "2024-01-04T00:00:00Z"),
        issue(5, "PR: fix things", "", "2024-01-05T00:00:00Z", pull_request={"url": "x"}),
    ]
    for item in issues:
        store.upsert_issue(db, REPO, item, templates)


def test_pull_requests_are_not_indexed(db):
    seed(db)
    assert store.get_issue(db, REPO, 5) is None
    assert store.get_issue(db, REPO, 2)["labels"] == ["bug"]


def test_fts_finds_seeded_near_duplicate(db):
    seed(db)
    ranked = duplicates.rank(db, REPO, "App crashes at startup when the config file is empty",
                             "Starting with an empty widgets.toml segfaults.", created_at="2024-02-01T00:00:00Z", number=9)
    assert ranked and ranked[0].number == 2
    assert "config" in ranked[0].why and ranked[0].state == "open"


def test_only_earlier_issues_and_not_itself(db):
    seed(db)
    ranked = duplicates.rank(db, REPO, "Crash on startup with empty config file", "", created_at="2024-01-02T00:00:00Z", number=2)
    assert all(c.number != 2 for c in ranked)
    assert all(c.number == 1 for c in ranked)  # only #1 is older


def test_fts_syntax_in_issue_text_is_harmless(db):
    seed(db)
    duplicates.rank(db, REPO, 'NEAR(" crash AND OR * -config: "', "title:foo ^bar", created_at="2024-02-01T00:00:00Z")


def test_template_text_does_not_create_false_matches(db):
    # Two unrelated issues written into the same template must not match each other.
    body_a = TEMPLATE.replace("A clear and concise description of what the bug is.", "Tooltip flickers on hover.")
    body_b = TEMPLATE.replace("A clear and concise description of what the bug is.", "Exporting to PDF loses images.")
    store.upsert_issue(db, REPO, issue(10, "Tooltip flicker", body_a, "2024-01-01T00:00:00Z"), [TEMPLATE])
    stripped = text.strip_template(body_b, [TEMPLATE])
    assert "Steps to reproduce" not in stripped and "latest version" not in stripped
    assert "Exporting to PDF loses images." in stripped
    ranked = duplicates.rank(db, REPO, "PDF export problem", body_b, created_at="2024-02-01T00:00:00Z", templates=[TEMPLATE])
    assert ranked == []


def test_strip_code_keeps_error_lines():
    body = "It fails:\n```\nfn main() {}\nerror[E0308]: mismatched types\n```\nsee https://example.com/x"
    cleaned = text.strip_code(body)
    assert "mismatched types" in cleaned and "fn main" not in cleaned and "example.com" not in cleaned


def test_strip_code_keeps_exception_lines_and_frames_of_other_languages():
    body = ("Export crashes:\n```\nTraceback (most recent call last):\n"
            "  File \"reportly/export/pdf_writer.py\", line 88, in render_chart\n    canvas.draw(chart)\n"
            "KeyError: 'font_family'\n```\n")
    cleaned = text.strip_code(body)
    assert "KeyError: 'font_family'" in cleaned and "pdf_writer.py" in cleaned and "canvas.draw" not in cleaned


def test_shared_words_still_match_in_a_repository_of_a_few_issues(db):
    # Four issues: every word two of them share is in half the index. The document-frequency cut that
    # keeps 100k-issue queries fast must not drop every shared word of a tiny repository.
    seed(db)
    store.upsert_issue(db, REPO, issue(6, "Startup crash when the config file is empty",
                                       "widgets.toml empty, the config parser segfaults", "2024-01-06T00:00:00Z"))
    expression, n_terms = duplicates.match_query(db, "Startup crash when the config file is empty",
                                                 "widgets.toml empty, the config parser segfaults")
    assert n_terms >= 3 and '"config"' in expression
    ranked = duplicates.rank(db, REPO, "Startup crash when the config file is empty",
                             "widgets.toml empty, the config parser segfaults", created_at="2024-01-06T00:00:00Z",
                             number=6)
    assert ranked and ranked[0].number == 2 and ranked[0].bm25 > 0


def test_vectors_fuse_and_reload_after_write(db):
    seed(db)
    rng = np.random.default_rng(0)
    vecs = {n: v / np.linalg.norm(v) for n, v in ((n, rng.normal(size=8).astype(np.float32)) for n in (1, 2, 3, 4))}
    store.set_vectors(db, REPO, vecs.items(), "test")
    ranked = duplicates.rank(db, REPO, "unrelated words entirely", "", created_at="2024-02-01T00:00:00Z",
                             query_vector=vecs[3], vector_model="test", mode="vector")
    assert ranked[0].number == 3 and ranked[0].cosine == pytest.approx(1.0, abs=1e-2)
    store.set_vectors(db, REPO, [(3, -vecs[3])], "test")
    ranked = duplicates.rank(db, REPO, "unrelated words entirely", "", created_at="2024-02-01T00:00:00Z",
                             query_vector=vecs[3], vector_model="test", mode="vector")
    assert ranked[-1].number == 3


def test_edit_of_body_clears_vector(db):
    seed(db)
    store.set_vectors(db, REPO, [(1, np.ones(4, np.float32) / 2)], "test")
    store.upsert_issue(db, REPO, issue(1, "Tooltip flickers when hovering the toolbar", "new text", "2024-01-01T00:00:00Z"))
    assert store.get_issue(db, REPO, 1)["vector"] is None


def test_is_question_heuristic():
    assert answers.is_question("How do I configure the proxy?")
    assert answers.is_question("Proxy settings ignored?")
    assert not answers.is_question("Crash on startup")


def test_answer_cache_exact_hit_and_invalidation(db):
    seed(db)
    cache = answers.AnswerCache(size=8)
    key = cache.put(db, REPO, 3, "How do I enable dark mode?", "", "Settings > Theme > Dark.", "https://x/3#c1", answer_comment_id=77)
    # Same question with other case/punctuation/whitespace: exact after normalisation.
    hit = cache.lookup(db, REPO, "how do i enable  DARK mode", "", number=12)
    assert hit is not None and hit.number == 3 and hit.answer.startswith("Settings")
    # Persistent half: a fresh LRU finds it in SQLite.
    assert answers.AnswerCache().lookup(db, REPO, "How do I enable dark mode?", "") is not None
    assert cache.lookup(db, "other/repo", "How do I enable dark mode?", "") is None
    # Answer comment edited -> gone from both halves.
    assert answers.invalidate_answer_comment(db, REPO, 77, cache) == 1
    assert cache.lookup(db, REPO, "How do I enable dark mode?", "") is None
    # Re-added, then source issue edited -> gone; re-added, then thumbs-down on the reuse -> gone.
    cache.put(db, REPO, 3, "How do I enable dark mode?", "", "Settings > Theme > Dark.")
    answers.invalidate_issue(db, REPO, 3, cache)
    assert cache.lookup(db, REPO, "How do I enable dark mode?", "") is None
    key = cache.put(db, REPO, 3, "How do I enable dark mode?", "", "Settings > Theme > Dark.")
    answers.invalidate_key(db, key, cache)
    assert cache.lookup(db, REPO, "How do I enable dark mode?", "") is None


def test_answer_cache_semantic_is_strict(db):
    seed(db)
    vec = np.array([1, 0, 0, 0], np.float32)
    db.execute("UPDATE issues SET answer = 'Use --flag', is_question = 1 WHERE repo = ? AND number = 3", [REPO])
    store.set_vectors(db, REPO, [(3, vec)], "test")
    assert answers.semantic_match(db, REPO, vec).number == 3
    assert answers.semantic_match(db, REPO, np.array([0.8, 0.6, 0, 0], np.float32)) is None


def test_stems_match_the_fts_porter_tokenizer(db):
    assert duplicates.stems(["crashes", "crashing", "config"]) == ["crash", "crash", "config"]
    seed(db)
    df = duplicates._document_frequency(db, duplicates.stems(["crashes"]))
    assert df == {"crash": 1}


def test_match_query_caps_and_dedupes_terms(db):
    seed(db)
    body = " ".join(f"word{i}x" for i in range(40)) + " crashes crash crashing"
    expression, n = duplicates.match_query(db, "Crash on startup", body)
    assert n <= duplicates.MAX_TERMS and expression.count('"crash') == 1


def test_fast_and_joined_bm25_paths_agree(db, monkeypatch):
    seed(db)
    args = (db, REPO, "crash config file empty toolbar", "tooltip dark theme install guide")
    fast, _ = duplicates.bm25_candidates(*args, before="2024-01-04T00:00:00Z", limit=2)
    monkeypatch.setattr(duplicates, "FTS_OVERFETCH", 0)  # fetch nothing -> always the joined query
    joined, _ = duplicates.bm25_candidates(*args, before="2024-01-04T00:00:00Z", limit=2)
    assert [n for n, *_ in fast] == [n for n, *_ in joined] and len(fast) == 2


def test_scores_are_probabilities_and_thresholds_per_model(db):
    seed(db)
    ranked = duplicates.rank(db, REPO, "App crashes at startup when the config file is empty",
                             "Starting with an empty widgets.toml segfaults.", created_at="2024-02-01T00:00:00Z")
    assert all(0.0 <= c.score <= 1.0 for c in ranked)
    assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)
    assert duplicates.threshold_for(None) == duplicates.THRESHOLDS["bm25"]
    assert duplicates.threshold_for("unknown-model") == duplicates.THRESHOLDS["bm25"]
    assert duplicates.threshold_for(duplicates.SHIPPED_MODEL) == duplicates.DEFAULT_THRESHOLD
    found = duplicates.find_duplicates(db, REPO, "App crashes at startup when the config file is empty",
                                       "Starting with an empty widgets.toml segfaults.", created_at="2024-02-01T00:00:00Z",
                                       threshold=0.0, max_candidates=1)
    assert [c.number for c in found] == [2]
