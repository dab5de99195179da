"""What every handler gets besides the event: where it is, what it may do, and with what."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from bot.config import RepoConfig, Settings


@dataclass
class Context:
    db: sqlite_utils.Database
    settings: Settings
    repo: str
    installation_id: int
    delivery_id: str
    config: RepoConfig = field(default_factory=RepoConfig)
    gh: Any = None
    models: Any = None
    services: Any = None

    @property
    def dry_run(self) -> bool:
        return self.settings.dry_run or self.config.dry_run

    @property
    def owner(self) -> str:
        return self.repo.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.repo.split("/", 1)[1]

    def url(self, suffix: str = "") -> str:
        """A repo-scoped API path, e.g. ``ctx.url('/issues/3')`` -> ``/repos/o/r/issues/3``."""
        return f"/repos/{self.repo}{suffix}"
