"""`python -m bot eval duplicates --data DIR`: retrieval quality of duplicate detection.

DIR holds ``issues.jsonl`` (the pool) and ``dup_pairs_dev.csv`` (duplicate -> original pairs), as in
shared/evaldata/rust-duplicates. The pool is indexed with the production code (bot.index.store,
bot.index.embed); each strict pair whose original is older is queried with only earlier issues visible.
Reports recall@1/5/10 and MRR for BM25 alone, vectors alone and the hybrid; precision/recall at the
comment threshold; the false-alarm rate on issues without a known duplicate; query latency p50/p99.
"""
from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot eval duplicates", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--embedder", default="auto", help="auto | minilm | wordllama | smollm2 | none")
    parser.add_argument("--vectors-cache", default=None, help="npz file to reuse pool embeddings between runs")
    parser.add_argument("--negatives", type=int, default=500, help="issues without a known duplicate to check for false alarms")
    parser.add_argument("--fit", action="store_true", help="fit the score calibration and print coefficients")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="eval-dups-")
    db = sqlite_utils.Database(sqlite3.connect(os.path.join(tmp, "index.db"), isolation_level=None))
    store.ensure_schema(db)
    issues = load_pool(args.data, db)
    by_number = {i["number"]: i for i in issues}
    pairs = [
        (int(r["duplicate_number"]), int(r["original_number"]))
        for r in csv.DictReader(open(args.data / "dup_pairs_dev.csv", encoding="utf-8"))
        if r["evidence_strength"] == "strict" and r["original_is_older"] == "1"
        and int(r["duplicate_number"]) in by_number and int(r["original_number"]) in by_number
    ]
    embedder = None if args.embedder == "none" else emb.get_embedder(None if args.embedder == "auto" else args.embedder)
    vectors: dict[int, np.ndarray] = {}
    rate = float("nan")
    if embedder is not None:
        vectors, rate = embed_pool(db, embedder, args.vectors_cache)
    in_pairs = {n for p in pairs for n in p}
    rng = random.Random(7)
    negatives = [i["number"] for i in issues[200:] if i["duplicate_of"] is None and i["number"] not in in_pairs]
    negatives = rng.sample(negatives, min(args.negatives, len(negatives)))

    def query(number: int, mode: str):
        issue = by_number[number]
        row = store.get_issue(db, REPO, number)
        start = time.perf_counter()
        ranked = dup.rank(
            db, REPO, row["title"], row["body"], created_at=issue["created_at"], number=number,
            query_vector=vectors.get(number), vector_model=embedder.name if embedder else None, mode=mode,
            search_body=row["search_body"],
        )
        return ranked, time.perf_counter() - start

    modes = ["bm25"] + (["vector", "hybrid"] if embedder else [])
    results: dict = {"pairs": len(pairs), "pool": len(issues), "embedder": embedder.name if embedder else None,
                     "embed_rate_issues_per_s": rate}
    top1: dict[str, list] = {}
    for mode in modes:
        ranks, latency, tops = [], [], []
        for d, o in pairs:
            ranked, seconds = query(d, mode)
            latency.append(seconds)
            numbers = [c.number for c in ranked]
            ranks.append(numbers.index(o) + 1 if o in numbers else None)
            tops.append((ranked, o))
        results[mode] = {**metrics(ranks), "p50_ms": 1000 * _pct(latency, 0.5), "p99_ms": 1000 * _pct(latency, 0.99)}
        top1[mode] = tops
    main_mode = "hybrid" if embedder else "bm25"
    neg = [query(n, main_mode)[0] for n in negatives]

    if args.fit:
        from sklearn.linear_model import LogisticRegression

        X, y = [], []
        for ranked, original in top1[main_mode]:
            for c in ranked[:3]:
                X.append(_vec(c)); y.append(int(c.number == original))
        for ranked in neg:
            for c in ranked[:3]:
                X.append(_vec(c)); y.append(0)
        model = LogisticRegression(C=1.0, max_iter=1000).fit(np.array(X), np.array(y))
        coef = (float(model.intercept_[0]),) + tuple(float(v) for v in model.coef_[0])
        print("fitted coefficients (bias, cosine, title_overlap, bm25_per_term, fused, margin):", tuple(round(v, 3) for v in coef))
        if embedder:
            dup.COEF_HYBRID = coef
        else:
            dup.COEF_BM25 = coef
        for tops in [top1[main_mode]] + [[(r, None) for r in neg]]:
            for ranked, _ in tops:
                for c in ranked:
                    c.score = dup.calibrated(c.features, bool(embedder))

    def at(threshold: float) -> dict:
        fired = [(ranked, o) for ranked, o in top1[main_mode] if ranked and ranked[0].score >= threshold]
        right = sum(1 for ranked, o in fired if ranked[0].number == o)
        shown = sum(1 for ranked, o in top1[main_mode] if o in [c.number for c in ranked[:3] if c.score >= threshold])
        alarms = sum(1 for ranked in neg if ranked and ranked[0].score >= threshold)
        return {"threshold": threshold, "fired": len(fired), "precision": right / len(fired) if fired else float("nan"),
                "recall_top1": right / len(pairs), "recall_shown": shown / len(pairs),
                "false_alarm_rate": alarms / max(len(neg), 1)}

    grid = [round(t, 3) for t in np.arange(0.05, 0.99, 0.01)]
    curve = [at(t) for t in grid]
    ok = [c for c in curve if c["fired"] >= 10 and c["precision"] >= 0.9]
    chosen = ok[0] if ok else curve[-1]
    default = dup.DEFAULT_THRESHOLD if embedder else dup.DEFAULT_THRESHOLD_BM25
    results["at_default_threshold"] = at(default)
    results["lowest_threshold_precision_0.9"] = chosen

    print(f"pool {len(issues)} issues, {len(pairs)} strict pairs (original older), embedder {results['embedder']}"
          + (f", {rate:.1f} issues/s embedding" if rate == rate else ""))
    print(f"{'method':8s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s} {'MRR':>6s} {'p50 ms':>7s} {'p99 ms':>7s}")
    for mode in modes:
        m = results[mode]
        print(f"{mode:8s} {m['r@1']:6.3f} {m['r@5']:6.3f} {m['r@10']:6.3f} {m['mrr']:6.3f} {m['p50_ms']:7.1f} {m['p99_ms']:7.1f}")
    for name in ("at_default_threshold", "lowest_threshold_precision_0.9"):
        c = results[name]
        print(f"{name}: threshold {c['threshold']:.2f} fired {c['fired']} precision {c['precision']:.3f} "
              f"recall(top1 right) {c['recall_top1']:.3f} recall(original shown) {c['recall_shown']:.3f} "
              f"false alarms on {len(neg)} non-duplicates {c['false_alarm_rate']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({**results, "curve": curve}, indent=1))
    return 0


def _vec(c: dup.Candidate) -> list[float]:
    f = c.features
    return [f.get("cosine") or 0.0, f["title_overlap"], f["bm25_per_term"], f["fused"], f["margin"]]


if __name__ == "__main__":
    raise SystemExit(main())
