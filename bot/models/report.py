"""``python -m bot models [--since DATE] [--repo OWNER/NAME]``: what the model layer did, from ``model_calls``.

Per tier: calls, latency p50/p95, tokens and cost; overall: decisions (distinct delivery + issue), how many
escalated to the fallback and what that cost per 1,000 decisions. Read-only.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any, Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-tier figures and overall escalation and cost from ``model_calls`` rows."""
    tiers: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        tiers.setdefault(row["tier"] or "?", []).append(row)
    per_tier = []
    for tier, calls in sorted(tiers.items()):
        latencies = [float(c["latency_ms"]) for c in calls if c.get("latency_ms") is not None]
        per_tier.append({
            "tier": tier, "calls": len(calls),
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "input_tokens": sum(int(c.get("input_tokens") or 0) for c in calls),
            "output_tokens": sum(int(c.get("output_tokens") or 0) for c in calls),
            "cost_usd": round(sum(float(c.get("cost_usd") or 0) for c in calls), 6),
            "escalated": sum(1 for c in calls if c.get("escalated")),
        })
    decisions = {(r.get("delivery_id"), r.get("repo"), r.get("issue")) for r in rows}
    escalated = {(r.get("delivery_id"), r.get("repo"), r.get("issue")) for r in rows if r.get("escalated")}
    cost = sum(float(r.get("cost_usd") or 0) for r in rows)
    return {
        "tiers": per_tier, "decisions": len(decisions), "escalated": len(escalated),
        "escalation_rate": len(escalated) / len(decisions) if decisions else None,
        "cost_usd": round(cost, 6),
        "cost_per_1000_decisions": round(cost / len(decisions) * 1000, 4) if decisions else None,
    }


def load_rows(db: Any, *, since: float | None = None, repo: str | None = None) -> list[dict[str, Any]]:
    sql, params = "SELECT * FROM model_calls WHERE 1=1", []
    if since is not None:
        sql += " AND ts >= ?"
        params.append(since)
    if repo:
        sql += " AND repo = ?"
        params.append(repo)
    return list(db.query(sql + " ORDER BY id", params))


def render(summary: dict[str, Any], period: str) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    lines = [f"model calls {period}", "",
             f"{'tier':12} {'calls':>7} {'p50 ms':>8} {'p95 ms':>8} {'in tok':>9} {'out tok':>8} {'cost $':>9}"]
    for t in summary["tiers"]:
        lines.append(f"{t['tier']:12} {t['calls']:>7} {ms(t['p50_ms']):>8} {ms(t['p95_ms']):>8} "
                     f"{t['input_tokens']:>9} {t['output_tokens']:>8} {t['cost_usd']:>9.4f}")
    rate = summary["escalation_rate"]
    lines += ["", f"decisions: {summary['decisions']}; escalated to the fallback: {summary['escalated']} "
                  f"({'-' if rate is None else f'{100 * rate:.1f} %'}); cost ${summary['cost_usd']:.4f}"
                  + (f" (${summary['cost_per_1000_decisions']:.2f} per 1,000 decisions)"
                     if summary["cost_per_1000_decisions"] is not None else "")]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot models")
    parser.add_argument("--since", help="YYYY-MM-DD (UTC)")
    parser.add_argument("--repo", help="OWNER/NAME")
    parser.add_argument("--db", help="database path (default: DATABASE_PATH)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            parser.error("--since takes a date like 2026-01-31")
    if args.db:
        from bot.db import open_db

        db = open_db(args.db)
    else:
        from bot.__main__ import _db

        db = _db()
    summary = summarize(load_rows(db, since=since, repo=args.repo))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        period = (f"since {args.since}" if args.since else "(all time)") + (f" for {args.repo}" if args.repo else "")
        sys.stdout.write(render(summary, period) + "\n")
    return 0
