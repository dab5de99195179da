"""The issue index: one row per issue of every installed repo, full-text search, vectors, answers.

Tables (created by :func:`ensure_schema`, idempotent, listed in ``bot.db.SCHEMA_MODULES``):

``issues``          (repo, number) primary key; GitHub fields, the accepted ``answer``, ``is_question``,
                    ``search_body`` (the body with template, code blocks and URLs removed: what FTS and the
                    embedder see) and ``vector`` (float16 bytes of the normalised embedding, ``vector_model``
                    says which embedder made it, so a changed embedder re-embeds instead of mixing spaces).
``issues_fts``      FTS5 over title + search_body (sqlite-utils ``enable_fts`` with triggers), porter stemming.
``issues_fts_vocab`` fts5vocab 'row' view: document frequency per term, for IDF-based query terms.
``answers_cache``   normalised-question hash -> source issue and answer (the persistent half of the cache).
``index_backfill``  per-repo backfill progress (last page done, ``since``), so a crash resumes.
``index_meta``      per-repo ``vector_version``, bumped on every vector write so in-memory matrices reload.

Pull requests are never stored (GitHub's issues API returns them too; :func:`issue_row` refuses them).
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterable, Mapping

import numpy as np
import sqlite_utils

from bot.index.text import clean_body

FTS_COLUMNS = ("title", "search_body")
FTS_TOKENIZE = "porter"
VECTOR_DTYPE = np.float16

ISSUE_COLUMNS: dict[str, type] = {
    "repo": str,
    "number": int,
    "title": str,
    "body": str,
    "search_body": str,
    "user": str,
    "author_association": str,
    "labels": str,
    "state": str,
    "state_reason": str,
    "created_at": str,
    "updated_at": str,
    "closed_at": str,
    "comments": int,
    "reactions": str,
    "answer": str,
    "answer_url": str,
    "is_question": int,
    "vector": bytes,
    "vector_model": str,
}


def ensure_schema(db: sqlite_utils.Database) -> None:
    """Create the index tables if missing (safe to call on every start)."""
    if "issues" not in db.table_names():
        db["issues"].create(ISSUE_COLUMNS, pk=("repo", "number"))
    else:  # add columns introduced later, never drop
        missing = {k: v for k, v in ISSUE_COLUMNS.items() if k not in db["issues"].columns_dict}
        for name, kind in missing.items():
            db["issues"].add_column(name, kind)
    db.execute("CREATE INDEX IF NOT EXISTS issues_repo_created ON issues(repo, created_at)")
    if "issues_fts" not in db.table_names():
        db["issues"].enable_fts(
            list(FTS_COLUMNS), fts_version="FTS5", create_triggers=True, tokenize=FTS_TOKENIZE
        )
    db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS issues_fts_vocab USING fts5vocab(issues_fts, 'row')")
    db.execute(
        """CREATE TABLE IF NOT EXISTS answers_cache (
            key TEXT PRIMARY KEY,
            repo TEXT NOT NULL,
            number INTEGER NOT NULL,
            question TEXT NOT NULL,
            answer TEXT NOT NULL,
            answer_url TEXT,
            answer_comment_id INTEGER,
            created_at REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX IF NOT EXISTS answers_cache_source ON answers_cache(repo, number)")
    db.execute(
        """CREATE TABLE IF NOT EXISTS index_backfill (
            repo TEXT PRIMARY KEY,
            last_page INTEGER NOT NULL DEFAULT 0,
            since TEXT,
            next_since TEXT,
            total INTEGER,
            done INTEGER NOT NULL DEFAULT 0,
            etag TEXT,
            started_at REAL,
            updated_at REAL,
            finished_at REAL
        )"""
    )
    db.execute(
        """CREATE TABLE IF NOT EXISTS index_meta (
            repo TEXT PRIMARY KEY,
            vector_version INTEGER NOT NULL DEFAULT 0
        )"""
    )


def issue_row(repo: str, issue: Mapping[str, Any], templates: Iterable[str] | frozenset[str] = frozenset()) -> dict | None:
    """Turn a GitHub REST issue object (or an already flat row) into an ``issues`` row; None for a PR.

    ``templates`` are the repo's issue-template texts, stripped from the body before it is indexed.
    """
    if issue.get("pull_request"):
        return None
    user = issue.get("user")
    labels = issue.get("labels") or []
    label_names = [lab["name"] if isinstance(lab, Mapping) else str(lab) for lab in labels]
    reactions = issue.get("reactions") or {}
    if isinstance(reactions, Mapping):
        reactions = {k: v for k, v in reactions.items() if k != "url"}
    comments = issue.get("comments", issue.get("comments_count", 0))
    body = issue.get("body") or ""
    return {
        "repo": repo,
        "number": int(issue["number"]),
        "title": (issue.get("title") or "").strip(),
        "body": body,
        "search_body": clean_body(body, templates),
        "user": user.get("login") if isinstance(user, Mapping) else user,
        "author_association": issue.get("author_association"),
        "labels": json.dumps(label_names),
        "state": issue.get("state"),
        "state_reason": issue.get("state_reason"),
        "created_at": issue.get("created_at"),
        "updated_at": issue.get("updated_at"),
        "closed_at": issue.get("closed_at"),
        "comments": comments if isinstance(comments, int) else 0,
        "reactions": json.dumps(reactions if isinstance(reactions, (dict, list)) else {}),
    }


def upsert_issues(db: sqlite_utils.Database, rows: Iterable[dict]) -> int:
    """Insert or update issue rows (from :func:`issue_row`), keeping answer/vector columns that the
    rows do not carry. A changed title or body clears the vector so it gets re-embedded."""
    count = 0
    with db.conn:
        for row in rows:
            if row is None:
                continue
            old = db.execute(
                "SELECT title, search_body FROM issues WHERE repo = ? AND number = ?", [row["repo"], row["number"]]
            ).fetchone()
            if old is not None and (old[0], old[1]) != (row.get("title"), row.get("search_body")):
                row = {**row, "vector": None, "vector_model": None}
            db["issues"].upsert(row, pk=("repo", "number"), alter=True)
            count += 1
    return count


def upsert_issue(db: sqlite_utils.Database, repo: str, issue: Mapping[str, Any], templates: Iterable[str] | frozenset[str] = frozenset()) -> dict | None:
    """Index one GitHub issue object; returns the stored row (None for a pull request)."""
    row = issue_row(repo, issue, templates)
    if row is not None:
        upsert_issues(db, [row])
    return row


def get_issue(db: sqlite_utils.Database, repo: str, number: int) -> dict | None:
    """The stored row (labels/reactions decoded), or None."""
    cur = db.execute("SELECT * FROM issues WHERE repo = ? AND number = ?", [repo, number])
    found = cur.fetchone()
    if found is None:
        return None
    row = dict(zip([d[0] for d in cur.description], found))
    for key in ("labels", "reactions"):
        try:
            row[key] = json.loads(row[key]) if row[key] else ([] if key == "labels" else {})
        except (TypeError, ValueError):
            pass
    return row


def delete_issue(db: sqlite_utils.Database, repo: str, number: int) -> None:
    """Forget an issue (deleted or transferred away) and any cached answer that came from it."""
    with db.conn:
        db.execute("DELETE FROM issues WHERE repo = ? AND number = ?", [repo, number])
        db.execute("DELETE FROM answers_cache WHERE repo = ? AND number = ?", [repo, number])
        bump_vector_version(db, repo)


def set_answer(db: sqlite_utils.Database, repo: str, number: int, answer: str | None, answer_url: str | None) -> None:
    db.execute("UPDATE issues SET answer = ?, answer_url = ? WHERE repo = ? AND number = ?", [answer, answer_url, repo, number])


def vector_to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=VECTOR_DTYPE).tobytes()


def blob_to_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=VECTOR_DTYPE).astype(np.float32)


def set_vectors(db: sqlite_utils.Database, repo: str, items: Iterable[tuple[int, np.ndarray]], model: str) -> None:
    """Store embeddings for issues of ``repo`` (``(number, vector)`` pairs) made by ``model``."""
    with db.conn:
        db.conn.executemany(
            "UPDATE issues SET vector = ?, vector_model = ? WHERE repo = ? AND number = ?",
            [(vector_to_blob(vec), model, repo, int(number)) for number, vec in items],
        )
        bump_vector_version(db, repo)


def issues_without_vector(db: sqlite_utils.Database, repo: str, model: str, limit: int = 1000) -> list[dict]:
    """Issues of ``repo`` whose vector is missing or was made by another embedder."""
    cur = db.execute(
        """SELECT number, title, search_body FROM issues WHERE repo = ?
           AND (vector IS NULL OR vector_model IS NOT ?) ORDER BY number LIMIT ?""",
        [repo, model, limit],
    )
    return [dict(number=n, title=t, search_body=b) for n, t, b in cur.fetchall()]


def bump_vector_version(db: sqlite_utils.Database, repo: str) -> None:
    db.execute(
        "INSERT INTO index_meta(repo, vector_version) VALUES (?, 1) "
        "ON CONFLICT(repo) DO UPDATE SET vector_version = vector_version + 1",
        [repo],
    )


def vector_version(db: sqlite_utils.Database, repo: str) -> int:
    row = db.execute("SELECT vector_version FROM index_meta WHERE repo = ?", [repo]).fetchone()
    return row[0] if row else 0


# --- backfill progress -------------------------------------------------------------------------

def backfill_state(db: sqlite_utils.Database, repo: str) -> dict | None:
    cur = db.execute("SELECT * FROM index_backfill WHERE repo = ?", [repo])
    found = cur.fetchone()
    return dict(zip([d[0] for d in cur.description], found)) if found else None


def save_backfill_state(db: sqlite_utils.Database, repo: str, **fields: Any) -> None:
    """Record progress (e.g. ``last_page=3, done=300``) after each page, so a restart resumes."""
    fields = {"repo": repo, "updated_at": time.time(), **fields}
    db["index_backfill"].upsert(fields, pk="repo", alter=True)
