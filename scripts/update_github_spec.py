"""Regenerate tests/data/github-openapi.json from GitHub's official REST description.

The GitHub stand-in (tests/standin.py) validates every request the bot makes against GitHub's own OpenAPI
description, published on npm as `@octokit/openapi` (file `generated/api.github.com.json`, ~13 MB). We
commit only the operations the bot uses plus every `#/components/...` they reach, so the copy is small,
self-contained and reviewable. Run it when the bot starts calling a new endpoint (add it to OPERATIONS):

    python scripts/update_github_spec.py [--version 23.0.2]

Needs `npm` on PATH; the package is unpacked in a temporary directory, never inside the repository.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _npm import packed_json  # scripts/_npm.py, beside this script

PACKAGE = "@octokit/openapi"
SPEC_IN_PACKAGE = "package/generated/api.github.com.json"
OUTPUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "github-openapi.json"

# The operations the bot (and the stand-in) use: path -> methods.
OPERATIONS: dict[str, tuple[str, ...]] = {
    "/app": ("get",),
    "/app/installations": ("get",),
    "/app/installations/{installation_id}/access_tokens": ("post",),
    "/app/hook/deliveries": ("get",),
    "/app/hook/deliveries/{delivery_id}/attempts": ("post",),
    "/installation/repositories": ("get",),
    "/repos/{owner}/{repo}": ("get",),
    "/repos/{owner}/{repo}/contents/{path}": ("get",),
    "/repos/{owner}/{repo}/assignees/{assignee}": ("get",),
    "/repos/{owner}/{repo}/collaborators/{username}/permission": ("get",),
    "/repos/{owner}/{repo}/labels": ("get", "post"),
    "/repos/{owner}/{repo}/labels/{name}": ("get",),
    "/repos/{owner}/{repo}/issues": ("get", "post"),
    "/repos/{owner}/{repo}/issues/{issue_number}": ("get", "patch"),
    "/repos/{owner}/{repo}/issues/{issue_number}/comments": ("get", "post"),
    "/repos/{owner}/{repo}/issues/{issue_number}/labels": ("get", "post", "put"),
    "/repos/{owner}/{repo}/issues/{issue_number}/labels/{name}": ("delete",),
    "/repos/{owner}/{repo}/issues/{issue_number}/assignees": ("post", "delete"),
    "/repos/{owner}/{repo}/issues/{issue_number}/reactions": ("get", "post"),
    "/repos/{owner}/{repo}/issues/{issue_number}/timeline": ("get",),
    "/repos/{owner}/{repo}/issues/{issue_number}/events": ("get",),
    "/repos/{owner}/{repo}/issues/comments/{comment_id}": ("get", "patch", "delete"),
    "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions": ("get", "post"),
    "/search/issues": ("get",),
}

# Prose and samples carry no validation meaning and are most of the file's weight.
_ANNOTATIONS = {"description", "summary", "example", "examples", "externalDocs", "tags", "x-github",
                "x-githubEnterpriseOnly", "x-multi-segment", "title"}


def _strip(node: Any, *, in_properties: bool = False) -> Any:
    """Drop annotation keys, except where a key is a property *name* (a schema may have `title`)."""
    if isinstance(node, list):
        return [_strip(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if not in_properties and key in _ANNOTATIONS:
            continue
        out[key] = _strip(value, in_properties=(key == "properties" and not in_properties))
    return out


def _restore_response_descriptions(stripped: dict, original: dict) -> None:
    """OpenAPI 3.0 requires `description` on every Response object, so those (short) ones stay."""
    for status, response in stripped.items():
        if "$ref" not in response:
            response["description"] = original[status].get("description", "")


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref)
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for item in node:
            _refs(item, found)


def _lookup(spec: dict, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = spec
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def trim(spec: dict) -> dict:
    """Keep OPERATIONS and the transitive closure of components they reference."""
    paths: dict[str, dict] = {}
    for path, methods in OPERATIONS.items():
        item = spec["paths"][path]
        kept = {m: _strip(item[m]) for m in methods}
        for method in methods:
            _restore_response_descriptions(kept[method]["responses"], item[method]["responses"])
        if "parameters" in item:
            kept["parameters"] = _strip(item["parameters"])
        paths[path] = kept

    components: dict[str, dict] = {}
    pending: set[str] = set()
    _refs(paths, pending)
    seen: set[str] = set()
    while pending:
        ref = pending.pop()
        if ref in seen:
            continue
        seen.add(ref)
        _, _, section, name = ref.split("/", 3)
        original = _lookup(spec, ref)
        node = _strip(original)
        if section == "responses":
            _restore_response_descriptions({name: node}, {name: original})
        components.setdefault(section, {})[name] = node
        _refs(node, pending)

    return {
        "openapi": spec["openapi"],
        "info": {"title": spec["info"]["title"], "version": spec["info"]["version"],
                 "x-source": f"npm {PACKAGE} generated/api.github.com.json, trimmed by scripts/update_github_spec.py"},
        "servers": spec["servers"],
        "paths": paths,
        "components": {section: dict(sorted(items.items())) for section, items in sorted(components.items())},
    }


def fetch(version: str | None, workdir: Path) -> tuple[dict, str]:
    """`npm pack` the package into workdir and return (spec, exact package version)."""
    return packed_json(PACKAGE, SPEC_IN_PACKAGE, version, workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", help="npm version of @octokit/openapi (default: latest)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="octokit-openapi-") as tmp:
        spec, version = fetch(args.version, Path(tmp))
    trimmed = trim(spec)
    trimmed["info"]["x-source"] = f"npm {PACKAGE}@{version} generated/api.github.com.json, " \
                                  "trimmed by scripts/update_github_spec.py"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(trimmed, indent=1, sort_keys=False) + "\n")
    count = sum(len(v) for v in trimmed["components"].values())
    print(f"wrote {args.output} ({args.output.stat().st_size // 1024} KiB, "
          f"{sum(len(m) for m in OPERATIONS.values())} operations, {count} components) from {PACKAGE}@{version}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
