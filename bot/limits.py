"""Counters that bound what users can make the bot do: rate limits and once-only claims, in the database.

Everything here lives in SQLite rather than in process memory, so a restart does not reset a limit and
several worker processes sharing the file see one count. Each check-and-record is a single transaction
(``BEGIN IMMEDIATE``), so two workers can never both take the last slot.

* :func:`take` - sliding-window rate limits (``/triage`` and ``/summarize`` per issue and per user, the
  one refusal reply per user per issue per hour).
* :func:`claim` - "this comment's commands were handled by delivery X": a replayed body with a new
  delivery id finds the claim and runs nothing; a retry of the same delivery still may.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

MAX_WINDOW = 86400.0
"""Rows older than this are deleted as new ones are taken: no limit here looks back further."""


def ensure_schema(db: Any) -> None:
    """The two tables (idempotent)."""
    db.execute("CREATE TABLE IF NOT EXISTS rate_events (key TEXT NOT NULL, ts REAL NOT NULL)")
    db.execute("CREATE INDEX IF NOT EXISTS rate_events_key ON rate_events(key, ts)")
    db.execute("CREATE INDEX IF NOT EXISTS rate_events_ts ON rate_events(ts)")
    db.execute(
        """CREATE TABLE IF NOT EXISTS command_claims (
            repo TEXT NOT NULL,
            source TEXT NOT NULL,
            version TEXT NOT NULL,
            delivery_id TEXT NOT NULL,
            claimed_at REAL NOT NULL,
            PRIMARY KEY (repo, source, version)
        )"""
    )


class Limit(NamedTuple):
    """At most ``count`` events under ``key`` in any ``window`` seconds."""

    key: str
    count: int
    window: float


class Refused(NamedTuple):
    """Which limit refused, and how many seconds until it would allow one more."""

    limit: Limit
    retry_after: float


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the calling thread's connection (rolled back on error)."""

    def __init__(self, db: Any) -> None:
        self.conn: sqlite3.Connection = db.conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, value, traceback) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")


def take(db: Any, limits: Sequence[Limit], *, now: float | None = None) -> Refused | None:
    """Record one event under every limit's key if ALL of them still allow it; else record nothing.

    Returns ``None`` when the event was recorded, or the first limit that refused it (with the wait).
    """
    now = time.time() if now is None else now
    with _Transaction(db) as conn:
        conn.execute("DELETE FROM rate_events WHERE ts <= ?", [now - MAX_WINDOW])
        for limit in limits:
            if limit.count <= 0:
                return Refused(limit, limit.window)
            rows = conn.execute(
                "SELECT ts FROM rate_events WHERE key = ? AND ts > ? ORDER BY ts DESC LIMIT ?",
                [limit.key, now - limit.window, limit.count],
            ).fetchall()
            if len(rows) >= limit.count:
                oldest_counted = rows[-1][0]
                return Refused(limit, max(1.0, oldest_counted + limit.window - now))
        conn.executemany("INSERT INTO rate_events (key, ts) VALUES (?, ?)", [(limit.key, now) for limit in limits])
    return None


def claim(db: Any, repo: str, source: str, version: str, delivery_id: str, *, now: float | None = None) -> str:
    """Claim ``(repo, source, version)`` for ``delivery_id``; returns the delivery that holds the claim.

    ``source`` names the text that held commands (``comment:123`` or ``issue:7``) and ``version`` which
    state of it (``created``, or the edit's ``updated_at`` and body hash). When the answer is another
    delivery's id, that text was handled already and the caller must not run its commands again.
    """
    now = time.time() if now is None else now
    with _Transaction(db) as conn:
        conn.execute("INSERT OR IGNORE INTO command_claims (repo, source, version, delivery_id, claimed_at) "
                     "VALUES (?, ?, ?, ?, ?)", [repo, source, version, delivery_id, now])
        row = conn.execute("SELECT delivery_id FROM command_claims WHERE repo = ? AND source = ? AND version = ?",
                           [repo, source, version]).fetchone()
    return row[0]
