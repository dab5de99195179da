"""The fixed sample behind docs/summaries.md: the "In short" before and after, for judging by hand.

    python bench/summaries.py --data ../shared/evaldata [--seed 12] [--n 30] [--model]

Draws ``n`` issues with a fixed seed, half from nlbse24 (react, tensorflow, vscode, bitcoin, opencv: heavy
issue templates) and half from hf-datasets-issues (free text), and prints for each its reference
(repo#number or the NLBSE id), the old summary (the author's first substantive sentence) and the new
extractive one. ``--model`` adds the local model's abstractive summary (the bundled GGUF, or
LOCAL_MODEL_PATH) and whether it passes ``faithful_enough``. The issue text itself is not printed beyond
the summaries: the data may not be redistributed.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.core.summary import extractive_summary, faithful_enough  # noqa: E402

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ENVIRONMENT = re.compile(r"^(version|os|environment|platform|steps|expected|actual|python|node)\b", re.I)
_NOISE_LINE = re.compile(r"^\s*(#|>|[-*] \[[ xX]\]|\||<!--|```|~~~|\s{4})")


def first_sentence(body: str, max_length: int = 200) -> str:
    """The summary before issue #12 (main's ``bot.core.triage.extractive_summary``), for comparison."""
    in_code = False
    for line in (body or "").splitlines():
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            in_code = not in_code
            continue
        if in_code or not stripped or _NOISE_LINE.match(line) or len(stripped.split()) < 4 \
                or _ENVIRONMENT.match(stripped):
            continue
        sentence = " ".join(_SENTENCE_END.split(stripped, maxsplit=1)[0].split())
        return sentence if len(sentence) <= max_length else sentence[: max_length - 1] + "…"
    return ""


def sample(data: Path, n: int, seed: int) -> list[dict]:
    """``n`` issues, half from each source, drawn with ``random.Random(seed)``."""
    rng = random.Random(seed)
    nlbse = [json.loads(line) for line in (data / "nlbse24" / "issues_dev.jsonl").open()]
    hf = [json.loads(line) for line in (data / "hf-datasets-issues" / "issues.jsonl").open()]
    picked = [{"ref": f"nlbse24:{row['id']} ({row['repo']})", "title": row["title"], "body": row.get("body") or ""}
              for row in rng.sample(nlbse, n // 2)]
    picked += [{"ref": f"{row['repo']}#{row['number']}", "title": row["title"], "body": row.get("body") or ""}
               for row in rng.sample(hf, n - n // 2)]
    return picked


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/evaldata")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--model", action="store_true", help="also the local model's abstractive summary")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    issues = sample(Path(args.data), args.n, args.seed)
    model = None
    if args.model:
        import os

        from bot.models.base import IssueText
        from bot.models.local import LocalModel

        model = LocalModel(os.environ.get("LOCAL_MODEL_PATH") or None)
    rows = []
    for number, issue in enumerate(issues, 1):
        row = {"n": number, "ref": issue["ref"], "old": first_sentence(issue["body"]),
               "new": extractive_summary(issue["body"], issue["title"])}
        if model is not None:
            prediction = model.predict(IssueText(issue["title"], issue["body"], "eval"), summary=True)
            row["model"] = prediction.summary
            row["model_faithful_enough"] = faithful_enough(prediction.summary, issue["title"], issue["body"])
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
        return 0
    for row in rows:
        print(f"{row['n']:2d} {row['ref']}\n   old: {row['old']}\n   new: {row['new']}")
        if "model" in row:
            print(f"   model: {row['model']}  [guard: {'pass' if row['model_faithful_enough'] else 'reject'}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
