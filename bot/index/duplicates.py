"""Duplicate candidates for an issue: BM25 (FTS5) + vector cosine, reranked by a calibrated score.

Pure retrieval: every function takes the database and the query; nothing here talks to GitHub or
writes. Only issues of the same repo created *before* the query issue are candidates.

1. BM25: an OR query of at most ``MAX_TERMS`` content terms (title terms first, then the rarest body
   terms), stemmed as FTS5 porter does and de-duplicated by stem; terms in more than ``MAX_DF_FRACTION``
   of the index are dropped and the summed postings are capped at ``MAX_POSTINGS`` (each term quoted so
   FTS5 syntax in issue text cannot break the query), ranked by ``bm25(issues_fts, 3, 1)`` (title 3x)
   inside FTS5, then filtered to the repo and time window.
2. Vectors: cosine between the query's embedding and every earlier issue of the repo (a per-repo
   float32 matrix held in memory, reloaded when ``index_meta.vector_version`` changes).
3. Title-to-title: an FTS5 query on the title column alone with the query's rarest title terms.
4. Rerank: the union of the three top ``POOL`` lists is scored by a logistic model over ``FEATURES`` (BM25
   score/rank, title/body BM25, cosine, title and IDF-weighted term overlap, shared error lines, error
   codes and code identifiers, days between the issues), fitted per vector model (``COEFS``; "bm25" when
   there are no vectors) by ``python -m bot eval duplicates --fit`` with 2-fold cross-validation. ``score``
   reads as the probability that the candidate is the marked original; ``THRESHOLDS`` are the per-model
   comment thresholds chosen on held-out data (docs/benchmarks-duplicates.md: precision 0.9 is NOT
   reachable on the dev data; the thresholds are the best held-out precision at >= 1% recall).
5. Say it or not: :func:`confidence` of the top candidate (its score and its margin over the runner-up,
   a second logistic fitted out-of-fold) must reach the threshold before anything is mentioned; the
   margin is what keeps the best of ten issues in a small repository from being offered by default.

Terms found in fewer than ``MIN_DF_CAP`` documents are never dropped as too common, so a repository of
a few issues still matches the words two reports share.
"""
from __future__ import annotations

import math
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import sqlite_utils

from bot.index import store
from bot.index.store import FTS_TOKENIZE
from bot.index.text import STOPWORDS, clean_body, content_terms

MAX_TERMS = 16        # query terms kept (title and body), rarest first, after stemming/dedup
MAX_DF_FRACTION = 0.2  # terms in more than this share of the index are dropped (slow and unspecific)
MIN_DF_CAP = 50       # ... but never for fewer documents than this: in a repository of ten issues every shared
                      # word is in 20% of them (the query issue itself counts), and dropping them all left an
                      # obvious duplicate with no lexical match at all
MAX_POSTINGS = 40_000  # cap on the summed document frequency of the query terms (rarest kept): bounds the
                       # FTS5 cost at 100k issues; never binds on the 8.5k dev pool (p99 7,300)
TITLE_WEIGHT = 3.0
BODY_WEIGHT = 1.0
POOL = 50            # candidates taken from each retriever before reranking
TITLE_POOL = True    # add the title-to-title retriever's top POOL to the candidates
FTS_OVERFETCH = 4    # FTS5-only ranking fetches this many times POOL before the repo/time filter
ALPHA = 0.4          # legacy linear fusion weight (kept for the `fused` feature/diagnostics)

# Reranker + calibration: a logistic model over FEATURES (see _features), fitted by
# `python -m bot eval duplicates --fit` (2-fold cross-validated; docs/benchmarks-duplicates.md). Keyed by the
# vector model that made the cosines ("bm25" = no vectors). The score is the probability that a candidate
# is the marked original; candidates are ordered by it.
FEATURES = ("bm25_norm", "bm25_per_term", "bm25_rr", "bm25_title_pt", "bm25_body_pt", "cosine", "cosine_rel",
            "vector_rr", "title_jaccard", "title_idf", "terms_idf", "error_lines", "error_codes", "identifiers",
            "identifiers_jaccard", "log_days", "title_rr")
SHIPPED_MODEL = "wordllama-256"
COEFS: dict[str, tuple[float, ...]] = {
    # (bias, *weights in FEATURES order). `--fit` on 374 strict + 102 loose rust-lang/rust pairs and 500
    # training non-duplicates (disjoint from the 500 used for false alarms); held-out numbers in the doc.
    "wordllama-256": (-5.5964, 2.1817, 0.0307, 1.4449, 0.2818, 0.0912, 1.1653, 1.9915, 0.6184, 0.2065, 1.282,
                      -0.7993, 0.0169, 1.2504, 0.1537, 0.7224, -0.3885, 0.1343),
    "bm25": (-5.492, 2.1207, -0.2042, 1.8641, 0.3943, 0.3107, 0.0, 0.0, 0.0, 0.8076, 0.8458, 0.3721, 0.1582,
             1.2351, 0.1787, 0.9662, -0.4199, 0.3434),
}
# Fitted with MiniLM cosines on the earlier 5-feature model (bias, cosine, title_overlap, bm25_per_term,
# fused, margin); MiniLM is not shipped, so these are kept for reference only. An embedder without its own
# entry in COEFS is ranked and scored with the "bm25" model (vector features ignored).
LEGACY_MINILM_COEF = (-5.974, 2.234, 1.207, 0.247, 1.779, 3.528)
# Precision >= 0.9 is NOT reached at any threshold with >= 1% recall on held-out pairs (best ~0.63 with the
# confidence stage, ~0.55 without), so each threshold (applied to ``confidence``) is the one with the best
# held-out top-1 precision among those with >= 1% recall (see the doc).
THRESHOLDS: dict[str, float] = {"wordllama-256": 0.48, "bm25": 0.57}  # on the confidence, see CONFIDENCE
# Whether to *say* anything: the top candidate's confidence = a logistic over its score's logit and its
# margin (logit) over the runner-up. A clear winner is far more often right than a close call, and the
# margin is what makes the score work in a repository of ten issues (the best of ten is not a duplicate
# because it is the best). Fitted on out-of-fold scores by `--fit`: (bias, w_logit, w_margin) per model.
# A model without an entry uses its top score alone.
CONFIDENCE: dict[str, tuple[float, float, float]] = {
    "wordllama-256": (-1.0289, 0.5727, 0.2376),
    "bm25": (-1.0404, 0.6082, 0.288),
}
RUNNER_UP_FLOOR = 1e-4  # the runner-up's score when there is none
DEFAULT_THRESHOLD = THRESHOLDS[SHIPPED_MODEL]
DEFAULT_THRESHOLD_BM25 = THRESHOLDS["bm25"]


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


_stem_lock = threading.Lock()
_stem_conn: sqlite3.Connection | None = None
_stems: dict[str, str] = {}


def stems(words: Sequence[str]) -> list[str]:
    """Porter stems of ``words`` exactly as the index's FTS5 ``porter`` tokenizer makes them (so they can
    be looked up in ``issues_fts_vocab``); computed by SQLite itself in a private in-memory table, cached."""
    global _stem_conn
    with _stem_lock:
        todo = [w for w in dict.fromkeys(words) if w not in _stems]
        if todo:
            if _stem_conn is None:
                _stem_conn = sqlite3.connect(":memory:", check_same_thread=False)
                _stem_conn.execute(f"CREATE VIRTUAL TABLE s USING fts5(x, tokenize={FTS_TOKENIZE!r})")
                _stem_conn.execute("CREATE VIRTUAL TABLE sv USING fts5vocab(s, 'instance')")
            for lo in range(0, len(todo), 500):
                chunk = todo[lo:lo + 500]
                _stem_conn.execute("DELETE FROM s")
                _stem_conn.execute("INSERT INTO s(x) VALUES (?)", [" ".join(chunk)])
                got = dict(_stem_conn.execute("SELECT offset, term FROM sv").fetchall())
                for i, w in enumerate(chunk):
                    _stems[w] = got.get(i, w)
            if len(_stems) > 200_000:
                _stems.clear()
        return [_stems.get(w, w) for w in words]


def _corpus_size(db: sqlite_utils.Database) -> int:
    row = db.execute("SELECT max(rowid) FROM issues").fetchone()
    return int(row[0] or 0)


def match_query(
    db: sqlite_utils.Database, title: str, search_body: str, max_terms: int = MAX_TERMS,
    max_df_fraction: float = MAX_DF_FRACTION,
) -> tuple[str, int]:
    """The FTS5 MATCH expression and its number of terms.

    Title and body content terms are stemmed (as FTS5 porter does) and de-duplicated by stem; terms in more
    than ``max_df_fraction`` of the index are dropped; of the rest the ``max_terms`` rarest are kept (document
    frequency from ``issues_fts_vocab``), title terms first; then, rarest first, only as many as fit in
    ``MAX_POSTINGS`` postings. Fewer, rarer terms: better recall@5 on the dev data and 3-10x shorter
    posting lists to score."""
    title_terms = content_terms(title)
    body_terms = content_terms(search_body)
    words = title_terms + [t for t in body_terms if t not in set(title_terms)]
    if not words:
        return "", 0
    stemmed = stems(words)
    first: dict[str, tuple[str, bool]] = {}
    n_title = len(title_terms)
    for i, (w, st) in enumerate(zip(words, stemmed)):
        first.setdefault(st, (w, i < n_title))
    df = _document_frequency(db, list(first))
    limit = max(float(MIN_DF_CAP), max_df_fraction * _corpus_size(db))
    kept = [(st, w, is_title) for st, (w, is_title) in first.items() if df.get(st, 0) <= limit]
    titles = sorted([k for k in kept if k[2]], key=lambda k: df.get(k[0], 0))[:max_terms]
    bodies = sorted([k for k in kept if not k[2]], key=lambda k: df.get(k[0], 0))[: max_terms - len(titles)]
    terms, postings = [], 0
    for st, word, _ in sorted(titles + bodies, key=lambda k: df.get(k[0], 0)):
        if terms and postings + df.get(st, 0) > MAX_POSTINGS:
            break
        terms.append(word)
        postings += df.get(st, 0)
    # Quoting makes each term a plain string token: no FTS5 operators (AND/NOT/NEAR/*/:) survive.
    return " OR ".join(f'"{t}"' for t in terms), len(terms)


# id(connection) -> (connection, born, {stem: df}); the connection is held so its id cannot be reused.
_df_cache: "OrderedDict[int, tuple[object, float, dict[str, int]]]" = OrderedDict()
_df_lock = threading.Lock()
DF_CACHE_SECONDS = 600.0  # document frequencies drift slowly; a few minutes' staleness only nudges ranking


def _document_frequency(db: sqlite_utils.Database, terms: Sequence[str]) -> dict[str, int]:
    """Documents containing each (stemmed) term, from the FTS vocabulary (cached per connection for
    ``DF_CACHE_SECONDS``: the fts5vocab lookup costs 5-10 ms a query at 100k issues)."""
    if not terms:
        return {}
    now = time.monotonic()
    with _df_lock:
        conn, born, cache = _df_cache.get(id(db.conn), (db.conn, now, {}))
        if conn is not db.conn or now - born > DF_CACHE_SECONDS or len(cache) > 500_000:
            born, cache = now, {}
        _df_cache[id(db.conn)] = (db.conn, born, cache)
        _df_cache.move_to_end(id(db.conn))
        while len(_df_cache) > 8:
            _df_cache.popitem(last=False)
        missing = [t for t in dict.fromkeys(terms) if t not in cache]
    found: dict[str, int] = {}
    for lo in range(0, len(missing), 400):
        chunk = missing[lo:lo + 400]
        marks = ",".join("?" * len(chunk))
        found.update(db.execute(f"SELECT term, doc FROM issues_fts_vocab WHERE term IN ({marks})", chunk).fetchall())
    with _df_lock:
        for t in missing:
            cache[t] = found.get(t, 0)
        return {t: cache.get(t, found.get(t, 0)) for t in terms}


def _visible(prefix: str, before: str | None, exclude: int | None) -> tuple[str, list]:
    """SQL that keeps only what the query issue could have seen: earlier issues, never itself."""
    where, params = "", []
    if before:
        where += f" AND {prefix}created_at < ?"
        params.append(before)
    if exclude is not None:
        where += f" AND {prefix}number != ?"
        params.append(exclude)
    return where, params


def bm25_candidates(
    db: sqlite_utils.Database, repo: str, title: str, search_body: str, before: str | None = None,
    exclude: int | None = None, limit: int = POOL, with_columns: bool = False,
) -> tuple[list[tuple], int]:
    """``[(number, bm25)]`` best first (bm25 made positive: higher is better) and the query's term count.
    ``with_columns`` adds the title-only and body-only BM25 of each hit: ``(number, bm25, title, body)``."""
    expression, n_terms = match_query(db, title, search_body)
    if not expression:
        return [], 0
    cols = ", -bm25(issues_fts, 1, 0), -bm25(issues_fts, 0, 1)" if with_columns else ""
    # Fast path: rank in FTS5 alone (no per-match row lookup: 2.5x faster at 100k issues), then keep the
    # hits of this repo created before the query. BM25 is the same either way (its statistics are global),
    # so when at least ``limit`` hits survive the filter the result equals the joined query's.
    fetch = FTS_OVERFETCH * limit
    hits = db.execute(
        f"SELECT rowid, -bm25(issues_fts, ?, ?){cols} FROM issues_fts WHERE issues_fts MATCH ? "
        "ORDER BY bm25(issues_fts, ?, ?) LIMIT ?",
        [TITLE_WEIGHT, BODY_WEIGHT, expression, TITLE_WEIGHT, BODY_WEIGHT, fetch],
    ).fetchall()
    if hits:
        marks = ",".join("?" * len(hits))
        where, extra = _visible("", before, exclude)
        sql = f"SELECT rowid, number FROM issues WHERE rowid IN ({marks}) AND repo = ?{where}"
        params: list = [h[0] for h in hits] + [repo] + extra
        visible = dict(db.execute(sql, params).fetchall())
        out = [(int(visible[h[0]]), *(float(v) for v in h[1:])) for h in hits if h[0] in visible][:limit]
        if len(out) >= limit or len(hits) < fetch:
            return out, n_terms
    # Slow path (many hits filtered out: other repos, later issues): join and filter inside SQLite.
    # CROSS JOIN pins the plan: scan the FTS match once, then look rows up by rowid. Left to itself SQLite
    # may walk issues(repo, created_at) and re-run the MATCH per row (seconds at 100k issues).
    sql = (
        f"SELECT i.number, -bm25(issues_fts, ?, ?) AS s{cols} FROM issues_fts CROSS JOIN issues i "
        "ON i.rowid = issues_fts.rowid WHERE issues_fts MATCH ? AND i.repo = ?"
    )
    where, extra = _visible("i.", before, exclude)
    sql += where
    params = [TITLE_WEIGHT, BODY_WEIGHT, expression, repo] + extra
    sql += " ORDER BY bm25(issues_fts, ?, ?) LIMIT ?"
    params += [TITLE_WEIGHT, BODY_WEIGHT, limit]
    rows = db.execute(sql, params).fetchall()
    return [(int(r[0]), *(float(v) for v in r[1:])) for r in rows], n_terms


TITLE_TERMS = 8       # rarest title terms in the title-to-title query


def title_candidates(
    db: sqlite_utils.Database, repo: str, title: str, before: str | None = None, exclude: int | None = None,
    limit: int = POOL,
) -> list[int]:
    """Title-to-title matching: earlier issues of ``repo`` whose *title* matches the query's title terms
    (FTS5 column filter, the ``TITLE_TERMS`` rarest), best first. Two reports of one bug often share
    their title's key words while their bodies differ (one pastes code, the other prose)."""
    words = content_terms(title)
    if not words:
        return []
    stemmed = stems(words)
    first: dict[str, str] = {}
    for w, st in zip(words, stemmed):
        first.setdefault(st, w)
    df = _document_frequency(db, list(first))
    cap = max(float(MIN_DF_CAP), MAX_DF_FRACTION * _corpus_size(db))
    kept = sorted((st for st in first if df.get(st, 0) <= cap), key=lambda st: df.get(st, 0))[:TITLE_TERMS]
    if not kept:
        return []
    expression = "{title} : (" + " OR ".join(f'"{first[st]}"' for st in kept) + ")"
    fetch = FTS_OVERFETCH * limit
    hits = db.execute(
        "SELECT rowid FROM issues_fts WHERE issues_fts MATCH ? ORDER BY bm25(issues_fts, 1, 0) LIMIT ?",
        [expression, fetch],
    ).fetchall()
    if not hits:
        return []
    marks = ",".join("?" * len(hits))
    where, extra = _visible("", before, exclude)
    visible = dict(db.execute(f"SELECT rowid, number FROM issues WHERE rowid IN ({marks}) AND repo = ?{where}",
                              [h[0] for h in hits] + [repo] + extra).fetchall())
    out = [int(visible[h[0]]) for h in hits if h[0] in visible][:limit]
    if len(out) >= limit or len(hits) < fetch:
        return out
    where, extra = _visible("i.", before, exclude)
    rows = db.execute(
        "SELECT i.number FROM issues_fts CROSS JOIN issues i ON i.rowid = issues_fts.rowid "
        f"WHERE issues_fts MATCH ? AND i.repo = ?{where} ORDER BY bm25(issues_fts, 1, 0) LIMIT ?",
        [expression, repo] + extra + [limit]).fetchall()
    return [int(r[0]) for r in rows]


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
    a, b = _terms(query_title or ""), _terms(candidate_title or "")
    shared = [t for t in a if t in set(b)]
    union = len(set(a) | set(b))
    return (len(shared) / union if union else 0.0), shared


_ERROR_LINE = re.compile(r"(error(\[E\d{4}\])?:|panicked at|internal compiler error|assertion failed)", re.I)
_ERROR_CODE = re.compile(r"\bE\d{4}\b")
# Code identifiers: paths a::b, snake_case, CamelCase, #[attributes], macros!
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)+|[a-z][a-z0-9]*_[a-z0-9_]+|"
                    r"[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*|#\[[a-z_]+|[a-z_]+!")
_VOLATILE = re.compile(r"\d+|0x[0-9a-f]+|/[\w./-]+|`")


_WORD = re.compile(r"[^\W_]+", re.U)
_sig_cache: "OrderedDict[tuple, dict]" = OrderedDict()
_sig_lock = threading.Lock()
SIGNATURE_CACHE = 4096


def _terms(text: str) -> list[str]:
    """:func:`content_terms` with an ASCII fast path (most issue text): same result, ~5x cheaper."""
    if not text.isascii():
        return content_terms(text)
    seen: dict[str, None] = {}
    for tok in _WORD.findall(text.lower()):
        if len(tok) >= 2 and tok not in STOPWORDS and not tok.isdigit():
            seen.setdefault(tok, None)
    return list(seen)


def _cached_signature(key: tuple, title: str, search_body: str, body: str, created_at: str | None) -> dict:
    """:func:`_signature` of a stored issue, memoised on its content (an edit changes the key)."""
    key = (*key, hash((title, search_body, body, created_at)))
    with _sig_lock:
        hit = _sig_cache.get(key)
        if hit is not None:
            _sig_cache.move_to_end(key)
            return hit
    sig = _signature(title, search_body, body, created_at)
    with _sig_lock:
        _sig_cache[key] = sig
        while len(_sig_cache) > SIGNATURE_CACHE:
            _sig_cache.popitem(last=False)
    return sig


def _signature(title: str, search_body: str, body: str, created_at: str | None) -> dict:
    """What the reranker compares between two issues (from the raw body: code blocks matter here)."""
    body = (body or "")[:8_000]
    errors = set()
    for line in body.splitlines():
        if _ERROR_LINE.search(line):
            key = " ".join(_VOLATILE.sub(" ", line.strip().lower()).split())[:120]
            if len(key) > 12:
                errors.add(key)
    title_words = _terms(title or "")
    all_words = title_words + _terms((search_body or "")[:4_000])
    st = stems(all_words)
    try:
        ts = datetime.fromisoformat((created_at or "").replace("Z", "+00:00")).timestamp()
    except ValueError:
        ts = None
    return {
        "errors": errors, "codes": set(_ERROR_CODE.findall(body + " " + (title or ""))),
        "idents": {i.lower() for i in _IDENT.findall(body + " " + (title or ""))},
        "title": set(st[: len(title_words)]), "all": set(st), "ts": ts,
    }


def _idf_overlap(query: set, other: set, idf: dict) -> float:
    total = sum(idf.get(t, 0.0) for t in query)
    return sum(idf.get(t, 0.0) for t in query & other) / total if total > 0 else 0.0


def calibrated(features: dict, hybrid: bool | str = False) -> float:
    """Probability that a candidate with these features is the true original (logistic model).

    ``hybrid`` is the vector model name whose coefficients to use (True: the shipped embedder's, False or
    "bm25": BM25 alone). Unknown models fall back to the BM25 model, which ignores vector features."""
    key = hybrid if isinstance(hybrid, str) else (SHIPPED_MODEL if hybrid else "bm25")
    coef = COEFS.get(key) or COEFS["bm25"]
    z = coef[0] + sum(c * float(features.get(name) or 0.0) for c, name in zip(coef[1:], FEATURES))
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def confidence(scores: Sequence[float], model: str | None) -> float:
    """How sure we are that the best of ``scores`` (best first) is a duplicate at all: the model's
    ``CONFIDENCE`` logistic over the top score's logit and its margin over the runner-up."""
    if not scores:
        return 0.0
    key = model if model in COEFS else "bm25"
    coef = CONFIDENCE.get(key)
    if coef is None:
        return float(scores[0])
    top = _logit(scores[0])
    margin = top - _logit(scores[1] if len(scores) > 1 else RUNNER_UP_FLOOR)
    z = coef[0] + coef[1] * top + coef[2] * margin
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def threshold_for(model: str | None) -> float:
    """The calibrated default threshold for a vector model (None / unknown: BM25 alone)."""
    key = model if model in COEFS else "bm25"
    return THRESHOLDS.get(key, DEFAULT_THRESHOLD_BM25 if key == "bm25" else DEFAULT_THRESHOLD)


def rank(
    db: sqlite_utils.Database, repo: str, title: str, body: str, *, created_at: str | None = None,
    number: int | None = None, templates: Iterable[str] | frozenset[str] = frozenset(),
    query_vector: np.ndarray | None = None, vector_model: str | None = None, limit: int = 10,
    mode: str = "hybrid", search_body: str | None = None, rerank: bool = True,
) -> list[Candidate]:
    """All candidates, best first (at most ``limit``), each with its calibrated score.

    ``mode`` is ``hybrid``, ``bm25`` or ``vector`` (the last two for evaluation). Without a
    ``query_vector`` the hybrid falls back to BM25 alone (and its own model). Candidates are the union of
    the BM25 and vector top ``POOL``; they are ordered by the fitted model's score (``rerank=False``: by
    the raw retriever score, for evaluation).
    """
    if search_body is None:
        search_body = clean_body(body or "", templates)
    lexical: list[tuple] = []
    n_terms = 0
    if mode in ("hybrid", "bm25"):
        lexical, n_terms = bm25_candidates(db, repo, title, search_body, created_at, number, with_columns=True)
    titled = title_candidates(db, repo, title, created_at, number) if mode in ("hybrid", "bm25") and TITLE_POOL else []
    matrix = None
    semantic: list[tuple[int, float]] = []
    use_vectors = query_vector is not None and mode in ("hybrid", "vector")
    if use_vectors:
        matrix = vector_matrix(db, repo, vector_model)
        query_vector = np.asarray(query_vector, dtype=np.float32)
        semantic = matrix.search(query_vector, created_at, number)
    # An embedder without fitted coefficients is scored by the BM25 model (its vector weights are 0).
    model_key = vector_model if use_vectors and vector_model in COEFS else "bm25"
    pool = list(dict.fromkeys([r[0] for r in lexical] + [n for n, _ in semantic] + titled))
    if not pool:
        return []
    lex = {r[0]: (i, r) for i, r in enumerate(lexical)}
    sem = {n: i for i, (n, _) in enumerate(semantic)}
    tit = {n: i for i, n in enumerate(titled)}
    top_bm25 = lexical[0][1] if lexical and lexical[0][1] > 0 else 1.0
    cosines = {n: (matrix.cosine(query_vector, n) if matrix is not None else None) for n in pool}
    best_cos = max((c for c in cosines.values() if c is not None), default=0.0)
    marks = ",".join("?" * len(pool))
    meta = {
        r[0]: r[1:]
        for r in db.execute(
            f"SELECT number, title, state, search_body, body, created_at FROM issues WHERE repo = ? AND number IN ({marks})",
            [repo] + pool,
        )
    }
    # A query without a creation time is a new issue: "now" (the age gap is one of the model's features).
    query_sig = _signature(title, search_body, body, created_at or datetime.now(timezone.utc).isoformat())
    idf_n = max(_corpus_size(db), 1)
    idf = {t: math.log((idf_n + 1) / (d + 0.5)) for t, d in _document_frequency(db, list(query_sig["all"])).items()}
    for t in query_sig["all"]:
        idf.setdefault(t, math.log((idf_n + 1) / 0.5))
    result = []
    for n in pool:
        cand_title, state, cand_search, cand_body, cand_created = meta.get(n, ("", None, "", "", None))
        sig = _cached_signature((id(db.conn), repo, n), cand_title, cand_search, cand_body, cand_created)
        hit = lex.get(n)
        s = hit[1][1] if hit else 0.0
        cos = cosines[n]
        overlap, shared = title_overlap(title, cand_title)
        days = ((query_sig["ts"] - sig["ts"]) / 86400 if query_sig["ts"] is not None and sig["ts"] is not None else 365.0)
        vec_ok = use_vectors and cos is not None
        features = {
            "bm25_norm": s / top_bm25,
            "bm25_per_term": s / max(n_terms, 1),
            "bm25_rr": 1.0 / (1 + hit[0]) if hit else 0.0,
            "bm25_title_pt": hit[1][2] / max(n_terms, 1) if hit else 0.0,
            "bm25_body_pt": hit[1][3] / max(n_terms, 1) if hit else 0.0,
            "cosine": cos if vec_ok else 0.0,
            "cosine_rel": (cos - best_cos) if vec_ok else 0.0,
            "vector_rr": 1.0 / (1 + sem[n]) if vec_ok and n in sem else 0.0,
            "title_jaccard": overlap,
            "title_idf": _idf_overlap(query_sig["title"], sig["title"], idf),
            "terms_idf": _idf_overlap(query_sig["all"], sig["all"], idf),
            "error_lines": min(3, len(query_sig["errors"] & sig["errors"])),
            "error_codes": min(3, len(query_sig["codes"] & sig["codes"])),
            "identifiers": min(5, len(query_sig["idents"] & sig["idents"])),
            "identifiers_jaccard": len(query_sig["idents"] & sig["idents"]) / max(1, len(query_sig["idents"] | sig["idents"])),
            "log_days": math.log1p(max(0.0, days)),
            "title_rr": 1.0 / (1 + tit[n]) if n in tit else 0.0,
        }
        fused = ALPHA * s / top_bm25 + (1 - ALPHA) * (cos or 0.0) if use_vectors else s / top_bm25
        reasons = []
        if shared:
            reasons.append("title terms: " + ", ".join(shared[:6]))
        shared_errors = query_sig["codes"] & sig["codes"]
        if shared_errors or features["error_lines"]:
            reasons.append("same error" + (" " + ", ".join(sorted(shared_errors)[:3]) if shared_errors else " message"))
        if cos is not None and cos >= 0.6:
            reasons.append(f"close meaning (cosine {cos:.2f})")
        cand = Candidate(
            number=n, title=cand_title, state=state, score=0.0, why="; ".join(reasons) or "similar wording",
            bm25=s, cosine=cos, fused=fused, features=features,
        )
        cand.score = calibrated(features, model_key)
        result.append(cand)
    if mode == "vector":
        result.sort(key=lambda c: -(c.cosine or 0.0))
    elif rerank:
        result.sort(key=lambda c: -c.score)
    elif use_vectors:
        result.sort(key=lambda c: -c.fused)
    else:
        result.sort(key=lambda c: -c.bm25)
    return result[:limit]


def find_duplicates(
    db: sqlite_utils.Database, repo: str, title: str, body: str, *, created_at: str | None = None,
    number: int | None = None, templates: Iterable[str] | frozenset[str] = frozenset(),
    query_vector: np.ndarray | None = None, vector_model: str | None = None,
    threshold: float | None = None, max_candidates: int = 3,
) -> list[Candidate]:
    """Up to ``max_candidates`` earlier issues of ``repo`` scoring at or above ``threshold`` (None:
    the calibrated default for the vector model in use, or BM25's). This is what the bot mentions; it
    never closes."""
    ranked = rank(
        db, repo, title, body, created_at=created_at, number=number, templates=templates,
        query_vector=query_vector, vector_model=vector_model, limit=max(10, max_candidates),
    )
    model = vector_model if query_vector is not None else None
    if threshold is None:
        threshold = threshold_for(model)
    if not ranked or confidence([c.score for c in ranked], model) < threshold:
        return []
    # The top candidate is confident enough to mention; others come along only if they score as high
    # as the top is required to be sure (a second report of the same bug is often a duplicate too).
    chosen = [ranked[0]] + [c for c in ranked[1:] if c.score >= threshold]
    return chosen[:max_candidates]
