"""What a weekly digest costs in GitHub API requests and seconds, for 1,000 and 10,000 open issues.

Seeds the GitHub stand-in (tests/standin.py) with a repository of N open issues spread over two
years (reactions, comments from a pool of users, some maintainers), plus a realistic week: issues
opened and closed over the charted eight weeks with all three close reasons, and some in the
needs-info lifecycle. Then runs ``build_digest`` through the bot's real client (gidgethub over
aiohttp, ETag cache and all) three times:

* cold: empty database, empty ETag cache (the first digest after installing);
* warm: the same run again (the ETag cache answers 304, the thread cache skips comments);
* next week: 7 days later, with a week of new issues and comments, the caches from before.

Requests are counted from the stand-in's request log (the installation-token exchange and the
repository config read are included: the scheduler pays them too).

    .venv/bin/python bench/digest_cost.py                  # 1,000 and 10,000
    .venv/bin/python bench/digest_cost.py --sizes 1000 --json bench/out/digest_cost.json

The stand-in validates each request against GitHub's OpenAPI description (as in the tests); response
validation is off here, since checking 100-issue pages against the schema would measure the
validator, not the bot. Seconds are therefore an upper bound for the bot's own work plus loopback
HTTP, and say nothing about GitHub's latency (about 0.3-1 s per search request in practice).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.app import Services  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.features import digest  # noqa: E402
from tests.standin import GitHubStandIn, generate_app_key  # noqa: E402

REPO = "octo-org/big"
INSTALLATION_ID = 1
APP_ID = 4242
NOW = datetime(2024, 3, 11, 9, 30, tzinfo=timezone.utc)
MAINTAINERS = ("maint1", "maint2", "maint3")
REACTIONS = ("+1", "heart", "hooray", "rocket", "laugh", "eyes", "-1", "confused")


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _random_time(rng: random.Random, low: datetime, high: datetime) -> datetime:
    return low + timedelta(seconds=rng.uniform(0, (high - low).total_seconds()))


def _comments(rng: random.Random, users: list[str], created: datetime, until: datetime, count: int) -> list[dict]:
    stamps = sorted(_random_time(rng, created, until) for _ in range(count))
    return [{"body": "more details", "created_at": _iso(stamp),
             "user": rng.choice(MAINTAINERS) if rng.random() < 0.3 else rng.choice(users)} for stamp in stamps]


def seed(standin: GitHubStandIn, open_issues: int, *, seed_value: int = 7) -> dict[str, int]:
    """N open issues over two years, a busy eight weeks of opened/closed issues, needs-info issues."""
    rng = random.Random(seed_value)
    users = [f"user{i}" for i in range(300)]
    for login in MAINTAINERS:
        standin.set_permission(REPO, login, "maintain")
    for label in ("bug", "enhancement", "question", "needs-info"):
        standin.add_label(REPO, label)
    first = NOW - timedelta(days=730)
    end = NOW - timedelta(minutes=30)
    for _ in range(open_issues):
        created = _random_time(rng, first, end)
        reactions = {}
        if rng.random() < 0.3:
            for content in rng.sample(REACTIONS, rng.randint(1, 3)):
                reactions[content] = int(rng.paretovariate(1.5))
        count = min(int(rng.expovariate(0.6)), 12)
        standin.add_issue(REPO, f"Issue about {rng.choice(['sync', 'export', 'login', 'cache', 'docs'])}",
                          "Steps to reproduce...", user=rng.choice(users), created_at=created,
                          labels=[rng.choice(["bug", "enhancement", "question"])], reactions=reactions,
                          comments=_comments(rng, users, created, end, count))
    closed = 0
    for _ in range(400):  # about 50 a week opened and closed over the charted eight weeks
        created = _random_time(rng, NOW - timedelta(days=70), end - timedelta(hours=2))
        closed_at = _random_time(rng, created, end)
        reason = rng.choices(["completed", "not_planned", "duplicate"], [6, 3, 1])[0]
        standin.add_issue(REPO, "Fixed thing", user=rng.choice(users), created_at=created, state="closed",
                          state_reason=reason, closed_at=closed_at,
                          comments=_comments(rng, users, created, closed_at, rng.randint(0, 3)))
        closed += 1
    for _ in range(25):  # waiting on their authors
        created = _random_time(rng, NOW - timedelta(days=40), NOW - timedelta(days=2))
        asked = created + timedelta(hours=5)
        issue = standin.add_issue(REPO, "Crash without logs", user=rng.choice(users), created_at=created,
                                  labels=["needs-info"], comments=[{"body": "Could you attach the logs?",
                                                                    "user": MAINTAINERS[0], "created_at": _iso(asked)}])
        standin.add_event(REPO, issue["number"], "labeled", created_at=_iso(asked), actor=MAINTAINERS[0],
                          label="needs-info")
    return {"open": open_issues + 25, "closed": closed}


def next_week(standin: GitHubStandIn, *, seed_value: int = 8) -> None:
    """A week passes: 50 new issues, 40 closed, 200 new comments on random open issues."""
    rng = random.Random(seed_value)
    start, end = NOW, NOW + timedelta(days=7)
    users = [f"user{i}" for i in range(300)]
    open_numbers = [issue["number"] for issue in standin.issues(REPO) if issue["state"] == "open"]
    for _ in range(50):
        standin.add_issue(REPO, "New issue", user=rng.choice(users), created_at=_random_time(rng, start, end))
    for number in rng.sample(open_numbers, 40):
        issue = standin.issue(REPO, number)
        issue.update(state="closed", state_reason="completed", closed_at=_iso(_random_time(rng, start, end)))
        issue["updated_at"] = issue["closed_at"]
    for number in rng.sample(open_numbers, 200):
        standin.add_comment(REPO, number, "ping", user=rng.choice(users), created_at=_random_time(rng, start, end))


def classify(path: str) -> str:
    if path.startswith("/search/"):
        return "search"
    if path.endswith("/comments"):
        return "comments"
    if path.endswith("/permission"):
        return "permission"
    if path.endswith("/timeline"):
        return "timeline"
    if path.endswith("/access_tokens"):
        return "token"
    if "/contents/" in path:
        return "config"
    return "other"


async def measure(standin: GitHubStandIn, services: Services, now: datetime, week: str | None) -> dict:
    before = len(standin.requests)
    began = time.perf_counter()
    ctx = await services.context_for(REPO, INSTALLATION_ID, "bench")
    _title, markdown, label = await digest.build_digest(ctx, week, now=now)
    seconds = time.perf_counter() - began
    made = standin.requests[before:]
    kinds = Counter(classify(r["path"]) for r in made)
    return {"week": label, "requests": len(made), "not_modified": sum(1 for r in made if r["status"] == 304),
            "by_kind": dict(sorted(kinds.items())), "seconds": round(seconds, 2),
            "markdown_chars": len(markdown)}


async def run(size: int) -> dict:
    private, public = generate_app_key()
    standin = GitHubStandIn(public_key=public, app_id=APP_ID, validate_responses=False)
    standin.now = lambda: NOW
    await standin.start()
    standin.add_repo(REPO)
    standin.add_installation(INSTALLATION_ID, [REPO])
    standin.put_file(REPO, ".github/first-responder.yml", "digest:\n  enabled: true\n")
    seeded_at = time.perf_counter()
    counts = seed(standin, size)
    seed_seconds = time.perf_counter() - seeded_at
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(app_id=str(APP_ID), private_key=private, webhook_secret="x", api_url=standin.url,
                            database_path=f"{tmp}/bench.db", write_spacing=0.0, schedule=False)
        services = Services(settings)
        services._models = False  # no model: summaries would measure the model, not the API
        await services.start()
        try:
            cold = await measure(standin, services, NOW, "2024-W10")
            warm = await measure(standin, services, NOW, "2024-W10")
            services.config_cache.clear()
            next_week(standin)
            later = NOW + timedelta(days=7)
            standin.now = lambda: later
            following = await measure(standin, services, later, "2024-W11")
        finally:
            await services.close()
            await standin.stop()
    if standin.violations:
        raise SystemExit(f"requests GitHub's spec rejects: {standin.violations[:3]}")
    return {"open_issues": counts["open"], "closed_in_8_weeks": counts["closed"], "seed_seconds": round(seed_seconds, 1),
            "cold": cold, "warm": warm, "next_week": following}


def table(results: list[dict]) -> str:
    lines = ["| open issues | run | requests | of which 304 | search | comments | permission | timeline | seconds |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        for run_name in ("cold", "warm", "next_week"):
            row = result[run_name]
            kinds = row["by_kind"]
            lines.append(f"| {result['open_issues']:,} | {run_name.replace('_', ' ')} | {row['requests']} "
                         f"| {row['not_modified']} | {kinds.get('search', 0)} | {kinds.get('comments', 0)} "
                         f"| {kinds.get('permission', 0)} | {kinds.get('timeline', 0)} | {row['seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="open issues to seed, comma-separated")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    results = [asyncio.run(run(int(size))) for size in args.sizes.split(",")]
    print(table(results))
    print(f"\n{platform.python_implementation()} {platform.python_version()} on {platform.machine()}; "
          f"seeding took {', '.join(str(r['seed_seconds']) + ' s' for r in results)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
