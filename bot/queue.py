"""The durable delivery queue and its worker.

GitHub gives a webhook 10 seconds and does not retry by itself, so the server stores each delivery
here before answering and does the real work afterwards. Deliveries for one issue run in order;
different issues run concurrently up to a bound, installations taking turns, so no backlog on one issue
or installation starves the rest; a delivery is done only when its handlers finished (each handler's
completion is recorded, so a retry re-runs only the ones that failed);
failures retry with backoff and are finally parked as ``failed`` with their error, never dropped;
a failure that no retry can fix (the installation is gone) is parked at once as ``skipped``.
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
from concurrent.futures import ThreadPoolExecutor
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


def list_deliveries(db: sqlite_utils.Database,
                    statuses: tuple[str, ...] = ("pending", "running", "failed", "skipped")
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


class Unretryable(Exception):
    """A delivery that cannot succeed however often it is retried (for example: the installation was
    removed, so GitHub answers 404 for its token). The worker parks it at once as ``skipped`` with this
    message as the reason, instead of spending the retries."""


def ensure_schema(db: sqlite_utils.Database) -> None:
    """The worker's own tables and indexes (idempotent)."""
    # One row per handler that finished for a delivery: a retry runs only the handlers that did not.
    db.execute("""CREATE TABLE IF NOT EXISTS delivery_handlers (
        delivery_id TEXT NOT NULL,
        handler TEXT NOT NULL,
        finished_at REAL NOT NULL,
        PRIMARY KEY (delivery_id, handler)
    ) WITHOUT ROWID""")
    # The scheduler reads each installation's pending deliveries oldest first (see _select_ready).
    db.execute("CREATE INDEX IF NOT EXISTS deliveries_fair ON deliveries(status, installation_id, received_at)")


def completed_handlers(db: sqlite_utils.Database, delivery_id: str) -> set[str]:
    """Names of the handlers that already finished for this delivery (on an earlier attempt)."""
    return {row[0] for row in db.execute("SELECT handler FROM delivery_handlers WHERE delivery_id = ?",
                                         [delivery_id])}


def _record_handler(conn: sqlite3.Connection, delivery_id: str, handler: str) -> None:
    conn.execute("INSERT OR REPLACE INTO delivery_handlers (delivery_id, handler, finished_at) VALUES (?, ?, ?)",
                 (delivery_id, handler, time.time()))


PRUNE_BATCH = 500


def prune_payloads(db: sqlite_utils.Database, retention_days: float, now: float | None = None) -> int:
    """Delete the payloads (and handler marks) of deliveries that finished ``done`` more than
    ``retention_days`` ago; returns how many. The deliveries rows (metadata) and the audit log stay;
    failed and skipped deliveries keep their payload, since they may be retried.

    Deletes in small transactions so the write lock is never held for long.
    """
    cutoff = (time.time() if now is None else now) - retention_days * 86400
    conn = db.conn
    total = 0
    while True:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            ids = [(row[0],) for row in conn.execute(
                "SELECT d.id FROM deliveries d JOIN delivery_payloads p ON p.id = d.id"
                " WHERE d.status = 'done' AND d.finished_at < ? LIMIT ?", (cutoff, PRUNE_BATCH))]
            conn.executemany("DELETE FROM delivery_payloads WHERE id = ?", ids)
            conn.executemany("DELETE FROM delivery_handlers WHERE delivery_id = ?", ids)
        total += len(ids)
        if len(ids) < PRUNE_BATCH:
            return total


# ---------------------------------------------------------------- the worker's SQL (sync; run off the loop)

_READY_COLUMNS = ("id", "event", "repo", "issue", "installation_id", "next_attempt_at")

# Fair scheduling. Each installation's pending deliveries are read oldest first, lazily, and the
# installations take turns: one ready delivery from each in turn until the free slots are filled. Within
# an installation, only the head of each issue (its oldest pending-or-running delivery) may start, which
# keeps per-issue order; the rest of that issue's rows are skipped, not counted against a window, so 260
# deliveries for one issue cost other issues one slot, not 260 (the old "oldest 200 rows" window let them
# starve everything behind). The distinct installations come from an index skip-scan (one seek each).
_INSTALLATIONS = """
WITH RECURSIVE inst(id) AS (
    SELECT (SELECT installation_id FROM deliveries WHERE status = 'pending' AND installation_id IS NOT NULL
             ORDER BY installation_id LIMIT 1)
    UNION ALL
    SELECT (SELECT installation_id FROM deliveries WHERE status = 'pending' AND installation_id > inst.id
             ORDER BY installation_id LIMIT 1)
      FROM inst WHERE inst.id IS NOT NULL
)
SELECT id FROM inst WHERE id IS NOT NULL
"""
_PENDING_OF = ("SELECT id, event, repo, issue, installation_id, next_attempt_at FROM deliveries"
               " WHERE status = 'pending' AND installation_id {} ORDER BY received_at, rowid")
SCAN_LIMIT = 10_000  # rows read per installation per pass at most: bounds a pass (~25 ms) under a huge backlog


def _key(row: dict[str, Any]) -> str:
    """Deliveries with the same key run in arrival order, one at a time."""
    if row["repo"] and row["issue"]:
        return f"{row['repo']}#{row['issue']}"
    return f"delivery:{row['id']}"


def _turn_order(installation: int | None) -> tuple[bool, int]:
    return (installation is None, installation or 0)


def _select_ready(conn: sqlite3.Connection, want: int, now: float, busy: list[str],
                  last_served: int | None = None) -> list[dict[str, Any]]:
    """Up to ``want`` deliveries that may start now; ``busy``: keys with a delivery running here;
    ``last_served``: the installation served last, so the turn passes on to the next one."""
    installations: list[int | None] = [row[0] for row in conn.execute(_INSTALLATIONS)] + [None]
    turn = _turn_order(last_served)  # None (no installation) sorts last, so the turn then wraps around
    installations = ([i for i in installations if _turn_order(i) > turn]
                     + [i for i in installations if _turn_order(i) <= turn])
    cursors = [conn.execute(_PENDING_OF.format("IS NULL"), ()) if installation is None
               else conn.execute(_PENDING_OF.format("= ?"), (installation,)) for installation in installations]
    seen = set(busy)  # keys whose head is running or not yet due: the rest of their rows wait
    scanned = [0] * len(cursors)
    active = list(range(len(cursors)))
    ready: list[dict[str, Any]] = []
    try:
        while active and len(ready) < want:
            for index in list(active):
                found = None
                for values in cursors[index]:
                    scanned[index] += 1
                    if scanned[index] > SCAN_LIMIT:
                        break
                    row = dict(zip(_READY_COLUMNS, values))
                    key = _key(row)
                    if key in seen:
                        continue
                    seen.add(key)
                    if row["next_attempt_at"] <= now:
                        found = row
                        break
                if found is None:
                    active.remove(index)
                    continue
                ready.append(found)
                if len(ready) >= want:
                    break
    finally:
        for cursor in cursors:
            cursor.close()
    return ready


def _claim(conn: sqlite3.Connection, ids: list[str]) -> None:
    with conn:  # one commit marks the whole pass as running
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("UPDATE deliveries SET status = 'running' WHERE id = ? AND status = 'pending'",
                         [(i,) for i in ids])


def _resume(conn: sqlite3.Connection, keep: list[str]) -> int:
    marks = ",".join("?" for _ in keep)
    sql = "UPDATE deliveries SET status = 'pending' WHERE status = 'running'"
    return conn.execute(sql + (f" AND id NOT IN ({marks})" if keep else ""), keep).rowcount


def _next_due(conn: sqlite3.Connection) -> float | None:
    return conn.execute("SELECT min(next_attempt_at) FROM deliveries WHERE status = 'pending'").fetchone()[0]


def _load(conn: sqlite3.Connection, delivery_id: str) -> dict[str, Any] | None:
    cursor = conn.execute("SELECT d.*, p.payload FROM deliveries d LEFT JOIN delivery_payloads p ON p.id = d.id"
                          " WHERE d.id = ?", [delivery_id])
    values = cursor.fetchone()
    return None if values is None else dict(zip([c[0] for c in cursor.description], values))


def _set_retry(conn: sqlite3.Connection, delivery_id: str, attempts: int, error: str, at: float) -> None:
    conn.execute("UPDATE deliveries SET status = 'pending', attempts = ?, error = ?, next_attempt_at = ?"
                 " WHERE id = ?", (attempts, error, at, delivery_id))


def _park(conn: sqlite3.Connection, delivery_id: str, status: str, attempts: int, error: str) -> None:
    conn.execute("UPDATE deliveries SET status = ?, attempts = ?, error = ?, finished_at = ? WHERE id = ?",
                 (status, attempts, error, time.time(), delivery_id))


def _mark_done_rows(conn: sqlite3.Connection, rows: list[tuple[float, str]]) -> None:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("UPDATE deliveries SET status = 'done', finished_at = ?, attempts = attempts + 1,"
                         " error = NULL WHERE id = ?", rows)
        # A done delivery never runs again (redeliveries of its id are ignored): its handler marks can go.
        conn.executemany("DELETE FROM delivery_handlers WHERE delivery_id = ?", [(i,) for _t, i in rows])


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class Worker:
    """Drains the queue: fair across issues and installations, per-issue order, bounded concurrency,
    retries with backoff, per-handler completion, and a supervised loop that outlives database errors.

    The worker's database writes run in one thread of its own (with its own SQLite connection and
    ``busy_timeout``), so a database locked by another process never blocks the event loop; the loop
    logs each failure, backs off and tries again, and ``problems()`` says so once it lasts.
    """

    def __init__(self, db: sqlite_utils.Database, handler: Handler, *, concurrency: int = 8,
                 max_attempts: int = 5, base_delay: float = 2.0, metrics: Any = None,
                 busy_timeout: float = 30.0, failing_after: float = 60.0, stall_after: float = 600.0,
                 max_backoff: float = 30.0) -> None:
        self.db = db
        self.handler = handler
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.metrics = metrics
        self.busy_timeout = busy_timeout      # seconds a worker write waits for another writer's lock
        self.failing_after = failing_after    # problems() once the loop has failed this long
        self.stall_after = stall_after        # problems() once the oldest pending delivery is this old
        self.max_backoff = max_backoff
        self.wake = asyncio.Event()
        self._running: dict[str, asyncio.Task] = {}  # ordering key -> task
        self._stopping = False
        self._resumed = False
        self._last_served: int | None = None  # installation served last (turns go round)
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._thread_conn: sqlite3.Connection | None = None
        self._done_batch: list[tuple[asyncio.Future, str, float]] = []
        self._flusher: asyncio.Task | None = None
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.errors = 0     # failures of the claim/mark loop so far (for tests and /metrics)
        self.restarts = 0   # times the supervisor restarted the worker task

    # ------------------------------------------------------------ database access, off the loop

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(conn, *args)`` in the worker's database thread (inline for an in-memory database,
        whose single connection cannot be shared with another thread safely)."""
        from bot.db import Database

        if not isinstance(self.db, Database):
            return fn(self.db.conn, *args)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-worker")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._in_thread, fn, args)

    def _in_thread(self, fn: Callable[..., Any], args: tuple) -> Any:
        conn = self.db.conn  # bot.db.Database: this thread's own connection
        if conn is not self._thread_conn:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._thread_conn = conn
        return fn(conn, *args)

    async def _settle(self, what: str, fn: Callable[..., Any], *args: Any) -> bool:
        """Write an outcome that must not be lost; on errors log, back off and retry until it lands.
        Returns False only when the worker is stopping (the row stays 'running'; resume() re-queues it)."""
        delay = 0.2
        while True:
            try:
                await self._db(fn, *args)
                return True
            except Exception as exc:  # noqa: BLE001 - logged; retried below
                self._failed(exc)
                if self._stopping:
                    log.warning("queue worker: could not record %s while stopping (%s); it is re-queued at the"
                                " next start", what, _short(exc))
                    return False
                log.error("queue worker: could not record %s: %s; retry in %.1fs", what, _short(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = _short(exc)
        if self.failing_since is None:
            self.failing_since = time.time()

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.warning("queue worker recovered after %.1fs of errors (last: %s)", time.time() - self.failing_since,
                        self.last_error)
        self.failing_since = None

    # ------------------------------------------------------------ supervision

    def start(self) -> asyncio.Task:
        """Run the worker as a supervised task: if it ever ends while the worker is not stopping, the
        end is logged and the task is started again after a short delay."""
        self._stopping = False
        task = asyncio.create_task(self.run(), name="queue-worker")
        task.add_done_callback(self._task_ended)
        self._task = task
        return task

    def _task_ended(self, task: asyncio.Task) -> None:
        if self._stopping:
            return
        reason = "cancelled" if task.cancelled() else _short(task.exception()) if task.exception() else "returned"
        self.restarts += 1
        delay = min(self.base_delay * 2 ** min(self.restarts - 1, 5), self.max_backoff)
        self.last_error = f"worker task ended: {reason}"
        log.error("queue worker task ended unexpectedly (%s); restarting in %.1fs (restart %d)", reason, delay,
                  self.restarts)
        asyncio.get_running_loop().call_later(delay, self._restart)

    def _restart(self) -> None:
        if not self._stopping:
            log.warning("queue worker restarted")
            self.start()

    def problems(self, now: float | None = None) -> list[str]:
        """Why the worker cannot be trusted to make progress right now; empty when it is fine.

        Non-empty when the worker task is not running, when its loop has been failing for longer than
        ``failing_after`` seconds, or when the oldest pending delivery is older than ``stall_after``.
        """
        now = time.time() if now is None else now
        found = []
        if self._task is None:
            found.append("queue worker not started")
        elif self._task.done():
            found.append("queue worker is not running" + (f" ({self.last_error})" if self.last_error else ""))
        if self.failing_since is not None and now - self.failing_since > self.failing_after:
            found.append(f"queue worker failing for {now - self.failing_since:.0f}s: {self.last_error}")
        try:
            oldest = self.db.execute("SELECT min(received_at) FROM deliveries WHERE status = 'pending'").fetchone()[0]
        except sqlite3.Error as exc:
            found.append(f"cannot read the queue: {_short(exc)}")
        else:
            if oldest is not None and now - oldest > self.stall_after:
                found.append(f"oldest pending delivery is {now - oldest:.0f}s old (bound {self.stall_after:.0f}s)")
        return found

    # ------------------------------------------------------------ the loop

    _key = staticmethod(_key)

    async def run(self) -> None:
        """The claim loop. Every exception is logged and backed off; the loop ends only on stop()."""
        if self._task is None or self._task.done():
            self._task = asyncio.current_task()
        backoff = 0.0
        while not self._stopping:
            try:
                if not self._resumed:
                    # Deliveries left 'running' by a process that died go back to pending (not ours).
                    count = await self._db(_resume, [t.get_name() for t in self._running.values()])
                    self._resumed = True
                    if count:
                        log.info("re-queued %d deliveries that were running when the server stopped", count)
                timeout = await self._pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - supervised: log, back off, keep going
                first = self.failing_since is None
                self._failed(exc)
                backoff = min(max(backoff * 2, 0.1), self.max_backoff)
                log.error("queue worker: %s; retry in %.1fs (failing for %.0fs)", _short(exc), backoff,
                          time.time() - (self.failing_since or time.time()), exc_info=first)
                await asyncio.sleep(backoff)
                continue
            backoff = 0.0
            if timeout is None:
                continue
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=timeout)
            except asyncio.TimeoutError:
                pass

    def resume(self) -> int:
        """Deliveries that were running when the process died go back to pending (sync, for tools)."""
        return _resume(self.db.conn, [])

    async def _pass(self) -> float | None:
        """One scheduling pass: claim what may start; returns how long to wait (None: go again now)."""
        self.wake.clear()
        free = self.concurrency - len(self._running)
        if free <= 0:
            # Every slot is busy: the next _finished() wakes us; no query until then.
            await self.wake.wait()
            return None
        rows = await self._db(_select_ready, free, time.time(), list(self._running), self._last_served)
        rows = [row for row in rows if self._key(row) not in self._running]  # started meanwhile
        if rows:
            self._last_served = rows[-1]["installation_id"]
            await self._db(_claim, [row["id"] for row in rows])
            for row in rows:
                key = self._key(row)
                task = asyncio.create_task(self._process(row["id"]), name=row["id"])
                self._running[key] = task
                task.add_done_callback(lambda _t, key=key: self._finished(key))
        due = await self._db(_next_due)
        self._recovered()
        if due is None:
            return 5.0
        return min(5.0, max(0.05, due - time.time()))

    def _finished(self, key: str) -> None:
        self._running.pop(key, None)
        self.wake.set()

    async def _process(self, delivery_id: str) -> None:
        try:
            row = await self._db(_load, delivery_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - try again later; the loop's own errors are logged there
            self._failed(exc)
            log.error("delivery %s: could not be read: %s; retry in %.1fs", delivery_id, _short(exc), self.base_delay)
            await self._settle(f"delivery {delivery_id} as pending", _set_retry, delivery_id, 0,
                               _short(exc), time.time() + self.base_delay)
            return
        if row is None:
            return
        if row["payload"] is None:
            log.error("delivery %s has no payload; parked as failed", delivery_id)
            await self._settle(f"delivery {delivery_id} as failed", _park, delivery_id, "failed",
                               row["attempts"], "payload missing (pruned?); cannot run")
            return
        started = time.monotonic()
        try:
            await self.handler(row)
        except asyncio.CancelledError:
            if self._executor is not None:  # best effort; resume() at the next start covers a miss
                self._executor.submit(self._in_thread, _resume_one, (delivery_id,))
            else:
                self.db.execute("UPDATE deliveries SET status = 'pending' WHERE id = ?", [delivery_id])
            raise
        except Unretryable as exc:
            reason = f"not retried: {exc}"[:2000]
            log.warning("delivery %s skipped: %s", delivery_id, reason)
            await self._settle(f"delivery {delivery_id} as skipped", _park, delivery_id, "skipped",
                               row["attempts"] + 1, reason)
            return
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, none dropped
            attempts = row["attempts"] + 1
            error = f"{type(exc).__name__}: {exc}"[:2000]
            if attempts >= self.max_attempts:
                log.error("delivery %s parked as failed after %d attempts: %s", delivery_id, attempts, error)
                await self._settle(f"delivery {delivery_id} as failed", _park, delivery_id, "failed", attempts,
                                   error)
                if self.metrics is not None:
                    self.metrics.failed.labels(row["event"]).inc()
            else:
                delay = self.base_delay * (2 ** (attempts - 1)) * (0.75 + random.random() / 2)
                log.warning("delivery %s failed (attempt %d): %s; retry in %.1fs", delivery_id, attempts, error,
                            delay)
                await self._settle(f"delivery {delivery_id} for retry", _set_retry, delivery_id, attempts, error,
                                   time.time() + delay)
            return
        await self._mark_done(delivery_id)
        if self.metrics is not None:
            self.metrics.done.labels(row["event"]).inc()
            self.metrics.handler_latency.labels(row["event"]).observe(time.monotonic() - started)

    async def record_handler(self, delivery_id: str, handler: str) -> None:
        """Note that ``handler`` finished for this delivery, so a retry does not run it again."""
        await self._settle(f"handler {handler} of {delivery_id}", _record_handler, delivery_id, handler)

    def _mark_done(self, delivery_id: str) -> asyncio.Future:
        """Mark a delivery done; the marks of deliveries finishing together share one commit. The
        returned future resolves once this delivery's mark is committed (or the worker is stopping)."""
        future = asyncio.get_running_loop().create_future()
        self._done_batch.append((future, delivery_id, time.time()))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_done())
        return future

    async def _flush_done(self) -> None:
        while self._done_batch:
            batch, self._done_batch = self._done_batch, []
            await self._settle(f"{len(batch)} deliveries as done", _mark_done_rows,
                               [(finished, delivery_id) for _f, delivery_id, finished in batch])
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
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
            self._thread_conn = None


def _resume_one(conn: sqlite3.Connection, delivery_id: str) -> None:
    conn.execute("UPDATE deliveries SET status = 'pending' WHERE id = ? AND status = 'running'", (delivery_id,))
