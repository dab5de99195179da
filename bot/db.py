"""The one SQLite database: deliveries, audit log, model calls, installations and feature state.

Each subsystem that owns tables provides an idempotent ``ensure_schema(db)`` listed in ``SCHEMAS``,
so opening a database always brings it up to date and re-running is safe (as in simonw/llm).
"""
from __future__ import annotations

import asyncio
import importlib
import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import sqlite_utils


def _core_schema(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE IF NOT EXISTS deliveries (
            id TEXT PRIMARY KEY,
            event TEXT NOT NULL,
            action TEXT,
            repo TEXT,
            issue INTEGER,
            installation_id INTEGER,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            received_at REAL NOT NULL,
            finished_at REAL,
            error TEXT
        )"""
    )
    db.execute("CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries(status, next_attempt_at)")
    db.execute("CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(status, received_at)")
    # A replayed body under a new X-GitHub-Delivery id is the same delivery: the hash of event + body
    # is unique, so INSERT OR IGNORE drops it like a redelivered id (issue #11 item 8). Databases made
    # before the column existed gain it here; their old rows keep NULL, which never conflicts.
    if "body_sha256" not in {row[1] for row in db.execute("PRAGMA table_info(deliveries)").fetchall()}:
        db.execute("ALTER TABLE deliveries ADD COLUMN body_sha256 TEXT")
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS deliveries_body ON deliveries(body_sha256)")
    # The payload lives apart so the worker's status updates never rewrite (or scan) 10+ KB rows.
    db.execute("CREATE TABLE IF NOT EXISTS delivery_payloads (id TEXT PRIMARY KEY, payload TEXT NOT NULL)")
    db.execute(
        """CREATE TABLE IF NOT EXISTS audit (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            delivery_id TEXT,
            repo TEXT,
            issue INTEGER,
            action TEXT NOT NULL,
            details TEXT,
            result TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX IF NOT EXISTS audit_repo_issue ON audit(repo, issue, action)")
    db.execute(
        """CREATE TABLE IF NOT EXISTS model_calls (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            delivery_id TEXT,
            repo TEXT,
            issue INTEGER,
            tier TEXT NOT NULL,
            model TEXT,
            prompt_name TEXT,
            prompt_sha256 TEXT,
            input_tokens INTEGER,
            output_tokens INTEGER,
            latency_ms REAL,
            cost_usd REAL,
            escalated INTEGER,
            reason TEXT,
            output TEXT,
            installation_id INTEGER
        )"""
    )
    db.execute(
        """CREATE TABLE IF NOT EXISTS installations (
            repo TEXT PRIMARY KEY,
            installation_id INTEGER NOT NULL,
            added_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE IF NOT EXISTS issue_flags (
            repo TEXT NOT NULL,
            issue INTEGER NOT NULL,
            flag TEXT NOT NULL,
            set_by TEXT,
            set_at REAL NOT NULL,
            PRIMARY KEY (repo, issue, flag)
        )"""
    )
    db.execute(
        """CREATE TABLE IF NOT EXISTS duplicate_suggestions (
            repo TEXT NOT NULL,
            issue INTEGER NOT NULL,
            duplicate_of INTEGER NOT NULL,
            score REAL,
            created_at REAL NOT NULL,
            PRIMARY KEY (repo, issue, duplicate_of)
        )"""
    )
    db.execute(
        """CREATE TABLE IF NOT EXISTS kv (
            key TEXT PRIMARY KEY,
            value TEXT
        )"""
    )


# Modules listed here provide ensure_schema(db); imported lazily so bot.db stays light.
SCHEMA_MODULES = [
    "bot.queue",
    "bot.index.store",
    "bot.features.lifecycle",
    "bot.features.recovery",
    "bot.features.digest",
    "bot.features.learning",
    "bot.limits",
]
SCHEMAS: list[Callable[[sqlite_utils.Database], None]] = [_core_schema]


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Database(sqlite_utils.Database):
    """sqlite-utils' Database with one connection per thread.

    Model inference, embedding and retraining run in worker threads and log or store what they did;
    with one shared connection, a thread's write could land inside (or commit) a transaction the event
    loop has open. A connection per thread keeps every transaction its own; WAL lets them share the file.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()
        super().__init__(_connect(path))

    @property  # type: ignore[override]
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self._path)
        return conn

    @conn.setter
    def conn(self, value: sqlite3.Connection) -> None:
        self._local.conn = value


def open_db(path: str, *, background_checkpoints: bool = False) -> sqlite_utils.Database:
    """Open (creating if needed) the database with WAL and every schema ensured.

    With ``background_checkpoints`` (the server), WAL checkpoints run in a thread with its own
    connection instead of inside whichever write on the event loop happens to cross the threshold.
    """
    if path == ":memory:":  # one connection: an in-memory database cannot be shared between connections
        db = sqlite_utils.Database(_connect(path))
    else:
        db = Database(path)
        db.execute("PRAGMA journal_mode=WAL")
        if background_checkpoints:
            db.execute("PRAGMA wal_autocheckpoint=0")
            Checkpointer(path).start()
    for schema in SCHEMAS:
        schema(db)
    for name in SCHEMA_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        ensure = getattr(module, "ensure_schema", None)
        if ensure is not None:
            ensure(db)
    return db


class Checkpointer(threading.Thread):
    """Folds the WAL back into the database file once a second, off the event loop."""

    def __init__(self, path: str, interval: float = 1.0) -> None:
        super().__init__(name="sqlite-checkpoint", daemon=True)
        self.path = path
        self.interval = interval

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        while True:
            time.sleep(self.interval)
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass


class DbThread:
    """One thread with its own connection and a short busy timeout, for SQLite work the event loop
    must not wait on.

    A writer in another process can hold the database for as long as it likes; on the loop, a write
    (or a read under ``locking_mode=EXCLUSIVE``) would freeze every request for the whole busy timeout.
    Here only the callers that awaited the call wait, and for at most ``busy_timeout`` seconds before
    SQLite answers "database is locked". An in-memory database (one shared connection) runs inline.
    """

    def __init__(self, db: sqlite_utils.Database, busy_timeout: float, name: str) -> None:
        self.db = db
        self.busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        if isinstance(db, Database):
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name,
                                                initializer=self._set_busy_timeout)

    def _set_busy_timeout(self) -> None:
        # db.conn is this thread's own connection (Database keeps one per thread).
        self.db.conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the thread (``self.db.conn`` inside it is the thread's connection)."""
        if self._executor is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)


def has_flag(db: sqlite_utils.Database, repo: str, issue: int, flag: str) -> bool:
    """Per-issue switches set by commands: ``frozen`` (no lifecycle closing), ``no-ai`` (no model text)."""
    return db.execute("SELECT 1 FROM issue_flags WHERE repo = ? AND issue = ? AND flag = ?",
                      [repo, issue, flag]).fetchone() is not None


def set_flag(db: sqlite_utils.Database, repo: str, issue: int, flag: str, on: bool, by: str = "") -> None:
    if on:
        db.execute("INSERT OR REPLACE INTO issue_flags(repo, issue, flag, set_by, set_at) VALUES (?, ?, ?, ?, ?)",
                   [repo, issue, flag, by, time.time()])
    else:
        db.execute("DELETE FROM issue_flags WHERE repo = ? AND issue = ? AND flag = ?", [repo, issue, flag])


def kv_get(db: sqlite_utils.Database, key: str, default: Any = None) -> Any:
    row = db.execute("SELECT value FROM kv WHERE key = ?", [key]).fetchone()
    return json.loads(row[0]) if row else default


def kv_set(db: sqlite_utils.Database, key: str, value: Any) -> None:
    db.execute("INSERT OR REPLACE INTO kv(key, value) VALUES (?, ?)", [key, json.dumps(value)])


def log_model_call(db: sqlite_utils.Database, **fields: Any) -> None:
    """One row per model call (any tier), so cost and escalations can be reported later."""
    fields.setdefault("ts", time.time())
    if "output" in fields and not isinstance(fields["output"], (str, type(None))):
        fields["output"] = json.dumps(fields["output"])
    db["model_calls"].insert(fields, alter=True)
