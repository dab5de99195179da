"""Duplicate candidates for an issue: BM25 (FTS5) + vector cosine, fused, with a calibrated score.

Pure retrieval: every function takes the database and the query; nothing here talks to GitHub or
writes. Only issues of the same repo created *before* the query issue are candidates.

1. BM25: an OR query of the title's content terms plus the ``MAX_BODY_TERMS`` rarest content terms of
   the cleaned body (template, code blocks and URLs stripped; stopwords dropped; each term quoted so
   FTS5 syntax in issue text cannot break the query), ranked by ``bm25(issues_fts, 3, 1)`` (title 3x).
   Cutting the body to its rarest terms is both better (+2 points recall@5) and ~3x faster than all words.
2. Vectors: cosine between the query's embedding and every earlier issue of the repo (a per-repo
   float32 matrix held in memory, reloaded when ``index_meta.vector_version`` changes).
3. Fusion: ``ALPHA * bm25/bm25_top1 + (1 - ALPHA) * cosine`` over the union of both top lists
   (a linear fusion measured better than RRF here).
4. Score: a logistic model over (cosine, title-term overlap, BM25 per query term, fused) fitted on
   rust-lang/rust duplicate pairs (``python -m bot eval duplicates --fit``), so ``score`` reads as the
   probability that the candidate is a true duplicate. ``DEFAULT_THRESHOLD`` was chosen so that, on that
   data, top-1 candidates above it are right >= 90% of the time.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import sqlite_utils

from bot.index import store
from bot.index.text import clean_body, content_terms

MAX_BODY_TERMS = 20
TITLE_WEIGHT = 3.0
BODY_WEIGHT = 1.0
POOL = 100           # candidates taken from each retriever before fusion
ALPHA = 0.4          # weight of normalised BM25 in the fused score (rest: cosine)

# Logistic calibration, fitted by `python -m bot eval duplicates --fit` (see docs/benchmarks-duplicates.md).
# Features: bias, cosine, title overlap, bm25 per query term, fused, margin over the best other candidate.
# Fitted on the 374 strict rust-lang/rust pairs + 500 non-duplicates (top-3 candidates of each query).
COEF_HYBRID = (-5.974, 2.234, 1.207, 0.247, 1.779, 3.528)
COEF_BM25 = (-2.723, 0.0, 2.154, 0.272, -0.924, 3.485)
# Precision >= 0.9 with a useful recall is NOT reachable on the dev data (see the benchmark page): the
# top-1 precision curve tops out around 0.6-0.75. These defaults keep the bot quiet (<0.5% false alarms
# on non-duplicates); a repo can lower `duplicates.threshold` to trade precision for recall.
DEFAULT_THRESHOLD = 0.6
DEFAULT_THRESHOLD_BM25 = 0.6


@dataclass
class Candidate:
    """One possible original of the query issue."""

    number: int
    title: str
    state: str | None
    score: float                      # calibrated probability of being a true duplicate
    why: str                          # short human reason: shared title terms / close meaning
    bm25: float = 0.0
    cosine: float | None = None
    fused: float = 0.0
    features: dict = field(default_factory=dict, repr=False)


def match_query(db: sqlite_utils.Database, title: str, search_body: str, max_body_terms: int = MAX_BODY_TERMS) -> tuple[str, int]:
    """The FTS5 MATCH expression and its number of terms. Body terms are ranked by document frequency
    (``issues_fts_vocab``; a term missing there is taken as rare) and only the rarest are kept."""
    title_terms = content_terms(title)
    body_terms = [t for t in content_terms(search_body) if t not in set(title_terms)]
    if len(body_terms) > max_body_terms:
        df = _document_frequency(db, body_terms)
        body_terms = sorted(body_terms, key=lambda t: df.get(t, 0))[:max_body_terms]
    terms = title_terms + body_terms
    # Quoting makes each term a plain string token: no FTS5 operators (AND/NOT/NEAR/*/:) survive.
    return " OR ".join(f'"{t}"' for t in terms), len(terms)


def _document_frequency(db: sqlite_utils.Database, terms: Sequence[str]) -> dict[str, int]:
    if not terms:
        return {}
    marks = ",".join("?" * len(terms))
    return dict(db.execute(f"SELECT term, doc FROM issues_fts_vocab WHERE term IN ({marks})", list(terms)).fetchall())


def bm25_candidates(
    db: sqlite_utils.Database, repo: str, title: str, search_body: str, before: str | None = None,
    exclude: int | None = None, limit: int = POOL,
) -> tuple[list[tuple[int, float]], int]:
    """``[(number, bm25)]`` best first (bm25 made positive: higher is better) and the query's term count."""
    expression, n_terms = match_query(db, title, search_body)
    if not expression:
        return [], 0
    sql = (
        "SELECT i.number, -bm25(issues_fts, ?, ?) AS s FROM issues_fts JOIN issues i ON i.rowid = issues_fts.rowid "
        "WHERE issues_fts MATCH ? AND i.repo = ?"
    )
    params: list = [TITLE_WEIGHT, BODY_WEIGHT, expression, repo]
    if before:
        sql += " AND i.created_at < ?"
        params.append(before)
    if exclude is not None:
        sql += " AND i.number != ?"
        params.append(exclude)
    sql += " ORDER BY bm25(issues_fts, ?, ?) LIMIT ?"
    params += [TITLE_WEIGHT, BODY_WEIGHT, limit]
    return [(int(n), float(s)) for n, s in db.execute(sql, params).fetchall()], n_terms


class VectorMatrix:
    """A repo's vectors as one float32 matrix sorted by creation time (so "created before" is a prefix)."""

    def __init__(self, numbers: np.ndarray, created: np.ndarray, matrix: np.ndarray, version: int) -> None:
        self.numbers, self.created, self.matrix, self.version = numbers, created, matrix, version
        self.row = {int(n): i for i, n in enumerate(numbers)}

    @classmethod
    def load(cls, db: sqlite_utils.Database, repo: str, model: str | None = None) -> "VectorMatrix":
        version = store.vector_version(db, repo)
        sql = "SELECT number, created_at, vector FROM issues WHERE repo = ? AND vector IS NOT NULL"
        params: list = [repo]
        if model:
            sql += " AND vector_model = ?"
            params.append(model)
        rows = db.execute(sql + " ORDER BY created_at, number", params).fetchall()
        if not rows:
            return cls(np.zeros(0, np.int64), np.zeros(0, "U20"), np.zeros((0, 1), np.float32), version)
        numbers = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        created = np.array([r[1] or "" for r in rows])
        matrix = np.vstack([store.blob_to_vector(r[2]) for r in rows])
        return cls(numbers, created, matrix, version)

    def search(self, vector: np.ndarray, before: str | None = None, exclude: int | None = None, limit: int = POOL) -> list[tuple[int, float]]:
        """``[(number, cosine)]`` best first among issues created strictly before ``before``."""
        end = int(np.searchsorted(self.created, before, side="left")) if before else len(self.numbers)
        if end == 0 or self.matrix.shape[1] != vector.shape[-1]:
            return []
        sims = self.matrix[:end] @ vector.astype(np.float32)
        if exclude is not None and exclude in self.row and self.row[exclude] < end:
            sims[self.row[exclude]] = -2.0
        k = min(limit, end)
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top])]
        return [(int(self.numbers[i]), float(sims[i])) for i in top if sims[i] > -2.0]

    def cosine(self, vector: np.ndarray, number: int) -> float | None:
        i = self.row.get(int(number))
        return None if i is None else float(self.matrix[i] @ vector)


_matrices: dict[tuple[int, str, str | None], VectorMatrix] = {}
_matrices_lock = threading.Lock()


def vector_matrix(db: sqlite_utils.Database, repo: str, model: str | None = None) -> VectorMatrix:
    """The cached matrix for ``repo`` (per database connection), reloaded after any vector write."""
    key = (id(db.conn), repo, model)
    with _matrices_lock:
        cached = _matrices.get(key)
        if cached is None or cached.version != store.vector_version(db, repo):
            cached = VectorMatrix.load(db, repo, model)
            _matrices[key] = cached
        return cached


def title_overlap(query_title: str, candidate_title: str) -> tuple[float, list[str]]:
    """Jaccard overlap of the two titles' content terms, and the shared terms."""
    a, b = content_terms(query_title), content_terms(candidate_title)
    shared = [t for t in a if t in set(b)]
    union = len(set(a) | set(b))
    return (len(shared) / union if union else 0.0), shared


def calibrated(features: dict, hybrid: bool) -> float:
    """Probability that a candidate with these features is a true duplicate (logistic model)."""
    coef = COEF_HYBRID if hybrid else COEF_BM25
    x = (1.0, features.get("cosine") or 0.0, features["title_overlap"], features["bm25_per_term"], features["fused"],
         features.get("margin", 0.0))
    z = sum(c * v for c, v in zip(coef, x))
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def rank(
    db: sqlite_utils.Database, repo: str, title: str, body: str, *, created_at: str | None = None,
    number: int | None = None, templates: Iterable[str] | frozenset[str] = frozenset(),
    query_vector: np.ndarray | None = None, vector_model: str | None = None, limit: int = 10,
    mode: str = "hybrid", search_body: str | None = None,
) -> list[Candidate]:
    """All fused candidates, best first (at most ``limit``), each with its calibrated score.

    ``mode`` is ``hybrid``, ``bm25`` or ``vector`` (the last two for evaluation). Without a
    ``query_vector`` the hybrid falls back to BM25 alone (and its own calibration).
    """
    if search_body is None:
        search_body = clean_body(body or "", templates)
    lexical: list[tuple[int, float]] = []
    n_terms = 0
    if mode in ("hybrid", "bm25"):
        lexical, n_terms = bm25_candidates(db, repo, title, search_body, created_at, number)
    matrix = None
    semantic: list[tuple[int, float]] = []
    use_vectors = query_vector is not None and mode in ("hybrid", "vector")
    if use_vectors:
        matrix = vector_matrix(db, repo, vector_model)
        semantic = matrix.search(query_vector, created_at, number)
    top_bm25 = lexical[0][1] if lexical and lexical[0][1] > 0 else 1.0
    if mode == "vector":
        order = [(n, 0.0, cos) for n, cos in semantic]
    else:
        pool: dict[int, float] = dict(lexical)
        for n, _ in semantic:
            pool.setdefault(n, 0.0)
        order = [(n, s, matrix.cosine(query_vector, n) if matrix is not None else None) for n, s in pool.items()]
        if use_vectors:
            order.sort(key=lambda t: -(ALPHA * t[1] / top_bm25 + (1 - ALPHA) * (t[2] or 0.0)))
        else:
            order.sort(key=lambda t: -t[1])
    order = order[:limit]
    if not order:
        return []
    marks = ",".join("?" * len(order))
    meta = {
        r[0]: (r[1], r[2])
        for r in db.execute(f"SELECT number, title, state FROM issues WHERE repo = ? AND number IN ({marks})", [repo] + [o[0] for o in order])
    }
    result = []
    for n, s, cos in order:
        cand_title, state = meta.get(n, ("", None))
        overlap, shared = title_overlap(title, cand_title)
        fused = ALPHA * s / top_bm25 + (1 - ALPHA) * (cos or 0.0) if use_vectors else s / top_bm25
        features = {
            "cosine": cos,
            "title_overlap": overlap,
            "bm25_per_term": s / max(n_terms, 1),
            "fused": fused,
        }
        features["margin"] = 0.0  # filled in below, once every candidate's fused score is known
        reasons = []
        if shared:
            reasons.append("title terms: " + ", ".join(shared[:6]))
        if cos is not None and cos >= 0.6:
            reasons.append(f"close meaning (cosine {cos:.2f})")
        result.append(
            Candidate(
                number=n, title=cand_title, state=state, score=0.0,
                why="; ".join(reasons) or "similar wording", bm25=s, cosine=cos, fused=fused, features=features,
            )
        )
    hybrid = use_vectors and mode != "bm25"
    for i, cand in enumerate(result):
        best_other = max((c.fused for j, c in enumerate(result) if j != i), default=0.0)
        cand.features["margin"] = cand.fused - best_other
        cand.score = calibrated(cand.features, hybrid)
    return result


def find_duplicates(
    db: sqlite_utils.Database, repo: str, title: str, body: str, *, created_at: str | None = None,
    number: int | None = None, templates: Iterable[str] | frozenset[str] = frozenset(),
    query_vector: np.ndarray | None = None, vector_model: str | None = None,
    threshold: float | None = None, max_candidates: int = 3,
) -> list[Candidate]:
    """Up to ``max_candidates`` earlier issues of ``repo`` scoring at or above ``threshold`` (None:
    the calibrated default for the mode in use). This is what the bot mentions; it never closes."""
    ranked = rank(
        db, repo, title, body, created_at=created_at, number=number, templates=templates,
        query_vector=query_vector, vector_model=vector_model, limit=max(10, max_candidates),
    )
    if threshold is None:
        threshold = DEFAULT_THRESHOLD if query_vector is not None else DEFAULT_THRESHOLD_BM25
    chosen = [c for c in ranked if c.score >= threshold]
    chosen.sort(key=lambda c: -c.score)
    return chosen[:max_candidates]
