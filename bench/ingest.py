"""Webhook ingestion benchmark: first-responder's `POST /webhook` against a minimal Probot app.

Starts each server as a subprocess on loopback, sends N signed `issues.opened` deliveries at a fixed
concurrency, and records how long each takes to be acknowledged (202 from us, 200 from Probot). For
first-responder it then kills the server with SIGKILL and checks in the SQLite file that every
acknowledged delivery id is in the `deliveries` table: an ack must mean "durably queued".

Fairness: both servers get the same bodies, signatures, client and concurrency; each target runs
``--rounds`` times in an ABBA order (ours, probot, probot, ours, ...), each round on a fresh process
(and, for us, a fresh database) after a short unmeasured warm-up; the report quotes medians over rounds.
Server CPU time per delivery (from /proc) is reported too, since it is less sensitive than wall-clock
figures to other work on a shared machine.

    .venv/bin/python bench/ingest.py                       # 5000 deliveries, concurrency 50, both servers
    .venv/bin/python bench/ingest.py --skip-probot --n 1000
    .venv/bin/python bench/ingest.py --json bench/out/ingest.json
    .venv/bin/python bench/ingest.py --skip-probot --profile bench/out/serve.prof   # cProfile of our server

Needs `npm ci` in bench/probot (see bench/README.md) unless --skip-probot.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import hmac
import json
import os
import platform
import shlex
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
PROBOT_DIR = ROOT / "bench" / "probot"
PAYLOAD_FILE = ROOT / "tests" / "data" / "webhooks" / "issues.opened.json"
SECRET = "bench-webhook-secret"
HEALTH_TOKEN = "bench-health-token"  # /health shows the queue depth only with the token
TARGET_P99_MS = 50.0


# ---------------------------------------------------------------- deliveries

def load_payload(path: Path) -> dict:
    """GitHub's published `issues.opened` example, without `installation` (so our worker drops it at once,
    as it does in production for a repository the app is not installed on)."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    payload.pop("installation", None)
    return payload


def make_deliveries(base: dict, n: int, tag: str) -> list[tuple[str, bytes, str]]:
    """(delivery id, exact body bytes, X-Hub-Signature-256) for n distinct issues; built before timing."""
    deliveries = []
    key = SECRET.encode()
    for i in range(n):
        payload = copy.deepcopy(base)
        issue = payload["issue"]
        issue["number"] = 1000 + i
        issue["id"] = 9_000_000 + i
        issue["title"] = f"{issue.get('title', 'Issue')} #{i} ({tag})"
        issue["url"] = issue["url"].rsplit("/", 1)[0] + f"/{1000 + i}"
        body = json.dumps(payload, separators=(",", ":")).encode()
        signature = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        deliveries.append((str(uuid.uuid4()), body, signature))
    return deliveries


# ---------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc); 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    url: str           # webhook URL
    health_url: str
    ok_status: int
    log_path: Path
    db_path: Path | None = None


def start_ours(workdir: Path, pem: str, profile: str | None, server_cmd: str | None = None) -> Server:
    port = free_port()
    db_path = workdir / f"ours-{port}.db"
    env = dict(os.environ, GITHUB_APP_ID="1", GITHUB_PRIVATE_KEY=pem, GITHUB_WEBHOOK_SECRET=SECRET,
               DATABASE_PATH=str(db_path), HOST="127.0.0.1", PORT=str(port), DISABLE_SCHEDULER="1",
               GITHUB_API_URL="http://127.0.0.1:9", PYTHONPATH=str(ROOT), HEALTH_TOKEN=HEALTH_TOKEN)
    env.pop("DRY_RUN", None)
    cmd = [sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-o", profile]
    cmd += shlex.split(server_cmd) if server_cmd else ["-m", "bot", "serve"]
    log_path = workdir / f"ours-{port}.log"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    return Server("first-responder", proc, f"{base}/webhook", f"{base}/health", 202, log_path, db_path)


def start_probot(workdir: Path, pem: str) -> Server:
    cli = PROBOT_DIR / "node_modules" / "probot" / "bin" / "probot.js"
    if not cli.exists():
        sys.exit(f"{cli} is missing: run `npm ci` in {PROBOT_DIR} (or pass --skip-probot)")
    port = free_port()
    env = dict(os.environ, APP_ID="1", PRIVATE_KEY=pem, WEBHOOK_SECRET=SECRET, HOST="127.0.0.1",
               PORT=str(port), NODE_ENV="production", LOG_LEVEL="info")
    for var in ("WEBHOOK_PROXY_URL", "GHE_HOST", "REDIS_URL", "SENTRY_DSN", "WEBHOOK_PATH"):
        env.pop(var, None)
    log_path = workdir / f"probot-{port}.log"
    # node directly (not npx) so that proc.pid is the server, for CPU accounting and kill
    proc = subprocess.Popen(["node", str(cli), "run", "./app.js"], cwd=PROBOT_DIR, env=env,
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    return Server("probot", proc, f"{base}/api/github/webhooks", f"{base}/ping", 200, log_path)


async def wait_ready(session: aiohttp.ClientSession, server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited ({server.proc.returncode}):\n"
                               f"{server.log_path.read_text(errors='replace')[-2000:]}")
        try:
            async with session.get(server.health_url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready after {timeout}s; log: {server.log_path}")


def stop(server: Server, graceful: bool) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


# ---------------------------------------------------------------- load

async def send_all(session: aiohttp.ClientSession, server: Server, deliveries, concurrency: int
                   ) -> tuple[list[float], dict[int, int], list[str], float]:
    """Send every delivery with `concurrency` workers; (latencies ms, status counts, acked ids, wall s)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    acked: list[str] = []
    index = 0

    async def worker() -> None:
        nonlocal index
        while index < len(deliveries):
            delivery_id, body, signature = deliveries[index]
            index += 1
            headers = {"Content-Type": "application/json", "X-GitHub-Event": "issues",
                       "X-GitHub-Delivery": delivery_id, "X-Hub-Signature-256": signature,
                       "User-Agent": "GitHub-Hookshot/bench"}
            started = time.perf_counter()
            try:
                async with session.post(server.url, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError:
                status = -1
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
            if status == server.ok_status:
                acked.append(delivery_id)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, statuses, acked, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


@dataclass
class Round:
    target: str
    round: int
    n: int
    concurrency: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    per_second: float
    server_cpu_ms_per_delivery: float   # during the load only
    server_cpu_ms_incl_drain: float     # ours: also while the worker finishes the backlog
    client_cpu_ms_per_delivery: float   # this script (shares the 2 cores with the server)
    statuses: dict
    acked: int
    stored: int | None = None       # ours only: acked ids found in the deliveries table after SIGKILL
    lost: int | None = None
    drain_seconds: float | None = None  # ours only: until the worker had handled every delivery
    notes: list = field(default_factory=list)


async def drain_time(session: aiohttp.ClientSession, server: Server, since: float, timeout: float = 120.0
                     ) -> float | None:
    """Seconds from ``since`` until /health reports an empty queue (None after ``timeout``)."""
    while time.perf_counter() - since < timeout:
        async with session.get(server.health_url, headers={"Authorization": f"Bearer {HEALTH_TOKEN}"}) as resp:
            if (await resp.json()).get("queue_depth") == 0:
                return time.perf_counter() - since
        await asyncio.sleep(0.05)
    return None


def count_stored(db_path: Path, ids: list[str]) -> int:
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("CREATE TEMP TABLE want (id TEXT PRIMARY KEY)")
        conn.executemany("INSERT INTO want VALUES (?)", [(i,) for i in ids])
        return conn.execute("SELECT count(*) FROM want JOIN deliveries USING (id)").fetchone()[0]
    finally:
        conn.close()


async def run_round(target: str, number: int, args, workdir: Path, pem: str, base: dict) -> Round:
    warmup = make_deliveries(base, args.warmup, f"warm-up {target} {number}")
    deliveries = make_deliveries(base, args.n, f"{target} {number}")
    server = start_ours(workdir, pem, args.profile, args.server_cmd) if target == "ours" else start_probot(workdir, pem)
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=args.new_connections)
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await wait_ready(session, server)
            if warmup:
                await send_all(session, server, warmup, args.concurrency)
                if target == "ours" and args.drain_timeout > 0:
                    await drain_time(session, server, time.perf_counter(), args.drain_timeout)
            cpu_before = cpu_seconds(server.proc.pid)
            client_before = time.process_time()
            latencies, statuses, acked, wall = await send_all(session, server, deliveries, args.concurrency)
            end = time.perf_counter()
            cpu = cpu_seconds(server.proc.pid) - cpu_before
            client_cpu = time.process_time() - client_before
            drained = (await drain_time(session, server, end - wall, args.drain_timeout)
                       if target == "ours" and args.drain_timeout > 0 else None)
            if drained is not None:
                drained = round(drained, 2)
            cpu_with_drain = cpu_seconds(server.proc.pid) - cpu_before
    finally:
        # SIGKILL: what was acked must already be on disk. A profile needs a clean exit to be written.
        stop(server, graceful=bool(args.profile and target == "ours"))
    result = Round(target=target, round=number, n=args.n, concurrency=args.concurrency,
                   p50_ms=round(percentile(latencies, 50), 2), p90_ms=round(percentile(latencies, 90), 2),
                   p99_ms=round(percentile(latencies, 99), 2), max_ms=round(max(latencies), 2),
                   per_second=round(args.n / wall, 1),
                   server_cpu_ms_per_delivery=round(cpu * 1000 / args.n, 3),
                   server_cpu_ms_incl_drain=round(cpu_with_drain * 1000 / args.n, 3),
                   client_cpu_ms_per_delivery=round(client_cpu * 1000 / args.n, 3),
                   statuses={str(k): v for k, v in sorted(statuses.items())}, acked=len(acked),
                   drain_seconds=drained)
    if target == "ours":
        result.stored = count_stored(server.db_path, [d[0] for d in deliveries])
        result.lost = len(acked) - count_stored(server.db_path, acked)
    return result


# ---------------------------------------------------------------- report

def summarize(rounds: list[Round], target: str) -> dict | None:
    mine = [r for r in rounds if r.target == target]
    if not mine:
        return None
    med = lambda attr: round(statistics.median(getattr(r, attr) for r in mine), 3)  # noqa: E731
    out = {key: med(key) for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "per_second",
                                     "server_cpu_ms_per_delivery", "server_cpu_ms_incl_drain",
                                     "client_cpu_ms_per_delivery")}
    out["rounds"] = len(mine)
    out["non_ok"] = sum(r.n - r.acked for r in mine)
    if target == "ours":
        out["lost"] = sum(r.lost for r in mine)
        out["drain_seconds"] = med("drain_seconds") if all(r.drain_seconds is not None for r in mine) else None
    return out


def cpu_cell(load: float, with_drain: float, target: str) -> str:
    return f"{load} ({with_drain})" if target == "ours" else str(load)


def render(rounds: list[Round], summary: dict, args) -> str:
    lines = ["| target | round | p50 ms | p90 ms | p99 ms | max ms | deliveries/s | server CPU ms/delivery"
             " (+ drain) | client CPU ms/delivery | not acked | lost |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        lost = "-" if r.lost is None else str(r.lost)
        lines.append(f"| {r.target} | {r.round} | {r.p50_ms} | {r.p90_ms} | {r.p99_ms} | {r.max_ms} | {r.per_second}"
                     f" | {cpu_cell(r.server_cpu_ms_per_delivery, r.server_cpu_ms_incl_drain, r.target)}"
                     f" | {r.client_cpu_ms_per_delivery} | {r.n - r.acked} | {lost} |")
    for target in ("ours", "probot"):
        s = summary.get(target)
        if s:
            lost = s.get("lost", "-")
            lines.append(f"| **{target} (median)** | {s['rounds']} | {s['p50_ms']} | {s['p90_ms']} | **{s['p99_ms']}**"
                         f" | {s['max_ms']} | **{s['per_second']}**"
                         f" | {cpu_cell(s['server_cpu_ms_per_delivery'], s['server_cpu_ms_incl_drain'], target)}"
                         f" | {s['client_cpu_ms_per_delivery']} | {s['non_ok']} | {lost} |")
    if "ratio" in summary:
        lines.append(f"\nThroughput ratio (ours / probot, medians): **{summary['ratio']}**")
    ours = summary.get("ours")
    if ours:
        verdict = [f"p99 {ours['p99_ms']} ms {'<' if ours['p99_ms'] < TARGET_P99_MS else '>='} {TARGET_P99_MS:g} ms",
                   f"lost {ours['lost']}"]
        if "ratio" in summary:
            verdict.append(f"{'not slower' if summary['ratio'] >= 1 else 'slower'} than Probot")
        lines.append("Target check: " + "; ".join(verdict))
    return "\n".join(lines)


async def main_async(args) -> int:
    base = load_payload(Path(args.payload))
    pem = private_key_pem()
    targets = ["ours"] if args.skip_probot else ["ours", "probot"]
    order: list[str] = []
    for i in range(args.rounds):  # ABBA...: neither target always runs first or on a warmer machine
        order += targets if i % 2 == 0 else targets[::-1]
    body_bytes = len(make_deliveries(base, 1, "size")[0][1])
    print(f"{args.n} deliveries of ~{body_bytes} bytes, concurrency {args.concurrency}, "
          f"order {' '.join(order)}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    rounds: list[Round] = []
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        for target in order:
            counts[target] = counts.get(target, 0) + 1
            r = await run_round(target, counts[target], args, Path(tmp), pem, base)
            rounds.append(r)
            print(f"  {r.target} #{r.round}: p50 {r.p50_ms} ms, p99 {r.p99_ms} ms, {r.per_second}/s, "
                  f"server cpu {r.server_cpu_ms_per_delivery} ({r.server_cpu_ms_incl_drain}) ms/delivery, "
                  f"client cpu {r.client_cpu_ms_per_delivery}, statuses {r.statuses}"
                  + (f", lost {r.lost}, drained in {r.drain_seconds}s" if r.lost is not None else ""), flush=True)
        if args.keep_logs:
            for log in Path(tmp).glob("*.log"):
                Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
                (Path(args.keep_logs) / log.name).write_bytes(log.read_bytes())
    summary = {t: s for t in ("ours", "probot") if (s := summarize(rounds, t))}
    if "ours" in summary and "probot" in summary:
        summary["ratio"] = round(summary["ours"]["per_second"] / summary["probot"]["per_second"], 2)
    print()
    print(render(rounds, summary, args))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "command": " ".join([Path(sys.executable).name] + sys.argv), "n": args.n,
            "concurrency": args.concurrency, "body_bytes": body_bytes, "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(), "python": platform.python_version(),
            "rounds": [asdict(r) for r in rounds], "summary": summary}, indent=1))
    ours = summary.get("ours", {})
    return 0 if ours.get("lost", 1) == 0 and ours.get("non_ok", 1) == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="measured deliveries per round (default 5000)")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight (default 50)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per target, ABBA order (default 2)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured deliveries first (default 200)")
    parser.add_argument("--skip-probot", action="store_true", help="only first-responder")
    parser.add_argument("--new-connections", action="store_true",
                        help="one TCP connection per delivery instead of keep-alive")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="seconds to wait for our worker to empty the queue after the load (0: don't wait)")
    parser.add_argument("--payload", default=str(PAYLOAD_FILE), help="JSON payload to send (issues.opened)")
    parser.add_argument("--json", metavar="PATH", help="write rounds and summary as JSON")
    parser.add_argument("--profile", metavar="PATH", help="run our server under cProfile, writing PATH")
    parser.add_argument("--server-cmd", metavar="ARGS",
                        help="our server as arguments to this Python (default: '-m bot serve'); e.g. a script that"
                             " serves a patched build, to measure a proposed change with the same load")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the servers' logs to DIR")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
