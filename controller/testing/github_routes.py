"""The operations :class:`~controller.testing.github.FakeGitHub` answers, one function each.

Owns :data:`ROUTES` (path pattern and method to the function that answers it): issue
comments (list, create, update, delete), reactions on comments, commit statuses (create,
list, combined), pull requests of a commit, pull requests (get, list, create),
collaborator permission, git refs (get, create), contents (get, create or update) and
``/rate_limit``; and the limits GitHub enforces on what is posted (:data:`COMMENT_LIMIT`,
:data:`DESCRIPTION_LIMIT`, :data:`STATES`, :data:`SHA_PATTERN`). Each route takes a
:class:`~controller.testing.github_route_io.RouteRequest` and answers a
:class:`~controller.testing.github_route_io.Reply`. Called by the fake's dispatcher, under
its lock.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from controller.testing.github_repo import (
    REACTIONS,
    ROLES,
    FakeComment,
    FakeRepo,
    blob_sha,
    iso_time,
)
from controller.testing.github_route_io import (
    Reply,
    RouteRequest,
    error_reply,
    invalid_reply,
    positive_int,
)

__all__ = [
    "COMMENT_LIMIT",
    "DESCRIPTION_LIMIT",
    "ROUTES",
    "SHA_PATTERN",
    "STATES",
    "Route",
]

#: GitHub refuses longer issue comments.
COMMENT_LIMIT = 65536
#: GitHub refuses longer commit status descriptions.
DESCRIPTION_LIMIT = 140
#: The commit status states GitHub accepts.
STATES = ("error", "failure", "pending", "success")
#: A full commit sha (SHA-1 or SHA-256).
SHA_PATTERN = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


# -- routes -------------------------------------------------------------------------------


def _issue_exists(repo: FakeRepo, number: int) -> bool:
    return number in repo.issues or number in repo.pulls


def _comment_body(request: RouteRequest) -> str:
    data = request.json()
    body = data.get("body")
    if not isinstance(body, str):
        raise invalid_reply(
            {"resource": "IssueComment", "code": "missing_field", "field": "body"},
        )
    if len(body) > COMMENT_LIMIT:
        raise invalid_reply(
            {
                "resource": "IssueComment",
                "code": "custom",
                "field": "body",
                "message": f"Body is too long (maximum is {COMMENT_LIMIT} characters)",
            }
        )
    return body


def _list_comments(request: RouteRequest) -> Reply:
    number = int(request.params["number"])
    if not _issue_exists(request.repo, number):
        raise error_reply(404, "Not Found")
    since = request.arg("since")
    comments = request.repo.comments.get(number, [])
    if since:
        comments = [c for c in comments if iso_time(c.updated_at) >= since]
    items = [request.fake.issue_comment(request.repo, c) for c in sorted(comments, key=_by_id)]
    return request.page(items)


def _by_id(comment: FakeComment) -> int:
    return comment.id


def _create_comment(request: RouteRequest) -> Reply:
    number = int(request.params["number"])
    if not _issue_exists(request.repo, number):
        raise error_reply(404, "Not Found")
    body = _comment_body(request)
    comment = request.repo.add_comment(number, body, user=request.fake.login)
    data = request.fake.issue_comment(request.repo, comment)
    return Reply(201, data, {"location": data["url"]})


def _comment_or_404(request: RouteRequest) -> FakeComment:
    comment = request.repo.find_comment(int(request.params["id"]))
    if comment is None:
        raise error_reply(404, "Not Found")
    return comment


def _update_comment(request: RouteRequest) -> Reply:
    comment = _comment_or_404(request)
    comment.body = _comment_body(request)
    comment.updated_at = request.fake.clock()
    return Reply(200, request.fake.issue_comment(request.repo, comment))


def _delete_comment(request: RouteRequest) -> Reply:
    comment = _comment_or_404(request)
    request.repo.comments[comment.issue].remove(comment)
    request.repo.reactions.pop(comment.id, None)
    return Reply(204)


def _reaction(request: RouteRequest, entry: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": entry["id"],
        "node_id": f"REA_{entry['id']}",
        "user": request.fake.user(entry["user"]),
        "content": entry["content"],
        "created_at": iso_time(entry["created_at"]),
    }


def _list_reactions(request: RouteRequest) -> Reply:
    comment = _comment_or_404(request)
    wanted = request.arg("content")
    if wanted is not None and wanted not in REACTIONS:
        raise invalid_reply({"resource": "Reaction", "code": "invalid", "field": "content"})
    given = request.repo.reactions.get(comment.id, [])
    return request.page(
        [_reaction(request, r) for r in given if wanted is None or r["content"] == wanted]
    )


def _create_reaction(request: RouteRequest) -> Reply:
    comment = _comment_or_404(request)
    content = request.json().get("content")
    if content not in REACTIONS:
        raise invalid_reply({"resource": "Reaction", "code": "invalid", "field": "content"})
    given = request.repo.reactions.setdefault(comment.id, [])
    for entry in given:
        if entry["user"] == request.fake.login and entry["content"] == content:
            return Reply(200, _reaction(request, entry))
    entry = {
        "id": request.repo.next_id(),
        "user": request.fake.login,
        "content": content,
        "created_at": request.fake.clock(),
    }
    given.append(entry)
    return Reply(201, _reaction(request, entry))


def _create_status(request: RouteRequest) -> Reply:
    sha = request.params["sha"]
    if not SHA_PATTERN.match(sha):
        raise invalid_reply(
            {"resource": "Status", "code": "custom", "field": "sha"},
            message=f"No commit found for SHA: {sha}",
        )
    data = request.json()
    state = data.get("state")
    if state not in STATES:
        raise invalid_reply({"resource": "Status", "code": "invalid", "field": "state"})
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid_reply({"resource": "Status", "code": "invalid", "field": "description"})
    if description is not None and len(description) > DESCRIPTION_LIMIT:
        raise invalid_reply(
            {
                "resource": "Status",
                "code": "custom",
                "field": "description",
                "message": f"description is too long (maximum is {DESCRIPTION_LIMIT} characters)",
            }
        )
    target_url = data.get("target_url")
    if target_url is not None and not isinstance(target_url, str):
        raise invalid_reply({"resource": "Status", "code": "invalid", "field": "target_url"})
    context = data.get("context", "default")
    if not isinstance(context, str) or not context:
        raise invalid_reply({"resource": "Status", "code": "invalid", "field": "context"})
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
    return Reply(201, answer, {"location": answer["url"]})


def _ref_sha(request: RouteRequest) -> str:
    ref = request.params["ref"]
    sha = request.repo.resolve(ref)
    if sha is None and SHA_PATTERN.match(ref):
        sha = ref  # statuses may sit on commits the fake never saw
    if sha is None:
        raise invalid_reply(
            {"resource": "Commit", "code": "invalid", "field": "ref"},
            message=f"No commit found for SHA: {ref}",
        )
    return sha


def _list_statuses(request: RouteRequest) -> Reply:
    sha = _ref_sha(request)
    entries = list(reversed(request.repo.statuses.get(sha, [])))
    return request.page([request.fake.status(request.repo, sha, e) for e in entries])


def _combined_status(request: RouteRequest) -> Reply:
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
    per_page = min(max(positive_int(request.arg("per_page"), 30), 1), 100)
    page = positive_int(request.arg("page"), 1)
    chosen = list(latest.values())[(page - 1) * per_page : page * per_page]
    statuses = []
    for chosen_entry in chosen:
        full = request.fake.status(request.repo, sha, chosen_entry)
        statuses.append({key: full[key] for key in full if key != "creator"})
    api = f"{request.fake.url}/repos/{request.repo.full_name}"
    return Reply(
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


def _commit_pulls(request: RouteRequest) -> Reply:
    repo = request.repo
    sha = repo.resolve(request.params["sha"]) or request.params["sha"]
    known = {p.head_sha for p in repo.pulls.values()} | {
        p.merge_commit_sha for p in repo.pulls.values() if p.merge_commit_sha
    }
    if sha not in repo.commits and sha not in repo.commit_pulls and sha not in known:
        # GitHub itself answers 422 here; its description documents only 200 and 409
        # (basic-error), so the fake answers 409: the client takes both as "no PR".
        raise error_reply(409, f"No commit found for SHA: {request.params['sha']}")
    numbers = set(repo.commit_pulls.get(sha, []))
    numbers |= {p.number for p in repo.pulls.values() if sha in {p.head_sha, p.merge_commit_sha}}
    pulls = [repo.pulls[n] for n in sorted(numbers) if n in repo.pulls]
    return request.page([request.fake.pull_request(repo, p, full=False) for p in pulls])


def _get_pull(request: RouteRequest) -> Reply:
    pull = request.repo.pulls.get(int(request.params["number"]))
    if pull is None:
        raise error_reply(404, "Not Found")
    return Reply(200, request.fake.pull_request(request.repo, pull, full=True))


def _update_pull(request: RouteRequest) -> Reply:
    """``PATCH /pulls/{n}``: title, body, state (open or closed) and base, as GitHub
    documents it ("Update a pull request"); 422 for a state it does not know."""
    pull = request.repo.pulls.get(int(request.params["number"]))
    if pull is None:
        raise error_reply(404, "Not Found")
    data = request.json()
    state = data.get("state", pull.state)
    if state not in {"open", "closed"} or (state == "open" and pull.merged):
        raise invalid_reply({"resource": "PullRequest", "code": "invalid", "field": "state"})
    for key in ("title", "body", "base"):
        if key in data and not isinstance(data[key], str | None):
            raise invalid_reply({"resource": "PullRequest", "code": "invalid", "field": key})
    pull.state = state
    pull.title = data.get("title", pull.title) or pull.title
    pull.body = data.get("body", pull.body)
    pull.base = data.get("base", pull.base) or pull.base
    pull.updated_at = time.time()
    return Reply(200, request.fake.pull_request(request.repo, pull, full=True))


def _list_pulls(request: RouteRequest) -> Reply:
    repo = request.repo
    state = request.arg("state", "open")
    if state not in {"open", "closed", "all"}:
        raise invalid_reply({"resource": "PullRequest", "code": "invalid", "field": "state"})
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


def _create_pull(request: RouteRequest) -> Reply:
    repo = request.repo
    data = request.json()
    missing = [key for key in ("title", "head", "base") if not isinstance(data.get(key), str)]
    if missing:
        raise invalid_reply(
            *({"resource": "PullRequest", "code": "missing_field", "field": k} for k in missing)
        )
    head = str(data["head"])
    if ":" in head:
        owner, _, head = head.partition(":")
        if owner.lower() != repo.owner.lower():
            raise invalid_reply({"resource": "PullRequest", "code": "invalid", "field": "head"})
    base = str(data["base"])
    for name, branch in (("head", head), ("base", base)):
        if f"refs/heads/{branch}" not in repo.refs:
            raise invalid_reply({"resource": "PullRequest", "code": "invalid", "field": name})
    for pull in repo.pulls.values():
        if pull.state == "open" and pull.head == head and pull.base == base:
            raise invalid_reply(
                {
                    "resource": "PullRequest",
                    "code": "custom",
                    "message": f"A pull request already exists for {repo.owner}:{head}.",
                }
            )
    head_sha, base_sha = repo.refs[f"refs/heads/{head}"], repo.refs[f"refs/heads/{base}"]
    if head_sha in repo.ancestors(base_sha):
        raise invalid_reply(
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
    return Reply(201, answer, {"location": answer["url"]})


def _permission(request: RouteRequest) -> Reply:
    login = request.params["user"]
    role = {k.lower(): v for k, v in request.repo.permissions.items()}.get(login.lower())
    if role is None:
        raise error_reply(404, "Not Found")
    user = request.fake.user(login) | {"role_name": role}
    return Reply(200, {"permission": ROLES.get(role, "read"), "role_name": role, "user": user})


def _get_ref(request: RouteRequest) -> Reply:
    name = "refs/" + request.params["ref"].removeprefix("refs/")
    if name not in request.repo.refs:
        raise error_reply(404, "Not Found")
    return Reply(200, request.fake.git_ref(request.repo, name))


def _create_ref(request: RouteRequest) -> Reply:
    repo = request.repo
    data = request.json()
    ref, sha = data.get("ref"), data.get("sha")
    if not isinstance(ref, str) or not isinstance(sha, str):
        missing = [k for k in ("ref", "sha") if not isinstance(data.get(k), str)]
        raise invalid_reply(
            *({"resource": "Ref", "code": "missing_field", "field": k} for k in missing)
        )
    if not ref.startswith("refs/") or ref.count("/") < 2:
        raise invalid_reply(
            {"resource": "Ref", "code": "invalid", "field": "ref"},
            message="ref must start with 'refs' and have at least two slashes.",
        )
    if sha not in repo.commits:
        raise invalid_reply(
            {"resource": "Ref", "code": "invalid", "field": "sha"},
            message="Object does not exist",
        )
    if ref in repo.refs:
        raise invalid_reply(
            {"resource": "Ref", "code": "already_exists", "field": "ref"},
            message="Reference already exists",
        )
    repo.refs[ref] = sha
    answer = request.fake.git_ref(repo, ref)
    return Reply(201, answer, {"location": answer["url"]})


def _get_content(request: RouteRequest) -> Reply:
    repo = request.repo
    ref = request.arg("ref") or repo.default_branch
    sha = repo.resolve(ref)
    if sha is None:
        raise error_reply(404, f"No commit found for the ref {ref}")
    path = request.params["path"].strip("/")
    tree = repo.commits[sha].tree
    if path in tree:
        data = tree[path]
        entry = request.fake.content_entry(repo, path, ref, data)
        encoded = base64.encodebytes(data).decode("ascii")
        return Reply(200, entry | {"content": encoded, "encoding": "base64"})
    prefix = f"{path}/" if path else ""
    names = sorted({p[len(prefix) :].split("/")[0] for p in tree if p.startswith(prefix)})
    if not names:
        raise error_reply(404, "Not Found")
    listing = []
    for name in names:
        full = prefix + name
        listing.append(request.fake.content_entry(repo, full, ref, tree.get(full)))
    return Reply(200, listing)


def _put_content(request: RouteRequest) -> Reply:
    repo = request.repo
    data = request.json()
    path = request.params["path"].strip("/")
    for key in ("message", "content"):
        if not isinstance(data.get(key), str):
            raise error_reply(422, f'Invalid request.\n\n"{key}" wasn\'t supplied.')
    try:
        content = base64.b64decode(str(data["content"]), validate=True)
    except (binascii.Error, ValueError):
        raise error_reply(422, "content is not valid Base64") from None
    branch = data.get("branch") or repo.default_branch
    ref = f"refs/heads/{branch}"
    if ref not in repo.refs:
        raise error_reply(404, f"Branch {branch} not found")
    current = repo.commits[repo.refs[ref]].tree.get(path)
    given = data.get("sha")
    if current is not None and not given:
        raise error_reply(422, 'Invalid request.\n\n"sha" wasn\'t supplied.')
    if current is not None and given != blob_sha(current):
        raise error_reply(409, f"{path} does not match {given}")
    sha = repo.commit({path: content}, branch=str(branch), message=str(data["message"]))
    commit = repo.commits[sha]
    fake = request.fake
    api = f"{fake.url}/repos/{repo.full_name}"
    person = {"name": fake.login, "email": f"{fake.login}@users.noreply.example", "date": ""}
    person["date"] = iso_time(commit.date)
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
    return Reply(201 if current is None else 200, answer)


def _rate_limit(request: RouteRequest) -> Reply:
    fake = request.fake
    core = {
        "limit": fake.rate_limit,
        "remaining": max(0, fake.rate_limit - fake.rate_used),
        "used": fake.rate_used,
        "reset": fake.rate_reset,
    }
    search = {"limit": 30, "remaining": 30, "used": 0, "reset": int(fake.clock()) + 60}
    return Reply(200, {"resources": {"core": core, "search": search}, "rate": core})


_REPO = r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
Route = Callable[[RouteRequest], Reply]
ROUTES: list[tuple[re.Pattern[str], dict[str, Route]]] = [
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
    (re.compile(_REPO + r"/pulls/(?P<number>\d+)$"), {"GET": _get_pull, "PATCH": _update_pull}),
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
