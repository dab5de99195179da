"""``python -m bot models [--since DATE] [--repo OWNER/NAME]``: what the model layer did, from ``model_calls``.

Per tier: calls, latency p50/p95, tokens and cost; overall: decisions (distinct delivery + issue), how many
escalated to the fallback and what that cost per 1,000 decisions. Shadow rows (tier ``shadow:...``) are
listed as their own tiers but never counted as decisions; canary decisions are counted and also shown apart.

``python -m bot models compare [--since DATE] [--repo OWNER/NAME]``: the current setup against the candidate
(``triage.candidate``), from the ``shadow:decision`` rows: decisions, agreement, accuracy against the
maintainers' final labels where known (``training_examples`` from ``maintainer``/``correction``), escalation
rate, latency p50 and cost, shadow and canary issues reported separately. Read-only.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from bot.__main__ import parse_since


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _is_canary(row: dict[str, Any]) -> bool:
    text = str(row.get("output") or "")
    if "canary" not in text:
        return False
    try:
        return bool(json.loads(text).get("canary"))
    except (ValueError, AttributeError):
        return False


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
    rows = [r for r in rows if not str(r.get("tier") or "").startswith("shadow:")]
    decisions = {(r.get("delivery_id"), r.get("repo"), r.get("issue")) for r in rows}
    escalated = {(r.get("delivery_id"), r.get("repo"), r.get("issue")) for r in rows if r.get("escalated")}
    canary = {(r.get("delivery_id"), r.get("repo"), r.get("issue")) for r in rows if _is_canary(r)}
    cost = sum(float(r.get("cost_usd") or 0) for r in rows)
    return {
        "tiers": per_tier, "decisions": len(decisions), "escalated": len(escalated), "canary": len(canary),
        "escalation_rate": len(escalated) / len(decisions) if decisions else None,
        "cost_usd": round(cost, 6),
        "cost_per_1000_decisions": round(cost / len(decisions) * 1000, 4) if decisions else None,
    }


def load_rows(db: Any, *, since: float | None = None, repo: str | None = None,
              tier: str | None = None) -> list[dict[str, Any]]:
    sql, params = "SELECT * FROM model_calls WHERE 1=1", []
    if tier:
        sql += " AND tier = ?"
        params.append(tier)
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
    if summary.get("canary"):
        lines.append(f"of which decided by the canary candidate: {summary['canary']} "
                     "(see `python -m bot models compare`)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ compare
SIDES = ("current", "candidate")


def final_labels(db: Any, repo: str | None = None) -> dict[tuple[str, int], str]:
    """(repo, number) -> the maintainers' final kind: the latest ``maintainer``/``correction`` row with
    weight > 0 (an empty kind, a removed label, means no known kind)."""
    if "training_examples" not in db.table_names():
        return {}
    sql = ("SELECT repo, number, kind FROM training_examples WHERE source IN ('maintainer', 'correction') "
           "AND weight > 0")
    params: list[Any] = []
    if repo:
        sql += " AND repo = ?"
        params.append(repo)
    out: dict[tuple[str, int], str] = {}
    for row in db.execute(sql + " ORDER BY created_at, id", params).fetchall():
        out[(row[0], int(row[1]))] = row[2]
    return {key: kind for key, kind in out.items() if kind}


def _side_figures(decisions: Sequence[dict[str, Any]], truth: Sequence[str | None]) -> dict[str, Any]:
    n = len(decisions)
    applied = [d for d in decisions if d.get("applied")]
    judged = [(d, t) for d, t in zip(decisions, truth) if d.get("applied") and d.get("kind") and t]
    correct = sum(1 for d, t in judged if d["kind"] == t)
    escalated = sum(1 for d in decisions if d.get("escalated"))
    latencies = [float(d.get("latency_ms") or 0.0) for d in decisions]
    return {
        "decisions": n, "applied": len(applied), "unknown": sum(1 for d in decisions if d.get("known") is False),
        "judged": len(judged), "correct": correct, "accuracy": correct / len(judged) if judged else None,
        "escalated": escalated, "escalation_rate": escalated / n if n else None,
        "p50_ms": percentile(latencies, 50),
        "cost_usd": round(sum(float(d.get("cost_usd") or 0.0) for d in decisions), 6),
    }


def compare(rows: Sequence[dict[str, Any]], labels: dict[tuple[str, int], str]) -> list[dict[str, Any]]:
    """Groups of comparisons (per candidate setup, shadow vs canary issues), latest row per issue."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        if row.get("tier") != "shadow:decision":
            continue
        try:
            output = json.loads(row.get("output") or "{}")
        except ValueError:
            continue
        if not all(isinstance(output.get(side), dict) for side in SIDES):
            continue
        latest[(row["repo"], int(row["issue"]))] = {**row, "output": output}  # rows come in id order
    groups: dict[tuple[str, bool], list[tuple[tuple[str, int], dict[str, Any]]]] = {}
    for key, row in latest.items():
        output = row["output"]
        groups.setdefault((output.get("setup") or "?", bool(output.get("canary"))), []).append((key, output))
    out = []
    for (setup, canary), items in sorted(groups.items()):
        truth = [labels.get(key) for key, _ in items]
        agree = sum(1 for _, o in items if o["current"].get("kind") == o["candidate"].get("kind"))
        out.append({
            "setup": setup, "canary": canary, "issues": len(items),
            "agreement": agree / len(items) if items else None, "with_label": sum(1 for t in truth if t),
            **{side: _side_figures([o[side] for _, o in items], truth) for side in SIDES},
        })
    return out


def render_compare(groups: Sequence[dict[str, Any]], period: str) -> str:
    if not groups:
        return (f"no shadow or canary comparisons {period}: set `triage.candidate` (mode: shadow) in the repo "
                "config and let some issues arrive")

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f} %"

    lines = [f"current vs candidate {period}"]
    for g in groups:
        kind = "canary issues (candidate applied, current in shadow)" if g["canary"] else             "shadow issues (current applied, candidate in shadow)"
        lines += ["", f"candidate {g['setup']}: {g['issues']} {kind}; {g['with_label']} with a maintainer's label",
                  f"agreement: {pct(g['agreement'])}", "",
                  f"{'':24} {'current':>16} {'candidate':>16}"]
        cur, cand = g["current"], g["candidate"]

        def row(name: str, a: str, b: str) -> None:
            lines.append(f"{name:24} {a:>16} {b:>16}")

        row("decisions", str(cur["decisions"]), str(cand["decisions"]))
        row("labels applied", str(cur["applied"]), str(cand["applied"]))
        row("accuracy", *(f"{pct(s['accuracy'])} ({s['correct']}/{s['judged']})" for s in (cur, cand)))
        row("escalation rate", pct(cur["escalation_rate"]), pct(cand["escalation_rate"]))
        row("latency p50 ms", *("-" if s["p50_ms"] is None else f"{s['p50_ms']:.0f}" for s in (cur, cand)))
        row("cost $", f"{cur['cost_usd']:.4f}", f"{cand['cost_usd']:.4f}")
        unknown = cur["unknown"] + cand["unknown"]
        if unknown:
            lines.append(f"({unknown} would-be escalations were not sent to the fallback: kind unknown, "
                         "not counted in accuracy)")
    return "\n".join(lines)


def _arguments(prog: str, **kwargs: Any) -> argparse.ArgumentParser:
    """The options `models` and `models compare` share."""
    from bot.cli import ArgumentParser

    parser = ArgumentParser(prog=prog, **kwargs)
    parser.add_argument("--since", help="YYYY-MM-DD (UTC)")
    parser.add_argument("--repo", help="OWNER/NAME")
    parser.add_argument("--db", help="database path (default: DATABASE_PATH)")
    parser.add_argument("--json", action="store_true")
    return parser


def _open(path: str | None) -> Any:
    if path:
        from bot.cli import open_database

        return open_database(path, command="python -m bot models", variable="--db", must_exist=True)
    from bot.__main__ import _db

    return _db()


def compare_main(argv: list[str]) -> int:
    parser = _arguments("python -m bot models compare")
    args = parser.parse_args(argv)
    since = parse_since(parser, args.since)
    db = _open(args.db)
    groups = compare(load_rows(db, since=since, repo=args.repo, tier="shadow:decision"),
                     final_labels(db, args.repo))
    if args.json:
        print(json.dumps(groups, indent=1))
    else:
        period = (f"since {args.since}" if args.since else "(all time)") + (f" for {args.repo}" if args.repo else "")
        sys.stdout.write(render_compare(groups, period) + "\n")
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "compare":
        return compare_main(argv[1:])
    parser = _arguments("python -m bot models",
                        epilog="`python -m bot models compare --help`: current vs candidate setup")
    args = parser.parse_args(argv)
    since = parse_since(parser, args.since)
    db = _open(args.db)
    summary = summarize(load_rows(db, since=since, repo=args.repo))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        period = (f"since {args.since}" if args.since else "(all time)") + (f" for {args.repo}" if args.repo else "")
        sys.stdout.write(render(summary, period) + "\n")
    return 0
