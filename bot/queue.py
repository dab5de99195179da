"""The durable delivery queue and its worker.

GitHub gives a webhook 10 seconds and does not retry by itself, so the server stores each delivery
here before answering and does the real work afterwards. Deliveries for one issue run in order;
different issues run concurrently up to a bound; a delivery is done only when its handlers finished;
failures retry with backoff and are finally parked as ``failed`` with their error, never dropped.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import sqlite3
import time
import weakref
from typing import Any, Awaitable, Callable

import sqlite_utils

from bot.db import DbThread

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[None]]


def _locate(payload: dict[str, Any]) -> tuple[str | None, int | None, int | None]:
    repo = (payload.get("repository") or {}).get("full_name")
    issue = (payload.get("issue") or {}).get("number")
    installation = (payload.get("installation") or {}).get("id")
    return repo, issue, installation


_INSERT_DELIVERY = (
    "INSERT OR IGNORE INTO deliveries (id, event, action, repo, issue, installation_id, status,"
    " attempts, next_attempt_at, received_at, body_sha256) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, 0, ?, ?)")
_INSERT_PAYLOAD = "INSERT OR REPLACE INTO delivery_payloads (id, payload) VALUES (?, ?)"

# Seconds the intake writer waits for a write lock another connection holds before giving up (the
# webhook then answers 503): well under GitHub's 10 s, long enough for any write of our own.
INTAKE_BUSY_TIMEOUT = 3.0
# Seconds a delivery may wait for a locked database in all (queued behind other batches included)
# before its request gets TimeoutError: under GitHub's 10 s.
INTAKE_WRITE_SECONDS = 8.0


def body_sha256(event: str, text: str) -> str:
    """The dedupe key of a delivery's content: the event name and the stored payload text."""
    digest = hashlib.sha256(event.encode("utf-8"))
    digest.update(b"\n")
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def _row(delivery_id: str, event: str, payload: dict[str, Any], raw: bytes | str | None) -> tuple[tuple, str]:
    repo, issue, installation = _locate(payload)
    if raw is None:
        text = json.dumps(payload)
    else:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
    return (delivery_id, event, payload.get("action"), repo, issue, installation, time.time(),
            body_sha256(event, text)), text


def _insert(conn: sqlite3.Connection, row: tuple, text: str) -> bool:
    """Both inserts of one delivery, inside the caller's transaction; False for a redelivery (the same
    id) or a replay (the same event and body under another id)."""
    new = conn.execute(_INSERT_DELIVERY, row).rowcount == 1
    if new:
        conn.execute(_INSERT_PAYLOAD, (row[0], text))
    return new


def enqueue(db: sqlite_utils.Database, delivery_id: str, event: str, payload: dict[str, Any],
            raw: bytes | str | None = None) -> bool:
    """Store a delivery; False if this delivery id, or this event with this body, was seen before."""
    row, text = _row(delivery_id, event, payload, raw)
    with db.conn:  # one transaction: the delivery and its payload land together or not at all
        db.conn.execute("BEGIN")
        return _insert(db.conn, row, text)


def duplicate_of(db: sqlite_utils.Database, delivery_id: str, event: str, text: str) -> str | None:
    """For a delivery that was not new: the id of the earlier delivery with the same body, if that
    is why (None when it was the same id, i.e. a redelivery)."""
    row = db.execute("SELECT id FROM deliveries WHERE body_sha256 = ?", [body_sha256(event, text)]).fetchone()
    return row[0] if row and row[0] != delivery_id else None


def _busy(exc: BaseException) -> bool:
    """Is this SQLite's "database is locked/busy" (another connection holds the lock)?"""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and code is not None and code & 0xFF in (5, 6)


class GroupCommit:
    """Enqueue for the event loop: the deliveries that arrive together share one transaction.

    ``submit`` returns a future that resolves (to "is new") only after the transaction holding that
    delivery has committed, so a caller that awaits it before answering 202 still answers only for a
    stored delivery. The commit runs as a loop callback right after the requests that are ready in the
    same loop iteration have been parsed: under load one commit (and one set of WAL index pages)
    serves many deliveries; alone, a delivery waits for no one.

    The loop never waits for a lock: the commit first tries ``BEGIN IMMEDIATE`` with no busy wait
    (nothing else on the loop can hold the lock, so this is the path taken unless another connection
    writes). If another connection or process holds the lock, the batch goes to a thread of its own
    that waits at most ``busy_timeout`` seconds; its callers then get "database is locked" (the webhook
    answers 503) while /health and everything else on the loop keep answering. Batches that arrive
    while that thread is busy follow it there, in order.
    """

    def __init__(self, db: sqlite_utils.Database, busy_timeout: float = INTAKE_BUSY_TIMEOUT) -> None:
        self.db = db
        self.thread = DbThread(db, busy_timeout, "intake-writer")
        self._batch: list[tuple[asyncio.Future, tuple, str]] = []
        self._slow: list[tuple[asyncio.Future, tuple, str]] = []  # waiting for the writer thread
        self._slow_task: asyncio.Task | None = None
        self._loop_busy_ms: int | None = None  # the loop connection's own busy timeout, restored after
        self.commits = 0      # transactions written (for tests and benchmarks)
        self.deliveries = 0   # deliveries submitted
        self.handed_off = 0   # batches that found the database locked and went to the writer thread
        self._handoff_logged = 0.0

    def submit(self, delivery_id: str, event: str, payload: dict[str, Any], raw: bytes | str | None = None
               ) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        row, text = _row(delivery_id, event, payload, raw)
        if not self._batch:
            loop.call_soon(self._commit)
        self._batch.append((future, row, text))
        return future

    def _commit(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        if self._slow_task is not None:  # the lock was taken a moment ago: queue behind, off the loop
            self._to_slow(batch)
            return
        conn = self.db.conn
        if self._loop_busy_ms is None:
            self._loop_busy_ms = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        conn.execute("PRAGMA busy_timeout=0")
        try:
            results = self._write([(row, text) for _f, row, text in batch])
        except BaseException as exc:  # noqa: BLE001 - every waiting request learns its fate
            if _busy(exc):
                self.handed_off += 1
                if time.monotonic() - self._handoff_logged > 10:  # one line per 10 s at most
                    self._handoff_logged = time.monotonic()
                    log.warning("database locked by another connection (%s): %d deliveries wait for the"
                                " intake writer thread (%d batches so far)", exc, len(batch), self.handed_off)
                self._to_slow(batch)
                self._slow_task = asyncio.get_running_loop().create_task(self._write_slow())
                return
            self._fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            conn.execute(f"PRAGMA busy_timeout={self._loop_busy_ms}")
        self._done(batch, results)

    def _to_slow(self, batch: list) -> None:
        """Queue ``batch`` for the writer thread; its requests give up after INTAKE_WRITE_SECONDS (the
        fast path needs no timer: it resolves in the next loop iteration)."""
        self._slow.extend(batch)
        asyncio.get_running_loop().call_later(INTAKE_WRITE_SECONDS, self._fail, batch,
                                              TimeoutError(f"database locked for {INTAKE_WRITE_SECONDS:.0f} s"))

    async def _write_slow(self) -> None:
        try:
            while self._slow:
                batch, self._slow = self._slow, []
                try:
                    results = await self.thread.run(self._write, [(row, text) for _f, row, text in batch])
                except BaseException as exc:  # noqa: BLE001 - every waiting request learns it was not stored
                    self._fail(batch, exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                self._done(batch, results)
        finally:
            self._slow_task = None

    @staticmethod
    def _fail(batch: list, exc: BaseException) -> None:
        for future, _row_, _text in batch:
            if not future.done():
                future.set_exception(exc)

    def _done(self, batch: list, results: list[bool]) -> None:
        self.commits += 1
        self.deliveries += len(batch)
        for (future, _row_, _text), new in zip(batch, results):
            if not future.done():
                future.set_result(new)

    def _write(self, rows: list[tuple[tuple, str]]) -> list[bool]:
        """One transaction for ``rows`` on the calling thread's connection."""
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [_insert(conn, row, text) for row, text in rows]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        return results

    def close(self) -> None:
        self.thread.close()
        _group_commits.pop(self.db, None)


_group_commits: "weakref.WeakKeyDictionary[sqlite_utils.Database, GroupCommit]" = weakref.WeakKeyDictionary()


def group_commit(db: sqlite_utils.Database) -> GroupCommit:
    """The GroupCommit of this database handle (one per handle, created on first use)."""
    batcher = _group_commits.get(db)
    if batcher is None:
        batcher = _group_commits[db] = GroupCommit(db)
    return batcher


def close_group_commit(db: sqlite_utils.Database) -> None:
    """Stop the writer thread of this database handle's GroupCommit, if it has one (server shutdown)."""
    batcher = _group_commits.get(db)
    if batcher is not None:
        batcher.close()


async def enqueue_async(db: sqlite_utils.Database, delivery_id: str, event: str, payload: dict[str, Any],
                        raw: bytes | str | None = None) -> bool:
    """``enqueue`` with group commit; returns once the delivery is committed (False: seen before).

    Raises ``sqlite3.Error`` (e.g. "database is locked" after ``INTAKE_BUSY_TIMEOUT``) when it was not
    stored."""
    return await group_commit(db).submit(delivery_id, event, payload, raw)


def depth(db: sqlite_utils.Database) -> tuple[int, float | None]:
    """(pending count, age in seconds of the oldest pending delivery)."""
    row = db.execute("SELECT count(*), min(received_at) FROM deliveries WHERE status IN ('pending', 'running')"
                     ).fetchone()
    return row[0], (time.time() - row[1]) if row[1] else None


def list_deliveries(db: sqlite_utils.Database, statuses: tuple[str, ...] = ("pending", "running", "failed")
                    ) -> list[dict[str, Any]]:
    marks = ",".join("?" for _ in statuses)
    return list(db.query(
        f"SELECT id, event, action, repo, issue, status, attempts, received_at, error FROM deliveries"
        f" WHERE status IN ({marks}) ORDER BY received_at", list(statuses)))


def retry(db: sqlite_utils.Database, delivery_id: str) -> bool:
    """Put a failed (or stuck) delivery back in the queue."""
    cursor = db.execute("UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = 0, error = NULL"
                        " WHERE id = ? AND status != 'done'", [delivery_id])
    return cursor.rowcount == 1


_READY_COLUMNS = ("id", "event", "repo", "issue", "installation_id", "next_attempt_at")


class Worker:
    """Drains the queue: per-issue order, bounded concurrency, retries with backoff."""

    def __init__(self, db: sqlite_utils.Database, handler: Handler, *, concurrency: int = 8,
                 max_attempts: int = 5, base_delay: float = 2.0, metrics: Any = None) -> None:
        self.db = db
        self.handler = handler
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.metrics = metrics
        self.wake = asyncio.Event()
        self._running: dict[str, asyncio.Task] = {}  # ordering key -> task
        self._stopping = False
        self._done_batch: list[tuple[asyncio.Future, str, float]] = []

    def resume(self) -> int:
        """Deliveries that were running when the process died go back to pending."""
        return self.db.execute("UPDATE deliveries SET status = 'pending' WHERE status = 'running'").rowcount

    @staticmethod
    def _key(row: dict[str, Any]) -> str:
        if row["repo"] and row["issue"]:
            return f"{row['repo']}#{row['issue']}"
        return f"delivery:{row['id']}"

    def _ready(self, want: int | None = None) -> list[dict[str, Any]]:
        """Pending deliveries that may start now: the oldest per ordering key, if it is due.

        Looks at the oldest 200 pending rows, but stops reading once ``want`` are found (rows are
        fetched lazily, so a busy queue costs a few rows per pass, not 200).
        """
        cursor = self.db.conn.execute(
            "SELECT id, event, repo, issue, installation_id, next_attempt_at FROM deliveries"
            " WHERE status = 'pending' ORDER BY received_at LIMIT 200")
        now = time.time()
        seen: set[str] = set()
        ready: list[dict[str, Any]] = []
        try:
            for values in cursor:
                row = dict(zip(_READY_COLUMNS, values))
                key = self._key(row)
                if key in seen or key in self._running:
                    seen.add(key)
                    continue
                seen.add(key)
                if row["next_attempt_at"] <= now:
                    ready.append(row)
                    if want is not None and len(ready) >= want:
                        break
        finally:
            cursor.close()
        return ready

    async def run(self) -> None:
        self.resume()
        while not self._stopping:
            self.wake.clear()
            free = self.concurrency - len(self._running)
            if free <= 0:
                # Every slot is busy: the next _finished() wakes us; no query until then.
                await self.wake.wait()
                continue
            rows = self._ready(free)
            if rows:
                conn = self.db.conn
                with conn:  # one commit marks the whole pass as running
                    conn.execute("BEGIN")
                    conn.executemany("UPDATE deliveries SET status = 'running' WHERE id = ?",
                                     [(row["id"],) for row in rows])
                for row in rows:
                    key = self._key(row)
                    task = asyncio.create_task(self._process(row["id"]))
                    self._running[key] = task
                    task.add_done_callback(lambda _t, key=key: self._finished(key))
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=self._next_due())
            except asyncio.TimeoutError:
                pass

    def _finished(self, key: str) -> None:
        self._running.pop(key, None)
        self.wake.set()

    def _next_due(self) -> float:
        row = self.db.execute("SELECT min(next_attempt_at) FROM deliveries WHERE status = 'pending'").fetchone()
        if row[0] is None:
            return 5.0
        return min(5.0, max(0.05, row[0] - time.time()))

    async def _process(self, delivery_id: str) -> None:
        cursor = self.db.conn.execute(
            "SELECT d.*, p.payload FROM deliveries d JOIN delivery_payloads p ON p.id = d.id WHERE d.id = ?",
            [delivery_id])
        row = dict(zip([c[0] for c in cursor.description], cursor.fetchone()))
        started = time.monotonic()
        try:
            await self.handler(row)
        except asyncio.CancelledError:
            self.db.execute("UPDATE deliveries SET status = 'pending' WHERE id = ?", [delivery_id])
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, none dropped
            attempts = row["attempts"] + 1
            error = f"{type(exc).__name__}: {exc}"[:2000]
            if attempts >= self.max_attempts:
                log.error("delivery %s parked as failed after %d attempts: %s", delivery_id, attempts, error)
                self.db.execute("UPDATE deliveries SET status = 'failed', attempts = ?, error = ?, finished_at = ?"
                                " WHERE id = ?", [attempts, error, time.time(), delivery_id])
                if self.metrics is not None:
                    self.metrics.failed.labels(row["event"]).inc()
            else:
                delay = self.base_delay * (2 ** (attempts - 1)) * (0.75 + random.random() / 2)
                log.warning("delivery %s failed (attempt %d): %s; retry in %.1fs", delivery_id, attempts, error,
                            delay)
                self.db.execute("UPDATE deliveries SET status = 'pending', attempts = ?, error = ?,"
                                " next_attempt_at = ? WHERE id = ?",
                                [attempts, error, time.time() + delay, delivery_id])
            return
        await self._mark_done(delivery_id)
        if self.metrics is not None:
            self.metrics.done.labels(row["event"]).inc()
            self.metrics.handler_latency.labels(row["event"]).observe(time.monotonic() - started)

    def _mark_done(self, delivery_id: str) -> asyncio.Future:
        """Mark a delivery done; the marks of deliveries finishing in the same loop iteration share one
        commit. The returned future resolves once this delivery's mark is committed."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._done_batch:
            loop.call_soon(self._commit_done)
        self._done_batch.append((future, delivery_id, time.time()))
        return future

    def _commit_done(self) -> None:
        batch, self._done_batch = self._done_batch, []
        if not batch:
            return
        conn = self.db.conn
        try:
            with conn:
                conn.execute("BEGIN")
                conn.executemany("UPDATE deliveries SET status = 'done', finished_at = ?, attempts = attempts + 1"
                                 " WHERE id = ?", [(finished, delivery_id) for _f, delivery_id, finished in batch])
        except Exception as exc:  # noqa: BLE001 - left 'running': resume() re-queues them after a restart
            for future, _id, _t in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, _id, _t in batch:
            if not future.done():
                future.set_result(None)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until nothing is pending or running (tests and the CLI use this)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = self.db.execute(
                "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'running') AND next_attempt_at <= ?",
                [time.time() + 0.5]).fetchone()[0]
            if pending == 0 and not self._running:
                return
            self.wake.set()
            await asyncio.sleep(0.02)
        raise TimeoutError("queue did not drain")

    async def stop(self) -> None:
        self._stopping = True
        self.wake.set()
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
