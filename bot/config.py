"""Settings from the environment, and each repository's `.github/first-responder.yml`.

Each feature owns one section of the repo config (same name as its module and command, as in
triagebot). Validation never refuses a whole file: a wrong key or type is named in a warning and that
key falls back to its default, so one typo cannot switch the bot off or on by surprise.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

CONFIG_PATH = ".github/first-responder.yml"

DEFAULTS: dict[str, Any] = {
    "dry_run": False,
    "triage": {
        "enabled": True,
        "comment": True,
        "summary": "extractive",
        "threshold": 0.93,
        "labels": {
            "bug": "bug",
            "feature": "enhancement",
            "question": "question",
            "docs": "documentation",
            "other": "",
        },
        "needs_triage_label": "needs-triage",
        "protected_labels": ["security", "priority*"],
        "ask_for_missing": True,
        "canary": 0,
        "candidate": {
            "mode": "off",
            "threshold": None,
            "model_path": "",
        },
    },
    "fallback": {
        "enabled": True,
        "max_calls_per_day": 200,
        "max_cost_per_day": 1.0,
        "price_per_million_input": 0.15,
        "price_per_million_output": 0.6,
    },
    "duplicates": {
        "enabled": True,
        "threshold": None,
        "max_candidates": 3,
    },
    "answers": {
        "enabled": True,
    },
    "lifecycle": {
        "max_writes_per_run": 30,
        "needs_info": {
            "enabled": True,
            "label": "needs-info",
            "ping_after_days": 7,
            "close_after_days": 7,
        },
        "stale": {
            "enabled": False,
            "label": "stale",
            "days_until_stale": 60,
            "days_until_close": 14,
            "only_waiting_on_author": True,
            "close": True,
            "exempt_labels": ["pinned", "security"],
            "exempt_milestones": True,
            "exempt_projects": True,
            "exempt_assignees": True,
        },
    },
    "commands": {
        "enabled": True,
        "disabled": [],
        "open_labels": [],
        "protected_labels": ["security", "priority*"],
        "self_assign": True,
        "permissions": {},
    },
    "digest": {
        "enabled": False,
        "day": "monday",
        "hour": 9,
        "timezone": "UTC",
        "top": 10,
        "close_previous": True,
        "label": "digest",
        "exclude_labels": [],
    },
}


class ConfigError(Exception):
    """The environment lacks something the server cannot start without."""


def _check(value: Any, default: Any, path: str, warnings: list[str]) -> Any:
    """Return ``value`` if it has the default's shape, else the default (with a warning)."""
    if isinstance(default, dict):
        if not isinstance(value, dict):
            warnings.append(f"{path}: expected a mapping, got {type(value).__name__}; using defaults")
            return copy.deepcopy(default)
        out = copy.deepcopy(default)
        for key, sub in value.items():
            sub_path = f"{path}.{key}" if path else str(key)
            if key not in default:
                if path in ("triage.labels", "commands.permissions"):
                    out[key] = sub  # open mappings: kind names / command names
                    continue
                warnings.append(f"{sub_path}: unknown key, ignored")
                continue
            out[key] = _check(sub, default[key], sub_path, warnings)
        return out
    if default is None:
        if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        warnings.append(f"{path}: expected a number or null, got {type(value).__name__}; using default")
        return default
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        warnings.append(f"{path}: expected a list of strings; using default")
        return copy.deepcopy(default)
    warnings.append(
        f"{path}: expected {type(default).__name__}, got {type(value).__name__} ({value!r}); using default"
    )
    return copy.deepcopy(default)


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


def parse_repo_config(text: str | None) -> RepoConfig:
    """Parse and validate YAML text; ``None`` (no file) gives the defaults."""
    if text is None or not text.strip():
        return RepoConfig()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else "parse error"
        return RepoConfig(warnings=[f"{CONFIG_PATH}: not valid YAML ({first_line}); using defaults"])
    if raw is None:
        return RepoConfig()
    warnings: list[str] = []
    values = _check(raw, DEFAULTS, "", warnings)
    _check_candidate(values["triage"], warnings)
    return RepoConfig(values=values, warnings=warnings)


CANDIDATE_MODES = ("off", "shadow", "canary")


def _check_candidate(triage: dict[str, Any], warnings: list[str]) -> None:
    """Values the shape check cannot judge: the candidate's mode, its threshold and the canary share."""
    candidate = triage["candidate"]
    if candidate["mode"] not in CANDIDATE_MODES:
        warnings.append(f"triage.candidate.mode: expected one of {', '.join(CANDIDATE_MODES)}, got "
                        f"{candidate['mode']!r}; using 'off'")
        candidate["mode"] = "off"
    threshold = candidate["threshold"]
    if threshold is not None and not 0 <= threshold <= 1:
        warnings.append(f"triage.candidate.threshold: {threshold} is not between 0 and 1; using null")
        candidate["threshold"] = None
    if not 0 <= triage["canary"] <= 100:
        warnings.append(f"triage.canary: {triage['canary']} is not a percentage (0-100); using 0")
        triage["canary"] = 0


def _positive(env: dict[str, str], name: str, default: float) -> float:
    """A positive number from the environment, or ConfigError naming the variable."""
    text = (env.get(name) or "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name} must be a positive number, got {text[:40]!r}")
    return value


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


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
    delivery_retention_days: float = 7.0  # payloads of done deliveries are pruned after this
    worker_busy_timeout: float = 30.0     # seconds a worker write waits on another writer's lock

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, *, require_app: bool = True) -> "Settings":
        """Read settings; with ``require_app`` raise ConfigError naming the first missing variable."""
        env = dict(os.environ if env is None else env)
        key = env.get("GITHUB_PRIVATE_KEY", "")
        key_path = env.get("GITHUB_PRIVATE_KEY_PATH", "")
        if not key and key_path:
            try:
                with open(key_path, encoding="utf-8") as fh:
                    key = fh.read()
            except OSError as exc:
                raise ConfigError(f"GITHUB_PRIVATE_KEY_PATH: cannot read {key_path}: {exc.strerror}") from None
        settings = cls(
            app_id=env.get("GITHUB_APP_ID", ""),
            private_key=key.replace("\\n", "\n"),
            webhook_secret=env.get("GITHUB_WEBHOOK_SECRET", ""),
            api_url=(env.get("GITHUB_API_URL") or "https://api.github.com").rstrip("/"),
            database_path=env.get("DATABASE_PATH") or "./first-responder.db",
            host=env.get("HOST") or "0.0.0.0",
            port=int(env.get("PORT") or 8080),
            dry_run=_flag(env.get("DRY_RUN")),
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
            app_slug=env.get("GITHUB_APP_SLUG") or "first-responder",
            openai_base_url=env.get("OPENAI_BASE_URL") or None,
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            fallback_model=env.get("FALLBACK_MODEL") or "gpt-4o-mini",
            local_model_path=env.get("LOCAL_MODEL_PATH") or None,
            candidate_model_dir=env.get("CANDIDATE_MODEL_DIR") or None,
            write_spacing=float(env.get("WRITE_SPACING_SECONDS") or 1.0),
            schedule=not _flag(env.get("DISABLE_SCHEDULER")),
            delivery_retention_days=_positive(env, "DELIVERY_RETENTION_DAYS", 7.0),
            worker_busy_timeout=_positive(env, "WORKER_BUSY_TIMEOUT_SECONDS", 30.0),
        )
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
    """Settings for a CLI command that talks to GitHub, or None after saying which variable is missing."""
    import sys

    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None
