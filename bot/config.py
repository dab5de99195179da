"""Settings from the environment, and each repository's `.github/first-responder.yml`.

Each feature owns one section of the repo config (same name as its module and command, as in
triagebot). The schema is a set of pydantic models (one per section), so a wrong value is named by its
exact key path (``digest.hour: expected a whole number from 0 to 23, got 99``). Validation never refuses a
whole file: a wrong key or type is named in a warning and *that key alone* falls back to its default,
so one typo cannot switch the bot off or on by surprise.

The file is written by anyone who can push to the default branch, so it is hostile input: it is capped
in size, parsed without YAML aliases (a 399-byte alias bomb expands to gigabytes), with a bounded node
count and nesting depth, and a file that cannot be read degrades to the defaults with one warning. No
warning shows more than ``SHOWN_CHARS`` characters of any value the file contains.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable
from zoneinfo import ZoneInfo

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

CONFIG_PATH = ".github/first-responder.yml"

# Limits for the repo config file. A real config is a few hundred bytes, a few dozen nodes, 4 levels deep.
MAX_CONFIG_BYTES = 64 * 1024
MAX_CONFIG_NODES = 5_000
MAX_CONFIG_DEPTH = 16
MAX_WARNINGS = 20  # more than this and the rest are counted, not listed: /health and the log stay small
SHOWN_CHARS = 60  # at most this much of any value (or key) from the file appears in a warning
CONFIG_PARSE_TIMEOUT = 5.0  # seconds; the caps keep a real parse in milliseconds

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
CANDIDATE_MODES = ("off", "shadow", "canary")
from bot.core.triage import COMMENT_MODES, SUMMARY_MODES  # noqa: E402 - one list of the words, in the core
WHO = ("anyone", "author", "write")


class ConfigError(Exception):
    """The environment lacks something the server cannot start without."""


# ------------------------------------------------------------------------------------ showing values
def show(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A short, single-line rendering of a value from the file, for warnings and logs.

    Never calls ``repr`` on a container (an aliased structure's repr was 312 MB); strings are cut to
    ``limit`` characters *before* they are quoted, so the cost and the output are bounded.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return f"a mapping ({len(value)} keys)"
    if isinstance(value, (list, tuple)):
        return f"a list ({len(value)} items)"
    if isinstance(value, (int, float)):
        text = str(value) if not isinstance(value, int) or abs(value) < 10 ** 40 else "a very large number"
        return text[:limit]
    if isinstance(value, str):
        cut = value[:limit]
        text = repr(cut)  # quotes, and escapes newlines and control characters (no log injection)
        return text + ("..." if len(value) > limit else "")
    return f"a {type(value).__name__}"  # dates, timestamps, binary: the YAML type, never the value


def _show_key(key: Any) -> str:
    """A key of the file as it appears in a path: plain when it is a plain name, else quoted and cut."""
    if isinstance(key, str) and key and len(key) <= 40 and all(c.isalnum() or c in "_-*." for c in key):
        return key
    return show(key, 40)


def _path(parts: tuple, *, indexes: bool = True) -> str:
    """``triage.labels.bug``, ``triage.protected_labels[1]`` (with ``indexes``, an int is a list position)."""
    out = ""
    for part in parts:
        if indexes and isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _show_key(part)
    return out or "(top level)"


# ------------------------------------------------------------------------------------------- schema
def _error(message: str) -> PydanticCustomError:
    return PydanticCustomError("config_value", message)


def _between(kind: str, low: float, high: float | None = None) -> AfterValidator:
    """A range check whose message says the whole range (pydantic's ge/le name one bound at a time)."""
    if high is None:
        message = f"expected {kind} of {low:g} or more"
    else:
        message = f"expected {kind} from {low:g} to {high:g}"

    def check(value: float) -> float:
        if value < low or (high is not None and value > high):
            raise _error(message)
        return value

    return AfterValidator(check)


def _one_of(choices: tuple[str, ...], *, fold_case: bool = True) -> Callable[[Any], Any]:
    message = f"expected one of {', '.join(choices)}"

    def check(value: Any) -> Any:
        if not isinstance(value, str):
            raise _error(message)
        folded = value.strip().lower() if fold_case else value
        if folded not in choices:
            raise _error(message)
        return folded

    return check


def _time_zone(value: str) -> str:
    """An IANA zone the system knows (``Europe/Berlin``); checked here, not discovered when the digest runs."""
    message = "expected an IANA time zone name such as UTC or Europe/Berlin"
    if not value or len(value) > 64:
        raise _error(message)
    try:
        ZoneInfo(value)
    except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError (path-like keys), OSError, ...
        raise _error(message) from None
    return value


def _command_name(value: str) -> str:
    from bot.core.commands import COMMANDS

    if value not in COMMANDS:
        raise _error("expected a command name such as close or label")
    return value


Probability = Annotated[float, _between("a number", 0, 1)]
Percent = Annotated[float, _between("a number", 0, 100)]
Amount = Annotated[float, _between("a number", 0)]
Count = Annotated[int, _between("a whole number", 0)]
Days = Annotated[int, _between("a whole number of days", 0, 3650)]
Name = Annotated[str, Field(max_length=200)]
Names = Annotated[list[Name], Field(max_length=200)]


class _Section(BaseModel):
    """Strict types (no "5" for 5), unknown keys reported, non-finite numbers refused; an empty section
    (``digest:`` with everything below commented out) means the defaults."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_defaults(cls, value: Any) -> Any:
        return {} if value is None else value


class Candidate(_Section):
    mode: Annotated[str, BeforeValidator(_one_of(CANDIDATE_MODES))] = "off"
    threshold: Probability | None = None
    model_path: Annotated[str, Field(max_length=1024)] = ""


DEFAULT_KIND_LABELS = {"bug": "bug", "feature": "enhancement", "question": "question", "docs": "documentation",
                       "other": ""}


def _comment_mode(value: Any) -> Any:
    """``triage.comment``: auto | always | never; ``true`` / ``false`` from older files mean auto / never."""
    if isinstance(value, bool):
        return "auto" if value else "never"
    return _one_of(COMMENT_MODES)(value)


def _summary_mode(value: Any) -> Any:
    """``triage.summary``: extractive | model | off (YAML reads a bare ``off`` as ``false``)."""
    return "off" if value is False else _one_of(SUMMARY_MODES)(value)


class Triage(_Section):
    enabled: bool = True
    # auto: comment only when there is something for the author (missing information, possible
    # duplicates, an earlier answer); always: on every issue; never: labels only (issue #12 item 6).
    comment: Annotated[str, BeforeValidator(_comment_mode)] = "auto"
    # extractive: the author's own sentences; model: LOCAL_MODEL_PATH's summary (guarded); off: none.
    summary: Annotated[str, BeforeValidator(_summary_mode)] = "extractive"
    threshold: Probability = 0.93
    # An open mapping (kind -> the repo's label): kinds the file leaves out keep their default label.
    labels: dict[Name, Name] = Field(default_factory=lambda: dict(DEFAULT_KIND_LABELS))
    needs_triage_label: Name = "needs-triage"
    protected_labels: Names = Field(default_factory=lambda: ["security", "priority*"])
    ask_for_missing: bool = True
    canary: Percent = 0
    candidate: Candidate = Field(default_factory=Candidate)

    @model_validator(mode="after")
    def _default_labels(self) -> "Triage":
        self.labels = {**DEFAULT_KIND_LABELS, **self.labels}
        return self


class Fallback(_Section):
    enabled: bool = True
    max_calls_per_day: Count = 200
    max_cost_per_day: Amount = 1.0
    price_per_million_input: Amount = 0.15
    price_per_million_output: Amount = 0.6


class Duplicates(_Section):
    enabled: bool = True
    threshold: Probability | None = None
    max_candidates: Annotated[int, _between("a whole number", 0, 20)] = 3


class Answers(_Section):
    enabled: bool = True


class NeedsInfo(_Section):
    enabled: bool = True
    label: Name = "needs-info"
    ping_after_days: Days = 7
    close_after_days: Days = 7


class Stale(_Section):
    enabled: bool = False
    label: Name = "stale"
    days_until_stale: Days = 60
    days_until_close: Days = 14
    only_waiting_on_author: bool = True
    close: bool = True
    exempt_labels: Names = Field(default_factory=lambda: ["pinned", "security"])
    exempt_milestones: bool = True
    exempt_projects: bool = True
    exempt_assignees: bool = True


class Lifecycle(_Section):
    max_writes_per_run: Count = 30
    needs_info: NeedsInfo = Field(default_factory=NeedsInfo)
    stale: Stale = Field(default_factory=Stale)


class Commands(_Section):
    enabled: bool = True
    disabled: Names = Field(default_factory=list)
    open_labels: Names = Field(default_factory=list)
    protected_labels: Names = Field(default_factory=lambda: ["security", "priority*"])
    self_assign: bool = True
    # command -> who may run it; an unknown command or role is named and that entry alone is dropped
    permissions: dict[Annotated[str, AfterValidator(_command_name)],
                      Annotated[str, BeforeValidator(_one_of(WHO))]] = Field(default_factory=dict)


class Digest(_Section):
    enabled: bool = False
    day: Annotated[str, BeforeValidator(_one_of(DAYS))] = "monday"
    hour: Annotated[int, _between("a whole number", 0, 23)] = 9
    timezone: Annotated[str, AfterValidator(_time_zone)] = "UTC"
    top: Annotated[int, _between("a whole number", 1, 100)] = 10
    close_previous: bool = True
    label: Name = "digest"
    exclude_labels: Names = Field(default_factory=list)


class RepoSchema(_Section):
    """The whole file: ``dry_run`` and one section per feature."""

    dry_run: bool = False
    triage: Triage = Field(default_factory=Triage)
    fallback: Fallback = Field(default_factory=Fallback)
    duplicates: Duplicates = Field(default_factory=Duplicates)
    answers: Answers = Field(default_factory=Answers)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    commands: Commands = Field(default_factory=Commands)
    digest: Digest = Field(default_factory=Digest)


DEFAULTS: dict[str, Any] = RepoSchema().model_dump()


# ---------------------------------------------------------------------------------------- YAML
class ConfigFileError(Exception):
    """The file cannot be used at all (too big, an alias, too deep...); the message is safe to show."""


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases and with bounded size.

    An alias (``*name``) lets a few hundred bytes describe a structure of billions of nodes (the
    "billion laughs"), so aliases are refused outright; a config file has no use for them. The node
    count and nesting depth are checked while composing, before any Python object is built, and the
    depth bound also keeps the recursive composer and constructor far from ``RecursionError``.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigFileError(f"line {mark.line + 1}: YAML aliases (*name) are not allowed")
        self._nodes += 1
        if self._nodes > MAX_CONFIG_NODES:
            raise ConfigFileError(f"more than {MAX_CONFIG_NODES} YAML nodes")
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigFileError(f"line {mark.line + 1}: nested deeper than {MAX_CONFIG_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(data: str | bytes) -> Any:
    """Parse the file's text with the limits above; raise ConfigFileError with a message safe to show."""
    if isinstance(data, bytes):
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigFileError(f"{len(data)} bytes, over the {MAX_CONFIG_BYTES // 1024} KB limit")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigFileError(f"not UTF-8 text (byte {exc.start})") from None
    else:
        text = data
        if len(text) > MAX_CONFIG_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
            raise ConfigFileError(f"over the {MAX_CONFIG_BYTES // 1024} KB limit")
    loader = None
    try:
        loader = _ConfigLoader(text)  # the reader refuses control characters here already
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"not valid YAML ({_yaml_problem(exc)})") from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message without the quoted source lines (they are the file's text)."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if isinstance(exc, yaml.reader.ReaderError):  # a control character or binary data
        problem, where = "binary data or a control character", f" at character {exc.position}"
    return f"{str(problem)[:SHOWN_CHARS]}{where}"


# ---------------------------------------------------------------------------------------- validation
_EXPECTED = {
    "bool_type": "true or false",
    "int_type": "a whole number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "too_long": "something shorter",
    "string_too_long": "a shorter string",
}


def _problem(error: dict[str, Any], target: tuple) -> str:
    """One line for one pydantic error: the key path, what was expected, a bounded view of what was found."""
    loc = tuple(error["loc"])
    if error["type"] in ("extra_forbidden", "invalid_key"):
        where = target if len(target) == len(loc) else loc  # the file's own key (null, not 'None')
        return f"{_path(where, indexes=False)}: unknown key, ignored{_suggestion(loc)}"
    if len(loc) >= 2 and loc[-1] == "[key]":
        key = target[-1] if len(target) == len(loc) - 1 else loc[-2]
        return f"{_path(loc[:-2])}: {_message(error)}, got {show(key)}; entry ignored"
    return f"{_path(loc)}: {_message(error)}, got {show(error.get('input'))}; {_fallback(target)}"


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "config_value":
        return error["msg"]
    expected = _EXPECTED.get(error["type"])
    return f"expected {expected}" if expected else error["msg"][:SHOWN_CHARS].lower()


_MISSING = object()


def _default_at(where: tuple) -> Any:
    node: Any = DEFAULTS
    for part in where:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _fallback(target: tuple) -> str:
    """What replaces the dropped value, in words."""
    default = _default_at(target)
    if default is _MISSING:
        return "entry ignored"
    if isinstance(default, dict):
        return "using the defaults"
    if isinstance(default, list):
        return "using the default list"
    return f"using the default ({show(default)})"


def _suggestion(loc: tuple) -> str:
    import difflib

    parent = _default_at(loc[:-1])
    if not isinstance(parent, dict) or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1][:40], [k for k in parent if isinstance(k, str)], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _key_in(node: dict, part: Any) -> Any:
    """The file's own key that pydantic's ``loc`` part names (pydantic writes a ``null`` key as 'None')."""
    if part in node:
        return part
    return next((key for key in node if not isinstance(key, str) and str(key) == part), _MISSING)


def _target(loc: tuple, data: Any) -> tuple:
    """The key path to drop for an error at ``loc``: the deepest mapping key the file really has, but never
    inside a list (a list with one bad item falls back as a whole) and never a pydantic-internal step."""
    node, target = data, ()
    for part in loc:
        if part == "[key]" or not isinstance(node, dict):
            break
        key = _key_in(node, part)
        if key is _MISSING:
            break
        target += (key,)
        node = node[key]
        if isinstance(node, list):
            break
    return target


def _drop(data: dict, target: tuple) -> bool:
    node: Any = data
    for part in target[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and target and target[-1] in node:
        del node[target[-1]]
        return True
    return False


def validate(raw: Any) -> tuple[dict[str, Any], list[str]]:
    """Validate the parsed file against the schema; each bad key is named and falls back alone."""
    if raw is None:
        return copy.deepcopy(DEFAULTS), []
    if not isinstance(raw, dict):
        return copy.deepcopy(DEFAULTS), [f"{CONFIG_PATH}: expected a mapping of sections, got {show(raw)}; "
                                         "using defaults"]
    problems: list[str] = []
    for _attempt in range(5):  # each pass drops every key it complains about; two passes are the norm
        try:
            return RepoSchema.model_validate(raw).model_dump(), problems
        except ValidationError as exc:
            targets: dict[tuple, str] = {}
            for error in exc.errors(include_url=False):
                loc = tuple(error["loc"])
                target = _target(loc, raw)
                if target not in targets:  # one warning per key (a list with three bad items: one)
                    targets[target] = _problem(error, target)
            problems.extend(targets.values())
            if not any([_drop(raw, target) for target in targets]):
                break
    return copy.deepcopy(DEFAULTS), problems + [f"{CONFIG_PATH}: could not be validated; using defaults"]


@dataclass
class RepoConfig:
    """One repository's validated config; every key present, defaults filled in."""

    values: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULTS))
    warnings: list[str] = field(default_factory=list)

    def section(self, name: str) -> dict[str, Any]:
        return self.values[name]

    @property
    def dry_run(self) -> bool:
        return bool(self.values.get("dry_run"))


def _bounded(warnings: list[str]) -> list[str]:
    if len(warnings) <= MAX_WARNINGS:
        return warnings
    return warnings[:MAX_WARNINGS] + [f"... and {len(warnings) - MAX_WARNINGS} more problems"]


def parse_repo_config(text: str | bytes | None) -> RepoConfig:
    """Parse and validate the file; ``None`` (no file) gives the defaults.

    Never raises: a file that cannot be used at all gives the defaults and exactly one warning. This is
    CPU-bound (tens of milliseconds at the size cap); the server calls it off the event loop.
    """
    if text is None or not text.strip():
        return RepoConfig()
    try:
        raw = load_yaml(text)
    except ConfigFileError as exc:
        return RepoConfig(warnings=[f"{CONFIG_PATH}: {exc}; using defaults"])
    except Exception as exc:  # noqa: BLE001 - e.g. RecursionError, a 5,000-digit integer: never stop the repo
        return RepoConfig(warnings=[f"{CONFIG_PATH}: cannot be read ({type(exc).__name__}); using defaults"])
    try:
        values, warnings = validate(raw)
    except Exception as exc:  # noqa: BLE001 - a bug in validation must not park the repository's deliveries
        return RepoConfig(warnings=[f"{CONFIG_PATH}: cannot be validated ({type(exc).__name__}); using defaults"])
    return RepoConfig(values=values, warnings=_bounded(warnings))


def config_from_contents(contents: Any) -> RepoConfig:
    """The config from the contents API's answer for ``CONFIG_PATH`` (``None``: no file).

    The size GitHub reports is checked before anything is decoded, and bytes that are not UTF-8 are
    refused rather than replaced (a file of binary garbage is one warning, not a page of mojibake).
    """
    if contents is None:
        return RepoConfig()
    if not isinstance(contents, dict) or contents.get("type", "file") != "file":
        return RepoConfig(warnings=[f"{CONFIG_PATH}: is not a file; using defaults"])
    size = contents.get("size")
    if isinstance(size, int) and size > MAX_CONFIG_BYTES:
        return RepoConfig(warnings=[f"{CONFIG_PATH}: {size} bytes, over the {MAX_CONFIG_BYTES // 1024} KB limit; "
                                    "using defaults"])
    encoded = contents.get("content") or ""
    if not isinstance(encoded, str) or len(encoded) > 2 * MAX_CONFIG_BYTES:
        return RepoConfig(warnings=[f"{CONFIG_PATH}: over the {MAX_CONFIG_BYTES // 1024} KB limit; using defaults"])
    try:
        data = base64.b64decode(encoded)
    except (binascii.Error, ValueError):
        return RepoConfig(warnings=[f"{CONFIG_PATH}: GitHub sent content that is not base64; using defaults"])
    return parse_repo_config(data)


# Parsing runs here, not on the event loop: two threads of its own, so a slow parse can neither block the
# server nor wait behind (or hold up) other work sent to the loop's default executor.
_PARSER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="repo-config")


async def read_repo_config(contents: Any, *, timeout: float | None = None) -> RepoConfig:
    """``config_from_contents`` in a worker thread, bounded by ``timeout`` (``CONFIG_PARSE_TIMEOUT``).

    Past the bound (or on any error) the repository gets the defaults and one warning; its deliveries
    are never failed by its config file.
    """
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_PARSER, config_from_contents, contents)
    try:
        return await asyncio.wait_for(future, CONFIG_PARSE_TIMEOUT if timeout is None else timeout)
    except asyncio.TimeoutError:
        return RepoConfig(warnings=[f"{CONFIG_PATH}: took over {CONFIG_PARSE_TIMEOUT if timeout is None else timeout:g} s "
                                    "to read; using defaults"])
    except Exception as exc:  # noqa: BLE001 - config_from_contents should not raise; never stop the repo anyway
        return RepoConfig(warnings=[f"{CONFIG_PATH}: cannot be read ({type(exc).__name__}); using defaults"])


# ------------------------------------------------------------------------------------ environment
# Each numeric or enumerated variable is read through one of these, so a typo stops the server at
# start with one line naming the variable, the accepted values and what was found (never a traceback).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _raw_env(env: dict[str, str], name: str) -> str:
    return (env.get(name) or "").strip()


def _range_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum:g} to {maximum:g}"
    if minimum is not None:
        return f" of {minimum:g} or more"
    if maximum is not None:
        return f" of {maximum:g} or less"
    return ""


def _int_env(env: dict[str, str], name: str, default: int, *, minimum: int | None = None,
             maximum: int | None = None) -> int:
    """``name`` as a whole number in [minimum, maximum]; unset or empty gives ``default``."""
    raw = _raw_env(env, name)
    if not raw:
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        value = None
    if value is None or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be a whole number{_range_text(minimum, maximum)}, got {show(raw)}")
    return value


def _float_env(env: dict[str, str], name: str, default: float, *, minimum: float | None = None,
               maximum: float | None = None) -> float:
    """``name`` as a finite number in [minimum, maximum]; unset or empty gives ``default``."""
    raw = _raw_env(env, name)
    if not raw:
        return default
    try:
        value: float | None = float(raw)
    except ValueError:
        value = None
    if (value is None or not math.isfinite(value) or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        raise ConfigError(f"{name} must be a number{_range_text(minimum, maximum)}, got {show(raw)}")
    return value


def choice_env(env: dict[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    """``name`` as one of ``choices`` (case-insensitive, returned as spelled in ``choices``)."""
    raw = _raw_env(env, name)
    if not raw:
        return default
    for choice in choices:
        if raw.lower() == choice.lower():
            return choice
    raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {show(raw)}")


def _bool_env(env: dict[str, str], name: str, default: bool = False) -> bool:
    """``name`` as a switch. Anything but 1/true/yes/on or 0/false/no/off is refused: ``DRY_RUN=ture``
    silently meaning "write for real" is the mistake this prevents."""
    raw = _raw_env(env, name).lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name} must be one of 1, true, yes, on, 0, false, no, off, got {show(raw)}")


def check_database_path(path: str, variable: str = "DATABASE_PATH") -> None:
    """Refuse a database path whose directory is missing or not writable, naming the path.

    SQLite needs to create the file and, in WAL mode, ``-wal``/``-shm`` files beside it; a probe file
    is the only test that also holds for root and for read-only mounts (``os.access`` is not).
    """
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise ConfigError(f"{variable}: the directory {directory} does not exist (for {path})")
    if os.path.isdir(path):
        raise ConfigError(f"{variable}: {path} is a directory, not a database file")
    probe = os.path.join(directory, f".first-responder-probe-{os.getpid()}")
    try:
        with open(probe, "w", encoding="utf-8"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot write in the directory {directory} "
                          f"({exc.strerror or type(exc).__name__})") from None
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(f"{variable}: {path} is not readable and writable")


@dataclass
class Settings:
    """Server settings from environment variables (names as in the README)."""

    app_id: str = ""
    private_key: str = ""
    webhook_secret: str = ""
    api_url: str = "https://api.github.com"
    database_path: str = "./first-responder.db"
    host: str = "0.0.0.0"
    port: int = 8080
    dry_run: bool = False
    log_level: str = "INFO"
    app_slug: str = "first-responder"
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    fallback_model: str = "gpt-4o-mini"
    local_model_path: str | None = None
    candidate_model_dir: str | None = None
    worker_concurrency: int = 8
    max_attempts: int = 5
    write_spacing: float = 1.0
    schedule: bool = True
    fallback_max_calls_per_day: int = 1000
    fallback_max_cost_per_day: float = 5.0
    # Missed-delivery recovery (bot.features.recovery): how far back, and how many per run (0: off).
    redelivery_window_hours: float = 24.0
    redelivery_max_per_run: int = 50
    health_token: str = ""            # bearer token for /health details; empty: details not served
    metrics_token: str = ""           # bearer token for /metrics with per-installation series
    health_max_queue_age: float = 900.0  # /health is not ready when the oldest pending delivery is older
    webhook_memory_budget: int = 64 * 1024 * 1024  # bytes of webhook bodies read at once, all requests
    delivery_retention_days: float = 7.0  # payloads of done deliveries are pruned after this
    worker_busy_timeout: float = 30.0     # seconds a worker write waits on another writer's lock

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, *, require_app: bool = True) -> "Settings":
        """Read and check settings; raise ConfigError naming the first variable that is wrong (a bad number
        or choice always; a missing App credential with ``require_app``)."""
        env = dict(os.environ if env is None else env)
        key = env.get("GITHUB_PRIVATE_KEY", "")
        key_path = env.get("GITHUB_PRIVATE_KEY_PATH", "")
        if not key and key_path:
            try:
                with open(key_path, encoding="utf-8") as fh:
                    key = fh.read()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not a text file"
                raise ConfigError(f"GITHUB_PRIVATE_KEY_PATH: cannot read {key_path}: {reason}") from None
        settings = cls(
            app_id=env.get("GITHUB_APP_ID", "").strip(),
            private_key=key.replace("\\n", "\n"),
            webhook_secret=env.get("GITHUB_WEBHOOK_SECRET", ""),
            api_url=(env.get("GITHUB_API_URL") or "https://api.github.com").rstrip("/"),
            database_path=env.get("DATABASE_PATH") or "./first-responder.db",
            host=env.get("HOST") or "0.0.0.0",
            port=_int_env(env, "PORT", 8080, minimum=1, maximum=65535),
            dry_run=_bool_env(env, "DRY_RUN"),
            log_level=choice_env(env, "LOG_LEVEL", "INFO", LOG_LEVELS),
            app_slug=env.get("GITHUB_APP_SLUG") or "first-responder",
            openai_base_url=env.get("OPENAI_BASE_URL") or None,
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            fallback_model=env.get("FALLBACK_MODEL") or "gpt-4o-mini",
            local_model_path=env.get("LOCAL_MODEL_PATH") or None,
            candidate_model_dir=env.get("CANDIDATE_MODEL_DIR") or None,
            write_spacing=_float_env(env, "WRITE_SPACING_SECONDS", 1.0, minimum=0, maximum=3600),
            schedule=not _bool_env(env, "DISABLE_SCHEDULER"),
            fallback_max_calls_per_day=_int_env(env, "FALLBACK_MAX_CALLS_PER_DAY", 1000, minimum=0, maximum=10**9),
            fallback_max_cost_per_day=_float_env(env, "FALLBACK_MAX_COST_PER_DAY", 5.0, minimum=0, maximum=10**9),
            redelivery_window_hours=_float_env(env, "REDELIVERY_WINDOW_HOURS", 24.0, minimum=0, maximum=72),
            redelivery_max_per_run=_int_env(env, "REDELIVERY_MAX_PER_RUN", 50, minimum=0, maximum=1000),
            health_token=env.get("HEALTH_TOKEN", ""),
            metrics_token=env.get("METRICS_TOKEN", ""),
            health_max_queue_age=_float_env(env, "HEALTH_MAX_QUEUE_AGE_SECONDS", 900.0, minimum=10, maximum=7 * 86400),
            webhook_memory_budget=int(_float_env(env, "WEBHOOK_MEMORY_BUDGET_MB", 64.0, minimum=26,
                                                 maximum=65536) * 1024 * 1024),
            delivery_retention_days=_float_env(env, "DELIVERY_RETENTION_DAYS", 7.0, minimum=0.001, maximum=3650),
            worker_busy_timeout=_float_env(env, "WORKER_BUSY_TIMEOUT_SECONDS", 30.0, minimum=0.01, maximum=600),
        )
        if not settings.api_url.startswith(("http://", "https://")):
            raise ConfigError(f"GITHUB_API_URL must start with https:// (or http://), got {show(settings.api_url)}")
        if require_app:
            settings.check()
        return settings

    def check(self) -> None:
        """Refuse to start without what GitHub needs; name the variable."""
        if not self.app_id:
            raise ConfigError("GITHUB_APP_ID is not set")
        if not self.app_id.isdigit():
            raise ConfigError("GITHUB_APP_ID must be the numeric App ID")
        if not self.private_key:
            raise ConfigError("GITHUB_PRIVATE_KEY or GITHUB_PRIVATE_KEY_PATH is not set")
        if not self.webhook_secret:
            raise ConfigError("GITHUB_WEBHOOK_SECRET is not set")
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            load_pem_private_key(self.private_key.encode(), password=None)
        except (ValueError, TypeError):
            raise ConfigError("GITHUB_PRIVATE_KEY does not parse as a PEM private key") from None
        self.check_local_model()

    def check_local_model(self) -> None:
        """A LOCAL_MODEL_PATH that names no readable file is an operator mistake: say so at start, instead
        of failing every delivery that needs the model later (the model itself loads lazily)."""
        path = self.local_model_path
        if not path:
            return
        if not os.path.isfile(path):
            raise ConfigError(f"LOCAL_MODEL_PATH: no such file: {path}")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"LOCAL_MODEL_PATH: not readable: {path}")


def cli_settings(command: str) -> "Settings | None":
    """Settings for a CLI command that talks to GitHub, or None after saying (on stderr) which variable
    is missing or wrong, or why the database cannot be used."""
    import sys

    try:
        settings = Settings.from_env()
        check_database_path(settings.database_path)
    except ConfigError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None
    return settings
