"""What the CLI commands share, so an operator's mistake is one clear line on stderr and a non-zero exit
status, never a traceback: usage errors (status 2), the ``OWNER/NAME`` argument, input files that must
exist, the database path, and finding the App's installation on a repository (status 1 when it is not
installed there).

Commands raise ``CliError``; ``python -m bot`` (bot/__main__.py) prints its message and exits with its
status. Anything else that escapes a command is logged as one line there (the traceback at DEBUG).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
from typing import Any

from bot.config import ConfigError, check_database_path, show

USAGE = 2  # exit status for a wrong command line or environment (as argparse and sysexits' EX_USAGE spirit)
FAILED = 1  # the command ran and could not do what was asked (unknown repository, GitHub unreachable)

# GitHub: owner 1-39 characters of letters, digits and single hyphens; repository name letters, digits, . _ -
_REPO = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")


class CliError(Exception):
    """A message for the operator (one line, no traceback) and the exit status that goes with it."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``prog: problem (see --help)``) and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(USAGE, f"{self.prog}: {message} (see --help)\n")


def repo_name(value: str) -> str:
    """argparse ``type=`` for ``OWNER/NAME`` (also keeps ``../`` and query strings out of API paths)."""
    if not _REPO.match(value or "") or value.split("/")[1] in (".", ".."):
        raise argparse.ArgumentTypeError(f"expected a repository as OWNER/NAME, got {show(value)}")
    return value


def existing_file(value: str) -> str:
    """argparse ``type=`` for an input file that must exist and be readable."""
    if not os.path.isfile(value):
        raise argparse.ArgumentTypeError(f"{value}: no such file" if not os.path.exists(value)
                                         else f"{value}: not a file")
    if not os.access(value, os.R_OK):
        raise argparse.ArgumentTypeError(f"{value}: not readable")
    return value


def existing_dir(value: str) -> str:
    """argparse ``type=`` for an input directory that must exist."""
    if not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value}: no such directory" if not os.path.exists(value)
                                         else f"{value}: not a directory")
    return value


def open_database(path: str, *, command: str, variable: str = "DATABASE_PATH", must_exist: bool = False) -> Any:
    """``bot.db.open_db`` after checking the path; CliError naming the variable (or option) and the path."""
    import sqlite3

    from bot.db import open_db

    if must_exist and path != ":memory:" and not os.path.isfile(path):
        raise CliError(f"{command}: {variable} {path}: no such database file", USAGE)
    try:
        check_database_path(path, variable)
        return open_db(path)
    except ConfigError as exc:
        raise CliError(f"{command}: {exc}", USAGE) from None
    except sqlite3.DatabaseError as exc:
        raise CliError(f"{command}: {variable} {path}: cannot be used as the database ({exc})", FAILED) from None


async def installation_of(services: Any, repo: str) -> tuple[str, int] | None:
    """(the repository's name as GitHub spells it, its installation id), or None when the App is not
    installed there. The installations table answers first; otherwise GitHub is asked with the App's JWT
    (``/app/installations``, then each installation's repositories) and the table filled in."""
    import time

    import gidgethub.apps

    row = services.db.execute("SELECT repo, installation_id FROM installations WHERE lower(repo) = lower(?)",
                              [repo]).fetchone()
    if row:
        return row[0], row[1]
    from bot.github import USER_AGENT, GitHubAPI

    await services.start()
    app_gh = GitHubAPI(services.session, USER_AGENT, base_url=services.settings.api_url)
    jwt = gidgethub.apps.get_jwt(app_id=services.settings.app_id, private_key=services.settings.private_key)
    found = None
    async for installation in app_gh.getiter("/app/installations?per_page=100", jwt=jwt):
        gh = await services.github.for_installation(installation["id"])
        async for item in gh.getiter("/installation/repositories?per_page=100", iterable_key="repositories"):
            services.db["installations"].upsert({"repo": item["full_name"], "installation_id": installation["id"],
                                                 "added_at": time.time()}, pk="repo")
            if item["full_name"].lower() == repo.lower():
                found = (item["full_name"], installation["id"])
    return found


async def repo_context(services: Any, repo: str, delivery_id: str, *, command: str) -> Any:
    """A handler context for ``repo`` (as ``Services.cli_context``), or CliError when the App is not
    installed there, GitHub refuses the App's credentials, or GitHub cannot be reached."""
    import aiohttp
    import gidgethub

    api = services.settings.api_url
    try:
        found = await installation_of(services, repo)
        if found is None:
            raise CliError(f"{command}: the App is not installed on {repo} (or there is no such repository)")
        return await services.context_for(found[0], found[1], delivery_id)
    except gidgethub.BadRequest as exc:
        if exc.status_code == 401:
            raise CliError(f"{command}: GitHub at {api} refused the App's credentials (401); check "
                           "GITHUB_APP_ID and GITHUB_PRIVATE_KEY") from None
        raise CliError(f"{command}: GitHub at {api} answered {exc.status_code} for {repo}: "
                       f"{str(exc)[:120]}") from None
    except gidgethub.GitHubException as exc:
        raise CliError(f"{command}: GitHub at {api} failed: {type(exc).__name__} {str(exc)[:120]}") from None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise CliError(f"{command}: cannot reach GitHub at {api} ({reason}); check GITHUB_API_URL") from None


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one bounded line (for the top-level guard)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__
