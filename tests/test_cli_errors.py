"""Operator mistakes get one clear line and a non-zero exit status, never a traceback (issue 11, item 20).

Every case runs the real CLI, ``python -m bot ...``, as a subprocess with a controlled environment;
commands that need GitHub talk to the stand-in on loopback (or must fail before contacting it).
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.db import open_db
from tests.conftest import APP_ID, REPO, SECRET, free_port

ROOT = Path(__file__).resolve().parent.parent


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Only what the command needs: nothing inherited from the developer's shell (no stray GITHUB_*)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "DATABASE_PATH": str(tmp_path / "bot.db"), "FIRST_RESPONDER_EMBEDDER": "none",
           "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(extra)
    return env


def app_env(tmp_path: Path, private_key: str, api_url: str = "http://127.0.0.1:9", **extra: str) -> dict[str, str]:
    return base_env(tmp_path, GITHUB_APP_ID=str(APP_ID), GITHUB_PRIVATE_KEY=private_key,
                    GITHUB_WEBHOOK_SECRET=SECRET, GITHUB_API_URL=api_url, DISABLE_SCHEDULER="1", **extra)


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


async def run_async(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """As ``run``, without blocking the event loop the stand-in answers on."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", *args, cwd=ROOT, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, out.decode(), err.decode()


def assert_clear(status: int, stderr: str, expected_status: int, *needles: str, one_line: bool = True) -> None:
    """The exit status, the message naming what is wrong, one line, and no traceback."""
    assert status == expected_status, (status, stderr)
    assert "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in stderr.strip().splitlines()[-1], (needle, stderr)
    if one_line:
        assert len(stderr.strip().splitlines()) == 1, stderr


# ------------------------------------------------------------------------------------- environment
@pytest.mark.parametrize("variable, value, needles", [
    ("PORT", "abc", ["PORT must be a whole number from 1 to 65535, got 'abc'"]),
    ("PORT", "80000", ["PORT must be a whole number from 1 to 65535, got '80000'"]),
    ("WRITE_SPACING_SECONDS", "abc", ["WRITE_SPACING_SECONDS must be a number", "got 'abc'"]),
    ("WRITE_SPACING_SECONDS", "nan", ["WRITE_SPACING_SECONDS must be a number", "got 'nan'"]),
    ("LOG_LEVEL", "bogus", ["LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'bogus'"]),
    ("DRY_RUN", "ture", ["DRY_RUN must be one of", "got 'ture'"]),
])
def test_serve_refuses_a_bad_variable_by_name(tmp_path, app_key, variable, value, needles):
    result = run(["serve"], app_env(tmp_path, app_key[0], **{variable: value}))
    assert_clear(result.returncode, result.stderr, 2, *needles)


def test_a_bad_log_level_is_named_for_every_command(tmp_path):
    result = run(["audit"], base_env(tmp_path, LOG_LEVEL="bogus"))
    assert_clear(result.returncode, result.stderr, 2, "LOG_LEVEL must be one of")


def test_database_in_a_missing_directory_is_named(tmp_path, app_key):
    missing = tmp_path / "no" / "such" / "dir" / "bot.db"
    result = run(["serve"], app_env(tmp_path, app_key[0], DATABASE_PATH=str(missing)))
    assert_clear(result.returncode, result.stderr, 2, "DATABASE_PATH", str(missing.parent), "does not exist")
    result = run(["audit"], base_env(tmp_path, DATABASE_PATH=str(missing)))
    assert_clear(result.returncode, result.stderr, 2, "DATABASE_PATH", str(missing.parent))
    assert not missing.parent.exists()


def read_only_directory(tmp_path: Path) -> Path:
    """A directory this process cannot create files in: chmod works for a normal user; root ignores
    permissions, so as root use /sys (read-only for everyone in a container), if it is."""
    if os.geteuid() != 0:
        directory = tmp_path / "read-only"
        directory.mkdir()
        directory.chmod(0o555)
        return directory
    try:
        with open("/sys/.first-responder-probe", "w"):
            pass
    except OSError:
        return Path("/sys")
    os.unlink("/sys/.first-responder-probe")
    pytest.skip("no read-only directory available to root here")


def test_database_in_a_read_only_directory_is_named(tmp_path, app_key):
    directory = read_only_directory(tmp_path)
    path = directory / "bot.db"
    result = run(["serve"], app_env(tmp_path, app_key[0], DATABASE_PATH=str(path)))
    assert_clear(result.returncode, result.stderr, 2, "DATABASE_PATH", f"cannot write in the directory {directory}")
    result = run(["queue"], base_env(tmp_path, DATABASE_PATH=str(path)))
    assert_clear(result.returncode, result.stderr, 2, "DATABASE_PATH", str(directory))


# ----------------------------------------------------------------------------------- repositories
@pytest.mark.parametrize("command", ["backfill", "digest"])
async def test_unknown_repository_is_named(tmp_path, app_key, standin, command):
    env = app_env(tmp_path, app_key[0], api_url=standin.url)
    status, _out, err = await run_async([command, "nonexistent/repo"], env)
    assert_clear(status, err, 1, f"{command}: the App is not installed on nonexistent/repo")
    # the stand-in was asked the App's installations (a real check), and nothing was written
    assert any(r["path"] == "/app/installations" for r in standin.requests)
    assert standin.writes() == []


@pytest.mark.parametrize("command", ["backfill", "digest", "sweep", "export-training"])
def test_a_malformed_repository_argument_is_a_usage_error(tmp_path, app_key, command):
    result = run([command, "../../etc"], app_env(tmp_path, app_key[0]))
    assert_clear(result.returncode, result.stderr, 2, "OWNER/NAME", "'../../etc'")


async def test_unreachable_github_is_named(tmp_path, app_key):
    api = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    status, _out, err = await run_async(["backfill", "octo-org/hello"], app_env(tmp_path, app_key[0], api_url=api))
    # the client's retries are logged on the way (about 30 s of backoff); the last line says what is wrong
    assert_clear(status, err, 1, f"cannot reach GitHub at {api}", "GITHUB_API_URL", one_line=False)


def test_export_training_for_an_unknown_repository_says_so(tmp_path):
    path = tmp_path / "bot.db"
    db = open_db(str(path))
    db["installations"].insert({"repo": REPO, "installation_id": 1, "added_at": 0})
    result = run(["export-training", "nonexistent/repo"], base_env(tmp_path, DATABASE_PATH=str(path)))
    assert_clear(result.returncode, result.stderr, 1, "unknown repository nonexistent/repo", str(path))
    assert result.stdout == ""
    known = run(["export-training", REPO.upper()], base_env(tmp_path, DATABASE_PATH=str(path)))
    assert known.returncode == 0 and f"no examples recorded for {REPO} yet" in known.stderr


def test_export_training_from_a_missing_database_says_so(tmp_path):
    missing = tmp_path / "typo.db"
    result = run(["export-training", REPO, "--db", str(missing)], base_env(tmp_path))
    assert_clear(result.returncode, result.stderr, 2, f"--db {missing}: no such database file")
    assert not missing.exists()  # not created empty by the attempt


# -------------------------------------------------------------------------------------------- eval
def test_unknown_evaluation_is_a_usage_error(tmp_path):
    result = run(["eval", "nosuch"], base_env(tmp_path))
    assert_clear(result.returncode, result.stderr, 2, "unknown evaluation 'nosuch'", "triage, duplicates, replay")


@pytest.mark.parametrize("args, needle", [
    (["eval", "triage", "--data", "/missing.jsonl"], "/missing.jsonl: no such file"),
    (["eval", "replay", "--data", "/missing.jsonl"], "/missing.jsonl: no such file"),
    (["eval", "duplicates", "--data", "/missing-dir"], "/missing-dir: no such directory"),
    (["demo", "--file", "/missing.json"], "/missing.json: no such file"),
])
def test_a_missing_input_file_is_a_usage_error(tmp_path, args, needle):
    result = run(args, base_env(tmp_path))
    assert_clear(result.returncode, result.stderr, 2, needle)


def test_eval_triage_names_the_line_that_is_not_json(tmp_path):
    data = tmp_path / "issues.jsonl"
    data.write_text(json.dumps({"repo": "a/b", "title": "t", "body": "", "label": "bug"}) + "\nnot json\n")
    result = run(["eval", "triage", "--data", str(data), "--no-llm"], base_env(tmp_path))
    assert_clear(result.returncode, result.stderr, 2, f"{data} line 2: expected a JSON object per line")


def test_anything_else_is_one_logged_line_and_status_1(tmp_path):
    """The last guard: an unexpected exception (here a replay file without `created_at`) is one line;
    the traceback only with LOG_LEVEL=DEBUG."""
    data = tmp_path / "issues.jsonl"
    data.write_text(json.dumps({"repo": "a/b", "title": "t", "label": "bug"}) + "\n")
    result = run(["eval", "replay", "--data", str(data)], base_env(tmp_path))
    assert_clear(result.returncode, result.stderr, 1, "python -m bot eval failed: KeyError: 'created_at'",
                 "LOG_LEVEL=DEBUG")
    debug = run(["eval", "replay", "--data", str(data)], base_env(tmp_path, LOG_LEVEL="DEBUG"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr
