"""``python -m bot eval triage --data FILE``: the triage tiers measured on labelled issues (NLBSE protocol).

A classifier per repository, cross-validated inside the file (stratified k-fold, out-of-fold
probabilities for every issue). The local LLM runs zero-shot; it is slow (~1 s per issue on 2 cores), so
it scores a stratified sample of ``--llm-per-repo`` issues per repo (0 = all) and its results can be cached
with ``--llm-cache``. "Combined" is the cascade's log-linear pool of both, on that sample.

The threshold for acting alone is chosen honestly: for each repo, the lowest threshold whose confident
decisions are >= ``--target`` correct on the *other* repos (leave-one-repo-out), then reported on the held-out
repo. Writes a table and a PNG (accuracy vs coverage) and prints everything as Markdown.
"""
from __future__ import annotations

import json
import random
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

EVAL_KINDS = ("bug", "feature", "question")
THRESHOLDS = [round(0.40 + 0.05 * i, 2) for i in range(11)] + [0.92, 0.94, 0.96, 0.98]


def _load(path: str) -> list[dict[str, Any]]:
    """The JSONL rows; a line that is not a JSON object is a CliError naming the file and line."""
    from bot.cli import CliError

    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                raise CliError(f"eval triage: {path} line {number}: expected a JSON object per line", 2)
            rows.append(row)
    return rows


def macro_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str] = EVAL_KINDS) -> float:
    """Macro-averaged F1 over ``labels``."""
    scores = []
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred) if g == label and p != label)
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def _restrict(probs: dict[str, float]) -> dict[str, float]:
    """Probabilities over the data set's kinds only (NLBSE has no docs/other)."""
    total = sum(probs.get(k, 0.0) for k in EVAL_KINDS) or 1.0
    return {k: probs.get(k, 0.0) / total for k in EVAL_KINDS}


def _argmax(probs: dict[str, float]) -> tuple[str, float]:
    kind = max(EVAL_KINDS, key=lambda k: probs[k])
    return kind, probs[kind]


def coverage_table(gold: Sequence[str], probs: Sequence[dict[str, float]],
                   thresholds: Sequence[float] = THRESHOLDS) -> list[tuple[float, float, float]]:
    """(threshold, coverage, accuracy of the covered) for each threshold."""
    rows = []
    for t in thresholds:
        covered = [(g, _argmax(p)[0]) for g, p in zip(gold, probs) if _argmax(p)[1] >= t]
        coverage = len(covered) / len(gold) if gold else 0.0
        accuracy = sum(g == k for g, k in covered) / len(covered) if covered else float("nan")
        rows.append((t, coverage, accuracy))
    return rows


def pick_threshold(gold: Sequence[str], probs: Sequence[dict[str, float]], target: float) -> float:
    """Lowest threshold (on a fine grid) whose confident decisions reach ``target`` accuracy."""
    grid = [round(0.34 + 0.01 * i, 2) for i in range(66)]
    for t, _, accuracy in coverage_table(gold, probs, grid):
        if accuracy == accuracy and accuracy >= target:
            return t
    return 1.0


def classifier_oof(rows: list[dict[str, Any]], folds: int, seed: int) -> tuple[list[dict[str, float]], list[float]]:
    """Out-of-fold classifier probabilities per issue (per repo) and per-issue predict latencies (ms)."""
    from sklearn.model_selection import StratifiedKFold

    from bot.models.base import IssueText
    from bot.models.classifier import IssueClassifier

    probs: list[dict[str, float] | None] = [None] * len(rows)
    latencies: list[float] = []
    by_repo: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_repo[row["repo"]].append(i)
    for repo, index in sorted(by_repo.items()):
        issues = [IssueText(rows[i]["title"], rows[i]["body"] or "", repo) for i in index]
        labels = [rows[i]["label"] for i in index]
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for train, test in splitter.split(issues, labels):
            started = time.perf_counter()
            model = IssueClassifier.train([issues[j] for j in train], [labels[j] for j in train], repo=repo)
            print(f"  trained {repo} fold on {len(train)} issues in {time.perf_counter() - started:.2f}s",
                  file=sys.stderr)
            for j, p in zip(test, model.predict_proba([issues[j] for j in test])):
                probs[index[j]] = _restrict(p)
            for j in test[:10]:  # single-issue latency, as in production
                latencies.append(model.predict(issues[j]).latency_ms)
    return [p or {} for p in probs], latencies


def llm_sample(rows: list[dict[str, Any]], per_repo: int, seed: int) -> list[int]:
    """Indices of a stratified sample: ``per_repo`` issues per repo, balanced over labels (0 = all)."""
    if per_repo <= 0:
        return list(range(len(rows)))
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[(row["repo"], row["label"])].append(i)
    chosen = []
    per_label = max(1, per_repo // len(EVAL_KINDS))
    for key in sorted(groups):
        members = groups[key][:]
        rng.shuffle(members)
        chosen += members[:per_label]
    return sorted(chosen)


def run_llm(rows: list[dict[str, Any]], sample: list[int], cache_path: str | None,
            summary_every: int) -> tuple[dict[int, dict[str, Any]], list[float]]:
    """LLM probabilities for the sample (cached by issue id); full-predict latencies on some of them."""
    from bot.models.base import IssueText
    from bot.models.local import LocalModel

    cache: dict[str, Any] = {}
    if cache_path and Path(cache_path).exists():
        cache = json.loads(Path(cache_path).read_text())
    started = time.perf_counter()
    scorer = LocalModel(generate_summary=False)
    print(f"  local model loaded in {time.perf_counter() - started:.2f}s", file=sys.stderr)
    full = LocalModel(generate_summary=True) if summary_every else None
    results: dict[int, dict[str, Any]] = {}
    latencies: list[float] = []
    for n, i in enumerate(sample):
        row = rows[i]
        issue = IssueText(row["title"], row["body"] or "", row["repo"])
        key = row["id"]
        if key not in cache:
            prediction = scorer.predict(issue)
            cache[key] = {"probs": prediction.probs, "input_tokens": prediction.input_tokens,
                          "latency_ms": prediction.latency_ms}
        results[i] = cache[key]
        if full is not None and n % summary_every == 0:
            prediction = full.predict(issue)
            latencies.append(prediction.latency_ms)
            cache[key]["full_latency_ms"] = prediction.latency_ms
            cache[key]["output_tokens"] = prediction.output_tokens
        if n % 25 == 0:
            print(f"  llm {n}/{len(sample)}", file=sys.stderr)
            if cache_path:
                Path(cache_path).write_text(json.dumps(cache))
    if cache_path:
        Path(cache_path).write_text(json.dumps(cache))
    if not latencies:
        latencies = [c.get("full_latency_ms", c["latency_ms"]) for c in results.values()]
    return results, latencies


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _per_repo_f1(rows: list[dict[str, Any]], index: Sequence[int], probs: dict[int, dict[str, float]]) -> dict[str, float]:
    by_repo: dict[str, list[int]] = defaultdict(list)
    for i in index:
        by_repo[rows[i]["repo"]].append(i)
    return {repo: macro_f1([rows[i]["label"] for i in idx], [_argmax(probs[i])[0] for i in idx])
            for repo, idx in sorted(by_repo.items())}


def loro_threshold(rows: list[dict[str, Any]], index: Sequence[int], probs: dict[int, dict[str, float]],
                   target: float) -> tuple[list[tuple[str, float, float, float]], float]:
    """Leave-one-repo-out threshold choice; per repo (repo, threshold, coverage, accuracy) and a final pick."""
    repos = sorted({rows[i]["repo"] for i in index})
    out = []
    for held in repos:
        train = [i for i in index if rows[i]["repo"] != held]
        test = [i for i in index if rows[i]["repo"] == held]
        t = pick_threshold([rows[i]["label"] for i in train], [probs[i] for i in train], target)
        (_, coverage, accuracy), = coverage_table([rows[i]["label"] for i in test], [probs[i] for i in test], [t])
        out.append((held, t, coverage, accuracy))
    final = pick_threshold([rows[i]["label"] for i in index], [probs[i] for i in index], target)
    return out, final


def plot(curves: dict[str, list[tuple[float, float, float]]], path: str, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, table in curves.items():
        points = [(c, a) for _, c, a in table if a == a]
        ax.plot([c for c, _ in points], [a for _, a in points], marker="o", markersize=3, label=name)
    ax.axhline(target, color="grey", linestyle="--", linewidth=0.8, label=f"{target:.0%} correct")
    ax.axvline(0.6, color="grey", linestyle=":", linewidth=0.8, label="60% coverage")
    ax.set_xlabel("coverage (share of issues decided without escalation)")
    ax.set_ylabel("accuracy of those decisions")
    ax.set_title("Triage: accuracy vs coverage (NLBSE'24 dev, per-repo 5-fold CV)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0.3, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from bot.cli import ArgumentParser, existing_file

    parser = ArgumentParser(prog="python -m bot eval triage", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=existing_file,
                        help="JSONL with repo, title, body, label (bug/feature/question)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--llm-per-repo", type=int, default=60,
                        help="issues per repo scored by the local LLM (stratified sample; 0 = all, ~1 s each)")
    parser.add_argument("--no-llm", action="store_true", help="skip the local LLM tier")
    parser.add_argument("--llm-cache", default=None, help="JSON file caching LLM scores between runs")
    parser.add_argument("--latency-every", type=int, default=5,
                        help="time a full LLM call (with summary) on every Nth sampled issue (0 = never)")
    parser.add_argument("--llm-weight", type=float, default=None, help="weight of the LLM in the pool")
    parser.add_argument("--target", type=float, default=0.95, help="accuracy the confident decisions must reach")
    parser.add_argument("--price-in", type=float, default=0.15, help="fallback price, $ per 1M input tokens")
    parser.add_argument("--price-out", type=float, default=0.60, help="fallback price, $ per 1M output tokens")
    parser.add_argument("--plot", default="docs/img/triage-coverage.png")
    parser.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    args = parser.parse_args(argv)

    from bot.models.cascade import LLM_WEIGHT, combine

    llm_weight = LLM_WEIGHT if args.llm_weight is None else args.llm_weight
    rows = [r for r in _load(args.data) if r.get("label") in EVAL_KINDS]
    print(f"{len(rows)} issues from {len({r['repo'] for r in rows})} repos", file=sys.stderr)
    t0 = time.perf_counter()
    clf_list, clf_latency = classifier_oof(rows, args.folds, args.seed)
    train_seconds = time.perf_counter() - t0
    clf = dict(enumerate(clf_list))
    everything = list(range(len(rows)))
    report: dict[str, Any] = {"n": len(rows), "folds": args.folds, "target": args.target,
                              "classifier_cv_seconds": round(train_seconds, 1)}

    tiers: dict[str, tuple[list[int], dict[int, dict[str, float]]]] = {"classifier (all issues)": (everything, clf)}
    llm_latency: list[float] = []
    llm_tokens: list[int] = []
    if not args.no_llm:
        sample = llm_sample(rows, args.llm_per_repo, args.seed)
        llm_results, llm_latency = run_llm(rows, sample, args.llm_cache, args.latency_every)
        llm = {i: _restrict(r["probs"]) for i, r in llm_results.items()}
        llm_tokens = [int(r.get("input_tokens", 0)) for r in llm_results.values()]
        combined = {i: _restrict(combine(clf[i], llm[i], llm_weight)) for i in sample}
        tiers["classifier (LLM sample)"] = (sample, clf)
        tiers["local LLM zero-shot (sample)"] = (sample, llm)
        tiers[f"combined, w={llm_weight:g} (sample)"] = (sample, combined)
        sweep = {}
        for w in (0.0, 0.1, 0.25, 0.5, 1.0):
            pooled = {i: _restrict(combine(clf[i], llm[i], w)) for i in sample}
            sweep[w] = statistics.mean(_per_repo_f1(rows, sample, pooled).values())
        report["llm_weight_sweep"] = sweep

    lines = ["## Macro-F1 per repository (out-of-fold)", "",
             "| tier | n | " + " | ".join(r.split("/")[-1] for r in sorted({r['repo'] for r in rows})) + " | mean |",
             "|---|---|" + "---|" * (len({r['repo'] for r in rows}) + 1)]
    curves = {}
    report["tiers"] = {}
    for name, (index, probs) in tiers.items():
        per_repo = _per_repo_f1(rows, index, probs)
        mean = statistics.mean(per_repo.values())
        lines.append(f"| {name} | {len(index)} | " + " | ".join(f"{v:.3f}" for v in per_repo.values()) + f" | **{mean:.3f}** |")
        table = coverage_table([rows[i]["label"] for i in index], [probs[i] for i in index])
        curves[name] = table
        loro, final = loro_threshold(rows, index, probs, args.target)
        report["tiers"][name] = {"per_repo_f1": per_repo, "mean_f1": mean, "coverage": table,
                                 "loro": loro, "threshold": final}
    if "llm_weight_sweep" in report:
        lines += ["", "LLM weight in the pool (mean macro-F1 on the sample): " +
                  ", ".join(f"w={w:g}: {f:.3f}" for w, f in report["llm_weight_sweep"].items())]

    lines += ["", f"## Accuracy vs coverage of confident decisions (top probability >= threshold)", ""]
    names = list(curves)
    lines.append("| threshold | " + " | ".join(f"{n}: coverage / accuracy" for n in names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for k, t in enumerate(THRESHOLDS):
        cells = []
        for n in names:
            _, c, a = curves[n][k]
            cells.append(f"{c:.1%} / {a:.1%}" if a == a else f"{c:.1%} / -")
        lines.append(f"| {t:.2f} | " + " | ".join(cells) + " |")

    lines += ["", f"## Threshold for >= {args.target:.0%} correct, chosen leave-one-repo-out", ""]
    for name in names:
        info = report["tiers"][name]
        held = info["loro"]
        cov = statistics.mean(h[2] for h in held)
        # Accuracy over all held-out decisions (repos weighted by how many they decided alone).
        decided = [(h[2], h[3]) for h in held if h[2] > 0 and h[3] == h[3]]
        acc = (sum(c * a for c, a in decided) / sum(c for c, _ in decided)) if decided else float("nan")
        lines.append(f"- {name}: threshold on all repos {info['threshold']:.2f}; held-out repos: " +
                     ", ".join(f"{h[0].split('/')[-1]} t={h[1]:.2f} cov {h[2]:.0%} acc " + (f"{h[3]:.1%}" if h[3] == h[3] else "-") for h in held) +
                     f"; mean coverage {cov:.1%}, accuracy of the decisions " + (f"{acc:.1%}" if acc == acc else "-"))
        info["loro_mean_coverage"], info["loro_mean_accuracy"] = cov, acc

    # Escalation and cost at the chosen threshold of the tier the bot runs (the classifier on all issues when
    # the LLM's pool weight is 0, as by default: then "combined" is the classifier).
    main_tier = names[0] if llm_weight == 0 or len(names) == 1 else names[-1]
    info = report["tiers"][main_tier]
    escalation = 1 - info["loro_mean_coverage"]
    mean_in = statistics.mean(llm_tokens) if llm_tokens else 600.0
    # The big model sees the same prompt; its tokenizer is assumed ~ SmolLM2's; ~60 output tokens.
    cost_per_call = (mean_in * args.price_in + 60 * args.price_out) / 1_000_000
    report.update({"main_tier": main_tier, "escalation_rate": escalation, "mean_input_tokens": mean_in,
                   "fallback_cost_per_1000": 1000 * escalation * cost_per_call})
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report.update({
        "classifier_latency_ms": {"p50": _percentile(clf_latency, 0.5), "p95": _percentile(clf_latency, 0.95)},
        "llm_latency_ms": {"p50": _percentile(llm_latency, 0.5), "p95": _percentile(llm_latency, 0.95),
                           "n": len(llm_latency)},
        "peak_rss_mb": rss_mb,
    })
    lines += ["", "## Cost, latency, memory", "",
              f"- escalation rate at the chosen threshold ({main_tier}): {escalation:.1%} (held-out repos)",
              f"- fallback cost per 1,000 issues: ${report['fallback_cost_per_1000']:.4f} at ${args.price_in}/1M input "
              f"and ${args.price_out}/1M output tokens, {mean_in:.0f} input + 60 output tokens per call",
              f"- classifier latency per issue: p50 {report['classifier_latency_ms']['p50']:.1f} ms, "
              f"p95 {report['classifier_latency_ms']['p95']:.1f} ms; 5-fold CV over all repos took {train_seconds:.1f} s",
              f"- local LLM full call (kind + summary) latency: p50 {report['llm_latency_ms']['p50']:.0f} ms, "
              f"p95 {report['llm_latency_ms']['p95']:.0f} ms (n={len(llm_latency)})",
              f"- peak RSS of this process: {rss_mb:.0f} MB"]
    plot(curves, args.plot, args.target)
    lines += ["", f"Plot: `{args.plot}`"]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
