"""Command line: `python -m bot <command>`. Each command lives with its feature; this file only routes,
and turns whatever a command could not handle into one line on stderr and a non-zero exit status."""
from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from datetime import datetime, timezone

from bot.cli import ArgumentParser, first_line
from bot.config import show

# command -> (module, function, one-line help). Functions take argv (list[str]) and return an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("bot.__main__", "serve_main", "run the webhook server (Procfile: web)"),
    "queue": ("bot.__main__", "queue_main", "list pending/failed deliveries; `queue retry ID` re-queues one"),
    "audit": ("bot.__main__", "audit_main", "print the audit log of writes"),
    "demo": ("bot.demo", "main", "triage the sample issues with the bundled local model"),
    "triage": ("bot.demo", "triage_main", "triage one issue (--title/--body or --file) and print JSON"),
    "backfill": ("bot.features.index", "backfill_main", "index all issues of OWNER/NAME"),
    "sweep": ("bot.features.lifecycle", "sweep_main", "run the needs-info/stale sweep"),
    "recover": ("bot.features.recovery", "recover_main", "ask GitHub to redeliver webhooks the server missed"),
    "digest": ("bot.features.digest", "digest_main", "print or post the weekly digest"),
    "models": ("bot.models.report", "main", "model calls: per-tier counts, latency, escalations, cost"),
    "export-training": ("bot.features.learning", "export_main", "write training examples as JSONL"),
    "eval": ("bot.__main__", "eval_main", "evaluations: triage, duplicates, replay"),
}


class FieldFormatter(logging.Formatter):
    """Appends structured fields (delivery id, repo) to each line when a record carries them."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{key}={getattr(record, key)}" for key in ("delivery", "repo", "issue") if hasattr(record, key)]
        return f"{line} {' '.join(fields)}" if fields else line


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(FieldFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)


def serve_main(argv: list[str]) -> int:
    from aiohttp import web

    from bot.app import Services, create_app
    from bot.config import ConfigError, Settings, check_database_path

    try:
        settings = Settings.from_env()
        check_database_path(settings.database_path)
    except ConfigError as exc:
        print(f"first-responder: cannot start: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    from bot.db import open_db

    services = Services(settings, db=open_db(settings.database_path, background_checkpoints=True))
    logging.getLogger("bot").info("serving on %s:%s (dry run: %s)", settings.host, settings.port, settings.dry_run)
    access_log = logging.getLogger("aiohttp.access") if settings.log_level == "DEBUG" else None
    try:
        web.run_app(create_app(services), host=settings.host, port=settings.port, print=None, access_log=access_log)
    except OSError as exc:  # the port is taken, or HOST is not an address of this machine
        print(f"first-responder: cannot listen on {settings.host}:{settings.port}: "
              f"{exc.strerror or first_line(exc)}", file=sys.stderr)
        return 1
    return 0


def _db():
    """The database at DATABASE_PATH for the read-mostly commands; CliError naming the path if unusable."""
    from bot.cli import CliError, open_database
    from bot.config import ConfigError, Settings

    try:
        settings = Settings.from_env(require_app=False)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None
    return open_database(settings.database_path, command="python -m bot")


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def queue_main(argv: list[str]) -> int:
    from bot import queue

    parser = ArgumentParser(prog="python -m bot queue")
    parser.add_argument("verb", nargs="?", choices=["list", "retry"], default="list")
    parser.add_argument("delivery", nargs="?")
    args = parser.parse_args(argv)
    db = _db()
    if args.verb == "retry":
        if not args.delivery:
            parser.error("retry needs a delivery id")
        if queue.retry(db, args.delivery):
            print(f"re-queued {args.delivery}")
            return 0
        print(f"no pending or failed delivery {args.delivery}", file=sys.stderr)
        return 1
    rows = queue.list_deliveries(db)
    for row in rows:
        row["received_at"] = datetime.fromtimestamp(row["received_at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        row["error"] = (row["error"] or "")[:80]
    print(_table(rows, ["id", "event", "action", "repo", "issue", "status", "attempts", "received_at", "error"]))
    return 0


def parse_since(parser: argparse.ArgumentParser, value: str | None) -> float | None:
    """`--since YYYY-MM-DD` (UTC) as a UNIX time; a bad date is a usage error naming the format."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        parser.error("--since takes a date like 2026-01-31")
    return None


def audit_main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m bot audit")
    parser.add_argument("--repo")
    parser.add_argument("--since", help="YYYY-MM-DD (UTC)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sql, params = "SELECT * FROM audit WHERE 1=1", []
    if args.repo:
        sql += " AND repo = ?"
        params.append(args.repo)
    since = parse_since(parser, args.since)
    if since is not None:
        sql += " AND ts >= ?"
        params.append(since)
    rows = list(_db().query(sql + " ORDER BY id", params))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        row["ts"] = datetime.fromtimestamp(row["ts"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        row["details"] = (row["details"] or "")[:100]
    print(_table(rows, ["ts", "delivery_id", "repo", "issue", "action", "result", "details"]))
    return 0


EVALS = ("triage", "duplicates", "replay")  # modules of bot/eval/, each with main(argv) -> int


def eval_main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(f"usage: python -m bot eval {{{','.join(EVALS)}}} [options]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] not in EVALS:
        print(f"python -m bot eval: unknown evaluation {show(argv[0])}; choose from {', '.join(EVALS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"bot.eval.{argv[0]}")
    return module.main(argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: python -m bot <command> [options]\n\ncommands:")
        for name, (_m, _f, text) in COMMANDS.items():
            print(f"  {name:16} {text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {show(name)}; try `python -m bot --help`", file=sys.stderr)
        return 2
    import os

    from bot.config import LOG_LEVELS, ConfigError, choice_env

    try:
        # serve sets its own level (default INFO) once the settings are read; the others are quiet by default
        setup_logging(choice_env(os.environ, "LOG_LEVEL", "INFO" if name == "serve" else "WARNING", LOG_LEVELS))
    except ConfigError as exc:
        print(f"python -m bot {name}: {exc}", file=sys.stderr)
        return 2
    return _guarded(name, rest)


def _guarded(name: str, rest: list[str]) -> int:
    """Run one command; whatever it did not handle becomes one line on stderr and a non-zero status."""
    from bot.cli import CliError
    from bot.config import ConfigError

    module_name, func, _text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
        result = getattr(module, func)(rest)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except CliError as exc:
        print(exc.message, file=sys.stderr)
        return exc.status
    except ConfigError as exc:
        print(f"python -m bot {name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"python -m bot {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `python -m bot audit | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:  # noqa: BLE001 - the last guard: one line for the operator, the traceback at DEBUG
        log = logging.getLogger("bot")
        log.error("python -m bot %s failed: %s (LOG_LEVEL=DEBUG shows the traceback)", name, first_line(exc))
        log.debug("traceback of the failure", exc_info=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
