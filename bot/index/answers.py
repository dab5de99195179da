"""Answer cache: reuse the accepted answer of an earlier, near-identical question with no model call.

Lookup order: an in-process LRU (cachetools) keyed by the normalised-question hash, then the
``answers_cache`` table (same key), then optionally a *strict* semantic match over stored vectors of
answered questions. Entries are removed when their source issue or answer comment is edited or deleted,
or when the reused answer gets a thumbs-down from the new issue's author (:func:`invalidate_issue`,
:func:`invalidate_answer_comment`, :func:`invalidate_key`).
"""
from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass

import numpy as np
import sqlite_utils
from cachetools import LRUCache

from bot.index.text import normalize

SEMANTIC_THRESHOLD = 0.95   # cosine; deliberately strict: a wrong reused answer costs more than a model call
LRU_SIZE = 4096

_QUESTION_START = re.compile(
    r"^\s*(how|why|what|when|where|which|who|can|could|is|are|does|do|did|should|would|will|may|"
    r"has|have|am|was|were|any|anyone|help)\b",
    re.I,
)


@dataclass(frozen=True)
class CachedAnswer:
    repo: str
    number: int
    answer: str
    answer_url: str | None
    how: str            # "exact" or "semantic (cosine 0.97)"


def is_question(title: str, body: str = "") -> bool:
    """Cheap heuristic until triage decides: title ends with '?' or starts with a question word."""
    title = (title or "").strip()
    return title.endswith("?") or bool(_QUESTION_START.match(title))


def question_text(title: str, body: str = "") -> str:
    """The normalised question that is hashed: title plus body, folded, punctuation dropped."""
    return normalize(f"{title or ''}\n{body or ''}")


def question_key(repo: str, title: str, body: str = "") -> str:
    return hashlib.sha256(f"{repo}\n{question_text(title, body)}".encode("utf-8")).hexdigest()


class AnswerCache:
    """The LRU in front of the ``answers_cache`` table. One per process; pass the db on each call."""

    def __init__(self, size: int = LRU_SIZE) -> None:
        self._lru: LRUCache = LRUCache(maxsize=size)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def put(self, db: sqlite_utils.Database, repo: str, number: int, title: str, body: str, answer: str,
            answer_url: str | None = None, answer_comment_id: int | None = None) -> str:
        """Remember the answer of issue ``number``; returns the key."""
        key = question_key(repo, title, body)
        db["answers_cache"].upsert(
            {"key": key, "repo": repo, "number": number, "question": question_text(title, body), "answer": answer,
             "answer_url": answer_url, "answer_comment_id": answer_comment_id, "created_at": time.time()},
            pk="key",
        )
        with self._lock:
            self._lru[key] = CachedAnswer(repo, number, answer, answer_url, "exact")
        return key

    def get_exact(self, db: sqlite_utils.Database, repo: str, title: str, body: str = "") -> CachedAnswer | None:
        key = question_key(repo, title, body)
        with self._lock:
            found = self._lru.get(key)
        if found is None:
            row = db.execute("SELECT repo, number, answer, answer_url FROM answers_cache WHERE key = ?", [key]).fetchone()
            if row is not None:
                found = CachedAnswer(row[0], row[1], row[2], row[3], "exact")
                with self._lock:
                    self._lru[key] = found
        with self._lock:
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
        return found

    def lookup(self, db: sqlite_utils.Database, repo: str, title: str, body: str = "", *, number: int | None = None,
               query_vector: np.ndarray | None = None, threshold: float = SEMANTIC_THRESHOLD) -> CachedAnswer | None:
        """Exact match first, then (with ``query_vector``) the most similar answered question of the
        repo if its cosine is at least ``threshold``. Never returns the issue itself."""
        found = self.get_exact(db, repo, title, body)
        if found is not None and found.number != number:
            return found
        if query_vector is None:
            return None
        return semantic_match(db, repo, query_vector, threshold, exclude=number)

    def forget(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._lru.pop(key, None)


def semantic_match(db: sqlite_utils.Database, repo: str, query_vector: np.ndarray, threshold: float = SEMANTIC_THRESHOLD,
                   exclude: int | None = None) -> CachedAnswer | None:
    """The answered question of ``repo`` closest to ``query_vector`` if cosine >= ``threshold``."""
    from bot.index.store import blob_to_vector

    rows = db.execute(
        "SELECT number, answer, answer_url, vector FROM issues WHERE repo = ? AND answer IS NOT NULL AND vector IS NOT NULL"
        " AND is_question = 1",
        [repo],
    ).fetchall()
    best = None
    for number, answer, url, blob in rows:
        if number == exclude:
            continue
        vec = blob_to_vector(blob)
        if vec.shape != query_vector.shape:
            continue
        cos = float(vec @ query_vector)
        if cos >= threshold and (best is None or cos > best[0]):
            best = (cos, number, answer, url)
    if best is None:
        return None
    return CachedAnswer(repo, best[1], best[2], best[3], f"semantic (cosine {best[0]:.2f})")


def _delete(db: sqlite_utils.Database, cache: AnswerCache | None, where: str, params: list) -> int:
    keys = [r[0] for r in db.execute(f"SELECT key FROM answers_cache WHERE {where}", params).fetchall()]
    if keys:
        db.execute(f"DELETE FROM answers_cache WHERE {where}", params)
    if cache is not None:
        cache.forget(keys)
    return len(keys)


def invalidate_issue(db: sqlite_utils.Database, repo: str, number: int, cache: AnswerCache | None = None) -> int:
    """Source issue edited or deleted: drop its cache entries and its stored answer. Returns entries removed."""
    db.execute("UPDATE issues SET answer = NULL, answer_url = NULL WHERE repo = ? AND number = ?", [repo, number])
    return _delete(db, cache, "repo = ? AND number = ?", [repo, number])


def invalidate_answer_comment(db: sqlite_utils.Database, repo: str, comment_id: int, cache: AnswerCache | None = None) -> int:
    """The answer comment was edited or deleted."""
    numbers = [r[0] for r in db.execute(
        "SELECT number FROM answers_cache WHERE repo = ? AND answer_comment_id = ?", [repo, comment_id]).fetchall()]
    for number in numbers:
        db.execute("UPDATE issues SET answer = NULL, answer_url = NULL WHERE repo = ? AND number = ?", [repo, number])
    return _delete(db, cache, "repo = ? AND answer_comment_id = ?", [repo, comment_id])


def invalidate_key(db: sqlite_utils.Database, key: str, cache: AnswerCache | None = None) -> int:
    """A reused answer got 👎 from the new issue's author: drop that exact entry."""
    return _delete(db, cache, "key = ?", [key])
