"""A repository's `.github/first-responder.yml` is written by whoever can push to it (issue 11, items 12
and 20): an alias bomb, deep nesting, a huge or binary file, or wrong types at any level give the
defaults (per key where possible) and bounded warnings naming the key path; the repository keeps working.
"""
from __future__ import annotations

import asyncio
import threading

import pytest

from bot import config as config_module
from bot.config import CONFIG_PATH, DEFAULTS, MAX_CONFIG_BYTES, SHOWN_CHARS, parse_repo_config, read_repo_config
from tests.conftest import REPO
from tests.test_foundation import add_echo_router, echo_comments, opened

# The classic "billion laughs" in under 400 bytes: nine levels of nine aliases, 9**9 "lol"s under
# `triage.threshold` (a key with a type, so the old checker's warning printed the repr of the expansion).
LEVELS = "abcdefghi"
BOMB = 'x0: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"x{i}: &{name} [{','.join(['*' + LEVELS[i - 1]] * 9)}]\n" for i, name in enumerate(LEVELS) if i) + \
    "triage:\n  threshold: *i\n"

# The same shape, three levels: small enough that the code before the fix survives it (its warning was
# the repr of all 729 items), so this one shows the unbounded repr without exhausting the machine.
SMALL_BOMB = 'x0: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' \
             'x1: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nx2: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\ntriage:\n  threshold: *c\n'


def bounded(warnings: list[str]) -> bool:
    """Every warning short and on one line (no value from the file shown past SHOWN_CHARS)."""
    return all(len(w) <= 200 + SHOWN_CHARS and "\n" not in w and "\r" not in w for w in warnings)


def assert_defaults(config) -> None:
    assert config.values == DEFAULTS
    assert config.dry_run is False


# ------------------------------------------------------------------------------------ unusable files
def test_alias_bomb_gives_defaults_and_one_short_warning():
    assert len(BOMB.encode()) < 400
    config = parse_repo_config(BOMB)
    assert_defaults(config)
    assert len(config.warnings) == 1
    assert "aliases" in config.warnings[0] and config.warnings[0].startswith(CONFIG_PATH)
    assert bounded(config.warnings)


def test_an_aliased_value_is_never_repr_d_into_a_warning():
    config = parse_repo_config(SMALL_BOMB)
    assert bounded(config.warnings), max(len(w) for w in config.warnings)
    assert len(config.warnings) == 1 and "aliases" in config.warnings[0]
    assert_defaults(config)


@pytest.mark.parametrize("text", [
    "triage:\n  labels: " + "[" * 3000 + "]" * 3000 + "\n",
    "x: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
    "".join(" " * depth + f"k{depth}:\n" for depth in range(300)) + " " * 300 + "v: 1\n",
], ids=["flow-lists", "flow-mappings", "block-mappings"])
def test_deep_nesting_gives_defaults_and_one_warning(text):
    config = parse_repo_config(text)  # used to raise RecursionError, which failed every delivery of the repo
    assert_defaults(config)
    assert len(config.warnings) == 1 and "nested deeper than" in config.warnings[0]


def test_many_nodes_are_refused():
    text = "triage:\n  protected_labels: [" + ",".join(["x"] * 6000) + "]\n"
    assert len(text) < MAX_CONFIG_BYTES
    config = parse_repo_config(text)
    assert_defaults(config)
    assert len(config.warnings) == 1 and "YAML nodes" in config.warnings[0]


def test_huge_file_is_refused_by_size_before_parsing():
    text = "triage:\n  enabled: false\n" + "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1)
    config = parse_repo_config(text)
    assert_defaults(config)
    assert len(config.warnings) == 1 and "64 KB limit" in config.warnings[0]
    # As the contents API describes it: the size is checked before anything is decoded.
    listed = config_module.config_from_contents({"type": "file", "size": 5_000_000, "content": "", "encoding": "none"})
    assert_defaults(listed)
    assert "5000000 bytes, over the 64 KB limit" in listed.warnings[0]


@pytest.mark.parametrize("data", [
    bytes(range(256)) * 10,
    b"triage:\n  enabled: false\n\x00\x01\x02",
    "triage: \x1b[31mred\x07\n".encode(),
    b"\xff\xfe" + "triage: {}".encode("utf-16-le"),
], ids=["all-bytes", "nul", "escapes", "utf-16"])
def test_binary_garbage_gives_defaults_and_one_warning(data):
    config = parse_repo_config(data)
    assert_defaults(config)
    assert len(config.warnings) == 1 and bounded(config.warnings)
    assert "not UTF-8" in config.warnings[0] or "binary data or a control character" in config.warnings[0]


def test_a_huge_integer_or_a_custom_tag_is_one_warning():
    for text in ("digest:\n  hour: " + "9" * 5000 + "\n", "triage: !!python/object/apply:os.system [ls]\n"):
        config = parse_repo_config(text)
        assert_defaults(config)
        assert len(config.warnings) == 1 and bounded(config.warnings)


# ------------------------------------------------------------------------------- wrong types, by key
def test_warnings_name_the_exact_key_path_and_the_rest_of_the_section_stays():
    config = parse_repo_config("triage:\n  threshold: abc\n  comment: false\n  labels:\n    bug: 5\n"
                               "    security: sec\n")
    assert "triage.threshold: expected a number, got 'abc'; using the default (0.93)" in config.warnings
    assert "triage.labels.bug: expected a string, got 5; using the default ('bug')" in config.warnings
    triage = config.section("triage")
    assert triage["threshold"] == 0.93 and triage["comment"] == "never"  # the bad key alone fell back; false reads as never
    assert triage["labels"]["bug"] == "bug" and triage["labels"]["security"] == "sec"
    assert triage["labels"]["feature"] == "enhancement"  # kinds the file leaves out keep their label


@pytest.mark.parametrize("text, path, fallback", [
    ("- triage\n", CONFIG_PATH, None),
    ("just words\n", CONFIG_PATH, None),
    ("dry_run: sometimes\n", "dry_run", ("dry_run", False)),
    ("triage: 5\n", "triage", ("triage", DEFAULTS["triage"])),
    ("triage:\n  candidate: [1]\n", "triage.candidate", ("triage", DEFAULTS["triage"])),
    ("triage:\n  candidate:\n    mode: 7\n", "triage.candidate.mode", ("triage", DEFAULTS["triage"])),
    ("triage:\n  protected_labels: [security, 5]\n", "triage.protected_labels[1]", ("triage", DEFAULTS["triage"])),
    ("triage:\n  threshold: .nan\n", "triage.threshold", ("triage", DEFAULTS["triage"])),
    ("triage:\n  threshold: 1.5\n", "triage.threshold", ("triage", DEFAULTS["triage"])),
    ("fallback:\n  max_calls_per_day: '1000'\n", "fallback.max_calls_per_day", ("fallback", DEFAULTS["fallback"])),
    ("fallback:\n  max_cost_per_day: -1\n", "fallback.max_cost_per_day", ("fallback", DEFAULTS["fallback"])),
    ("duplicates:\n  max_candidates: true\n", "duplicates.max_candidates", ("duplicates", DEFAULTS["duplicates"])),
    ("lifecycle:\n  stale:\n    days_until_stale: 2024-01-01\n", "lifecycle.stale.days_until_stale",
     ("lifecycle", DEFAULTS["lifecycle"])),
    ("lifecycle:\n  needs_info: yes\n", "lifecycle.needs_info", ("lifecycle", DEFAULTS["lifecycle"])),
    ("commands:\n  permissions:\n    close: everyone\n", "commands.permissions.close",
     ("commands", DEFAULTS["commands"])),
    ("commands:\n  permissions:\n    nosuch: write\n", "commands.permissions", ("commands", DEFAULTS["commands"])),
    ("digest:\n  top: 0\n", "digest.top", ("digest", DEFAULTS["digest"])),
], ids=lambda value: value if isinstance(value, str) and "\n" not in value else None)
def test_wrong_types_at_every_level(text, path, fallback):
    config = parse_repo_config(text)
    assert len(config.warnings) == 1, config.warnings
    assert config.warnings[0].startswith(f"{path}: "), config.warnings[0]
    assert bounded(config.warnings)
    if fallback is None:
        assert_defaults(config)
    else:
        key, value = fallback
        assert config.values[key] == value


def test_unknown_keys_are_named_with_their_path_at_every_level():
    config = parse_repo_config("trage: {}\ntriage:\n  treshold: 0.5\n  candidate:\n    modes: shadow\n"
                               "lifecycle:\n  stale:\n    exempt_label: [x]\n7: seven\nnull: nothing\n")
    assert set(config.warnings) == {
        "trage: unknown key, ignored (did you mean triage?)",
        "triage.treshold: unknown key, ignored (did you mean threshold?)",
        "triage.candidate.modes: unknown key, ignored (did you mean mode?)",
        "lifecycle.stale.exempt_label: unknown key, ignored (did you mean exempt_labels?)",
        "7: unknown key, ignored",
        "null: unknown key, ignored",
    }
    assert config.values == DEFAULTS


def test_one_bad_permission_entry_is_dropped_alone():
    config = parse_repo_config("commands:\n  permissions:\n    close: everyone\n    nosuch: write\n"
                               "    label: Anyone\n")
    assert config.section("commands")["permissions"] == {"label": "anyone"}
    assert len(config.warnings) == 2 and bounded(config.warnings)


def test_digest_schedule_is_validated_in_config_not_at_digest_time():
    from bot.core.digest import week_bounds

    config = parse_repo_config("digest:\n  enabled: true\n  timezone: Mars/Olympus\n  day: funday\n  hour: 99\n"
                               "  top: 5\n")
    assert sorted(config.warnings) == [
        "digest.day: expected one of monday, tuesday, wednesday, thursday, friday, saturday, sunday, "
        "got 'funday'; using the default ('monday')",
        "digest.hour: expected a whole number from 0 to 23, got 99; using the default (9)",
        "digest.timezone: expected an IANA time zone name such as UTC or Europe/Berlin, got 'Mars/Olympus'; "
        "using the default ('UTC')",
    ]
    digest = config.section("digest")
    assert (digest["enabled"], digest["top"], digest["day"], digest["hour"], digest["timezone"]) == \
        (True, 5, "monday", 9, "UTC")
    start, end = week_bounds("2024-W10", digest["day"], digest["hour"], digest["timezone"])  # no exception later
    assert end.isoformat() == "2024-03-11T09:00:00+00:00"
    good = parse_repo_config("digest:\n  day: Friday\n  hour: 17\n  timezone: Europe/Berlin\n")
    assert good.warnings == [] and good.section("digest")["day"] == "friday"
    for zone in ("../../../etc/passwd", "/etc/localtime", "", "x" * 500):
        assert parse_repo_config(f"digest:\n  timezone: '{zone}'\n").section("digest")["timezone"] == "UTC"


def test_values_and_keys_in_warnings_are_bounded():
    long_value = "A" * 5000
    long_key = "k" * 5000
    text = (f"triage:\n  summary: '{long_value}'\n  ? {long_key}\n  : 1\n  needs_triage_label: [a, b]\n"
            "  comment: \"line\\nbreak @victim ![x](https://evil.example/t.png)\"\n")
    text += "lifecycle:\n" + "".join(f"  unknown{i}: {i}\n" for i in range(100))
    config = parse_repo_config(text)
    assert bounded(config.warnings)
    assert len(config.warnings) == 21 and config.warnings[-1].endswith("more problems")
    assert not any(long_value[:SHOWN_CHARS + 1] in w or long_key[:41] in w for w in config.warnings)
    assert all(len(w) < 400 for w in config.warnings)


# ----------------------------------------------------------------------------- off the event loop
async def test_reading_is_off_the_event_loop_and_time_bounded(monkeypatch):
    release = threading.Event()

    def stuck(contents):
        release.wait(30)
        return parse_repo_config(None)

    monkeypatch.setattr(config_module, "config_from_contents", stuck)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        config = await read_repo_config({"type": "file", "content": ""}, timeout=0.3)
    finally:
        release.set()
        task.cancel()
    assert config.values == DEFAULTS
    assert config.warnings == [f"{CONFIG_PATH}: took over 0.3 s to read; using defaults"]
    assert ticks > 1  # the loop kept running while the parse was stuck


# ------------------------------------------------------------------------------- through the server
@pytest.mark.parametrize("text", [BOMB, "triage:\n  labels: " + "[" * 3000 + "]" * 3000 + "\n",
                                  "triage: \x00\x01\x02\n", "digest:\n  timezone: Mars/Olympus\n"],
                         ids=["alias-bomb", "deep", "binary", "bad-timezone"])
async def test_a_hostile_config_never_stops_the_repository(bot, standin, text, caplog):
    standin.put_file(REPO, CONFIG_PATH, text)
    calls: list[str] = []
    add_echo_router(bot, calls)
    issue, payload = opened(standin)
    with caplog.at_level("WARNING", logger="bot.app"):
        await bot.send("issues", payload)
        await bot.drain()
    statuses = [row[0] for row in bot.db.execute("SELECT status FROM deliveries")]
    assert statuses == ["done"]
    assert calls and len(echo_comments(standin, issue["number"])) == 1  # handlers ran, with the defaults
    warnings = bot.services.config_warnings[REPO]
    assert len(warnings) == 1 and bounded(warnings)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"config {REPO}:")]
    assert len(lines) == 1 and len(lines[0]) < 400
    async with bot.session.get(f"{bot.url}/health") as resp:
        body = await resp.read()
    assert len(body) < 10_000  # it was 312 MB: the repr of the aliased value
