"""Index scale benchmark: query p50/p99, size on disk and peak RSS at N issues; backfill indexing rate.

    python bench/index_scale.py --data ../shared/evaldata/rust-duplicates --sizes 10000,100000

The pool is scaled up synthetically (copies of the real issues under new numbers, spread over time).
Vectors are real: ``embed.embed_missing`` (the backfill path) with the default embedder (wordllama-256),
``--embedder random`` stores random unit vectors of ``--dim`` instead. Each size runs in its own
subprocess so peak RSS is per size. Rates: rows indexed (store.issue_row + FTS triggers) per second,
embedding per second, and both together (the backfill rate, GitHub API time excluded). Query latency is
the production ``duplicates.rank`` (hybrid + reranker) for random issues with everything before them visible.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import sqlite_utils  # noqa: E402

from bot.index import duplicates, embed, store  # noqa: E402

REPO = "bench/scale"


def one_size(data: Path, size: int, dim: int, queries: int, embedder_name: str = "auto") -> dict:
    pool = [json.loads(line) for line in open(data / "issues.jsonl", encoding="utf-8")]
    path = os.path.join(tempfile.mkdtemp(prefix="idx-scale-"), "index.db")
    db = sqlite_utils.Database(sqlite3.connect(path, isolation_level=None))
    db.execute("PRAGMA journal_mode=WAL")
    store.ensure_schema(db)
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    rows = []
    for i in range(size):
        src = pool[i % len(pool)]
        copy = i // len(pool)
        item = dict(src, number=i + 1, created_at=f"{2000 + copy:04d}{src['created_at'][4:]}")
        rows.append(store.issue_row(REPO, item))
        if len(rows) == 1000:
            _insert(db, rows)
            rows = []
    if rows:
        _insert(db, rows)
    fts_seconds = time.perf_counter() - start
    start = time.perf_counter()
    if embedder_name == "random":
        model = "random"
        vectors = rng.normal(size=(size, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for lo in range(0, size, 5000):
            store.set_vectors(db, REPO, ((n + 1, vectors[n]) for n in range(lo, min(size, lo + 5000))), model)
    else:
        if embedder_name != "auto":
            os.environ["FIRST_RESPONDER_EMBEDDER"] = embedder_name
        embedder = embed.get_embedder()
        model = embedder.name
        embed.embed_missing(db, REPO, batch=64, limit=size)
    embed_seconds = time.perf_counter() - start
    matrix = duplicates.vector_matrix(db, REPO, model)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size_mb = sum(os.path.getsize(path + ext) for ext in ("", "-wal") if os.path.exists(path + ext)) / 2**20
    latencies = []
    picks = rng.choice(size, size=queries, replace=False)
    for n in picks:
        row = store.get_issue(db, REPO, int(n) + 1)
        qv = matrix.matrix[matrix.row[int(n) + 1]]
        t = time.perf_counter()
        duplicates.rank(db, REPO, row["title"], row["body"], search_body=row["search_body"], created_at="9999",
                        number=int(n) + 1, query_vector=qv, vector_model=model)
        latencies.append(time.perf_counter() - t)
    latencies.sort()
    return {
        "issues": size, "index_mb": round(size_mb, 1),
        "index_rate_issues_per_s": round(size / fts_seconds),
        "embed_rate_issues_per_s": round(size / embed_seconds), "embedder": model,
        "backfill_rate_issues_per_s": round(size / (fts_seconds + embed_seconds)),
        "query_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "query_p99_ms": round(1000 * latencies[int(0.99 * len(latencies))], 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _insert(db, rows):
    with db.conn:
        db["issues"].insert_all(rows, pk=("repo", "number"))


def embed_rate(data: Path, name: str, n: int = 200) -> float:
    from bot.index.text import clean_body

    pool = [json.loads(line) for line in open(data / "issues.jsonl", encoding="utf-8")][:n]
    embedder = embed.get_embedder(name)
    texts = [embed.issue_text(i["title"], clean_body(i["body"] or "")) for i in pool]
    embedder.embed(texts[:8])
    start = time.perf_counter()
    embedder.embed(texts)
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=256, help="vector width with --embedder random")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--embedder", default="auto", help="auto (shipped: wordllama) | random | a backend name")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_size(args.data, args.one, args.dim, args.queries, args.embedder)))
        return 0
    for size in [int(s) for s in args.sizes.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--data", str(args.data), "--one", str(size), "--dim", str(args.dim),
                              "--queries", str(args.queries), "--embedder", args.embedder], capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
