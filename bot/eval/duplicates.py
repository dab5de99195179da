"""`python -m bot eval duplicates --data DIR`: retrieval quality of duplicate detection.

DIR holds ``issues.jsonl`` (the pool) and ``dup_pairs_dev.csv`` (duplicate -> original pairs), as in
shared/evaldata/rust-duplicates. The pool is indexed with the production code (bot.index.store,
bot.index.embed); each strict pair whose original is older is queried with only earlier issues visible.
Reports recall@1/5/10 and MRR for BM25 alone, vectors alone and the hybrid; precision/recall at the
comment threshold; the false-alarm rate on issues without a known duplicate; query latency p50/p99.
"""
from __future__ import annotations

import csv
import json
import os
import random
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlite_utils

from bot.index import duplicates as dup
from bot.index import embed as emb
from bot.index import store

REPO = "eval/pool"


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def load_pool(data: Path, db: sqlite_utils.Database) -> list[dict]:
    issues = [json.loads(line) for line in open(data / "issues.jsonl", encoding="utf-8")]
    rows = [store.issue_row(REPO, issue) for issue in issues]
    with db.conn:
        db["issues"].insert_all(rows, pk=("repo", "number"), batch_size=500)
    return issues


def embed_pool(db: sqlite_utils.Database, embedder, cache: str | None) -> tuple[dict[int, np.ndarray], float]:
    """Vectors for every pool issue (from ``cache`` if it matches), stored in the index; and issues/s."""
    rows = db.execute("SELECT number, title, search_body FROM issues WHERE repo = ? ORDER BY number", [REPO]).fetchall()
    numbers = np.array([r[0] for r in rows])
    rate = float("nan")
    if cache and os.path.exists(cache):
        z = np.load(cache, allow_pickle=False)
        if str(z["model"]) == embedder.name and np.array_equal(z["numbers"], numbers):
            matrix = z["matrix"]
        else:
            matrix = None
    else:
        matrix = None
    if matrix is None:
        texts = [emb.issue_text(r[1], r[2]) for r in rows]
        start = time.perf_counter()
        matrix = embedder.embed(texts)
        rate = len(texts) / (time.perf_counter() - start)
        if cache:
            np.savez(cache, model=embedder.name, numbers=numbers, matrix=matrix)
    store.set_vectors(db, REPO, zip(numbers.tolist(), matrix), embedder.name)
    return {int(n): matrix[i] for i, n in enumerate(numbers)}, rate


def metrics(ranks: list[int | None]) -> dict:
    n = len(ranks) or 1
    out = {f"r@{k}": sum(1 for r in ranks if r and r <= k) / n for k in (1, 5, 10)}
    out["mrr"] = sum(1 / r for r in ranks if r and r <= 10) / n
    return out


def _fit_logistic(X: np.ndarray, y: np.ndarray) -> tuple[float, ...]:
    """Logistic regression on standardised features, folded back to raw-feature coefficients."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = X.mean(0), X.std(0)
    sd[sd < 1e-9] = 1.0
    model = LogisticRegression(C=1.0, max_iter=3000).fit((X - mu) / sd, y)
    w = model.coef_[0] / sd
    return (float(model.intercept_[0] - (w * mu).sum()),) + tuple(float(v) for v in w)


def _score(coef, X: np.ndarray) -> np.ndarray:
    z = coef[0] + X @ np.array(coef[1:])
    return 1 / (1 + np.exp(-np.clip(z, -50, 50)))


def _curve(tops: list[tuple[list[tuple[int, float]], int]], neg: list[list[tuple[int, float]]], n_pairs: int) -> list[dict]:
    """Top-1 precision / recall / false alarms per threshold; ``tops`` = (ranked [(number, score)], original)."""
    out = []
    for t in [round(v, 3) for v in np.arange(0.05, 0.99, 0.01)]:
        fired = [(r, o) for r, o in tops if r and r[0][1] >= t]
        right = sum(1 for r, o in fired if r[0][0] == o)
        shown = sum(1 for r, o in tops if o in [n for n, s in r[:3] if s >= t])
        alarms = sum(1 for r in neg if r and r[0][1] >= t)
        out.append({"threshold": t, "fired": len(fired), "precision": right / len(fired) if fired else float("nan"),
                    "recall_top1": right / n_pairs, "recall_shown": shown / n_pairs,
                    "false_alarm_rate": alarms / max(len(neg), 1)})
    return out


def with_confidence(ranked: list[tuple[int, float]], coef) -> list[tuple[int, float]]:
    """``ranked`` with the top entry's score replaced by the confidence model ``coef`` (None: unchanged)."""
    if not ranked or coef is None:
        return ranked
    saved = dict(dup.CONFIDENCE)
    dup.CONFIDENCE["_eval"] = tuple(coef)
    dup.COEFS.setdefault("_eval", dup.COEFS["bm25"])
    try:
        conf = dup.confidence([s for _, s in ranked], "_eval")
    finally:
        dup.CONFIDENCE.clear(); dup.CONFIDENCE.update(saved); dup.COEFS.pop("_eval", None)
    return [(ranked[0][0], conf)] + ranked[1:]


def _confidence_rows(tops, neg):
    xs, ys = [], []
    def feats(r):
        top = dup._logit(r[0][1])
        return [top, top - dup._logit(r[1][1] if len(r) > 1 else dup.RUNNER_UP_FLOOR)]
    for r, o in tops:
        if r:
            xs.append(feats(r)); ys.append(int(r[0][0] == o))
    for r in neg:
        if r:
            xs.append(feats(r)); ys.append(0)
    return np.array(xs), np.array(ys)


def fit_confidence(tops, neg) -> tuple[float, float, float]:
    """Logistic (top logit, margin logit) -> top-1 is the marked original; on out-of-fold scores."""
    X, y = _confidence_rows(tops, neg)
    return tuple(_fit_logistic(X, y))  # type: ignore[return-value]


def choose_threshold(curve: list[dict], min_fired: int = 10) -> tuple[dict, bool]:
    """Lowest threshold with precision >= 0.9 on >= ``min_fired`` firings; else (flag False) the threshold
    with the best precision among those with top-1 recall >= 1% (ties: the higher threshold, quieter)."""
    ok = [c for c in curve if c["fired"] >= min_fired and c["precision"] >= 0.9]
    if ok:
        return ok[0], True
    useful = [c for c in curve if c["recall_top1"] >= 0.01 and c["precision"] == c["precision"]]
    if not useful:
        return curve[-1], False
    best = max(useful, key=lambda c: (round(c["precision"], 3), c["threshold"]))
    return best, False


def cross_validate(per_query: dict, strict: list[tuple[int, int]], extra: list[tuple[int, int]], train_neg: list[int],
                   eval_neg: list[int], reps: int = 5) -> dict:
    """2-fold CV over the strict pairs (repeated ``reps`` times): fit on one half (+ loose pairs and
    training negatives), measure recall@k and the threshold curve on the other half. ``per_query[q]`` is
    ``(numbers, X)`` for the query's candidate pool."""
    def rows(queries, labels):
        xs, ys = [], []
        for q in queries:
            numbers, X = per_query[q]
            if len(numbers):
                xs.append(X); ys.append(np.array([int(n == labels.get(q)) for n in numbers]))
        return np.vstack(xs), np.concatenate(ys)

    strict_d, extra_d = dict(strict), dict(extra)
    qs = sorted(strict_d)
    rec, oof_curves, conf_curves = [], [], []
    for rep in range(reps):
        order = qs[:]
        random.Random(rep).shuffle(order)
        halves = [order[: len(order) // 2], order[len(order) // 2:]]
        tops: list = []
        neg_scores = {q: [] for q in eval_neg}
        for i in (0, 1):
            train, test = halves[i], set(halves[1 - i])
            labels = {**{q: o for q, o in extra_d.items() if q not in test}, **{q: strict_d[q] for q in train}}
            X, y = rows(list(labels) + train_neg, labels)
            coef = _fit_logistic(X, y)
            ranks = []
            for q in halves[1 - i]:
                numbers, Xq = per_query[q]
                s = _score(coef, Xq) if len(numbers) else np.zeros(0)
                ranked = [(int(numbers[j]), float(s[j])) for j in np.argsort(-s)]
                tops.append((ranked, strict_d[q]))
                ranks.append(([n for n, _ in ranked[:10]].index(strict_d[q]) + 1) if strict_d[q] in [n for n, _ in ranked[:10]] else None)
            rec.append(metrics(ranks))
            for q in eval_neg:
                numbers, Xq = per_query[q]
                neg_scores[q].append(_score(coef, Xq) if len(numbers) else np.zeros(0))
        neg = []
        for q in eval_neg:
            numbers, _ = per_query[q]
            s = np.mean(neg_scores[q], axis=0) if len(numbers) else np.zeros(0)
            neg.append([(int(numbers[j]), float(s[j])) for j in np.argsort(-s)])
        oof_curves.append(_curve(tops, neg, len(qs)))
        # second stage, 2-fold over queries and negatives: fit the confidence on one half, measure on the other
        conf_tops, conf_neg = [], []
        for i in (0, 1):
            fit_t, fit_n = tops[i::2], neg[i::2]
            coef = fit_confidence(fit_t, fit_n)
            conf_tops += [(with_confidence(r, coef), o) for r, o in tops[1 - i::2]]
            conf_neg += [with_confidence(r, coef) for r in neg[1 - i::2]]
        conf_curves.append(_curve(conf_tops, conf_neg, len(qs)))
        if rep == 0:
            all_tops, all_neg = tops, neg
    recall = {k: float(np.mean([r[k] for r in rec])) for k in rec[0]}
    # average the out-of-fold curves over the repetitions
    def average(curves):
        out = []
        for j in range(len(curves[0])):
            rows_j = [c[j] for c in curves]
            out.append({k: float(np.nanmean([r[k] for r in rows_j])) if k != "threshold" else rows_j[0][k] for k in rows_j[0]})
        return out
    X, y = rows(list({**extra_d, **strict_d}) + train_neg, {**extra_d, **strict_d})
    return {"heldout": recall, "curve": average(oof_curves), "coef": _fit_logistic(X, y),
            "confidence_curve": average(conf_curves), "confidence": fit_confidence(all_tops, all_neg)}


def main(argv: list[str] | None = None) -> int:
    from bot.cli import ArgumentParser, existing_dir

    parser = ArgumentParser(prog="python -m bot eval duplicates", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=lambda value: Path(existing_dir(value)))
    parser.add_argument("--embedder", default="auto", help="auto | minilm | wordllama | smollm2 | none")
    parser.add_argument("--vectors-cache", default=None, help="npz file to reuse pool embeddings between runs")
    parser.add_argument("--negatives", type=int, default=500, help="issues without a known duplicate to check for false alarms")
    parser.add_argument("--fit", action="store_true",
                        help="2-fold cross-validated fit of the reranker/calibration; prints held-out numbers and coefficients")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="eval-dups-")
    db = sqlite_utils.Database(sqlite3.connect(os.path.join(tmp, "index.db"), isolation_level=None))
    store.ensure_schema(db)
    issues = load_pool(args.data, db)
    by_number = {i["number"]: i for i in issues}
    all_pairs = [
        (int(r["duplicate_number"]), int(r["original_number"]), r["evidence_strength"])
        for r in csv.DictReader(open(args.data / "dup_pairs_dev.csv", encoding="utf-8"))
        if r["original_is_older"] == "1" and int(r["duplicate_number"]) in by_number and int(r["original_number"]) in by_number
    ]
    pairs = [(d, o) for d, o, s in all_pairs if s == "strict"]
    loose = [(d, o) for d, o, s in all_pairs if s != "strict" and d not in dict(pairs)]
    embedder = None if args.embedder == "none" else emb.get_embedder(None if args.embedder == "auto" else args.embedder)
    vectors: dict[int, np.ndarray] = {}
    rate = float("nan")
    if embedder is not None:
        vectors, rate = embed_pool(db, embedder, args.vectors_cache)
    in_pairs = {n for p in pairs for n in p}
    rng = random.Random(7)
    pool_neg = [i["number"] for i in issues[200:] if i["duplicate_of"] is None and i["number"] not in in_pairs]
    negatives = rng.sample(pool_neg, min(args.negatives, len(pool_neg)))
    rest = sorted(set(pool_neg) - set(negatives))
    train_negatives = random.Random(11).sample(rest, min(args.negatives, len(rest)))  # for --fit only, disjoint

    def query(number: int, mode: str, rerank: bool = True, limit: int = 10):
        issue = by_number[number]
        row = store.get_issue(db, REPO, number)
        start = time.perf_counter()
        ranked = dup.rank(
            db, REPO, row["title"], row["body"], created_at=issue["created_at"], number=number,
            query_vector=vectors.get(number), vector_model=embedder.name if embedder else None, mode=mode,
            search_body=row["search_body"], rerank=rerank, limit=limit,
        )
        return ranked, time.perf_counter() - start

    name = embedder.name if embedder else None
    modes = [("bm25", "bm25", False)]
    if embedder:
        modes += [("vector", "vector", False), ("hybrid-linear", "hybrid", False)]
    modes += [("bm25+rerank", "bm25", True)] + ([("hybrid+rerank", "hybrid", True)] if embedder else [])
    results: dict = {"pairs": len(pairs), "pool": len(issues), "embedder": name, "embed_rate_issues_per_s": rate,
                     "fitted_models": sorted(dup.COEFS)}
    tops: dict[str, list] = {}
    for label, mode, rerank in modes:
        ranks, latency, got = [], [], []
        for d, o in pairs:
            ranked, seconds = query(d, mode, rerank)
            latency.append(seconds)
            numbers = [c.number for c in ranked]
            ranks.append(numbers.index(o) + 1 if o in numbers else None)
            got.append(([(c.number, c.score) for c in ranked], o))
        results[label] = {**metrics(ranks), "p50_ms": 1000 * _pct(latency, 0.5), "p99_ms": 1000 * _pct(latency, 0.99)}
        tops[label] = got

    print(f"pool {len(issues)} issues, {len(pairs)} strict pairs (original older), embedder {name}"
          + (f", {rate:.1f} issues/s embedding" if rate == rate else ""))
    print(f"{'method':14s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s} {'MRR':>6s} {'p50 ms':>7s} {'p99 ms':>7s}")
    for label, _, _ in modes:
        m = results[label]
        print(f"{label:14s} {m['r@1']:6.3f} {m['r@5']:6.3f} {m['r@10']:6.3f} {m['mrr']:6.3f} {m['p50_ms']:7.1f} {m['p99_ms']:7.1f}")
    reranked = [m for m in ("hybrid+rerank", "bm25+rerank") if m in tops]
    results["default_method"] = reranked[0] if reranked else None
    for label in reranked:
        key = name if label.startswith("hybrid") else None
        threshold = dup.threshold_for(key)
        mode = "hybrid" if label.startswith("hybrid") else "bm25"
        neg = [[(c.number, c.score) for c in query(n, mode)[0]] for n in negatives]
        conf = dup.CONFIDENCE.get(key if key in dup.COEFS else "bm25")
        tl = [(with_confidence(r, conf), o) for r, o in tops[label]]
        neg = [with_confidence(r, conf) for r in neg]
        curve = _curve(tl, neg, len(pairs))
        c = {x["threshold"]: x for x in curve}.get(round(threshold, 2)) or curve[-1]
        results[f"{label}@default"] = c
        # the same figures inside the method's own entry, under the key names tools read
        results[label].update({"threshold": threshold, "precision": c["precision"], "recall_top1": c["recall_top1"],
                               "recall_shown": c["recall_shown"], "false_alarm_rate": c["false_alarm_rate"],
                               "fired": c["fired"]})
        print(f"{label} at its default threshold {threshold:.2f} (in-sample if fitted on this data): fired {c['fired']} "
              f"precision {c['precision']:.3f} recall(top1 right) {c['recall_top1']:.3f} recall(original shown) "
              f"{c['recall_shown']:.3f} false alarms on {len(neg)} non-duplicates {c['false_alarm_rate']:.3f}")

    if args.fit:
        fits = {}
        for label in reranked:
            mode = "hybrid" if label.startswith("hybrid") else "bm25"
            key = name if mode == "hybrid" else "bm25"
            per_query = {}
            for q in {d for d, _ in pairs} | {d for d, _ in loose} | set(negatives) | set(train_negatives):
                ranked, _ = query(q, mode, rerank=False, limit=1000)
                per_query[q] = (np.array([c.number for c in ranked], dtype=np.int64),
                                np.array([[float(c.features.get(f) or 0.0) for f in dup.FEATURES] for c in ranked]).reshape(-1, len(dup.FEATURES)))
            cv = cross_validate(per_query, pairs, loose, train_negatives, negatives)
            chosen, reached = choose_threshold(cv["confidence_curve"])
            fits[key] = {"heldout": cv["heldout"], "threshold": chosen, "precision_0.9_reached": reached,
                         "coef": cv["coef"], "curve": cv["confidence_curve"], "score_curve": cv["curve"],
                         "confidence": cv["confidence"]}
            h = cv["heldout"]
            print(f"\n[{key}] held-out (2-fold x5) R@1 {h['r@1']:.3f} R@5 {h['r@5']:.3f} R@10 {h['r@10']:.3f} MRR {h['mrr']:.3f}")
            print(f"[{key}] threshold {chosen['threshold']:.2f} ({'precision >= 0.9 reached' if reached else 'precision 0.9 NOT reached: best precision at >= 1% recall'}):"
                  f" fired {chosen['fired']:.1f} precision {chosen['precision']:.3f} recall(top1) {chosen['recall_top1']:.3f}"
                  f" recall(shown) {chosen['recall_shown']:.3f} false alarms {chosen['false_alarm_rate']:.3f}")
            for c in cv["confidence_curve"]:
                if abs(c["threshold"] * 20 - round(c["threshold"] * 20)) < 1e-6:
                    print(f"   t={c['threshold']:.2f} fired {c['fired']:6.1f} precision {c['precision']:.3f} recall(top1) {c['recall_top1']:.3f} "
                          f"recall(shown) {c['recall_shown']:.3f} false alarms {c['false_alarm_rate']:.3f}")
            print(f'    "{key}": {tuple(round(v, 4) for v in cv["coef"])},')
            print(f'    CONFIDENCE "{key}": {tuple(round(v, 4) for v in cv["confidence"])},')
        results["fit"] = fits
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
