"""Memory an anonymous sender can make the webhook server hold (issue #11 item 9).

Starts `python -m bot serve` from a code root (this checkout by default; `--root /path/to/other/checkout`
to measure another build under the same load) on loopback, waits until it is ready, then sends
`--n` concurrent POSTs of `--size-mb` MB each that nobody signed: with a forged but well-formed
`X-Hub-Signature-256` (the server must read the body to find out), and/or with no signature at all.
Reports the server's resident memory (VmRSS) before, its peak (VmHWM, the kernel's high-water mark,
so no sample is missed) and after, plus the status codes the posts got.

    .venv/bin/python bench/intake_memory.py                      # 16 x 24 MB, forged and unsigned
    .venv/bin/python bench/intake_memory.py --root /work/main    # the same load against another checkout
    .venv/bin/python bench/intake_memory.py --mode forged --n 32

Not a test: figures depend on the machine; the structural bound is asserted in
tests/test_hostile_intake.py::test_bodies_in_flight_are_bounded_by_the_memory_budget.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import SECRET, free_port, private_key_pem  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


async def wait_ready(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("server not ready")


async def flood(session: aiohttp.ClientSession, url: str, body: bytes, n: int, signature: str | None) -> dict:
    async def one() -> int:
        headers = {"Content-Type": "application/json", "X-GitHub-Event": "issues",
                   "X-GitHub-Delivery": str(uuid.uuid4())}
        if signature:
            headers["X-Hub-Signature-256"] = signature
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status
        except aiohttp.ClientError as exc:
            return type(exc).__name__

    statuses: dict = {}
    for status in await asyncio.gather(*(one() for _ in range(n))):
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose `bot` package to serve")
    parser.add_argument("--n", type=int, default=16, help="concurrent posts")
    parser.add_argument("--size-mb", type=float, default=24.0, help="body size of each post")
    parser.add_argument("--mode", choices=("forged", "unsigned", "both"), default="both")
    args = parser.parse_args()
    body = b"{" + b" " * (int(args.size_mb * 1024 * 1024) - 2) + b"}"
    modes = ("forged", "unsigned") if args.mode == "both" else (args.mode,)
    print(f"server: {args.root}; {args.n} concurrent posts of {args.size_mb:g} MB; "
          f"load average {os.getloadavg()[0]:.1f}")
    for mode in modes:  # a fresh server per mode, so each peak (VmHWM) is its own
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            env = dict(os.environ, GITHUB_APP_ID="1", GITHUB_PRIVATE_KEY=private_key_pem(),
                       GITHUB_WEBHOOK_SECRET=SECRET, DATABASE_PATH=str(Path(tmp) / "bench.db"), HOST="127.0.0.1",
                       PORT=str(port), DISABLE_SCHEDULER="1", GITHUB_API_URL="http://127.0.0.1:9",
                       PYTHONPATH=str(args.root))
            proc = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=args.root, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            base = f"http://127.0.0.1:{port}"
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
                    await wait_ready(session, f"{base}/health", proc)
                    await asyncio.sleep(1.0)
                    before = status_kb(proc.pid, "VmRSS")
                    signature = "sha256=" + "0" * 64 if mode == "forged" else None
                    started = time.perf_counter()
                    statuses = await flood(session, f"{base}/webhook", body, args.n, signature)
                    wall = time.perf_counter() - started
                    peak = status_kb(proc.pid, "VmHWM")
                    await asyncio.sleep(2.0)
                    after = status_kb(proc.pid, "VmRSS")
                    print(f"{mode:>8}: RSS before {before / 1024:.0f} MB, peak {peak / 1024:.0f} MB, "
                          f"after {after / 1024:.0f} MB; statuses {statuses}; {wall:.1f} s")
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
