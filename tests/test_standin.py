"""The GitHub stand-in itself: it must reject what GitHub's spec rejects and behave like GitHub elsewhere.

Every other test trusts the stand-in, so it gets its own tests, driven through gidgethub over real HTTP.
"""
from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import json
import time
from pathlib import Path

import aiohttp
import jwt
import pytest
from gidgethub import BadRequest, GitHubBroken, HTTPException
from gidgethub.aiohttp import GitHubAPI
from gidgethub.apps import get_installation_access_token

from tests.standin import GitHubStandIn, generate_app_key, load_spec

REPO = "octo-org/hello"
APP_ID = 4242
WEBHOOKS = Path(__file__).parent / "data" / "webhooks"


@functools.lru_cache(maxsize=None)
def app_key() -> tuple[str, str]:
    return generate_app_key()


@pytest.fixture
async def hub():
    standin = GitHubStandIn(app_key()[1], app_id=APP_ID)
    standin.add_installation(1, [REPO])
    async with standin:
        yield standin
    assert standin.response_violations == []


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def gh(hub, session) -> GitHubAPI:
    return GitHubAPI(session, "first-responder-tests", oauth_token=hub.issue_token(1), base_url=hub.url)


def jwt_for(app_id: int = APP_ID, key: str | None = None, expires_in: int = 540) -> str:
    now = int(time.time())
    return jwt.encode({"iat": now - 60, "exp": now + expires_in, "iss": str(app_id)}, key or app_key()[0],
                      algorithm="RS256")


# ------------------------------------------------------------------------------------- spec checks
async def test_patch_with_bogus_state_reason_is_a_violation_and_422(hub, gh):
    hub.add_issue(REPO, "crash on start")
    with pytest.raises(BadRequest) as raised:
        await gh.patch(f"/repos/{REPO}/issues/1", data={"state": "closed", "state_reason": "bogus"})
    assert raised.value.status_code == 422
    assert [(v["method"], v["path"]) for v in hub.violations] == [("PATCH", f"/repos/{REPO}/issues/1")]
    assert "bogus" in hub.violations[0]["error"]
    assert hub.issue(REPO, 1)["state"] == "open"


async def test_nullable_enum_accepts_null_state_reason(hub, gh):
    # GitHub's spec has `nullable: true` beside an enum without null; the loader patches it.
    hub.add_issue(REPO, "crash on start")
    issue = await gh.patch(f"/repos/{REPO}/issues/1", data={"state": "closed", "state_reason": None})
    assert issue["state"] == "closed" and issue["state_reason"] == "completed"
    assert hub.violations == []


async def test_missing_required_body_field_and_unknown_endpoint_are_violations(hub, gh):
    hub.add_issue(REPO, "crash on start")
    with pytest.raises(BadRequest):
        await gh.post(f"/repos/{REPO}/issues/1/comments", data={"text": "hi"})
    with pytest.raises(BadRequest) as raised:
        await gh.getitem(f"/repos/{REPO}/pulls")
    assert raised.value.status_code == 404
    with pytest.raises(BadRequest):  # bare list: the current spec only allows {"labels": [...]}
        await gh.post(f"/repos/{REPO}/issues/1/labels", data=["bug"])
    assert len(hub.violations) == 3
    assert hub.comments(REPO, 1) == [] and hub.issue(REPO, 1)["labels"] == []


async def test_valid_writes_change_state_and_record_events(hub, gh):
    hub.now = lambda: dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    hub.add_label(REPO, "bug", "d73a4a")
    hub.add_issue(REPO, "crash on start", body="Traceback ...", created_at="2024-04-01T10:00:00Z")
    comment = await gh.post(f"/repos/{REPO}/issues/1/comments", data={"body": "Thanks! <!-- fr:triage -->"})
    assert comment["user"] == {**comment["user"], "login": "first-responder[bot]", "type": "Bot"}
    edited = await gh.patch(f"/repos/{REPO}/issues/comments/{comment['id']}", data={"body": "edited"})
    assert edited["body"] == "edited"
    labels = await gh.post(f"/repos/{REPO}/issues/1/labels", data={"labels": ["bug", "needs-info"]})
    assert [label["name"] for label in labels] == ["bug", "needs-info"]
    await gh.delete(f"/repos/{REPO}/issues/1/labels/needs-info")
    await gh.post(f"/repos/{REPO}/issues/1/reactions", data={"content": "eyes"})
    issue = await gh.patch(f"/repos/{REPO}/issues/1", data={"state": "closed", "state_reason": "not_planned"})
    assert (issue["state"], issue["state_reason"], issue["closed_at"]) == ("closed", "not_planned",
                                                                          "2024-05-01T12:00:00Z")
    assert issue["reactions"]["eyes"] == 1 and issue["comments"] == 1
    events = [(e["event"], (e.get("label") or {}).get("name")) async for e in gh.getiter(f"/repos/{REPO}/issues/1/events")]
    assert events == [("labeled", "bug"), ("labeled", "needs-info"), ("unlabeled", "needs-info"), ("closed", None)]
    timeline = [e["event"] async for e in gh.getiter(f"/repos/{REPO}/issues/1/timeline")]
    assert timeline[0] == "commented" and timeline[-1] == "closed"
    await gh.delete(f"/repos/{REPO}/issues/comments/{comment['id']}")
    assert hub.comments(REPO, 1) == [] and hub.issue(REPO, 1)["comments"] == 0
    assert [w["method"] for w in hub.writes()] == ["POST", "PATCH", "POST", "DELETE", "POST", "PATCH", "DELETE"]
    assert hub.violations == []


async def test_create_issue_labels_assignees_and_permissions(hub, gh):
    hub.set_permission(REPO, "maint", "maintain")
    created = await gh.post(f"/repos/{REPO}/issues", data={"title": "Weekly digest", "labels": ["digest"],
                                                          "assignees": ["maint", "stranger"]})
    assert created["number"] == 1 and [a["login"] for a in created["assignees"]] == ["maint"]
    permission = await gh.getitem(f"/repos/{REPO}/collaborators/maint/permission")
    assert (permission["permission"], permission["role_name"]) == ("write", "maintain")
    stranger = await gh.getitem(f"/repos/{REPO}/collaborators/stranger/permission")
    assert stranger["permission"] == "none"
    await gh.getitem(f"/repos/{REPO}/assignees/maint")  # 204: maint can be assigned
    with pytest.raises(BadRequest):
        await gh.getitem(f"/repos/{REPO}/assignees/stranger")
    with pytest.raises(BadRequest) as raised:
        await gh.post(f"/repos/{REPO}/labels", data={"name": "Digest", "color": "ededed"})
    assert raised.value.status_code == 422  # already exists (names are case-insensitive)
    assert (await gh.getitem(f"/repos/{REPO}/labels/digest"))["name"] == "digest"
    hub.violations.clear()  # the 404 above is GitHub's answer, not a spec violation, but be explicit
    assert hub.violations == []


async def test_contents_file_directory_and_missing(hub, gh):
    hub.put_file(REPO, ".github/first-responder.yml", "triage:\n  enabled: false\n")
    file = await gh.getitem(f"/repos/{REPO}/contents/.github/first-responder.yml")
    assert base64.b64decode(file["content"]).decode() == "triage:\n  enabled: false\n"
    listing = await gh.getitem(f"/repos/{REPO}/contents/.github")
    assert [(e["name"], e["type"]) for e in listing] == [("first-responder.yml", "file")]
    with pytest.raises(BadRequest) as raised:
        await gh.getitem(f"/repos/{REPO}/contents/.github/missing.yml")
    assert raised.value.status_code == 404


# --------------------------------------------------------------------------------------------- auth
async def test_token_exchange_with_a_valid_jwt(hub, session):
    app_gh = GitHubAPI(session, "first-responder-tests", base_url=hub.url)
    answer = await get_installation_access_token(app_gh, installation_id="1", app_id=str(APP_ID),
                                                 private_key=app_key()[0])
    assert answer["token"].startswith("ghs_")
    expires = dt.datetime.fromisoformat(answer["expires_at"].replace("Z", "+00:00"))
    assert 3500 < (expires - dt.datetime.now(dt.timezone.utc)).total_seconds() <= 3600
    gh = GitHubAPI(session, "first-responder-tests", oauth_token=answer["token"], base_url=hub.url)
    assert (await gh.getitem(f"/repos/{REPO}"))["full_name"] == REPO
    installations = await app_gh.getitem("/app/installations", jwt=jwt_for())
    assert [i["id"] for i in installations] == [1]
    assert hub.violations == []


@pytest.mark.parametrize("token", [
    pytest.param(lambda: jwt_for(key=generate_app_key()[0]), id="signed-by-another-key"),
    pytest.param(lambda: jwt_for(app_id=APP_ID + 1), id="wrong-issuer"),
    pytest.param(lambda: jwt_for(expires_in=3600), id="exp-too-far"),
    pytest.param(lambda: "not-a-jwt", id="garbage"),
])
async def test_bad_jwt_gets_401(hub, session, token):
    app_gh = GitHubAPI(session, "first-responder-tests", base_url=hub.url)
    with pytest.raises(BadRequest) as raised:
        await app_gh.post("/app/installations/1/access_tokens", data=b"", jwt=token())
    assert raised.value.status_code == 401


async def test_installation_token_checks(hub, session):
    def client(token: str | None) -> GitHubAPI:
        return GitHubAPI(session, "first-responder-tests", oauth_token=token, base_url=hub.url)

    for token in (None, "ghs_unknown", jwt_for()):
        with pytest.raises(BadRequest) as raised:
            await client(token).getitem(f"/repos/{REPO}")
        assert raised.value.status_code == 401
    token = hub.issue_token(1)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"}
    async with session.get(f"{hub.url}/repos/{REPO}", headers=headers) as response:
        assert response.status == 200  # "Bearer <installation token>" works too
    hub.expire_tokens()
    with pytest.raises(BadRequest) as raised:
        await client(token).getitem(f"/repos/{REPO}")
    assert raised.value.status_code == 401
    fresh = hub.issue_token(1)
    hub.revoke_token(fresh)
    with pytest.raises(BadRequest):
        await client(fresh).getitem(f"/repos/{REPO}")
    hub.add_installation(2, ["other-org/private"])
    with pytest.raises(BadRequest) as raised:  # installation 1 cannot see installation 2's repos
        await client(hub.issue_token(1)).getitem("/repos/other-org/private")
    assert raised.value.status_code == 404
    assert hub.violations == []


# ----------------------------------------------------------------------------------- GitHub habits
async def test_pagination_link_headers_and_etag(hub, gh, session):
    for n in range(5):
        hub.add_issue(REPO, f"issue {n}", created_at=f"2024-01-0{n + 1}T00:00:00Z")
    headers = {"Authorization": f"token {hub.issue_token(1)}"}
    async with session.get(f"{hub.url}/repos/{REPO}/issues?per_page=2&page=2", headers=headers) as response:
        link = response.headers["Link"]
        etag = response.headers["ETag"]
        assert [i["number"] for i in await response.json()] == [3, 2]
        for name in ("limit", "remaining", "reset", "used"):
            assert response.headers[f"x-ratelimit-{name}"].isdigit()
    assert 'page=3>; rel="next"' in link and 'page=1>; rel="prev"' in link and 'page=3>; rel="last"' in link
    async with session.get(f"{hub.url}/repos/{REPO}/issues?per_page=2&page=2",
                           headers={**headers, "If-None-Match": etag}) as response:
        assert response.status == 304
    numbers = [i["number"] async for i in gh.getiter(f"/repos/{REPO}/issues?per_page=2&sort=created&direction=asc")]
    assert numbers == [1, 2, 3, 4, 5]
    assert hub.violations == []


async def test_search_qualifiers(hub, gh):
    hub.add_issue(REPO, "old question", labels=["question"], created_at="2024-01-01T00:00:00Z",
                  updated_at="2024-01-10T00:00:00Z")
    hub.add_issue(REPO, "needs info", labels=["needs info"], created_at="2024-02-01T00:00:00Z", assignees=["alice"])
    hub.add_issue(REPO, "done", state="closed", created_at="2024-03-01T00:00:00Z",
                  closed_at="2024-03-05T00:00:00Z")
    hub.add_repo("elsewhere/repo")
    hub.add_issue("elsewhere/repo", "invisible")

    async def numbers(q: str, **params) -> list[int]:
        result = await gh.getitem("/search/issues{?q,sort,order}", {"q": q, **params})
        assert result["total_count"] == len(result["items"])
        return [i["number"] for i in result["items"]]

    base = f"repo:{REPO} is:issue"
    assert await numbers(f"{base} is:open", sort="created", order="asc") == [1, 2]
    assert await numbers(f"{base} state:closed") == [3]
    assert await numbers(f'{base} label:"needs info"') == [2]
    assert await numbers(f"{base} -label:question is:open") == [2]
    assert await numbers(f"{base} updated:<2024-01-11") == [1]
    assert await numbers(f"{base} created:>=2024-02-01", sort="created", order="asc") == [2, 3]
    assert await numbers(f"{base} created:2024-01-01..2024-02-01", sort="created", order="asc") == [1, 2]
    assert await numbers(f"{base} created:>2024-02-01T00:00:00Z") == [3]
    assert await numbers(f"{base} closed:>=2024-03-05") == [3]
    assert await numbers(f"{base} no:assignee is:open") == [1]
    assert await numbers(f"{base} question") == [1]
    assert await numbers("is:issue invisible") == []  # not installed there
    with pytest.raises(BadRequest):
        await numbers(f"{base} reviewed-by:bob")
    assert len(hub.violations) == 1
    hub.violations.clear()


async def test_fault_injection_and_rate_limit(hub, gh):
    hub.add_issue(REPO, "flaky")
    hub.fail_next("POST", r"/issues/\d+/comments$", 502)
    with pytest.raises(GitHubBroken):
        await gh.post(f"/repos/{REPO}/issues/1/comments", data={"body": "hi"})
    await gh.post(f"/repos/{REPO}/issues/1/comments", data={"body": "hi"})
    assert len(hub.comments(REPO, 1)) == 1
    assert [w["status"] for w in hub.writes()] == [502, 201] and len(hub.writes(ok_only=True)) == 1

    hub.fail_next("GET", r"/issues/1$", 403, headers={"Retry-After": "1"}, times=2)
    for _ in range(2):
        with pytest.raises(HTTPException) as raised:
            await gh.getitem(f"/repos/{REPO}/issues/1")
        assert raised.value.status_code == 403
        assert "secondary rate limit" in raised.value.args[0]
    assert (await gh.getitem(f"/repos/{REPO}/issues/1"))["title"] == "flaky"

    hub.set_rate_limit(remaining=1, reset_in=60)
    await gh.getitem(f"/repos/{REPO}/issues/1")
    assert gh.rate_limit.remaining == 0
    with pytest.raises(HTTPException) as raised:
        await gh.getitem(f"/repos/{REPO}/issues/1")
    assert raised.value.status_code == 403
    assert hub.violations == []


async def test_api_root_with_a_path_prefix_like_enterprise_server(session):
    async with GitHubStandIn(app_key()[1], app_id=APP_ID, prefix="/api/v3") as hub:
        hub.add_installation(1, [REPO])
        hub.add_issue(REPO, "on GHES")
        gh = GitHubAPI(session, "first-responder-tests", oauth_token=hub.issue_token(1), base_url=hub.url)
        assert (await gh.getitem(f"/repos/{REPO}/issues/1"))["title"] == "on GHES"
        assert hub.requests[-1]["path"] == f"/repos/{REPO}/issues/1"
        async with session.get(f"http://127.0.0.1:{hub.port}/repos/{REPO}") as response:
            assert response.status == 404  # outside the API root
        assert len(hub.violations) == 1


def test_spec_loads_patched_and_routes_every_operation():
    spec = load_spec()
    templates = {template for _, template, _ in spec.routes}
    assert "/repos/{owner}/{repo}/issues/{issue_number}" in templates
    from tests.standin import _OPERATIONS
    for method, template in _OPERATIONS:
        assert template in templates, template


# --------------------------------------------------------------------------------------- webhooks
def test_github_webhook_signature_test_vector():
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
    digest = hmac.new(b"It's a Secret to Everybody", b"Hello, World!", hashlib.sha256).hexdigest()
    assert f"sha256={digest}" == "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_webhook_examples_cover_routed_events_with_installation():
    expected = {"ping.json"} | {f"issues.{a}.json" for a in (
        "opened", "edited", "closed", "reopened", "labeled", "unlabeled", "deleted", "transferred", "assigned")} | {
        f"issue_comment.{a}.json" for a in ("created", "edited", "deleted")} | {
        "installation.created.json", "installation.deleted.json", "installation_repositories.added.json",
        "installation_repositories.removed.json"}
    assert {p.name for p in WEBHOOKS.glob("*.json")} == expected
    for path in WEBHOOKS.glob("*.json"):
        payload = json.loads(path.read_text())
        assert payload["installation"]["id"] == 1, path.name
        if "." in path.stem:
            assert payload["action"] == path.stem.split(".", 1)[1], path.name
    closed = json.loads((WEBHOOKS / "issues.closed.json").read_text())
    assert closed["issue"]["state"] == "closed"
