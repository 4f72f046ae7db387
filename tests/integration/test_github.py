"""GitHubReporter against FakeGitHub over loopback, every answer checked against GitHub's schemas.

The fake serves the operations of ``tests/fixtures/github/github-rest-subset.json``; after each
test, every JSON answer it gave is validated against that operation's response schema for the
status it answered (OpenAPI 3.0 turned into JSON Schema: ``nullable`` becomes a type union,
``$ref`` resolves into ``#/components``; ``uri`` and ``date-time`` formats are checked). Sleeps
and the clock are injected: nothing here waits for real, except one client timeout of 0.2 s.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jsonschema
import pytest

from controller import __version__
from controller.adapters.github.client import COMMENT_LIMIT, DESCRIPTION_LIMIT, GitHubReporter
from controller.errors import PermanentError, TransientError
from controller.testing import FakeGitHub, RecordedRequest, blob_sha
from tests.conftest import ROOT
from tests.integration.test_webhook import to_json_schema

SPEC = ROOT / "tests" / "fixtures" / "github" / "github-rest-subset.json"
TOKEN = "ghp_test0123456789abcdefTOKEN"
REPO = "octo-org/specs"
MARKER = "<!-- mdc:plan -->"
NOW = 1_750_000_000.0
SHA = "0123456789abcdef0123456789abcdef01234567"

# -- GitHub's description as JSON Schema ---------------------------------------------------


@cache
def description() -> dict[str, Any]:
    return dict(json.loads(SPEC.read_text()))


@cache
def components() -> dict[str, Any]:
    parts = description()["components"]
    return {key: to_json_schema(parts[key]) for key in ("schemas", "responses", "headers")}


FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("uri")
def _is_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    return bool(parts.scheme in {"http", "https"} and parts.netloc)


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return "T" in value and datetime.fromisoformat(value.replace("Z", "+00:00")) is not None


@cache
def operations() -> list[tuple[re.Pattern[str], str, dict[str, Any]]]:
    """(path pattern, method, operation); multi-segment parameters may hold '/'."""
    found = []
    for template, item in description()["paths"].items():
        pattern = re.sub(
            r"\{(\w+)\}",
            lambda m: "(.+)" if m[1] in {"ref", "commit_sha", "path", "sha"} else "([^/]+)",
            template,
        )
        for method, operation in item.items():
            found.append((re.compile(f"^{pattern}$"), method.upper(), operation))
    return found


def operation_for(method: str, path: str) -> dict[str, Any]:
    for pattern, verb, operation in operations():
        if verb == method and pattern.match(path):
            return operation
    raise AssertionError(f"{method} {path} is not in GitHub's description")


@cache
def validator(schema_json: str) -> jsonschema.Draft4Validator:
    schema = json.loads(schema_json)
    return jsonschema.Draft4Validator(
        {"components": components(), **schema}, format_checker=FORMATS
    )


def response_schema(record: RecordedRequest) -> dict[str, Any] | None:
    """The schema GitHub declares for this answer; GitHub's error shapes for statuses it
    answers on any operation (401, rate limits, 5xx ...)."""
    declared = operation_for(record.method, record.path)["responses"].get(str(record.status))
    if declared is None:
        assert record.status >= 400, f"{record.method} {record.path}: {record.status} undeclared"
        if record.status == 422:
            return {"$ref": "#/components/schemas/validation-error"}
        if record.status == 503:
            return dict(
                components()["responses"]["service_unavailable"]["content"]["application/json"][
                    "schema"
                ]
            )
        return {"$ref": "#/components/schemas/basic-error"}
    if "$ref" in declared:
        declared = description()["components"]["responses"][declared["$ref"].rsplit("/", 1)[1]]
    content = declared.get("content", {}).get("application/json")
    if content is None:
        return None
    schema = dict(content["schema"])
    if record.status == 409 and "oneOf" in schema:
        # contents' 409 is oneOf two schemas that require nothing, so every object matches
        # both and none can pass; GitHub's own answers would fail it too. Read it as anyOf.
        schema["anyOf"] = schema.pop("oneOf")
    return schema


def check_answer(record: RecordedRequest) -> None:
    """The fake's answer is one GitHub's description allows."""
    if record.status == 0:  # dropped on purpose (fail_next(disconnect=True))
        return
    if not record.path.startswith(("/rate_limit", "/repos/")):
        assert record.status == 404
        return
    if not record.response.lstrip().startswith((b"{", b"[")):
        assert record.status in {204, 502}, f"{record.method} {record.path}: not JSON"
        assert record.status != 204 or record.response == b""
        return
    schema = response_schema(record)
    assert schema is not None, f"{record.method} {record.path}: {record.status} has no body"
    validator(json.dumps(schema, sort_keys=True)).validate(record.answer())


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub(REPO, token=TOKEN) as fake:
        yield fake
    assert fake.internal_errors == []
    for record in fake.requests:
        check_answer(record)


@pytest.fixture
def naps() -> list[float]:
    return []


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One connection pool for the reporters of this module (each test's fake has its port)."""
    with httpx.Client() as client:
        yield client


@pytest.fixture
def make_reporter(
    github: FakeGitHub, naps: list[float], http: httpx.Client
) -> Iterator[Callable[..., GitHubReporter]]:
    made: list[GitHubReporter] = []

    def make(repository: str = REPO, **options: Any) -> GitHubReporter:
        options = {
            "client": http,
            "api_url": github.url,
            "sleep": naps.append,
            "clock": lambda: NOW,
            "jitter": lambda: 0.5,
            **options,
        }
        reporter = GitHubReporter(repository, options.pop("token", TOKEN), **options)
        made.append(reporter)
        return reporter

    yield make
    for reporter in made:
        reporter.close()


@pytest.fixture
def reporter(make_reporter: Callable[..., GitHubReporter]) -> GitHubReporter:
    return make_reporter()


@pytest.fixture
def raw(github: FakeGitHub) -> Iterator[httpx.Client]:
    """A plain client sending what GitHub asks for."""
    headers = {
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
        "Authorization": f"Bearer {TOKEN}",
        "User-Agent": "mdc-tests",
    }
    with httpx.Client(base_url=github.url, headers=headers, timeout=5) as client:
        yield client


def calls(github: FakeGitHub, method: str, pattern: str = "") -> int:
    return len(github.calls(method, pattern))


# -- the request every call makes ---------------------------------------------------------------


def test_every_request_carries_githubs_headers(
    github: FakeGitHub, reporter: GitHubReporter
) -> None:
    reporter.set_status(SHA, "mdc/plan", "success", "fine")
    reporter.permission("nobody")
    assert len(github.requests) == 2
    for request in github.requests:
        assert request.headers["accept"] == "application/vnd.github+json"
        assert request.headers["x-github-api-version"] == "2022-11-28"
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert request.headers["user-agent"] == f"mdc/{__version__}"


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"User-Agent": ""}, 403, "User-Agent"),
        ({"Authorization": ""}, 401, "Requires authentication"),
        ({"Authorization": "Bearer ghp_wrong"}, 401, "Bad credentials"),
        ({"Accept": "text/html"}, 415, "Accept"),
        ({"X-GitHub-Api-Version": "2020-01-01"}, 400, "not supported"),
    ],
)
def test_the_fake_refuses_what_github_refuses(
    github: FakeGitHub, raw: httpx.Client, change: dict[str, str], status: int, message: str
) -> None:
    answer = raw.get(f"/repos/{REPO}/pulls", headers=change)
    assert answer.status_code == status
    assert message in answer.json()["message"]
    assert set(answer.json()) >= {"message", "documentation_url"}
    assert raw.get("/repos/octo-org/elsewhere/pulls").status_code == 404


# -- the one comment per pull request -------------------------------------------------------------


def test_upsert_creates_then_edits_then_leaves_alone(
    github: FakeGitHub, reporter: GitHubReporter
) -> None:
    number = github.repo.add_pull("feature").number

    first = reporter.upsert_comment(number, "plan v1", MARKER)
    assert [c.body for c in github.comments[number]] == [f"{MARKER}\nplan v1"]
    assert (first.body, first.user) == (f"{MARKER}\nplan v1", "mdc-bot")
    assert first.html_url.endswith(f"/pull/{number}#issuecomment-{first.id}")
    assert (calls(github, "POST"), calls(github, "PATCH")) == (1, 0)

    github.clear_requests()
    second = reporter.upsert_comment(number, "plan v2", MARKER)
    assert second.id == first.id
    assert [c.body for c in github.comments[number]] == [f"{MARKER}\nplan v2"]
    assert (calls(github, "GET"), calls(github, "PATCH"), calls(github, "POST")) == (1, 1, 0)

    github.clear_requests()
    third = reporter.upsert_comment(number, "plan v2", MARKER)
    assert third == second
    assert [r.method for r in github.requests] == ["GET"]


def test_a_body_holding_the_marker_is_kept_as_it_is(
    github: FakeGitHub, reporter: GitHubReporter
) -> None:
    number = github.repo.add_pull("feature").number
    body = f"## Plan\n\n{MARKER}\nall good"
    assert reporter.upsert_comment(number, body, MARKER).body == body
    assert reporter.comment(number, "answer").body == "answer"
    assert [c.body for c in github.comments[number]] == [body, "answer"]


def test_upsert_finds_the_marker_comment_on_a_later_page(
    github: FakeGitHub, reporter: GitHubReporter
) -> None:
    number = github.repo.add_pull("feature").number
    for i in range(130):
        github.repo.add_comment(number, f"chatter {i}", user="someone")
    ours = github.repo.add_comment(number, f"{MARKER}\nold plan", user="mdc-bot")
    for i in range(25):
        github.repo.add_comment(number, f"more chatter {i}", user="someone")

    updated = reporter.upsert_comment(number, "new plan", MARKER)

    assert updated.id == ours.id
    assert ours.body == f"{MARKER}\nnew plan"
    assert len(github.comments[number]) == 156
    lists = github.calls("GET", "/comments$")
    assert [r.query.get("page") for r in lists] == [None, ["2"]]
    assert all(r.query["per_page"] == ["100"] for r in lists)
    assert 'rel="next"' in lists[0].response_headers["link"]
    assert (calls(github, "PATCH"), calls(github, "POST")) == (1, 0)
    assert reporter.find_comment(number, "<!-- nowhere -->") is None


def test_link_headers_follow_githubs_format(github: FakeGitHub, raw: httpx.Client) -> None:
    number = github.repo.add_pull("feature").number
    for i in range(151):
        github.repo.add_comment(number, f"comment {i}")
    path = f"/repos/{REPO}/issues/{number}/comments"

    def rels(page: int) -> dict[str, int]:
        answer = raw.get(path, params={"per_page": 50, "page": page})
        assert len(answer.json()) == (1 if page == 4 else 50)
        found = re.findall(r'<([^>]+)>; rel="(\w+)"', answer.headers["link"])
        for url, _ in found:
            assert parse_qs(urlsplit(url).query)["per_page"] == ["50"]
            assert urlsplit(url).path == path
        return {rel: int(parse_qs(urlsplit(url).query)["page"][0]) for url, rel in found}

    assert rels(1) == {"next": 2, "last": 4}
    assert list(rels(2).items()) == [("prev", 1), ("next", 3), ("last", 4), ("first", 1)]
    assert rels(4) == {"prev": 3, "first": 1}
    recent = raw.get(path, params={"since": "2999-01-01T00:00:00Z"})
    assert (recent.json(), "link" in recent.headers) == ([], False)
    assert "link" not in raw.get(f"/repos/{REPO}/pulls").headers  # all fit on one page
    assert len(raw.get(path, params={"per_page": 500}).json()) == 100  # capped, as GitHub does


def long_body(size: int) -> str:
    lines, total, i = [], 0, 0
    while total < size:
        lines.append(f"| model-{i:05d} | {'x' * (i % 50)} | ok |")
        total += len(lines[-1]) + 1
        i += 1
    return "\n".join(lines)[:size]


def test_a_long_body_is_cut_on_a_line_with_the_marker_and_a_note(
    github: FakeGitHub, reporter: GitHubReporter
) -> None:
    number = github.repo.add_pull("feature").number
    body = long_body(70_000)
    assert len(body) == 70_000

    posted = reporter.upsert_comment(number, body, MARKER)

    stored = github.comments[number][0].body
    assert stored == posted.body
    assert len(stored) <= COMMENT_LIMIT
    assert stored.startswith(MARKER)
    note = re.search(r"comment truncated by mdc: ([\d,]+) characters left out", stored)
    assert note is not None
    kept = stored[: stored.index("\n\n---\n")]
    full = f"{MARKER}\n{body}"
    assert full.startswith(kept)
    assert full[len(kept)] == "\n"  # cut at the end of a line
    assert len(kept) + int(note[1].replace(",", "")) == len(full)

    github.clear_requests()
    reporter.upsert_comment(number, body, MARKER)  # the same cut: nothing to edit
    assert calls(github, "PATCH") == calls(github, "POST") == 0


def test_a_marker_at_the_end_of_a_long_body_survives(
    github: FakeGitHub, reporter: GitHubReporter
) -> None:
    number = github.repo.add_pull("feature").number
    posted = reporter.upsert_comment(number, "y" * 70_000 + MARKER, MARKER)
    assert MARKER in github.comments[number][0].body == posted.body
    assert len(posted.body) <= COMMENT_LIMIT
    assert reporter.find_comment(number, MARKER) == posted


def test_the_fake_refuses_bodies_over_githubs_limit(github: FakeGitHub, raw: httpx.Client) -> None:
    number = github.repo.add_pull("feature").number
    url = f"/repos/{REPO}/issues/{number}/comments"
    assert raw.post(url, json={"body": "z" * COMMENT_LIMIT}).status_code == 201
    refused = raw.post(url, json={"body": "z" * (COMMENT_LIMIT + 1)})
    assert refused.status_code == 422
    assert "maximum is 65536" in refused.json()["errors"][0]["message"]
    comment_id = github.comments[number][0].id
    assert raw.patch(f"/repos/{REPO}/issues/comments/{comment_id}", json={}).status_code == 422


# -- commit statuses ---------------------------------------------------------------------------


def test_statuses_are_set_with_descriptions_githubs_size(
    github: FakeGitHub, reporter: GitHubReporter, raw: httpx.Client
) -> None:
    reporter.set_status(SHA, "mdc/rollout", "pending", "w" * 200, "https://mdc.example/m")
    reporter.set_status(SHA, "mdc/plan", "success", "two\nlines")
    (rollout, plan) = github.statuses[SHA]
    assert len(rollout["description"]) == DESCRIPTION_LIMIT
    assert rollout["description"].endswith("\N{HORIZONTAL ELLIPSIS}")
    assert (rollout["state"], rollout["context"]) == ("pending", "mdc/rollout")
    assert rollout["target_url"] == "https://mdc.example/m"
    assert (plan["description"], plan["target_url"]) == ("two lines", None)

    combined = raw.get(f"/repos/{REPO}/commits/{SHA}/status").json()
    assert (combined["state"], combined["total_count"]) == ("pending", 2)
    reporter.set_status(SHA, "mdc/rollout", "failure", "rolled back")
    combined = raw.get(f"/repos/{REPO}/commits/{SHA}/status").json()
    assert (combined["state"], combined["total_count"]) == ("failure", 2)
    listed = raw.get(f"/repos/{REPO}/commits/{SHA}/statuses").json()
    assert [s["state"] for s in listed] == ["failure", "success", "pending"]  # newest first

    with pytest.raises(ValueError, match="state must be one of"):
        reporter.set_status(SHA, "mdc/plan", "ok", "nope")
    assert len(github.statuses[SHA]) == 3


def test_the_fake_refuses_long_descriptions_and_unknown_states(
    github: FakeGitHub, raw: httpx.Client
) -> None:
    url = f"/repos/{REPO}/statuses/{SHA}"
    assert raw.post(url, json={"state": "success", "description": "d" * 141}).status_code == 422
    assert raw.post(url, json={"state": "done"}).status_code == 422
    assert raw.post(url, json={"state": "success"}).json()["context"] == "default"


# -- pull requests of a commit, permissions --------------------------------------------------------


def test_pulls_for_commit(github: FakeGitHub, reporter: GitHubReporter) -> None:
    repo = github.repo
    opened = repo.add_pull("feature-a")
    merged = repo.add_pull("feature-b", merged=True, merge_commit_sha=SHA)
    assert reporter.pulls_for_commit(opened.head_sha) == [opened.number]
    assert reporter.pulls_for_commit(SHA) == [merged.number]

    many = [repo.add_pull(f"bulk-{i}").number for i in range(120)]
    shared = repo.commit({"shared.txt": "x"}, branch="shared")
    repo.commit_pulls[shared] = list(reversed(many))
    github.clear_requests()
    assert sorted(reporter.pulls_for_commit(shared)) == many
    assert calls(github, "GET", "/pulls$") == 2

    # a commit GitHub does not know belongs to no PR
    assert reporter.pulls_for_commit("f" * 40) == []


def test_the_fake_answers_an_unknown_commit_as_documented(
    github: FakeGitHub, reporter: GitHubReporter
) -> None:
    """GitHub's description lists 200 and 409 for the pulls of a commit: the fake answers
    an unknown commit with one of them (409, GitHub's basic-error), never 422."""
    github.clear_requests()
    assert reporter.pulls_for_commit("e" * 40) == []
    (record,) = [r for r in github.requests if r.path.endswith("/pulls")]
    declared = operation_for(record.method, record.path)["responses"]
    assert sorted(declared) == ["200", "409"]
    assert record.status == 409
    assert "No commit found" in json.loads(record.response)["message"]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        # what GitHub answers for an unknown commit (not in its description)
        (422, {"message": "No commit found for SHA: ffff", "documentation_url": "d"}),
        # what its description documents (Conflict: an empty repository)
        (409, {"message": "Git Repository is empty.", "documentation_url": "d"}),
    ],
)
def test_pulls_for_commit_reads_422_and_409_as_no_pull_request(
    github: FakeGitHub, reporter: GitHubReporter, status: int, body: dict[str, str]
) -> None:
    github.fail_next(status, body=body, method="GET", path="/commits/.*/pulls$")
    assert reporter.pulls_for_commit(SHA) == []
    # any other refusal is still an error
    github.fail_next(404, method="GET", path="/commits/.*/pulls$")
    with pytest.raises(PermanentError):
        reporter.pulls_for_commit(SHA)


@pytest.mark.parametrize(
    ("role", "expected", "writes"),
    [
        ("admin", "admin", True),
        ("maintain", "maintain", True),
        ("write", "write", True),
        ("triage", "triage", False),
        ("read", "read", False),
        ("none", "none", False),
        (None, "none", False),
    ],
)
def test_permission(
    github: FakeGitHub, reporter: GitHubReporter, role: str | None, expected: str, writes: bool
) -> None:
    if role is not None:
        github.permissions["Someone"] = role
    assert reporter.permission("someone") == expected
    assert reporter.can_write("someone") is writes
    assert {r.status for r in github.requests} == {200 if role else 404}


# -- the revert pull request -----------------------------------------------------------------------

BAD = b"kind: Model\nspec: {gpu: 8}\n"
GOOD = b"kind: Model\nspec: {gpu: 1}\n"
PATH = "models/m.yaml"
BRANCH = "mdc/revert-m-abc123"


def revert(reporter: GitHubReporter, content: bytes = GOOD, path: str = PATH) -> int:
    return reporter.open_revert_pr("main", path, content, "Revert m", "why", BRANCH)


def test_a_revert_pr_is_opened_once_and_reused(
    github: FakeGitHub, reporter: GitHubReporter
) -> None:
    github.repo.commit({PATH: BAD})
    number = revert(reporter)

    pull = github.pulls[number]
    assert (pull.head, pull.base, pull.state, pull.title, pull.body) == (
        BRANCH,
        "main",
        "open",
        "Revert m",
        "why",
    )
    assert github.files(BRANCH)[PATH] == GOOD
    assert github.files("main")[PATH] == BAD
    (put,) = github.calls("PUT")
    assert put.json()["sha"] == blob_sha(BAD)
    assert base64.b64decode(put.json()["content"]) == GOOD

    github.clear_requests()
    assert revert(reporter) == number
    assert [(r.method, r.status) for r in github.requests] == [("GET", 200), ("GET", 200)]
    assert sum(p.state == "open" for p in github.pulls.values()) == 1

    newer = GOOD + b"# again\n"
    assert revert(reporter, newer) == number  # the open PR's branch is brought up to date
    assert github.files(BRANCH)[PATH] == newer
    assert len(github.pulls) == 1


def test_the_bridges_pull_requests_are_found_by_branch_and_closed(
    github: FakeGitHub, reporter: GitHubReporter
) -> None:
    """pulls_from, open_pulls_under and close_pull (the registry bridge's calls);
    every answer is checked against GitHub's description after the test."""
    github.repo.commit({PATH: BAD})
    older = reporter.open_change_pr("main", PATH, GOOD, "m v2", "b", "mdc/registry/m/v2")
    newer = reporter.open_change_pr("main", PATH, GOOD + b"#3\n", "m v3", "b", "mdc/registry/m/v3")
    github.repo.add_pull("feature", title="someone else's")
    assert reporter.pulls_from("mdc/registry/m/v2") == [(older, "open")]
    assert reporter.pulls_from("mdc/registry/m/v9") == []
    assert sorted(reporter.open_pulls_under("mdc/registry/m/")) == [
        (older, "mdc/registry/m/v2"),
        (newer, "mdc/registry/m/v3"),
    ]
    reporter.close_pull(older)
    assert github.pulls[older].state == "closed"
    assert reporter.pulls_from("mdc/registry/m/v2") == [(older, "closed")]  # proposed once
    assert reporter.open_pulls_under("mdc/registry/m/") == [(newer, "mdc/registry/m/v3")]
    (patch,) = github.calls("PATCH")
    assert patch.json() == {"state": "closed"}


def test_a_revert_reuses_an_existing_branch_and_creates_a_missing_file(
    github: FakeGitHub, reporter: GitHubReporter
) -> None:
    github.refs[f"refs/heads/{BRANCH}"] = github.refs["refs/heads/main"]
    number = revert(reporter, path="models/new.yaml")
    (create_ref,) = github.calls("POST", "/git/refs$")
    assert create_ref.status == 422
    (put,) = github.calls("PUT")
    assert (put.status, "sha" in put.json()) == (201, False)
    assert github.files(BRANCH)["models/new.yaml"] == GOOD
    assert github.pulls[number].head == BRANCH


def test_a_revert_with_nothing_to_change_says_so(
    github: FakeGitHub, reporter: GitHubReporter
) -> None:
    github.repo.commit({PATH: GOOD})
    with pytest.raises(PermanentError) as caught:
        revert(reporter)
    assert caught.value.reason == "NothingToRevert"
    assert calls(github, "PUT") == 0
    assert not github.pulls


def test_a_revert_onto_a_missing_base_is_not_found(
    github: FakeGitHub, reporter: GitHubReporter
) -> None:
    with pytest.raises(PermanentError) as caught:
        reporter.open_revert_pr("release", PATH, GOOD, "Revert m", "why", BRANCH)
    assert caught.value.reason == "GitHubNotFound"


def test_the_fake_guards_file_writes_with_the_blob_sha(
    github: FakeGitHub, raw: httpx.Client
) -> None:
    github.repo.commit({PATH: BAD})
    url = f"/repos/{REPO}/contents/{PATH}"
    put = {"message": "m", "content": base64.b64encode(GOOD).decode()}
    assert raw.put(url, json=put).status_code == 422  # no sha for an existing file
    assert raw.put(url, json=put | {"sha": blob_sha(GOOD)}).status_code == 409
    assert raw.put(url, json=put | {"sha": blob_sha(BAD)}).status_code == 200
    got = raw.get(url).json()
    assert (got["sha"], base64.b64decode(got["content"])) == (blob_sha(GOOD), GOOD)
    assert [e["name"] for e in raw.get(f"/repos/{REPO}/contents/models").json()] == ["m.yaml"]
    assert raw.get(f"/repos/{REPO}/contents/nope.yaml").status_code == 404


# -- retries and rate limits -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault", [{"status": 503}, {"status": 502}, {"status": 500}, {"disconnect": True}]
)
def test_failures_are_retried_with_backoff(
    github: FakeGitHub, reporter: GitHubReporter, naps: list[float], fault: dict[str, Any]
) -> None:
    github.fail_next(**fault, times=2)
    reporter.set_status(SHA, "mdc/plan", "success", "fine")
    assert calls(github, "POST") == 3
    assert naps == [0.75, 1.5]  # 1 s then 2 s steps, half of each jittered (jitter 0.5)
    assert len(github.statuses[SHA]) == 1


def test_backoff_is_jittered_within_its_step(
    github: FakeGitHub, make_reporter: Callable[..., GitHubReporter], naps: list[float]
) -> None:
    github.fail_next(503, times=4)
    make_reporter(jitter=random.random).set_status(SHA, "c", "success", "d")
    for step, nap in zip([1, 2, 4, 8], naps, strict=True):
        assert step / 2 <= nap <= step


def test_a_timeout_is_retried(
    github: FakeGitHub, make_reporter: Callable[..., GitHubReporter], naps: list[float]
) -> None:
    github.fail_next(503, delay=0.6)
    make_reporter(timeout=0.2).set_status(SHA, "mdc/plan", "success", "fine")
    assert calls(github, "POST") == 2
    assert len(naps) == 1
    assert len(github.statuses[SHA]) == 1


def test_a_429_waits_as_long_as_retry_after_says(
    github: FakeGitHub, reporter: GitHubReporter, naps: list[float]
) -> None:
    github.fail_next(429, headers={"retry-after": "7"})
    reporter.set_status(SHA, "mdc/plan", "success", "fine")
    assert naps == [7.0]
    assert calls(github, "POST") == 2


def test_a_403_with_no_requests_left_waits_until_the_reset(
    github: FakeGitHub, reporter: GitHubReporter, naps: list[float]
) -> None:
    reset = int(NOW) + 30
    github.fail_next(403, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": f"{reset}"})
    reporter.set_status(SHA, "mdc/plan", "success", "fine")
    assert naps == [31.0]  # until the reset, plus a second for clock skew
    assert calls(github, "POST") == 2


def test_an_exhausted_primary_limit_is_waited_out(
    github: FakeGitHub, make_reporter: Callable[..., GitHubReporter], naps: list[float]
) -> None:
    github.rate_used = github.rate_limit

    def nap(seconds: float) -> None:
        naps.append(seconds)
        github.rate_used = 0  # the window resets while we sleep

    reporter = make_reporter(sleep=nap, clock=lambda: github.rate_reset - 20.0)
    assert reporter.permission("nobody") == "none"
    assert naps == [21.0]
    assert [r.status for r in github.requests] == [403, 404]


def test_a_secondary_limit_without_headers_waits_a_minute(
    github: FakeGitHub, reporter: GitHubReporter, naps: list[float]
) -> None:
    message = "You have exceeded a secondary rate limit. Please wait a few minutes."
    github.fail_next(403, body={"message": message, "documentation_url": "https://docs"})
    reporter.comment(github.repo.add_pull("feature").number, "hi")
    assert naps == [60.0]


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 403, "headers": {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "0"}},
        {"status": 429, "headers": {"retry-after": "601"}},
    ],
)
def test_a_wait_beyond_the_cap_is_left_to_the_caller(
    github: FakeGitHub, reporter: GitHubReporter, naps: list[float], fault: dict[str, Any]
) -> None:
    if fault["status"] == 403:
        fault["headers"]["x-ratelimit-reset"] = str(int(NOW) + 600)
    github.fail_next(**fault)
    with pytest.raises(TransientError) as caught:
        reporter.set_status(SHA, "mdc/plan", "success", "fine")
    assert caught.value.reason == "GitHubRateLimited"
    assert caught.value.retry_after == 601.0
    assert naps == []
    assert calls(github, "POST") == 1


def test_failing_forever_gives_up_after_max_attempts(
    github: FakeGitHub, make_reporter: Callable[..., GitHubReporter], naps: list[float]
) -> None:
    github.fail_next(502, times=10)
    with pytest.raises(TransientError) as caught:
        make_reporter(max_attempts=3).set_status(SHA, "mdc/plan", "success", "fine")
    assert caught.value.reason == "GitHubUnavailable"
    assert "502" in str(caught.value)
    assert "3 tries" in str(caught.value)
    assert caught.value.retry_after > 0
    assert calls(github, "POST") == 3
    assert len(naps) == 2


# -- refusals --------------------------------------------------------------------------------------


def test_a_bad_token_is_permanent_and_never_shown(
    github: FakeGitHub,
    make_reporter: Callable[..., GitHubReporter],
    naps: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "ghp_thisIsNotTheRightToken42"
    reporter = make_reporter(token=secret)
    github.fail_next(503)  # a retry, so that something is logged
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PermanentError) as caught:
        reporter.set_status(SHA, "mdc/plan", "success", "fine")
    assert caught.value.reason == "GitHubUnauthorized"
    assert "Bad credentials" in str(caught.value)
    assert caplog.records
    for text in (str(caught.value), repr(caught.value), repr(reporter), caplog.text):
        assert secret not in text
    assert len(naps) == 1  # the 503 was retried, the 401 was not


def test_a_token_echoed_by_a_server_is_redacted(
    github: FakeGitHub, reporter: GitHubReporter, caplog: pytest.LogCaptureFixture
) -> None:
    echo = {"message": f"proxy saw Authorization: Bearer {TOKEN}"}
    github.fail_next(503, body=echo)
    github.fail_next(403, body=echo)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PermanentError) as caught:
        reporter.set_status(SHA, "mdc/plan", "success", "fine")
    assert "proxy saw Authorization: Bearer ***" in str(caught.value)
    assert "proxy saw" in caplog.text
    assert TOKEN not in str(caught.value) + caplog.text


@pytest.mark.parametrize(
    ("fault", "reason", "said"),
    [
        ({"status": 403, "body": {"message": "Resource not accessible by integration"}},
         "GitHubForbidden", "Resource not accessible by integration"),
        ({"status": 409, "body": {"message": "Git Repository is empty."}},
         "GitHubConflict", "Git Repository is empty."),
    ],
)  # fmt: skip
def test_refusals_are_permanent_and_not_retried(
    github: FakeGitHub,
    reporter: GitHubReporter,
    naps: list[float],
    fault: dict[str, Any],
    reason: str,
    said: str,
) -> None:
    github.fail_next(**fault)
    with pytest.raises(PermanentError) as caught:  # (on commits/{sha}/pulls 409 is "no PR")
        reporter.find_comment(7, "<!-- marker -->")
    assert (caught.value.reason, naps, len(github.requests)) == (reason, [], 1)
    assert said in str(caught.value)


def test_an_unknown_repository_is_not_found(
    github: FakeGitHub, make_reporter: Callable[..., GitHubReporter]
) -> None:
    with pytest.raises(PermanentError) as caught:
        make_reporter("octo-org/missing").set_status(SHA, "mdc/plan", "success", "fine")
    assert caught.value.reason == "GitHubNotFound"


def test_a_validation_failure_carries_githubs_message(reporter: GitHubReporter) -> None:
    with pytest.raises(PermanentError) as caught:
        reporter.set_status("not-a-sha", "mdc/plan", "success", "fine")
    assert caught.value.reason == "GitHubInvalid"
    assert "No commit found for SHA: not-a-sha" in str(caught.value)


# -- configuration ---------------------------------------------------------------------------------


def test_from_env(github: FakeGitHub, tmp_path: Path, naps: list[float]) -> None:
    assert GitHubReporter.from_env(REPO, env={}) is None
    assert GitHubReporter.from_env(REPO, env={"MDC_GITHUB_TOKEN": "  "}) is None
    default = GitHubReporter.from_env(REPO, env={"GITHUB_TOKEN": "t"})
    assert default is not None
    assert default.api_url == "https://api.github.com"
    default.close()

    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    envs = [
        {"MDC_GITHUB_TOKEN": TOKEN, "GITHUB_TOKEN": "ignored"},
        {"GITHUB_TOKEN": TOKEN},
        {"MDC_GITHUB_TOKEN_FILE": str(token_file), "GITHUB_TOKEN": "ignored"},
    ]
    for env in envs:
        configured = {**env, "MDC_GITHUB_API_URL": github.url + "/"}
        reporter = GitHubReporter.from_env(REPO, env=configured, sleep=naps.append)
        assert reporter is not None
        with reporter:
            reporter.set_status(SHA, "mdc/plan", "success", "fine")
    assert len(github.statuses[SHA]) == 3

    missing = {"MDC_GITHUB_TOKEN_FILE": str(tmp_path / "absent")}
    with pytest.raises(PermanentError) as caught:
        GitHubReporter.from_env(REPO, env=missing)
    assert caught.value.reason == "GitHubTokenUnreadable"


def test_github_enterprise_server_api_root() -> None:
    with FakeGitHub(REPO, token=TOKEN, prefix="/api/v3") as ghe:
        assert ghe.url.endswith("/api/v3")
        env = {"MDC_GITHUB_TOKEN": TOKEN, "MDC_GITHUB_API_URL": ghe.url}
        reporter = GitHubReporter.from_env(REPO, env=env)
        assert reporter is not None
        with reporter:
            number = ghe.repo.add_pull("feature").number
            reporter.upsert_comment(number, "plan", MARKER)
            assert reporter.rate_limit()["resources"]["core"]["limit"] == 5000
        outside = httpx.get(f"{ghe.root}/rate_limit", headers={"Authorization": f"Bearer {TOKEN}"})
        assert outside.status_code == 404
    assert [r.status for r in ghe.requests[:3]] == [200, 201, 200]
    for record in ghe.requests[:3]:
        check_answer(record)


# -- the rest of the fake, against GitHub's schemas ------------------------------------------------


def test_the_fakes_other_operations_answer_in_githubs_shapes(
    github: FakeGitHub, raw: httpx.Client
) -> None:
    number = github.repo.add_pull("feature", body="please").number
    comment = github.repo.add_comment(number, "hello")
    reactions = f"/repos/{REPO}/issues/comments/{comment.id}/reactions"
    assert raw.post(reactions, json={"content": "rocket"}).status_code == 201
    assert raw.post(reactions, json={"content": "rocket"}).status_code == 200
    assert raw.post(reactions, json={"content": "party"}).status_code == 422
    assert [r["content"] for r in raw.get(reactions, params={"content": "rocket"}).json()] == [
        "rocket"
    ]
    pull = raw.get(f"/repos/{REPO}/pulls/{number}").json()
    assert (pull["number"], pull["merged"], pull["head"]["ref"]) == (number, False, "feature")
    assert raw.get(f"/repos/{REPO}/pulls", params={"head": "feature"}).json()  # needs "owner:"
    assert not raw.get(f"/repos/{REPO}/pulls", params={"head": "other:feature"}).json()
    assert raw.get(f"/repos/{REPO}/pulls", params={"state": "closed"}).json() == []
    created = raw.post(
        f"/repos/{REPO}/pulls", json={"title": "t", "head": "feature", "base": "main"}
    )
    assert created.status_code == 422  # one open PR per head and base
    ref = raw.get(f"/repos/{REPO}/git/ref/heads/feature").json()
    assert ref["object"]["sha"] == github.pulls[number].head_sha
    assert raw.post(f"/repos/{REPO}/git/refs", json={"ref": "x", "sha": SHA}).status_code == 422
    assert raw.delete(f"/repos/{REPO}/issues/comments/{comment.id}").status_code == 204
    assert github.comments[number] == []
    assert raw.get("/rate_limit").json()["rate"]["limit"] == 5000
