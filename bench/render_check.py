"""What the last-line check in ``bot.actions`` costs per posted body (``render_check.problems``).

Builds a typical triage comment (summary with a code span, one related issue, an earlier answer) and a
ten-issue digest with the real builders, then times ``render_check.problems`` on each (cmark-gfm twice
plus an HTML walk).

    .venv/bin/python bench/render_check.py            # mean of 500 runs each
"""
from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.core import render_check  # noqa: E402
from tests.test_render_properties import digest_body, triage_comment  # noqa: E402


def main(runs: int = 500) -> None:
    comment = triage_comment(title="Crash", body="I run `make @org/security-team` today and it fails.",
                             duplicates=[{"number": 3, "title": "Crash on start"}],
                             answer={"answer": "Set `output_dir` in settings.yml.", "number": 2}).body
    digest = digest_body([f"Issue title {i} with `code` and @name" for i in range(10)], summaries=["summary"] * 10,
                         labels=["bug"])
    for name, body in (("triage comment", comment), ("digest body", digest)):
        seconds = timeit.timeit(lambda: render_check.problems(body, author={"alice"}, repo="octo-org/hello"),
                                number=runs) / runs
        print(f"{name}: {len(body)} chars, render_check.problems {seconds * 1e3:.2f} ms (mean of {runs})")


if __name__ == "__main__":
    main()
