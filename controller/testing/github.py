"""Fakes for tests and the demo: a GitHub REST API served from memory.

:class:`FakeGitHub` is a real HTTP server (standard library only, 127.0.0.1, a free port, a
daemon thread) that answers the operations of ``github-rest-subset.json`` -- GitHub's own
OpenAPI description cut down to what mdc calls -- the way GitHub documents them: issue
comments (list with ``per_page``/``page`` and a ``Link`` header, create, update, delete),
reactions on comments, commit statuses (create, list, combined), pull requests of a commit,
pull requests (get, list with ``head``/``state``/``base``, create), collaborator permission,
git refs (get, create), contents (get, create or update, with git blob shas) and
``/rate_limit``. Answers carry every field GitHub's response schemas require; errors use
GitHub's shapes (``message``, ``documentation_url``, ``errors``) and its limits (comment bodies
65,536 characters, status descriptions 140). Requests need ``Authorization: Bearer TOKEN``
(401), a ``User-Agent`` (403) and, unless ``strict_headers=False``, GitHub's JSON media type
and a supported ``X-GitHub-Api-Version``.

Tests seed and inspect the state of each :class:`FakeRepo` (commits and refs, pulls,
comments, statuses, permissions), script faults with :meth:`FakeGitHub.fail_next`, and count
calls in :attr:`FakeGitHub.requests`. Used by ``tests/integration/test_github.py`` and the
demo; it imports nothing from mdc.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

__all__ = [
    "FakeComment",
    "FakeCommit",
    "FakeGitHub",
    "FakePull",
    "FakeRepo",
    "RecordedRequest",
    "ScriptedResponse",
    "blob_sha",
]

DOCS = "https://docs.github.com/rest"
SUPPORTED_VERSIONS = ("2022-11-28", "2026-03-10")
COMMENT_LIMIT = 65536
DESCRIPTION_LIMIT = 140
STATES = ("error", "failure", "pending", "success")
REACTIONS = ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes")
#: role (``role_name``) -> the legacy ``permission`` GitHub folds it into.
ROLES = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
    "none": "none",
}
_JSON_TYPES = (
    "application/vnd.github+json",
    "application/vnd.github.v3+json",
    "application/json",
    "application/vnd.github.raw+json",
    "application/vnd.github.object",
    "application/vnd.github.object+json",
)
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_MAX_BODY = 16 * 1024 * 1024


def blob_sha(data: bytes) -> str:
    """The git blob id of ``data`` (what GitHub calls a file's ``sha``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, and what it answered."""

    method: str
    #: The path below the API root, as sent (percent-encoded), without the query.
    path: str
    query: Mapping[str, list[str]]
    #: Header names in lower case.
    headers: Mapping[str, str]
    body: bytes
    status: int = 0
    response_headers: Mapping[str, str] = field(default_factory=dict)
    response: bytes = b""

    def json(self) -> Any:
        """The request body as JSON."""
        return json.loads(self.body)

    def answer(self) -> Any:
        """The response body as JSON (None when empty)."""
        return json.loads(self.response) if self.response else None


@dataclass(frozen=True)
class ScriptedResponse:
    """A fault to answer instead of the real thing (see :meth:`FakeGitHub.fail_next`)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    method: str | None = None
    path: str | None = None
    disconnect: bool = False
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or re.search(self.path, path) is not None
        )


@dataclass(eq=False)
class FakeCommit:
    sha: str
    tree: dict[str, bytes]
    parents: tuple[str, ...]
    message: str
    date: float


@dataclass(eq=False)
class FakeComment:
    id: int
    issue: int
    body: str
    user: str
    created_at: float
    updated_at: float


@dataclass(eq=False)
class FakePull:
    number: int
    id: int
    title: str
    body: str | None
    head: str
    base: str
    head_sha: str
    base_sha: str
    user: str
    state: str = "open"
    merged: bool = False
    merge_commit_sha: str | None = None
    draft: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(eq=False)
class FakeRepo:
    """One repository's state. Seed it with :meth:`commit`, :meth:`add_pull` and
    :meth:`add_comment`, or by writing the dictionaries directly."""

    full_name: str
    id: int
    default_branch: str = "main"
    commits: dict[str, FakeCommit] = field(default_factory=dict)
    #: Full ref name ("refs/heads/main") -> commit sha.
    refs: dict[str, str] = field(default_factory=dict)
    pulls: dict[int, FakePull] = field(default_factory=dict)
    #: Issue numbers that are not pull requests.
    issues: set[int] = field(default_factory=set)
    #: Commit sha -> numbers of pull requests it belongs to (besides head and merge shas).
    commit_pulls: dict[str, list[int]] = field(default_factory=dict)
    #: Login -> role (admin, maintain, write, triage, read, none); others are not users.
    permissions: dict[str, str] = field(default_factory=dict)
    #: Issue number -> its comments, in creation order.
    comments: dict[int, list[FakeComment]] = field(default_factory=dict)
    #: Commit sha -> the statuses set on it, oldest first.
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: Comment id -> its reactions.
    reactions: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    _ids: Iterator[int] | None = None

    @property
    def owner(self) -> str:
        return self.full_name.split("/")[0]

    def next_id(self) -> int:
        if self._ids is None:
            self._ids = iter(range(self.id * 1000 + 1, 2**62))
        return next(self._ids)

    def commit(
        self, files: Mapping[str, bytes | str | None], *, branch: str = "", message: str = "seed"
    ) -> str:
        """Commit ``files`` (None deletes) on ``branch`` (the default one), creating it; the sha."""
        ref = f"refs/heads/{branch or self.default_branch}"
        parent = self.refs.get(ref)
        tree = dict(self.commits[parent].tree) if parent else {}
        for path, data in files.items():
            if data is None:
                tree.pop(path.strip("/"), None)
            else:
                tree[path.strip("/")] = data.encode() if isinstance(data, str) else data
        listing = "".join(f"{blob_sha(tree[p])} {p}\n" for p in sorted(tree))
        seed = f"tree {listing}parent {parent}\n{message}\n{self.next_id()}"
        sha = hashlib.sha1(seed.encode(), usedforsecurity=False).hexdigest()
        stamp = self.clock()
        self.commits[sha] = FakeCommit(sha, tree, (parent,) if parent else (), message, stamp)
        self.refs[ref] = sha
        return sha

    def resolve(self, ref: str | None) -> str | None:
        """A commit sha from a sha, a branch name, ``heads/x``, ``tags/x`` or ``refs/...``."""
        if not ref:
            ref = self.default_branch
        if ref in self.commits:
            return ref
        for name in (ref, f"refs/{ref}", f"refs/heads/{ref}", f"refs/tags/{ref}"):
            if name in self.refs:
                return self.refs[name]
        return None

    def files(self, ref: str | None = None) -> dict[str, bytes]:
        """The files at ``ref`` (a branch, ``heads/x`` or a sha; the default branch)."""
        sha = self.resolve(ref)
        return dict(self.commits[sha].tree) if sha else {}

    def ancestors(self, sha: str) -> set[str]:
        seen: set[str] = set()
        todo = [sha]
        while todo:
            if (one := todo.pop()) in seen or one not in self.commits:
                continue
            seen.add(one)
            todo.extend(self.commits[one].parents)
        return seen

    def next_number(self) -> int:
        return max([0, *self.issues, *self.pulls]) + 1

    def add_pull(
        self,
        head: str,
        *,
        base: str = "",
        number: int | None = None,
        title: str = "a change",
        body: str | None = None,
        user: str = "octocat",
        state: str = "open",
        merged: bool = False,
        merge_commit_sha: str | None = None,
        head_sha: str | None = None,
    ) -> FakePull:
        """A pull request from branch ``head`` (created with a commit when missing)."""
        base = base or self.default_branch
        if f"refs/heads/{base}" not in self.refs:
            self.commit({}, branch=base)
        if head_sha is None:
            if f"refs/heads/{head}" not in self.refs:
                self.refs[f"refs/heads/{head}"] = self.refs[f"refs/heads/{base}"]
                self.commit({f".pulls/{head}": head}, branch=head, message=title)
            head_sha = self.refs[f"refs/heads/{head}"]
        now = self.clock()
        pull = FakePull(
            number=number or self.next_number(),
            id=self.next_id(),
            title=title,
            body=body,
            head=head,
            base=base,
            head_sha=head_sha,
            base_sha=self.refs[f"refs/heads/{base}"],
            user=user,
            state="closed" if merged else state,
            merged=merged,
            merge_commit_sha=merge_commit_sha,
            created_at=now,
            updated_at=now,
        )
        self.pulls[pull.number] = pull
        return pull

    def add_comment(self, issue: int, body: str, *, user: str = "octocat") -> FakeComment:
        """A comment on issue or pull request ``issue`` (made an issue when it is neither)."""
        if issue not in self.pulls:
            self.issues.add(issue)
        now = self.clock()
        comment = FakeComment(self.next_id(), issue, body, user, now, now)
        self.comments.setdefault(issue, []).append(comment)
        return comment

    def find_comment(self, comment_id: int) -> FakeComment | None:
        for comments in self.comments.values():
            for comment in comments:
                if comment.id == comment_id:
                    return comment
        return None


class _Reply(Exception):
    """Raised by a route to answer at once."""

    def __init__(
        self, status: int, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def _error(status: int, message: str, doc: str = DOCS) -> _Reply:
    return _Reply(status, {"message": message, "documentation_url": doc, "status": str(status)})


def _invalid(*errors: dict[str, Any], message: str = "Validation Failed") -> _Reply:
    body = {"message": message, "errors": list(errors), "documentation_url": DOCS, "status": "422"}
    return _Reply(422, body)


class FakeGitHub:
    """GitHub's REST API for ``repository`` (and any added with :meth:`add_repo`).

    ``prefix`` serves the API below a path, as GitHub Enterprise Server does (``/api/v3``).
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        repository: str = "octo-org/specs",
        *,
        token: str = "ghp_fake_token",
        login: str = "mdc-bot",
        prefix: str = "",
        default_branch: str = "main",
        strict_headers: bool = True,
        clock: Callable[[], float] = time.time,
        rate_limit: int = 5000,
    ) -> None:
        self.token = token
        self.login = login
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.strict_headers = strict_headers
        self.clock = clock
        self.rate_limit = rate_limit
        #: Requests counted against the primary rate limit in this window; set it to
        #: ``rate_limit`` to exhaust it.
        self.rate_used = 0
        self.rate_reset = int(clock()) + 3600
        self.repos: dict[str, FakeRepo] = {}
        self.default = self.add_repo(repository, default_branch=default_branch)
        self._user_ids: dict[str, int] = {}
        self._script: list[ScriptedResponse] = []
        #: Exceptions the fake itself raised while answering (answered 500); tests assert none.
        self.internal_errors: list[str] = []
        self._requests: list[RecordedRequest] = []
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- state shortcuts for the default repository ---------------------------------------

    @property
    def repo(self) -> FakeRepo:
        return self.default

    @property
    def pulls(self) -> dict[int, FakePull]:
        return self.default.pulls

    @property
    def commit_pulls(self) -> dict[str, list[int]]:
        return self.default.commit_pulls

    @property
    def permissions(self) -> dict[str, str]:
        return self.default.permissions

    @property
    def comments(self) -> dict[int, list[FakeComment]]:
        return self.default.comments

    @property
    def statuses(self) -> dict[str, list[dict[str, Any]]]:
        return self.default.statuses

    @property
    def refs(self) -> dict[str, str]:
        return self.default.refs

    def files(self, ref: str | None = None) -> dict[str, bytes]:
        return self.default.files(ref)

    def add_repo(self, full_name: str, *, default_branch: str = "main") -> FakeRepo:
        repo = FakeRepo(full_name, len(self.repos) + 1, default_branch, clock=self.clock)
        repo.commit({"README.md": f"# {full_name}\n"}, message="initial commit")
        self.repos[full_name.lower()] = repo
        return repo

    # -- faults and the record ---------------------------------------------------------------

    def fail_next(
        self,
        status: int = 503,
        *,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        method: str | None = None,
        path: str | None = None,
        disconnect: bool = False,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``times`` matching requests (``method``; ``path`` a regular
        expression searched in the path) with ``status`` instead. ``body`` is JSON-encoded
        unless bytes; by default GitHub's own for the status. ``disconnect`` closes the
        connection without answering; ``delay`` waits that many seconds first."""
        if body is None:
            raw = self._fault_body(status, headers or {})
        elif isinstance(body, bytes):
            raw = body
        else:
            raw = json.dumps(body).encode()
        scripted = ScriptedResponse(
            status, dict(headers or {}), raw, method, path, disconnect, delay
        )
        with self._lock:
            self._script.extend([scripted] * times)

    @staticmethod
    def _fault_body(status: int, headers: Mapping[str, str]) -> bytes:
        lowered = {k.lower(): v for k, v in headers.items()}
        if status in {403, 429} and "retry-after" in lowered:
            message = (
                "You have exceeded a secondary rate limit. Please wait a few minutes before "
                "you try again."
            )
        elif status in {403, 429} and lowered.get("x-ratelimit-remaining") == "0":
            message = "API rate limit exceeded for user ID 1."
        elif status == 502:
            return b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"
        elif status == 503:
            payload = {"code": "unavailable", "message": "Service unavailable"}
            return json.dumps({**payload, "documentation_url": DOCS}).encode()
        else:
            message = {401: "Bad credentials", 403: "Forbidden", 404: "Not Found"}.get(
                status, "Server Error" if status >= 500 else "Error"
            )
        payload = {"message": message, "documentation_url": DOCS, "status": str(status)}
        return json.dumps(payload).encode()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def calls(self, method: str, pattern: str = "") -> list[RecordedRequest]:
        """The requests with ``method`` whose path matches the regular expression ``pattern``."""
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    # -- the server ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The API root, e.g. ``http://127.0.0.1:PORT`` (plus the prefix)."""
        return f"{self.root}{self.prefix}"

    @property
    def root(self) -> str:
        """The server's own root (also used for ``html_url``s)."""
        if self._server is None:
            raise RuntimeError("FakeGitHub is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeGitHub:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling (called by the handler, one request at a time) -----------------

    def _take_fault(self, method: str, path: str) -> ScriptedResponse | None:
        with self._lock:
            for index, scripted in enumerate(self._script):
                if scripted.matches(method, path):
                    return self._script.pop(index)
        return None

    def _record(self, request: RecordedRequest) -> RecordedRequest:
        """Note a request as it arrives; :meth:`_answer` adds the answer."""
        with self._lock:
            self._requests.append(request)
        return request

    def _answer(
        self, asked: RecordedRequest, status: int, headers: Mapping[str, str], body: bytes
    ) -> None:
        answered = RecordedRequest(
            asked.method, asked.path, asked.query, asked.headers, asked.body, status,
            dict(headers), body,
        )  # fmt: skip
        with self._lock:
            for index in range(len(self._requests) - 1, -1, -1):
                if self._requests[index] is asked:  # gone if clear_requests() ran meanwhile
                    self._requests[index] = answered
                    return

    def _rate_headers(self) -> dict[str, str]:
        if self.clock() >= self.rate_reset:
            self.rate_used = 0
            self.rate_reset = int(self.clock()) + 3600
        return {
            "x-ratelimit-limit": str(self.rate_limit),
            "x-ratelimit-remaining": str(max(0, self.rate_limit - self.rate_used)),
            "x-ratelimit-used": str(self.rate_used),
            "x-ratelimit-reset": str(self.rate_reset),
            "x-ratelimit-resource": "core",
        }

    def _check_headers(self, headers: Mapping[str, str]) -> None:
        if not headers.get("user-agent", "").strip():
            raise _error(
                403,
                "Request forbidden by administrative rules. Please make sure your request has "
                "a User-Agent header (https://docs.github.com/rest/overview/resources-in-the-"
                "rest-api#user-agent-required). Check https://developer.github.com for other "
                "possible causes.",
            )
        scheme, _, credential = headers.get("authorization", "").strip().partition(" ")
        if not credential:
            raise _error(401, "Requires authentication")
        if scheme.lower() not in {"bearer", "token"} or credential.strip() != self.token:
            raise _error(401, "Bad credentials")
        version = headers.get("x-github-api-version")
        if version is not None and version not in SUPPORTED_VERSIONS:
            raise _error(400, f"API version {version} is not supported.")
        if self.strict_headers:
            if version is None:
                raise _error(400, "X-GitHub-Api-Version is required by this fake")
            types = [
                part.split(";")[0].strip().lower() for part in headers.get("accept", "").split(",")
            ]
            if not any(kind in _JSON_TYPES for kind in types):
                raise _error(
                    415,
                    f"Unsupported 'Accept' header: {headers.get('accept', '')!r}. Must accept "
                    "'application/vnd.github+json'.",
                )

    def _dispatch(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: Mapping[str, str],
        body: bytes,
    ) -> _Reply:
        if not path.startswith(self.prefix + "/"):
            raise _error(404, "Not Found")
        path = path[len(self.prefix) :]
        self._check_headers(headers)
        extra = self._rate_headers()
        if path != "/rate_limit":
            if self.rate_used >= self.rate_limit:
                reply = _error(
                    403,
                    f"API rate limit exceeded for user ID {self._user_id(self.login)}.",
                    "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                )
                reply.headers.update(extra)
                raise reply
            self.rate_used += 1
            extra = self._rate_headers()
        for pattern, route in _ROUTES:
            if (match := pattern.match(path)) is None:
                continue
            handler = route.get(method)
            if handler is None:
                raise _error(404, "Not Found")
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            repo = None
            if "owner" in params:
                repo = self.repos.get(f"{params.pop('owner')}/{params.pop('repo')}".lower())
                if repo is None:
                    raise _error(404, "Not Found")
            request = _Request(self, repo, method, path, query, headers, body, params)
            try:
                reply = handler(request)
            except _Reply as refusal:
                reply = refusal
            reply.headers = {**extra, **reply.headers}
            return reply
        raise _error(404, "Not Found")

    # -- JSON builders (shapes from github-rest-subset.json's schemas) ---------------------

    def _user_id(self, login: str) -> int:
        return self._user_ids.setdefault(login.lower(), 100 + len(self._user_ids))

    def user(self, login: str) -> dict[str, Any]:
        api = f"{self.url}/users/{login}"
        uid = self._user_id(login)
        return {
            "login": login,
            "id": uid,
            "node_id": f"U_{uid}",
            "avatar_url": f"{self.root}/avatars/u/{uid}",
            "gravatar_id": "",
            "url": api,
            "html_url": f"{self.root}/{login}",
            "followers_url": f"{api}/followers",
            "following_url": f"{api}/following{{/other_user}}",
            "gists_url": f"{api}/gists{{/gist_id}}",
            "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/subscriptions",
            "organizations_url": f"{api}/orgs",
            "repos_url": f"{api}/repos",
            "events_url": f"{api}/events{{/privacy}}",
            "received_events_url": f"{api}/received_events",
            "type": "Bot" if login.endswith("[bot]") or login == self.login else "User",
            "site_admin": False,
        }

    def minimal_repository(self, repo: FakeRepo) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}"
        names = {
            "archive_url": "/{archive_format}{/ref}",
            "assignees_url": "/assignees{/user}",
            "blobs_url": "/git/blobs{/sha}",
            "branches_url": "/branches{/branch}",
            "collaborators_url": "/collaborators{/collaborator}",
            "comments_url": "/comments{/number}",
            "commits_url": "/commits{/sha}",
            "compare_url": "/compare/{base}...{head}",
            "contents_url": "/contents/{+path}",
            "contributors_url": "/contributors",
            "deployments_url": "/deployments",
            "downloads_url": "/downloads",
            "events_url": "/events",
            "forks_url": "/forks",
            "git_commits_url": "/git/commits{/sha}",
            "git_refs_url": "/git/refs{/sha}",
            "git_tags_url": "/git/tags{/sha}",
            "hooks_url": "/hooks",
            "issue_comment_url": "/issues/comments{/number}",
            "issue_events_url": "/issues/events{/number}",
            "issues_url": "/issues{/number}",
            "keys_url": "/keys{/key_id}",
            "labels_url": "/labels{/name}",
            "languages_url": "/languages",
            "merges_url": "/merges",
            "milestones_url": "/milestones{/number}",
            "notifications_url": "/notifications{?since,all,participating}",
            "pulls_url": "/pulls{/number}",
            "releases_url": "/releases{/id}",
            "stargazers_url": "/stargazers",
            "statuses_url": "/statuses/{sha}",
            "subscribers_url": "/subscribers",
            "subscription_url": "/subscription",
            "tags_url": "/tags",
            "teams_url": "/teams",
            "trees_url": "/git/trees{/sha}",
        }
        return {
            "id": repo.id,
            "node_id": f"R_{repo.id}",
            "name": repo.full_name.split("/")[1],
            "full_name": repo.full_name,
            "owner": self.user(repo.owner),
            "private": True,
            "html_url": f"{self.root}/{repo.full_name}",
            "description": None,
            "fork": False,
            "url": api,
            **{key: api + suffix for key, suffix in names.items()},
        }

    def repository(self, repo: FakeRepo) -> dict[str, Any]:
        html = f"{self.root}/{repo.full_name}"
        created = _stamp(min((c.date for c in repo.commits.values()), default=0.0))
        return {
            **self.minimal_repository(repo),
            "clone_url": f"{html}.git",
            "git_url": f"git://{html.split('://', 1)[1]}.git",
            "ssh_url": f"git@{urlsplit(html).netloc}:{repo.full_name}.git",
            "svn_url": html,
            "mirror_url": None,
            "homepage": None,
            "language": None,
            "license": None,
            "default_branch": repo.default_branch,
            "forks": 0,
            "forks_count": 0,
            "stargazers_count": 0,
            "watchers": 0,
            "watchers_count": 0,
            "size": 1,
            "open_issues": len(repo.issues) + sum(p.state == "open" for p in repo.pulls.values()),
            "open_issues_count": len(repo.issues)
            + sum(p.state == "open" for p in repo.pulls.values()),
            "has_issues": True,
            "has_projects": False,
            "has_wiki": False,
            "has_pages": False,
            "has_downloads": True,
            "archived": False,
            "disabled": False,
            "pushed_at": created,
            "created_at": created,
            "updated_at": created,
        }

    def issue_comment(self, repo: FakeRepo, comment: FakeComment) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}"
        kind = "pull" if comment.issue in repo.pulls else "issues"
        return {
            "id": comment.id,
            "node_id": f"IC_{comment.id}",
            "url": f"{api}/issues/comments/{comment.id}",
            "html_url": (
                f"{self.root}/{repo.full_name}/{kind}/{comment.issue}#issuecomment-{comment.id}"
            ),
            "issue_url": f"{api}/issues/{comment.issue}",
            "body": comment.body,
            "user": self.user(comment.user),
            "created_at": _stamp(comment.created_at),
            "updated_at": _stamp(comment.updated_at),
            "author_association": "OWNER" if comment.user == repo.owner else "MEMBER",
            "reactions": self._reaction_rollup(repo, comment),
        }

    def _reaction_rollup(self, repo: FakeRepo, comment: FakeComment) -> dict[str, Any]:
        given = repo.reactions.get(comment.id, [])
        counts = {name: sum(r["content"] == name for r in given) for name in REACTIONS}
        return {
            "url": f"{self.url}/repos/{repo.full_name}/issues/comments/{comment.id}/reactions",
            "total_count": len(given),
            **counts,
        }

    def pull_request(self, repo: FakeRepo, pull: FakePull, *, full: bool) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}"
        html = f"{self.root}/{repo.full_name}/pull/{pull.number}"
        repository = self.repository(repo)

        def end(ref: str, sha: str) -> dict[str, Any]:
            return {
                "label": f"{repo.owner}:{ref}",
                "ref": ref,
                "sha": sha,
                "repo": repository,
                "user": self.user(repo.owner),
            }

        links = {
            "self": f"{api}/pulls/{pull.number}",
            "html": html,
            "issue": f"{api}/issues/{pull.number}",
            "comments": f"{api}/issues/{pull.number}/comments",
            "review_comments": f"{api}/pulls/{pull.number}/comments",
            "review_comment": f"{api}/pulls/comments{{/number}}",
            "commits": f"{api}/pulls/{pull.number}/commits",
            "statuses": f"{api}/statuses/{pull.head_sha}",
        }
        data: dict[str, Any] = {
            "url": links["self"],
            "id": pull.id,
            "node_id": f"PR_{pull.id}",
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "issue_url": links["issue"],
            "commits_url": links["commits"],
            "review_comments_url": links["review_comments"],
            "review_comment_url": links["review_comment"],
            "comments_url": links["comments"],
            "statuses_url": links["statuses"],
            "number": pull.number,
            "state": pull.state,
            "locked": False,
            "title": pull.title,
            "user": self.user(pull.user),
            "body": pull.body,
            "labels": [],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": _stamp(pull.created_at),
            "updated_at": _stamp(pull.updated_at),
            "closed_at": _stamp(pull.updated_at) if pull.state == "closed" else None,
            "merged_at": _stamp(pull.updated_at) if pull.merged else None,
            "merge_commit_sha": pull.merge_commit_sha,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": end(pull.head, pull.head_sha),
            "base": end(pull.base, pull.base_sha),
            "_links": {key: {"href": href} for key, href in links.items()},
            "author_association": "OWNER" if pull.user == repo.owner else "MEMBER",
            "auto_merge": None,
            "draft": pull.draft,
        }
        if full:
            data |= {
                "merged": pull.merged,
                "mergeable": None if pull.merged else True,
                "rebaseable": None if pull.merged else True,
                "mergeable_state": "unknown" if pull.merged else "clean",
                "merged_by": self.user(repo.owner) if pull.merged else None,
                "comments": len(repo.comments.get(pull.number, [])),
                "review_comments": 0,
                "maintainer_can_modify": False,
                "commits": 1,
                "additions": 1,
                "deletions": 0,
                "changed_files": 1,
            }
        return data

    def status(self, repo: FakeRepo, sha: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "url": f"{self.url}/repos/{repo.full_name}/statuses/{sha}",
            "avatar_url": f"{self.root}/avatars/u/{self._user_id(entry['creator'])}",
            "id": entry["id"],
            "node_id": f"SC_{entry['id']}",
            "state": entry["state"],
            "description": entry["description"],
            "target_url": entry["target_url"],
            "context": entry["context"],
            "created_at": _stamp(entry["created_at"]),
            "updated_at": _stamp(entry["created_at"]),
            "creator": self.user(entry["creator"]),
        }

    def git_ref(self, repo: FakeRepo, name: str) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}/git"
        sha = repo.refs[name]
        return {
            "ref": name,
            "node_id": f"REF_{hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()}",
            "url": f"{api}/{name}",
            "object": {"type": "commit", "sha": sha, "url": f"{api}/commits/{sha}"},
        }

    def content_entry(self, repo: FakeRepo, path: str, ref: str, data: bytes | None) -> Any:
        """A content-file (``data`` given) or a directory entry (None)."""
        api = f"{self.url}/repos/{repo.full_name}"
        html_kind = "blob" if data is not None else "tree"
        sha = blob_sha(data) if data is not None else blob_sha(path.encode())
        html = f"{self.root}/{repo.full_name}/{html_kind}/{ref}/{path}"
        git = f"{api}/git/{'blobs' if data is not None else 'trees'}/{sha}"
        entry: dict[str, Any] = {
            "type": "file" if data is not None else "dir",
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": sha,
            "size": len(data) if data is not None else 0,
            "url": f"{api}/contents/{path}?{urlencode({'ref': ref})}",
            "git_url": git,
            "html_url": html,
            "download_url": (
                f"{self.root}/raw/{repo.full_name}/{ref}/{path}" if data is not None else None
            ),
            "_links": {
                "self": f"{api}/contents/{path}?{urlencode({'ref': ref})}",
                "git": git,
                "html": html,
            },
        }
        return entry


@dataclass(frozen=True)
class _Request:
    fake: FakeGitHub
    repo_or_none: FakeRepo | None
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    params: dict[str, str]

    @property
    def repo(self) -> FakeRepo:
        assert self.repo_or_none is not None
        return self.repo_or_none

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError:
            raise _error(400, "Problems parsing JSON") from None
        if not isinstance(data, dict):
            raise _error(400, "Problems parsing JSON")
        return dict(data)

    def page(self, items: list[Any]) -> _Reply:
        """One page of ``items`` with GitHub's ``Link`` header."""
        per_page = min(max(_positive(self.arg("per_page"), 30), 1), 100)
        page = _positive(self.arg("page"), 1)
        last = max(1, math.ceil(len(items) / per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        links = []

        def link(number: int, rel: str) -> str:
            query = {k: v[-1] for k, v in self.query.items()} | {"page": str(number)}
            return f'<{self.fake.url}{self.path}?{urlencode(query)}>; rel="{rel}"'

        if page > 1:
            links.append(link(min(page - 1, last), "prev"))
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links.append(link(1, "first"))
        return _Reply(200, chunk, {"link": ", ".join(links)} if links else {})


def _positive(value: str | None, default: int) -> int:
    try:
        number = int(value) if value is not None else default
    except ValueError:
        return default
    return number if number > 0 else default


# -- routes -------------------------------------------------------------------------------


def _issue_exists(repo: FakeRepo, number: int) -> bool:
    return number in repo.issues or number in repo.pulls


def _comment_body(request: _Request) -> str:
    data = request.json()
    body = data.get("body")
    if not isinstance(body, str):
        raise _invalid(
            {"resource": "IssueComment", "code": "missing_field", "field": "body"},
        )
    if len(body) > COMMENT_LIMIT:
        raise _invalid(
            {
                "resource": "IssueComment",
                "code": "custom",
                "field": "body",
                "message": f"Body is too long (maximum is {COMMENT_LIMIT} characters)",
            }
        )
    return body


def _list_comments(request: _Request) -> _Reply:
    number = int(request.params["number"])
    if not _issue_exists(request.repo, number):
        raise _error(404, "Not Found")
    since = request.arg("since")
    comments = request.repo.comments.get(number, [])
    if since:
        comments = [c for c in comments if _stamp(c.updated_at) >= since]
    items = [request.fake.issue_comment(request.repo, c) for c in sorted(comments, key=_by_id)]
    return request.page(items)


def _by_id(comment: FakeComment) -> int:
    return comment.id


def _create_comment(request: _Request) -> _Reply:
    number = int(request.params["number"])
    if not _issue_exists(request.repo, number):
        raise _error(404, "Not Found")
    body = _comment_body(request)
    comment = request.repo.add_comment(number, body, user=request.fake.login)
    data = request.fake.issue_comment(request.repo, comment)
    return _Reply(201, data, {"location": data["url"]})


def _comment_or_404(request: _Request) -> FakeComment:
    comment = request.repo.find_comment(int(request.params["id"]))
    if comment is None:
        raise _error(404, "Not Found")
    return comment


def _update_comment(request: _Request) -> _Reply:
    comment = _comment_or_404(request)
    comment.body = _comment_body(request)
    comment.updated_at = request.fake.clock()
    return _Reply(200, request.fake.issue_comment(request.repo, comment))


def _delete_comment(request: _Request) -> _Reply:
    comment = _comment_or_404(request)
    request.repo.comments[comment.issue].remove(comment)
    request.repo.reactions.pop(comment.id, None)
    return _Reply(204)


def _reaction(request: _Request, entry: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": entry["id"],
        "node_id": f"REA_{entry['id']}",
        "user": request.fake.user(entry["user"]),
        "content": entry["content"],
        "created_at": _stamp(entry["created_at"]),
    }


def _list_reactions(request: _Request) -> _Reply:
    comment = _comment_or_404(request)
    wanted = request.arg("content")
    if wanted is not None and wanted not in REACTIONS:
        raise _invalid({"resource": "Reaction", "code": "invalid", "field": "content"})
    given = request.repo.reactions.get(comment.id, [])
    return request.page(
        [_reaction(request, r) for r in given if wanted is None or r["content"] == wanted]
    )


def _create_reaction(request: _Request) -> _Reply:
    comment = _comment_or_404(request)
    content = request.json().get("content")
    if content not in REACTIONS:
        raise _invalid({"resource": "Reaction", "code": "invalid", "field": "content"})
    given = request.repo.reactions.setdefault(comment.id, [])
    for entry in given:
        if entry["user"] == request.fake.login and entry["content"] == content:
            return _Reply(200, _reaction(request, entry))
    entry = {
        "id": request.repo.next_id(),
        "user": request.fake.login,
        "content": content,
        "created_at": request.fake.clock(),
    }
    given.append(entry)
    return _Reply(201, _reaction(request, entry))


def _create_status(request: _Request) -> _Reply:
    sha = request.params["sha"]
    if not _SHA.match(sha):
        raise _invalid(
            {"resource": "Status", "code": "custom", "field": "sha"},
            message=f"No commit found for SHA: {sha}",
        )
    data = request.json()
    state = data.get("state")
    if state not in STATES:
        raise _invalid({"resource": "Status", "code": "invalid", "field": "state"})
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise _invalid({"resource": "Status", "code": "invalid", "field": "description"})
    if description is not None and len(description) > DESCRIPTION_LIMIT:
        raise _invalid(
            {
                "resource": "Status",
                "code": "custom",
                "field": "description",
                "message": f"description is too long (maximum is {DESCRIPTION_LIMIT} characters)",
            }
        )
    target_url = data.get("target_url")
    if target_url is not None and not isinstance(target_url, str):
        raise _invalid({"resource": "Status", "code": "invalid", "field": "target_url"})
    context = data.get("context", "default")
    if not isinstance(context, str) or not context:
        raise _invalid({"resource": "Status", "code": "invalid", "field": "context"})
    entry = {
        "id": request.repo.next_id(),
        "state": state,
        "description": description,
        "target_url": target_url,
        "context": context,
        "creator": request.fake.login,
        "created_at": request.fake.clock(),
    }
    request.repo.statuses.setdefault(sha, []).append(entry)
    answer = request.fake.status(request.repo, sha, entry)
    return _Reply(201, answer, {"location": answer["url"]})


def _ref_sha(request: _Request) -> str:
    ref = request.params["ref"]
    sha = request.repo.resolve(ref)
    if sha is None and _SHA.match(ref):
        sha = ref  # statuses may sit on commits the fake never saw
    if sha is None:
        raise _invalid(
            {"resource": "Commit", "code": "invalid", "field": "ref"},
            message=f"No commit found for SHA: {ref}",
        )
    return sha


def _list_statuses(request: _Request) -> _Reply:
    sha = _ref_sha(request)
    entries = list(reversed(request.repo.statuses.get(sha, [])))
    return request.page([request.fake.status(request.repo, sha, e) for e in entries])


def _combined_status(request: _Request) -> _Reply:
    sha = _ref_sha(request)
    latest: dict[str, Mapping[str, Any]] = {}
    for entry in request.repo.statuses.get(sha, []):
        latest[entry["context"].lower()] = entry
    states = {entry["state"] for entry in latest.values()}
    if states & {"error", "failure"}:
        state = "failure"
    elif not states or "pending" in states:
        state = "pending"
    else:
        state = "success"
    per_page = min(max(_positive(request.arg("per_page"), 30), 1), 100)
    page = _positive(request.arg("page"), 1)
    chosen = list(latest.values())[(page - 1) * per_page : page * per_page]
    statuses = []
    for chosen_entry in chosen:
        full = request.fake.status(request.repo, sha, chosen_entry)
        statuses.append({key: full[key] for key in full if key != "creator"})
    api = f"{request.fake.url}/repos/{request.repo.full_name}"
    return _Reply(
        200,
        {
            "state": state,
            "statuses": statuses,
            "sha": sha,
            "total_count": len(latest),
            "repository": request.fake.minimal_repository(request.repo),
            "commit_url": f"{api}/commits/{sha}",
            "url": f"{api}/commits/{sha}/status",
        },
    )


def _commit_pulls(request: _Request) -> _Reply:
    repo = request.repo
    sha = repo.resolve(request.params["sha"]) or request.params["sha"]
    known = {p.head_sha for p in repo.pulls.values()} | {
        p.merge_commit_sha for p in repo.pulls.values() if p.merge_commit_sha
    }
    if sha not in repo.commits and sha not in repo.commit_pulls and sha not in known:
        raise _invalid(
            {"resource": "Commit", "code": "invalid", "field": "commit_sha"},
            message=f"No commit found for SHA: {request.params['sha']}",
        )
    numbers = set(repo.commit_pulls.get(sha, []))
    numbers |= {p.number for p in repo.pulls.values() if sha in {p.head_sha, p.merge_commit_sha}}
    pulls = [repo.pulls[n] for n in sorted(numbers) if n in repo.pulls]
    return request.page([request.fake.pull_request(repo, p, full=False) for p in pulls])


def _get_pull(request: _Request) -> _Reply:
    pull = request.repo.pulls.get(int(request.params["number"]))
    if pull is None:
        raise _error(404, "Not Found")
    return _Reply(200, request.fake.pull_request(request.repo, pull, full=True))


def _list_pulls(request: _Request) -> _Reply:
    repo = request.repo
    state = request.arg("state", "open")
    if state not in {"open", "closed", "all"}:
        raise _invalid({"resource": "PullRequest", "code": "invalid", "field": "state"})
    pulls = [p for p in repo.pulls.values() if state in {"all", p.state}]
    head = request.arg("head")
    if head and ":" in head:  # GitHub ignores a head filter without its "owner:"
        owner, _, ref = head.partition(":")
        pulls = [p for p in pulls if owner.lower() == repo.owner.lower() and p.head == ref]
    if base := request.arg("base"):
        pulls = [p for p in pulls if p.base == base]
    sort = request.arg("sort", "created")
    direction = request.arg("direction", "desc" if sort == "created" else "asc")
    if sort == "updated":
        pulls.sort(key=lambda p: (p.updated_at, p.number))
    else:
        pulls.sort(key=lambda p: (p.created_at, p.number))
    if direction == "desc":
        pulls.reverse()
    return request.page([request.fake.pull_request(repo, p, full=False) for p in pulls])


def _create_pull(request: _Request) -> _Reply:
    repo = request.repo
    data = request.json()
    missing = [key for key in ("title", "head", "base") if not isinstance(data.get(key), str)]
    if missing:
        raise _invalid(
            *({"resource": "PullRequest", "code": "missing_field", "field": k} for k in missing)
        )
    head = str(data["head"])
    if ":" in head:
        owner, _, head = head.partition(":")
        if owner.lower() != repo.owner.lower():
            raise _invalid({"resource": "PullRequest", "code": "invalid", "field": "head"})
    base = str(data["base"])
    for name, branch in (("head", head), ("base", base)):
        if f"refs/heads/{branch}" not in repo.refs:
            raise _invalid({"resource": "PullRequest", "code": "invalid", "field": name})
    for pull in repo.pulls.values():
        if pull.state == "open" and pull.head == head and pull.base == base:
            raise _invalid(
                {
                    "resource": "PullRequest",
                    "code": "custom",
                    "message": f"A pull request already exists for {repo.owner}:{head}.",
                }
            )
    head_sha, base_sha = repo.refs[f"refs/heads/{head}"], repo.refs[f"refs/heads/{base}"]
    if head_sha in repo.ancestors(base_sha):
        raise _invalid(
            {
                "resource": "PullRequest",
                "code": "custom",
                "message": f"No commits between {base} and {head}",
            }
        )
    body = data.get("body")
    pull = repo.add_pull(
        head,
        base=base,
        title=str(data["title"]),
        body=body if isinstance(body, str) else None,
        user=request.fake.login,
        head_sha=head_sha,
    )
    pull.draft = bool(data.get("draft", False))
    answer = request.fake.pull_request(repo, pull, full=True)
    return _Reply(201, answer, {"location": answer["url"]})


def _permission(request: _Request) -> _Reply:
    login = request.params["user"]
    role = {k.lower(): v for k, v in request.repo.permissions.items()}.get(login.lower())
    if role is None:
        raise _error(404, "Not Found")
    user = request.fake.user(login) | {"role_name": role}
    return _Reply(200, {"permission": ROLES.get(role, "read"), "role_name": role, "user": user})


def _get_ref(request: _Request) -> _Reply:
    name = "refs/" + request.params["ref"].removeprefix("refs/")
    if name not in request.repo.refs:
        raise _error(404, "Not Found")
    return _Reply(200, request.fake.git_ref(request.repo, name))


def _create_ref(request: _Request) -> _Reply:
    repo = request.repo
    data = request.json()
    ref, sha = data.get("ref"), data.get("sha")
    if not isinstance(ref, str) or not isinstance(sha, str):
        missing = [k for k in ("ref", "sha") if not isinstance(data.get(k), str)]
        raise _invalid(*({"resource": "Ref", "code": "missing_field", "field": k} for k in missing))
    if not ref.startswith("refs/") or ref.count("/") < 2:
        raise _invalid(
            {"resource": "Ref", "code": "invalid", "field": "ref"},
            message="ref must start with 'refs' and have at least two slashes.",
        )
    if sha not in repo.commits:
        raise _invalid(
            {"resource": "Ref", "code": "invalid", "field": "sha"},
            message="Object does not exist",
        )
    if ref in repo.refs:
        raise _invalid(
            {"resource": "Ref", "code": "already_exists", "field": "ref"},
            message="Reference already exists",
        )
    repo.refs[ref] = sha
    answer = request.fake.git_ref(repo, ref)
    return _Reply(201, answer, {"location": answer["url"]})


def _get_content(request: _Request) -> _Reply:
    repo = request.repo
    ref = request.arg("ref") or repo.default_branch
    sha = repo.resolve(ref)
    if sha is None:
        raise _error(404, f"No commit found for the ref {ref}")
    path = request.params["path"].strip("/")
    tree = repo.commits[sha].tree
    if path in tree:
        data = tree[path]
        entry = request.fake.content_entry(repo, path, ref, data)
        encoded = base64.encodebytes(data).decode("ascii")
        return _Reply(200, entry | {"content": encoded, "encoding": "base64"})
    prefix = f"{path}/" if path else ""
    names = sorted({p[len(prefix) :].split("/")[0] for p in tree if p.startswith(prefix)})
    if not names:
        raise _error(404, "Not Found")
    listing = []
    for name in names:
        full = prefix + name
        listing.append(request.fake.content_entry(repo, full, ref, tree.get(full)))
    return _Reply(200, listing)


def _put_content(request: _Request) -> _Reply:
    repo = request.repo
    data = request.json()
    path = request.params["path"].strip("/")
    for key in ("message", "content"):
        if not isinstance(data.get(key), str):
            raise _error(422, f'Invalid request.\n\n"{key}" wasn\'t supplied.')
    try:
        content = base64.b64decode(str(data["content"]), validate=True)
    except (binascii.Error, ValueError):
        raise _error(422, "content is not valid Base64") from None
    branch = data.get("branch") or repo.default_branch
    ref = f"refs/heads/{branch}"
    if ref not in repo.refs:
        raise _error(404, f"Branch {branch} not found")
    current = repo.commits[repo.refs[ref]].tree.get(path)
    given = data.get("sha")
    if current is not None and not given:
        raise _error(422, 'Invalid request.\n\n"sha" wasn\'t supplied.')
    if current is not None and given != blob_sha(current):
        raise _error(409, f"{path} does not match {given}")
    sha = repo.commit({path: content}, branch=str(branch), message=str(data["message"]))
    commit = repo.commits[sha]
    fake = request.fake
    api = f"{fake.url}/repos/{repo.full_name}"
    person = {"name": fake.login, "email": f"{fake.login}@users.noreply.example", "date": ""}
    person["date"] = _stamp(commit.date)
    answer = {
        "content": fake.content_entry(repo, path, str(branch), content),
        "commit": {
            "sha": sha,
            "node_id": f"C_{sha}",
            "url": f"{api}/git/commits/{sha}",
            "html_url": f"{fake.root}/{repo.full_name}/commit/{sha}",
            "author": person,
            "committer": person,
            "message": commit.message,
            "tree": {"url": f"{api}/git/trees/{sha}", "sha": sha},
            "parents": [
                {
                    "url": f"{api}/git/commits/{parent}",
                    "html_url": f"{fake.root}/{repo.full_name}/commit/{parent}",
                    "sha": parent,
                }
                for parent in commit.parents
            ],
            "verification": {
                "verified": False,
                "reason": "unsigned",
                "signature": None,
                "payload": None,
                "verified_at": None,
            },
        },
    }
    return _Reply(201 if current is None else 200, answer)


def _rate_limit(request: _Request) -> _Reply:
    fake = request.fake
    core = {
        "limit": fake.rate_limit,
        "remaining": max(0, fake.rate_limit - fake.rate_used),
        "used": fake.rate_used,
        "reset": fake.rate_reset,
    }
    search = {"limit": 30, "remaining": 30, "used": 0, "reset": int(fake.clock()) + 60}
    return _Reply(200, {"resources": {"core": core, "search": search}, "rate": core})


_REPO = r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
_Route = Callable[[_Request], _Reply]
_ROUTES: list[tuple[re.Pattern[str], dict[str, _Route]]] = [
    (
        re.compile(_REPO + r"/issues/(?P<number>\d+)/comments$"),
        {"GET": _list_comments, "POST": _create_comment},
    ),
    (
        re.compile(_REPO + r"/issues/comments/(?P<id>\d+)$"),
        {"PATCH": _update_comment, "DELETE": _delete_comment},
    ),
    (
        re.compile(_REPO + r"/issues/comments/(?P<id>\d+)/reactions$"),
        {"GET": _list_reactions, "POST": _create_reaction},
    ),
    (re.compile(_REPO + r"/statuses/(?P<sha>[^/]+)$"), {"POST": _create_status}),
    (re.compile(_REPO + r"/commits/(?P<ref>.+)/statuses$"), {"GET": _list_statuses}),
    (re.compile(_REPO + r"/commits/(?P<ref>.+)/status$"), {"GET": _combined_status}),
    (re.compile(_REPO + r"/commits/(?P<sha>.+)/pulls$"), {"GET": _commit_pulls}),
    (re.compile(_REPO + r"/pulls/(?P<number>\d+)$"), {"GET": _get_pull}),
    (re.compile(_REPO + r"/pulls$"), {"GET": _list_pulls, "POST": _create_pull}),
    (
        re.compile(_REPO + r"/collaborators/(?P<user>[^/]+)/permission$"),
        {"GET": _permission},
    ),
    (re.compile(_REPO + r"/git/refs$"), {"POST": _create_ref}),
    (re.compile(_REPO + r"/git/ref/(?P<ref>.+)$"), {"GET": _get_ref}),
    (re.compile(_REPO + r"/contents/?(?P<path>.*)$"), {"GET": _get_content, "PUT": _put_content}),
    (re.compile(r"^/rate_limit$"), {"GET": _rate_limit}),
]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeGitHub


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs (40 ms each)
    server_version = "GitHub.com"
    sys_version = ""
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read :attr:`FakeGitHub.requests` instead."""

    def _handle(self) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        length = self.headers.get("content-length", "0")
        size = int(length) if length.isdigit() else 0
        if size > _MAX_BODY:
            self.close_connection = True
            self._send(413, {}, b"")
            return
        body = self.rfile.read(size) if size else b""
        query = parse_qs(parts.query, keep_blank_values=True)
        relative = parts.path.removeprefix(fake.prefix) if fake.prefix else parts.path
        asked = fake._record(RecordedRequest(self.command, relative, query, headers, body))
        scripted = fake._take_fault(self.command, relative)
        if scripted is not None:
            if scripted.delay:
                time.sleep(scripted.delay)
            if scripted.disconnect:
                self.close_connection = True
                return
            with fake._lock:
                reply_headers = {**fake._rate_headers(), **scripted.headers}
            if not scripted.body.lstrip().startswith(b"<"):
                reply_headers["content-type"] = "application/json; charset=utf-8"
            else:
                reply_headers["content-type"] = "text/html"
            fake._answer(asked, scripted.status, reply_headers, scripted.body)
            self._send(scripted.status, reply_headers, scripted.body)
            return
        with fake._lock:
            try:
                reply = fake._dispatch(self.command, parts.path, query, headers, body)
            except _Reply as answer:
                reply = answer
            except Exception as exc:  # a bug in the fake: say so rather than hang up
                fake.internal_errors.append(f"{self.command} {relative}: {exc!r}")
                reply = _error(500, f"FakeGitHub failed: {exc!r}")
        raw = b"" if reply.body is None else json.dumps(reply.body).encode()
        reply_headers = dict(reply.headers)
        reply_headers["x-github-api-version-selected"] = headers.get(
            "x-github-api-version", SUPPORTED_VERSIONS[0]
        )
        if raw:
            reply_headers["content-type"] = "application/json; charset=utf-8"
        fake._answer(asked, reply.status, reply_headers, raw)
        self._send(reply.status, reply_headers, raw)

    def _send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("x-github-request-id", f"FAKE:{id(self):x}")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (a timeout in a test)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle
