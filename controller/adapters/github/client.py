"""GitHub out: commit statuses, the one comment per pull request, permissions, revert PRs.

Owns what mdc says on GitHub's REST API (or GitHub Enterprise Server through
``MDC_GITHUB_API_URL``): a commit status per model and commit, the single plan/progress comment
on a pull request (found again by a hidden marker and edited in place, never duplicated), plain
answers to ``/mdc`` commands, who may give those commands (collaborator permission), which pull
requests a commit belongs to, and the pull request that puts a model's last good spec back after
a rollback; and GitHub's length limits on what it posts (:func:`fit_comment`,
:func:`fit_description`).

How each call is made -- pinned headers, pagination, rate limits, retries, refusals as
:class:`~controller.errors.PermanentError`, the token kept out of every message -- is
:class:`~controller.adapters.github.transport.GitHubAPI`.

Called by the reconciler (statuses, the PR comment, revert PRs) and the watch loop's command
handler (permissions, answers). :meth:`GitHubReporter.from_env` builds one from the
environment, or gives None when no token is configured.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from controller.adapters.github.transport import (
    DEFAULT_API_URL,
    GitHubAPI,
    as_int,
    bad_response,
    describe_response,
    field_of,
    response_json,
)
from controller.errors import PermanentError, Reason

__all__ = [
    "COMMENT_LIMIT",
    "DESCRIPTION_LIMIT",
    "PERMISSIONS",
    "STATES",
    "Comment",
    "GitHubReporter",
    "fit_comment",
    "fit_description",
]

log = logging.getLogger(__name__)

#: GitHub refuses longer issue comments (422 "Body is too long (maximum is 65536 characters)").
COMMENT_LIMIT = 65536
#: GitHub refuses longer commit status descriptions (422).
DESCRIPTION_LIMIT = 140
#: The commit status states GitHub accepts.
STATES = ("error", "failure", "pending", "success")
#: Repository roles, strongest first, as :meth:`GitHubReporter.permission` returns them.
PERMISSIONS = ("admin", "maintain", "write", "triage", "read", "none")
_WRITERS = frozenset({"admin", "maintain", "write"})

_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_ELLIPSIS = "\N{HORIZONTAL ELLIPSIS}"


@dataclass(frozen=True)
class Comment:
    """An issue or pull request comment as GitHub holds it."""

    id: int
    body: str
    #: The author's login; empty for a deleted account (GitHub's ``user: null``).
    user: str
    html_url: str

    @classmethod
    def from_api(cls, data: Any) -> Comment:
        """From GitHub's ``issue-comment`` object; :class:`TransientError` when malformed."""
        try:
            user = data.get("user") or {}
            comment = cls(
                id=int(data["id"]),
                body=str(data.get("body") or ""),
                user=str(user.get("login", "")),
                html_url=str(data["html_url"]),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            raise bad_response("an issue comment without id or html_url") from None
        return comment


def fit_description(text: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """``text`` on one line, cut with an ellipsis to at most ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + _ELLIPSIS


def _truncation_note(left_out: int, limit: int) -> str:
    return (
        f"\n\n---\n*{_ELLIPSIS} comment truncated by mdc: {left_out:,} characters left out "
        f"(GitHub allows {limit:,}).*"
    )


def fit_comment(body: str, marker: str = "", limit: int = COMMENT_LIMIT) -> str:
    """``body`` as it can be posted: starting with ``marker`` unless it already holds it, and
    at most ``limit`` characters.

    A longer body is cut, on a line boundary where one lies in the second half of what fits,
    and ends with a note saying how many characters were left out; a code fence left open by
    the cut is closed first. The marker always survives the cut: one that only appears past
    the cut is put at the start as well.
    """
    if marker and marker not in body:
        body = f"{marker}\n{body}"
    if len(body) <= limit:
        return body
    fence = "\n```"
    budget = limit - len(_truncation_note(len(body), limit)) - len(fence)
    if marker and body.find(marker) + len(marker) > budget:
        body = f"{marker}\n{body}"
        budget = limit - len(_truncation_note(len(body), limit)) - len(fence)
    if budget < len(marker) + 1:
        raise ValueError(f"a comment limit of {limit} leaves no room for the body")
    head = body[:budget]
    floor = max(budget // 2, body.find(marker) + len(marker) if marker else 0)
    if (newline := head.rfind("\n")) >= floor:
        head = head[:newline]
    left_out = len(body) - len(head)
    if head.count("```") % 2:
        head += fence
    return head + _truncation_note(left_out, limit)


class GitHubReporter:
    """What mdc says on GitHub about one repository ("owner/name")."""

    def __init__(
        self,
        repository: str,
        token: str,
        *,
        api_url: str = DEFAULT_API_URL,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 5,
        timeout: float = 10.0,
        max_wait: float = 60.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        owner, _, name = repository.partition("/")
        if not (_OWNER.match(owner) and _NAME.match(name) and name not in {".", ".."}):
            raise ValueError(f"repository must be 'owner/name', got {repository!r}")
        self.repository = f"{owner}/{name}"
        self.owner = owner
        self._api = GitHubAPI(
            self.repository,
            token,
            api_url=api_url,
            client=client,
            sleep=sleep,
            clock=clock,
            max_attempts=max_attempts,
            timeout=timeout,
            max_wait=max_wait,
            jitter=jitter,
        )
        self.api_url = self._api.api_url
        self._repo_path = f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"

    @classmethod
    def from_env(
        cls, repository: str, env: Mapping[str, str] | None = None, **options: Any
    ) -> GitHubReporter | None:
        """A reporter configured from the environment, or None when it names no token.

        The token comes from ``MDC_GITHUB_TOKEN``, else the file ``MDC_GITHUB_TOKEN_FILE``
        names, else ``GITHUB_TOKEN``; the API root from ``MDC_GITHUB_API_URL`` (GitHub
        Enterprise Server: ``https://HOST/api/v3``). A token file that is named but cannot be
        read, or is empty, is a :class:`PermanentError` ``GitHubTokenUnreadable``. ``options``
        go to the constructor.
        """
        env = os.environ if env is None else env
        token = env.get("MDC_GITHUB_TOKEN", "").strip()
        if not token and (file := env.get("MDC_GITHUB_TOKEN_FILE", "").strip()):
            try:
                token = Path(file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or "not UTF-8 text"
                raise PermanentError(
                    f"GitHub token file {file!r} cannot be read: {why}",
                    reason=Reason.GITHUB_TOKEN_UNREADABLE,
                ) from None
            if not token:
                raise PermanentError(
                    f"GitHub token file {file!r} is empty", reason=Reason.GITHUB_TOKEN_UNREADABLE
                )
        token = token or env.get("GITHUB_TOKEN", "").strip()
        if not token:
            return None
        api_url = env.get("MDC_GITHUB_API_URL", "").strip() or DEFAULT_API_URL
        return cls(repository, token, api_url=api_url, **options)

    def __repr__(self) -> str:
        return f"GitHubReporter(repository={self.repository!r}, api_url={self.api_url!r})"

    def close(self) -> None:
        """Close the HTTP client when this reporter made it."""
        self._api.close()

    def __enter__(self) -> GitHubReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commit statuses -----------------------------------------------------------------

    def set_status(
        self,
        sha: str,
        context: str,
        state: str,
        description: str,
        target_url: str | None = None,
    ) -> None:
        """Set the commit status ``context`` on ``sha``; the description is cut to 140
        characters with an ellipsis."""
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        if not sha or not context:
            raise ValueError("a commit status needs a sha and a context")
        payload: dict[str, Any] = {
            "state": state,
            "context": context,
            "description": fit_description(description),
        }
        if target_url:
            payload["target_url"] = target_url
        self._api.request("POST", f"{self._repo_path}/statuses/{quote(sha, safe='')}", body=payload)

    # -- comments -------------------------------------------------------------------------

    def find_comment(self, number: int, marker: str) -> Comment | None:
        """The first comment on issue or pull request ``number`` whose body holds ``marker``."""
        if not marker:
            raise ValueError("the marker must not be empty")
        for page in self._api.pages(f"{self._repo_path}/issues/{int(number)}/comments"):
            for item in page:
                if marker in str(field_of(item, "body") or ""):
                    return Comment.from_api(item)
        return None

    def upsert_comment(self, number: int, body: str, marker: str) -> Comment:
        """Make the one comment carrying ``marker`` on ``number`` say ``body``: edited when it
        exists and differs, left alone when it already says it, created otherwise.

        The marker is put at the start of the body unless the body holds it; a body over
        GitHub's limit is cut (see :func:`fit_comment`).
        """
        if not marker:
            raise ValueError("the marker must not be empty")
        text = fit_comment(body, marker)
        existing = self.find_comment(number, marker)
        if existing is None:
            return self._post_comment(number, text)
        if existing.body == text:
            return existing
        response = self._api.request(
            "PATCH", f"{self._repo_path}/issues/comments/{existing.id}", body={"body": text}
        )
        return Comment.from_api(response_json(response))

    def comment(self, number: int, body: str) -> Comment:
        """A new comment on issue or pull request ``number`` (cut to GitHub's limit)."""
        return self._post_comment(number, fit_comment(body))

    def _post_comment(self, number: int, text: str) -> Comment:
        path = f"{self._repo_path}/issues/{int(number)}/comments"
        return Comment.from_api(response_json(self._api.request("POST", path, body={"body": text})))

    # -- pull requests and permissions -----------------------------------------------------

    def pulls_for_commit(self, sha: str) -> list[int]:
        """Numbers of the pull requests ``sha`` belongs to, merged ones included.

        A commit GitHub does not know belongs to none: GitHub answers 422 ("No commit
        found for SHA"), which its REST description does not list; the description
        lists 409 (Conflict: an empty repository), which means the same here."""
        if not sha:
            raise ValueError("a commit sha is needed")
        numbers: list[int] = []
        path = f"{self._repo_path}/commits/{quote(sha, safe='')}/pulls"
        for page in self._api.pages(path, empty_on=_NO_SUCH_COMMIT):
            for item in page:
                if (
                    number := as_int(field_of(item, "number"))
                ) is not None and number not in numbers:
                    numbers.append(number)
        return numbers

    def permission(self, user: str) -> str:
        """``user``'s role on the repository, one of :data:`PERMISSIONS`; "none" for
        someone who is not a collaborator (GitHub's 404) or an unrecognised answer.

        GitHub's ``permission`` field folds ``maintain`` into ``write`` and ``triage`` into
        ``read``; ``role_name`` keeps them apart, so it wins when it names a known role.
        """
        if not user:
            raise ValueError("a user login is needed")
        path = f"{self._repo_path}/collaborators/{quote(user, safe='')}/permission"
        response = self._api.request("GET", path, accept=(404,))
        if response.status_code == 404:
            return "none"
        data = response_json(response)
        for key in ("role_name", "permission"):
            if (value := str(field_of(data, key) or "").lower()) in PERMISSIONS:
                return value
        return "none"

    def can_write(self, user: str) -> bool:
        """Whether ``user`` may push: admin, maintain or write."""
        return self.permission(user) in _WRITERS

    def open_revert_pr(  # noqa: PLR0917 - the reconciler passes them in this order
        self, base: str, path: str, content: bytes, title: str, body: str, branch: str
    ) -> int:
        """The number of an open pull request from ``branch`` into ``base`` in which ``path``
        holds ``content``, opened when there is none.

        Idempotent: the branch is created from ``base`` when missing (reused when it exists),
        the file written only when it differs, and an open pull request with that head is
        reused. Use a branch name unique to the revert (an existing branch is not reset).
        :class:`PermanentError` ``NothingToRevert`` when ``base`` already holds the content.
        """
        if not (base and path and branch and title):
            raise ValueError("base, path, branch and title are needed")
        number = self._open_pull(branch)
        if number is None:
            self._ensure_branch(base, branch)
        self._write_file(branch, path, content, title)
        if number is not None:
            return number
        payload = {"title": title, "head": branch, "base": base, "body": body}
        response = self._api.request(
            "POST", f"{self._repo_path}/pulls", body=payload, accept=(422,)
        )
        if response.status_code != 422:
            return _number(response_json(response))
        detail = describe_response(response)
        if "no commits between" in detail.lower():
            raise PermanentError(
                f"{base} already holds {path} as it should be: nothing to revert",
                reason=Reason.NOTHING_TO_REVERT,
            )
        if "already exists" in detail.lower() and (number := self._open_pull(branch)):
            return number  # opened by someone else in the meantime
        raise self._api.refused("POST", f"{self._repo_path}/pulls", response)

    def open_change_pr(  # noqa: PLR0917 - the same arguments as open_revert_pr
        self, base: str, path: str, content: bytes, title: str, body: str, branch: str
    ) -> int:
        """:meth:`open_revert_pr` for any one-file change (the registry bridge's)."""
        return self.open_revert_pr(base, path, content, title, body, branch)

    def pulls_from(self, branch: str, state: str = "all") -> list[tuple[int, str]]:
        """``(number, state)`` of the pull requests whose head is ``branch`` of this
        repository, newest first (``state``: open, closed or all)."""
        params = {"head": f"{self.owner}:{branch}", "state": state}
        found: list[tuple[int, str]] = []
        for page in self._api.pages(f"{self._repo_path}/pulls", params):
            for item in page:
                found.append((_number(item), str(field_of(item, "state") or "")))
        return found

    def open_pulls_under(self, prefix: str) -> list[tuple[int, str]]:
        """``(number, head branch)`` of the open pull requests whose head branch of
        this repository starts with ``prefix``."""
        found: list[tuple[int, str]] = []
        for page in self._api.pages(f"{self._repo_path}/pulls", {"state": "open"}):
            for item in page:
                head = field_of(item, "head")
                ref = str(field_of(head, "ref") or "")
                repo = field_of(field_of(head, "repo"), "full_name")
                if ref.startswith(prefix) and str(repo or "").lower() == self.repository.lower():
                    found.append((_number(item), ref))
        return found

    def close_pull(self, number: int) -> None:
        """Close pull request ``number`` (GitHub's "Update a pull request")."""
        self._api.request("PATCH", f"{self._repo_path}/pulls/{number}", body={"state": "closed"})

    def _open_pull(self, branch: str) -> int | None:
        params = {"head": f"{self.owner}:{branch}", "state": "open"}
        for page in self._api.pages(f"{self._repo_path}/pulls", params):
            for item in page:
                return _number(item)
        return None

    def _ensure_branch(self, base: str, branch: str) -> None:
        ref = self._api.request("GET", f"{self._repo_path}/git/ref/{_quote_ref(f'heads/{base}')}")
        sha = field_of(field_of(response_json(ref), "object"), "sha")
        if not isinstance(sha, str) or not sha:
            raise bad_response(f"the ref of branch {base} has no sha")
        path = f"{self._repo_path}/git/refs"
        payload = {"ref": f"refs/heads/{branch}", "sha": sha}
        response = self._api.request("POST", path, body=payload, accept=(422,))
        if response.status_code == 422:
            if "already exists" not in describe_response(response).lower():
                raise self._api.refused("POST", path, response)
            log.info("GitHub %s: branch %s exists, reusing it", self.repository, branch)

    def _write_file(self, branch: str, path: str, content: bytes, message: str) -> None:
        url = f"{self._repo_path}/contents/{quote(path.strip('/'), safe='/')}"
        for attempt in (1, 2):
            response = self._api.request("GET", url, params={"ref": branch}, accept=(404,))
            blob: str | None = None
            if response.status_code != 404:
                data = response_json(response)
                if not isinstance(data, dict) or data.get("type") != "file":
                    raise PermanentError(
                        f"{path} on {branch} is not a file", reason=Reason.GITHUB_INVALID
                    )
                blob = str(data.get("sha") or "") or None
                if _file_bytes(data) == content:
                    return
            payload: dict[str, Any] = {
                "message": message,
                "content": base64.b64encode(content).decode("ascii"),
                "branch": branch,
            }
            if blob:
                payload["sha"] = blob
            answer = self._api.request(
                "PUT", url, body=payload, accept=(409,) if attempt == 1 else ()
            )
            if answer.status_code != 409:
                return
            log.info("GitHub %s: %s moved on %s, reading it again", self.repository, path, branch)

    # -- rate limit -----------------------------------------------------------------------

    def rate_limit(self) -> dict[str, Any]:
        """GitHub's ``/rate_limit`` answer (does not count against the primary limit)."""
        data = response_json(self._api.request("GET", "/rate_limit"))
        if not isinstance(data, dict):
            raise bad_response("/rate_limit is not an object")
        return data


# -- helpers ------------------------------------------------------------------------------


#: What GitHub answers on ``commits/{sha}/pulls`` when the commit is unknown (422, in
#: practice) or the repository is empty (409, as documented): no pull request.
_NO_SUCH_COMMIT = (409, 422)


def _number(data: Any) -> int:
    if (number := as_int(field_of(data, "number"))) is None:
        raise bad_response("a pull request without a number")
    return number


def _quote_ref(ref: str) -> str:
    return quote(ref, safe="/")


def _file_bytes(data: Mapping[str, Any]) -> bytes | None:
    """A content-file's bytes; None when GitHub left them out (files over 1 MB)."""
    if data.get("encoding") != "base64" or not isinstance(data.get("content"), str):
        return None
    try:
        return base64.b64decode(data["content"])
    except (binascii.Error, ValueError):
        return None
