"""``python -m bot eval replay --data FILE``: replay real issues in creation order as if the bot had been
installed on an empty repository, and measure whether it gets cheaper while staying right (issue 8).

The local tier is the repo's learned classifier, retrained (``bot.features.learning.fit_with_threshold``,
the code the server runs) on what has been learned so far:

* the maintainers' label of each issue arrives as feedback ``--delay-days`` after the issue was opened
  (or ``--delay-issues`` issues later), weight 1.0;
* every escalated decision is a training example at once (the fallback's answer, weight 0.5) until the
  maintainers' label for that issue arrives and replaces it;
* retraining happens after every ``--retrain-every`` new examples; each retrain also picks the
  threshold: the lowest confidence at which the most recent 20 % of maintainers' labels (held back from
  that fit) are >= 95 % correct with at least 20 of them above it, else 1.0 (escalate everything).

Below the threshold (or before the classifier has 20 examples of two kinds) the issue goes to the
fallback, modelled as an oracle that returns the maintainers' label with probability ``--oracle-accuracy``
(seeded; otherwise a uniformly drawn other kind) at ``--price`` dollars per call.

Labels map to kinds as the bot's default config does: bug -> bug, enhancement/feature -> feature,
question -> question, documentation -> docs. Issues labelled ``duplicate`` or ``multiple`` (several kinds)
carry no single kind and are skipped (counted in the output). A file with several repos (NLBSE) is
replayed per repo, each from empty, and the quarters are summed.
"""
from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from bot.features.learning import Example, fit_with_threshold, validation_mask
from bot.models.base import IssueText

LABEL_KINDS = {"bug": "bug", "enhancement": "feature", "feature": "feature", "question": "question",
               "documentation": "docs", "docs": "docs"}
SKIPPED_LABELS = ("duplicate", "multiple")


@dataclass
class Step:
    """What happened to one replayed issue."""

    repo: str
    index: int
    created_at: str
    truth: str
    escalated: bool
    applied: str
    confidence: float | None
    threshold: float
    cost: float


def _parse_time(value: str) -> float:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00").replace(" ", "T")).timestamp()


def load_issues(path: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """Issues per repo in creation order, with ``kind``; and how many were skipped, by reason."""
    per_repo: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            label = str(row.get("type_label") or row.get("label") or "").lower()
            if not label and row.get("labels"):
                kinds = {LABEL_KINDS[str(name).lower()] for name in row["labels"] if str(name).lower() in LABEL_KINDS}
                label = "multiple" if len(kinds) > 1 else next(iter(kinds), "")
            kind = LABEL_KINDS.get(label)
            if kind is None:
                reason = label if label in SKIPPED_LABELS else "no kind label"
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            row["kind"] = kind
            row["ts"] = _parse_time(row["created_at"])
            per_repo.setdefault(row.get("repo") or "repo", []).append(row)
    for rows in per_repo.values():
        rows.sort(key=lambda r: (r["ts"], r.get("number") or 0))
    return per_repo, skipped


class Oracle:
    """The big model, offline: the maintainers' label with a stated accuracy, at a stated price."""

    def __init__(self, kinds: Sequence[str], accuracy: float, price: float, seed: int) -> None:
        self.kinds = sorted(set(kinds))
        self.accuracy = accuracy
        self.price = price
        self.random = random.Random(seed)

    def __call__(self, truth: str) -> str:
        if self.random.random() < self.accuracy or len(self.kinds) < 2:
            return truth
        return self.random.choice([k for k in self.kinds if k != truth])


def replay_repo(repo: str, rows: list[dict[str, Any]], *, oracle: Oracle, delay_days: float | None,
                delay_issues: int | None, retrain_every: int, fallback_weight: float, seed: int,
                progress: bool = False) -> tuple[list[Step], list[dict[str, Any]]]:
    """Replay one repository from empty; returns the steps and one record per retrain."""
    examples: dict[int, Example] = {}
    arrivals: list[tuple[float, int, int]] = []  # (arrival key, tie, row index)
    classifier, threshold = None, 1.0
    new_examples, steps, retrains = 0, [], []
    for i, row in enumerate(rows):
        now_key = i if delay_issues is not None else row["ts"]
        while arrivals and arrivals[0][0] <= now_key:
            _key, _tie, j = heapq.heappop(arrivals)
            done = rows[j]
            examples[j] = Example(j, done["title"] or "", done.get("body") or "", done["kind"], "maintainer", 1.0,
                                  done["ts"])
            new_examples += 1
        if new_examples >= retrain_every:
            ordered = sorted(examples.values(), key=lambda e: (e.created_at, e.number))
            started = time.perf_counter()
            classifier, threshold, details = fit_with_threshold(
                [IssueText(e.title, e.body, repo) for e in ordered], [e.kind for e in ordered],
                [e.weight for e in ordered], validation_mask(ordered), repo=repo, seed=seed)
            if classifier is not None and not classifier.usable():
                threshold = 1.0
            retrains.append({"at": i, "examples": len(ordered), "threshold": threshold,
                             "seconds": round(time.perf_counter() - started, 2), **details})
            if progress:
                print(f"  {repo} issue {i}/{len(rows)}: retrained on {len(ordered)} examples, threshold "
                      f"{threshold:.2f} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
            new_examples = 0
        issue = IssueText(row["title"] or "", row.get("body") or "", repo)
        confidence = None
        if classifier is not None and classifier.usable():
            probs = classifier.predict_proba([issue])[0]
            kind = max(probs, key=probs.get)
            confidence = probs[kind]
        if confidence is not None and confidence >= threshold:
            steps.append(Step(repo, i, row["created_at"], row["kind"], False, kind, confidence, threshold, 0.0))
        else:
            answer = oracle(row["kind"])
            steps.append(Step(repo, i, row["created_at"], row["kind"], True, answer, confidence, threshold,
                              oracle.price))
            examples[i] = Example(i, row["title"] or "", row.get("body") or "", answer, "fallback", fallback_weight,
                                  row["ts"])
            new_examples += 1
        arrive = i + delay_issues if delay_issues is not None else row["ts"] + (delay_days or 0) * 86400
        heapq.heappush(arrivals, (arrive, i, i))
    return steps, retrains


def quarters(steps_per_repo: dict[str, list[Step]]) -> list[dict[str, Any]]:
    """Per quarter of each repo's replay (by issue count), summed over repos."""
    table = []
    for q in range(4):
        chosen: list[Step] = []
        for steps in steps_per_repo.values():
            n = len(steps)
            chosen += steps[q * n // 4:(q + 1) * n // 4]
        local = [s for s in chosen if not s.escalated]
        escalated = [s for s in chosen if s.escalated]
        n = len(chosen) or 1
        table.append({
            "quarter": f"Q{q + 1}",
            "issues": len(chosen),
            "from": min(s.created_at for s in chosen)[:10] if chosen else "",
            "to": max(s.created_at for s in chosen)[:10] if chosen else "",
            "escalation_rate": len(escalated) / n,
            "applied_accuracy": sum(s.applied == s.truth for s in chosen) / n,
            "local_decisions": len(local),
            "local_accuracy": (sum(s.applied == s.truth for s in local) / len(local)) if local else None,
            "fallback_accuracy": (sum(s.applied == s.truth for s in escalated) / len(escalated)) if escalated else None,
            "cost_per_1000": sum(s.cost for s in chosen) / n * 1000,
            "mean_threshold": sum(s.threshold for s in chosen) / n,
        })
    return table


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def markdown_table(table: list[dict[str, Any]]) -> str:
    lines = ["| quarter | issues | created | escalation rate | applied correct | local decisions | local correct "
             "| fallback correct | cost / 1,000 issues | mean threshold |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in table:
        lines.append(f"| {row['quarter']} | {row['issues']} | {row['from']} – {row['to']} | "
                     f"{_pct(row['escalation_rate'])} | {_pct(row['applied_accuracy'])} | {row['local_decisions']} | "
                     f"{_pct(row['local_accuracy'])} | {_pct(row['fallback_accuracy'])} | "
                     f"${row['cost_per_1000']:.2f} | {row['mean_threshold']:.2f} |")
    return "\n".join(lines)


def verdict(table: list[dict[str, Any]], steps: list[Step]) -> dict[str, Any]:
    first, last = table[0]["escalation_rate"], table[-1]["escalation_rate"]
    local = [s for s in steps if not s.escalated]
    return {
        "escalation_halved": last <= first / 2,
        "first_escalation": first, "last_escalation": last,
        "local_accuracy": (sum(s.applied == s.truth for s in local) / len(local)) if local else None,
        "applied_accuracy": sum(s.applied == s.truth for s in steps) / len(steps) if steps else None,
        "worst_quarter_applied": min(r["applied_accuracy"] for r in table),
        "worst_quarter_local": min((r["local_accuracy"] for r in table if r["local_accuracy"] is not None),
                                   default=None),
    }


def plot(results: list[dict[str, Any]], path: str, window: int = 100) -> None:
    """Rolling escalation rate and rolling accuracy of applied decisions, one panel per data file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(8, 3.6 * len(results)), squeeze=False)
    for ax, result in zip(axes[:, 0], results):
        steps = result["steps_in_order"]
        xs, esc, acc, local = [], [], [], []
        for k in range(len(steps)):
            part = steps[max(0, k - window + 1):k + 1]
            xs.append(k + 1)
            esc.append(sum(s.escalated for s in part) / len(part))
            acc.append(sum(s.applied == s.truth for s in part) / len(part))
            mine = [s for s in part if not s.escalated]
            local.append(sum(s.applied == s.truth for s in mine) / len(mine) if mine else float("nan"))
        ax.plot(xs, esc, label="escalation rate", color="tab:red")
        ax.plot(xs, acc, label="applied decisions correct", color="tab:blue")
        ax.plot(xs, local, label="local decisions correct", color="tab:green", alpha=0.7)
        ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
        for q in range(1, 4):
            ax.axvline(len(steps) * q / 4, color="lightgrey", linewidth=1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"issues replayed in creation order (rolling window of {window})")
        ax.set_title(result["title"], fontsize=10)
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def run(path: str, args: argparse.Namespace) -> dict[str, Any]:
    per_repo, skipped = load_issues(path)
    kinds = sorted({row["kind"] for rows in per_repo.values() for row in rows})
    steps_per_repo, retrains = {}, {}
    started = time.perf_counter()
    for n, (repo, rows) in enumerate(sorted(per_repo.items())):
        oracle = Oracle(kinds, args.oracle_accuracy, args.price, seed=args.seed + n)
        steps, repo_retrains = replay_repo(repo, rows, oracle=oracle, delay_days=args.delay_days,
                                           delay_issues=args.delay_issues, retrain_every=args.retrain_every,
                                           fallback_weight=args.fallback_weight, seed=args.seed,
                                           progress=args.progress)
        steps_per_repo[repo], retrains[repo] = steps, repo_retrains
    all_steps = [s for steps in steps_per_repo.values() for s in steps]
    table = quarters(steps_per_repo)
    return {"data": path, "title": f"{Path(path).parent.name}/{Path(path).name}: {len(all_steps)} issues, "
                                    f"{len(per_repo)} repo(s)",
            "repos": {repo: len(rows) for repo, rows in per_repo.items()}, "skipped": skipped, "kinds": kinds,
            "table": table, "verdict": verdict(table, all_steps), "retrains": retrains,
            "seconds": round(time.perf_counter() - started, 1),
            "steps_in_order": sorted(all_steps, key=lambda s: (s.created_at, s.repo))}


def render(results: list[dict[str, Any]], args: argparse.Namespace, command: str, image: str | None) -> str:
    delay = f"{args.delay_issues} issues" if args.delay_issues is not None else f"{args.delay_days:g} days"
    out = [f"Parameters: feedback delay {delay}; retrain every {args.retrain_every} new examples; fallback "
           f"examples weighted {args.fallback_weight:g} (maintainer labels 1.0); oracle accuracy "
           f"{args.oracle_accuracy:g} at ${args.price:g} per call; seed {args.seed}.", ""]
    for result in results:
        v = result["verdict"]
        n_retrains = sum(len(r) for r in result["retrains"].values())
        out += [f"### {result['title']}", "",
                f"Kinds: {', '.join(result['kinds'])}. Skipped (no single kind): "
                f"{', '.join(f'{k} {n}' for k, n in sorted(result['skipped'].items())) or 'none'}. "
                f"{n_retrains} retrains; replay took {result['seconds']} s.", "",
                markdown_table(result["table"]), "",
                f"Escalation rate Q1 {_pct(v['first_escalation'])} -> Q4 {_pct(v['last_escalation'])} "
                f"(target: at most half: **{'met' if v['escalation_halved'] else 'not met'}**). "
                f"Decisions the bot made alone: {_pct(v['local_accuracy'])} correct (worst quarter "
                f"{_pct(v['worst_quarter_local'])}); all applied decisions, fallback included: "
                f"{_pct(v['applied_accuracy'])} (worst quarter {_pct(v['worst_quarter_applied'])}).", ""]
    if image:
        out += [f"![rolling escalation rate and accuracy]({image})", ""]
    out += ["Command:", "", "```", command, "```", ""]
    return "\n".join(out)


BEGIN, END = "<!-- replay:begin -->", "<!-- replay:end -->"


def write_results(path: Path, text: str) -> None:
    """Replace what lies between the replay markers of an existing page (its prose stays), else write it."""
    block = f"{BEGIN}\n{text}\n{END}"
    if path.exists():
        page = path.read_text(encoding="utf-8")
        if BEGIN in page and END in page:
            head, rest = page.split(BEGIN, 1)
            path.write_text(head + block + rest.split(END, 1)[1], encoding="utf-8")
            return
    path.write_text(block + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    from bot.cli import ArgumentParser, existing_file

    parser = ArgumentParser(prog="python -m bot eval replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, type=existing_file,
                        help="JSONL of issues (hf-datasets-issues or NLBSE format); repeat for several")
    parser.add_argument("--delay-days", type=float, default=14.0, help="maintainer label arrives after (default 14)")
    parser.add_argument("--delay-issues", type=int, help="...or after this many later issues")
    parser.add_argument("--retrain-every", type=int, default=25, help="new examples between retrains (default 25)")
    parser.add_argument("--fallback-weight", type=float, default=0.5)
    parser.add_argument("--oracle-accuracy", type=float, default=0.9)
    parser.add_argument("--price", type=float, default=0.004,
                        help="dollars per fallback call (default 0.004: ~1.5k input + 60 output tokens on a "
                             "GPT-4o-class model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the Markdown results here")
    parser.add_argument("--plot", help="write the PNG curve here")
    parser.add_argument("--json", help="write the per-quarter tables and retrain log as JSON here")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    results = [run(path, args) for path in args.data]
    if args.plot:
        plot(results, args.plot)
    command = "python -m bot eval replay " + " ".join(argv)
    image = None
    if args.plot and args.out:
        image = str(Path(args.plot).resolve().relative_to(Path(args.out).resolve().parent)) \
            if Path(args.plot).resolve().is_relative_to(Path(args.out).resolve().parent) else args.plot
    text = render(results, args, command, image)
    print(text)
    if args.out:
        write_results(Path(args.out), text)
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "steps_in_order"}
                                               for r in results], indent=1), encoding="utf-8")
    return 0
