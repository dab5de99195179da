"""`python -m bot demo` and `python -m bot triage`: the main job on the embedded default model, with no
GitHub account and no network. Each sample issue goes through the same cascade and the same pure
decision the server uses; the output is what the bot would do and say."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from bot.config import DEFAULTS
from bot.core.triage import decide
from bot.db import open_db
from bot.models.base import IssueText

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "demo" / "issues.json"
HISTORY = ROOT / "demo" / "history.jsonl"
DEMO_REPO = "demo/example"
GITHUB_DEFAULT_LABELS = {"bug", "documentation", "duplicate", "enhancement", "good first issue",
                         "help wanted", "invalid", "question", "wontfix", "needs-triage", "security"}


def _cascade(db, use_history: bool = True):
    """The server's cascade on the bundled GGUF; plus a classifier trained on the demo repo's history."""
    from bot.config import Settings
    from bot.models.factory import build_cascade

    settings = Settings.from_env(require_app=False)
    cascade = build_cascade(settings, db)
    if use_history and HISTORY.exists():
        from bot.models.classifier import IssueClassifier, save_classifier

        rows = [json.loads(line) for line in HISTORY.read_text().splitlines() if line.strip()]
        classifier = IssueClassifier.train([IssueText(r["title"], r.get("body", ""), DEMO_REPO) for r in rows],
                                           [r["kind"] for r in rows], repo=DEMO_REPO)
        save_classifier(db, DEMO_REPO, classifier)
    return cascade


def triage_one(cascade, issue: dict[str, Any], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """One decision: the cascade's prediction and the plan the server would apply."""
    config = config or DEFAULTS["triage"]
    started = time.perf_counter()
    prediction = cascade.predict(IssueText.from_dict(issue, DEMO_REPO), repo=DEMO_REPO, delivery_id="demo",
                                 triage_config=config)
    elapsed = (time.perf_counter() - started) * 1000
    plan = decide(issue, config, GITHUB_DEFAULT_LABELS, prediction, [], None, repo=DEMO_REPO)
    comment = next((a.body for a in plan.actions if type(a).__name__ == "Comment"), "")
    llm = {}
    if cascade.local is not None and hasattr(cascade.local, "kind_probs"):
        # What the bundled GGUF alone says (zero-shot): the only tier for a repo with no labelled history.
        started = time.perf_counter()
        alone = cascade.local.predict(IssueText.from_dict(issue, DEMO_REPO), summary=False)
        llm = {"llm_kind": alone.kind, "llm_confidence": round(alone.confidence, 3),
               "llm_ms": round((time.perf_counter() - started) * 1000, 1)}
    return {
        "number": issue.get("number"), "title": issue.get("title"),
        "kind": plan.data["kind"], "predicted_kind": prediction.kind,
        "confidence": round(prediction.confidence, 3), "tier": prediction.tier,
        "escalated": prediction.escalated, "uncertain": not plan.data["confident"],
        "labels": plan.data["labels"], "missing": plan.data["missing"], "summary": plan.data["summary"],
        "comment": comment.split("\n", 1)[1] if comment.startswith("<!--") else comment,
        "ms": round(elapsed, 1), **llm,
    }


def main(argv: list[str]) -> int:
    from bot.cli import ArgumentParser, existing_file

    parser = ArgumentParser(prog="python -m bot demo")
    parser.add_argument("--file", default=str(SAMPLES), type=existing_file,
                        help="a JSON list of issues (title, body, user)")
    parser.add_argument("--json", action="store_true", help="print the decisions as JSON")
    args = parser.parse_args(argv)
    issues = json.loads(Path(args.file).read_text())
    db = open_db(":memory:")
    load_started = time.perf_counter()
    cascade = _cascade(db)
    load_ms = (time.perf_counter() - load_started) * 1000
    results = [triage_one(cascade, issue) for issue in issues]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    model = cascade.local.model_id if cascade.local else "none"
    print(f"first-responder demo: {len(issues)} sample issues, local model {model} "
          f"(loaded in {load_ms:.0f} ms), fallback: {'on' if cascade.remote else 'off (no OPENAI_API_KEY)'}\n")
    for result in results:
        print(f"#{result['number']} {result['title']}")
        decided = result["kind"] or f"unsure (best guess {result['predicted_kind']})"
        print(f"  kind: {decided}   confidence: {result['confidence']:.2f}   tier: {result['tier']}"
              f"   time: {result['ms']:.0f} ms")
        print(f"  labels: {', '.join(result['labels']) or '-'}   missing: {', '.join(result['missing']) or '-'}")
        if "llm_kind" in result:
            print(f"  bundled model alone (zero-shot, no history): {result['llm_kind']} "
                  f"p={result['llm_confidence']:.2f}   time: {result['llm_ms']:.0f} ms")
        print(f"  summary: {result['summary'] or '-'}")
        if not result["comment"]:
            print("  comment: none (nothing to ask the author; labels only, as with `triage.comment: auto`)")
        else:
            print("  comment:")
        for line in result["comment"].splitlines():
            print(f"    | {line}")
        print()
    times = sorted(r["ms"] for r in results)
    print(f"decision: median {times[len(times) // 2]:.0f} ms per issue; "
          f"{sum(1 for r in results if not r['uncertain'])}/{len(results)} decided alone, "
          f"the rest labelled needs-triage rather than guessed.")
    return 0


def triage_main(argv: list[str]) -> int:
    """`python -m bot triage --title ... --body ...` or `--file issue.json`: one decision as JSON."""
    from bot.cli import ArgumentParser

    parser = ArgumentParser(prog="python -m bot triage")
    parser.add_argument("--title")
    parser.add_argument("--body", default="")
    parser.add_argument("--file", help="a JSON issue object (title, body, user)")
    args = parser.parse_args(argv)
    if args.file:
        try:
            issue = json.loads(Path(args.file).read_text())
        except (OSError, ValueError) as exc:
            print(f"triage: cannot read {args.file}: {exc}", file=sys.stderr)
            return 2
        if not isinstance(issue, dict) or "title" not in issue:
            print("triage: the file must hold one JSON object with a title", file=sys.stderr)
            return 2
    elif args.title:
        issue = {"number": 1, "title": args.title, "body": args.body, "user": {"login": "author"}}
    else:
        parser.error("give --title (and --body) or --file")
    db = open_db(":memory:")
    print(json.dumps(triage_one(_cascade(db), issue), indent=2))
    return 0
