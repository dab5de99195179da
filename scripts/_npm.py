"""Shared by the update scripts: read one JSON file out of an npm package without installing it."""
from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any


def packed_json(package: str, member_path: str, version: str | None, workdir: Path) -> tuple[Any, str]:
    """`npm pack` ``package`` into ``workdir``; return (the parsed ``member_path``, exact package version)."""
    spec_name = f"{package}@{version}" if version else package
    result = subprocess.run(["npm", "pack", spec_name, "--json", "--silent"], cwd=workdir,
                            check=True, capture_output=True, text=True)
    packed = json.loads(result.stdout)[0]
    with tarfile.open(workdir / packed["filename"]) as tar:
        member = tar.extractfile(member_path)
        assert member is not None, member_path
        return json.load(member), packed["version"]
