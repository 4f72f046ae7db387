"""GitHub out: commit statuses, the one comment per pull request, permissions, revert PRs.

Owns every call mdc makes to GitHub's REST API (version 2022-11-28, or GitHub Enterprise
Server through ``MDC_GITHUB_API_URL``): a commit status per model and commit, the single
plan/progress comment on a pull request (found again by a hidden marker and edited in place,
never duplicated), plain answers to ``/mdc`` commands, who may give those commands
(collaborator permission), which pull requests a commit belongs to, and the pull request that
puts a model's last good spec back after a rollback.

Every call goes through one request path that follows GitHub's published rules: the pinned
headers on each request, ``Link`` pagination with ``per_page=100``, rate limits honoured
(``retry-after``, else ``x-ratelimit-reset`` when ``x-ratelimit-remaining`` is 0, else at least
a minute, growing, for a secondary limit) and 5xx or network failures retried with exponential
backoff and jitter. A wait longer than ``max_wait`` is never slept: it becomes a
:class:`~controller.errors.TransientError` carrying ``retry_after`` so the reconciler can come
back later. Refusals become :class:`~controller.errors.PermanentError` (``GitHubUnauthorized``,
``GitHubForbidden``, ``GitHubNotFound``, ``GitHubInvalid`` ...). The token never appears in a
message, a log line or a repr.

Called by the reconciler (statuses, the PR comment, revert PRs) and the watch loop's command
handler (permissions, answers). :meth:`GitHubReporter.from_env` builds one from the
environment, or gives None when no token is configured.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from controller import __version__
from controller.errors import PermanentError, TransientError

__all__ = [
    "API_VERSION",
    "COMMENT_LIMIT",
    "DEFAULT_API_URL",
    "DESCRIPTION_LIMIT",
    "PERMISSIONS",
    "STATES",
    "Comment",
    "GitHubReporter",
    "fit_comment",
    "fit_description",
]

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.github.com"
#: The REST API version every request pins (``X-GitHub-Api-Version``).
API_VERSION = "2022-11-28"
MEDIA_TYPE = "application/vnd.github+json"
#: GitHub refuses longer issue comments (422 "Body is too long (maximum is 65536 characters)").
COMMENT_LIMIT = 65536
#: GitHub refuses longer commit status descriptions (422).
DESCRIPTION_LIMIT = 140
#: The commit status states GitHub accepts.
STATES = ("error", "failure", "pending", "success")
#: Repository roles, strongest first, as :meth:`GitHubReporter.permission` returns them.
PERMISSIONS = ("admin", "maintain", "write", "triage", "read", "none")
_WRITERS = frozenset({"admin", "maintain", "write"})
PER_PAGE = 100
#: A list longer than this many pages is a broken ``Link`` chain, not data.
MAX_PAGES = 1000
#: Waiting until ``x-ratelimit-reset`` exactly can still be early by clock skew.
RESET_MARGIN = 1.0
#: "Otherwise, wait for at least one minute before retrying" (secondary rate limits).
SECONDARY_WAIT = 60.0
_BACKOFF_BASE = 1.0
_BACKOFF_CAP = 30.0

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
            raise _bad_response("an issue comment without id or html_url") from None
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
        token = token.strip()
        if not token or any(ch.isspace() for ch in token):
            raise ValueError("the GitHub token is empty or contains whitespace")
        api = urlsplit(api_url)
        if api.scheme not in {"http", "https"} or not api.netloc or api.query or api.fragment:
            raise ValueError(f"api_url must be an http(s) URL, got {api_url!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if timeout <= 0 or max_wait < 0:
            raise ValueError("timeout must be > 0 and max_wait >= 0")
        self.repository = f"{owner}/{name}"
        self.owner = owner
        self.api_url = api_url.rstrip("/")
        self._origin = (api.scheme, api.netloc.lower())
        self._token = token
        self._own_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)
        self._sleep = sleep
        self._clock = clock
        self._max_attempts = max_attempts
        self._timeout = timeout
        self._max_wait = max_wait
        self._jitter = jitter
        self._repo_path = f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"
        self._headers = {
            "Accept": MEDIA_TYPE,
            "X-GitHub-Api-Version": API_VERSION,
            "Authorization": f"Bearer {token}",
            "User-Agent": f"mdc/{__version__}",
        }

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
                    reason="GitHubTokenUnreadable",
                ) from None
            if not token:
                raise PermanentError(
                    f"GitHub token file {file!r} is empty", reason="GitHubTokenUnreadable"
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
        if self._own_client:
            self._client.close()

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
        self._request("POST", f"{self._repo_path}/statuses/{quote(sha, safe='')}", body=payload)

    # -- comments -------------------------------------------------------------------------

    def find_comment(self, number: int, marker: str) -> Comment | None:
        """The first comment on issue or pull request ``number`` whose body holds ``marker``."""
        if not marker:
            raise ValueError("the marker must not be empty")
        for page in self._pages(f"{self._repo_path}/issues/{int(number)}/comments"):
            for item in page:
                if marker in str(_get(item, "body") or ""):
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
        response = self._request(
            "PATCH", f"{self._repo_path}/issues/comments/{existing.id}", body={"body": text}
        )
        return Comment.from_api(_json(response))

    def comment(self, number: int, body: str) -> Comment:
        """A new comment on issue or pull request ``number`` (cut to GitHub's limit)."""
        return self._post_comment(number, fit_comment(body))

    def _post_comment(self, number: int, text: str) -> Comment:
        path = f"{self._repo_path}/issues/{int(number)}/comments"
        return Comment.from_api(_json(self._request("POST", path, body={"body": text})))

    # -- pull requests and permissions -----------------------------------------------------

    def pulls_for_commit(self, sha: str) -> list[int]:
        """Numbers of the pull requests ``sha`` belongs to, merged ones included."""
        if not sha:
            raise ValueError("a commit sha is needed")
        numbers: list[int] = []
        for page in self._pages(f"{self._repo_path}/commits/{quote(sha, safe='')}/pulls"):
            for item in page:
                if (number := _int(_get(item, "number"))) is not None and number not in numbers:
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
        response = self._request("GET", path, accept=(404,))
        if response.status_code == 404:
            return "none"
        data = _json(response)
        for key in ("role_name", "permission"):
            if (value := str(_get(data, key) or "").lower()) in PERMISSIONS:
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
        response = self._request("POST", f"{self._repo_path}/pulls", body=payload, accept=(422,))
        if response.status_code != 422:
            return _number(_json(response))
        detail = _describe(response)
        if "no commits between" in detail.lower():
            raise PermanentError(
                f"{base} already holds {path} as it should be: nothing to revert",
                reason="NothingToRevert",
            )
        if "already exists" in detail.lower() and (number := self._open_pull(branch)):
            return number  # opened by someone else in the meantime
        raise self._refused("POST", f"{self._repo_path}/pulls", response)

    def _open_pull(self, branch: str) -> int | None:
        params = {"head": f"{self.owner}:{branch}", "state": "open"}
        for page in self._pages(f"{self._repo_path}/pulls", params):
            for item in page:
                return _number(item)
        return None

    def _ensure_branch(self, base: str, branch: str) -> None:
        ref = self._request("GET", f"{self._repo_path}/git/ref/{_quote_ref(f'heads/{base}')}")
        sha = _get(_get(_json(ref), "object"), "sha")
        if not isinstance(sha, str) or not sha:
            raise _bad_response(f"the ref of branch {base} has no sha")
        path = f"{self._repo_path}/git/refs"
        payload = {"ref": f"refs/heads/{branch}", "sha": sha}
        response = self._request("POST", path, body=payload, accept=(422,))
        if response.status_code == 422:
            if "already exists" not in _describe(response).lower():
                raise self._refused("POST", path, response)
            log.info("GitHub %s: branch %s exists, reusing it", self.repository, branch)

    def _write_file(self, branch: str, path: str, content: bytes, message: str) -> None:
        url = f"{self._repo_path}/contents/{quote(path.strip('/'), safe='/')}"
        for attempt in (1, 2):
            response = self._request("GET", url, params={"ref": branch}, accept=(404,))
            blob: str | None = None
            if response.status_code != 404:
                data = _json(response)
                if not isinstance(data, dict) or data.get("type") != "file":
                    raise PermanentError(
                        f"{path} on {branch} is not a file", reason="GitHubInvalid"
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
            answer = self._request("PUT", url, body=payload, accept=(409,) if attempt == 1 else ())
            if answer.status_code != 409:
                return
            log.info("GitHub %s: %s moved on %s, reading it again", self.repository, path, branch)

    # -- rate limit -----------------------------------------------------------------------

    def rate_limit(self) -> dict[str, Any]:
        """GitHub's ``/rate_limit`` answer (does not count against the primary limit)."""
        data = _json(self._request("GET", "/rate_limit"))
        if not isinstance(data, dict):
            raise _bad_response("/rate_limit is not an object")
        return data

    # -- the one request path -------------------------------------------------------------

    def _pages(self, path: str, params: Mapping[str, str] | None = None) -> Iterator[list[Any]]:
        """Each page of a list, following ``Link: <...>; rel="next"``."""
        url = path
        query: dict[str, str] | None = {**(params or {}), "per_page": str(PER_PAGE)}
        seen: set[str] = set()
        while True:
            response = self._request("GET", url, params=query)
            data = _json(response)
            if not isinstance(data, list):
                raise _bad_response(f"{path} did not answer a list")
            yield data
            following = response.links.get("next", {}).get("url")
            if not following:
                return
            if following in seen or len(seen) >= MAX_PAGES:
                raise _bad_response(f"{path}: the Link header goes round in circles")
            seen.add(following)
            url, query = following, None

    def _target(self, url: str) -> str:
        if url.startswith("/"):
            return self.api_url + url
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc.lower()) != self._origin:
            # Never send the token to a host a response named.
            raise PermanentError(
                f"GitHub pointed to another host ({parts.scheme}://{parts.netloc})",
                reason="GitHubInvalid",
            )
        return url

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        accept: tuple[int, ...] = (),
    ) -> httpx.Response:
        """One call, retried as GitHub's rules say. Answers 2xx and the ``accept`` statuses;
        raises :class:`TransientError` or :class:`PermanentError` for anything else."""
        target = self._target(url)
        where = f"{method} {urlsplit(target).path}"
        secondary = 0
        problem = ""
        for attempt in range(1, self._max_attempts + 1):
            last = attempt == self._max_attempts
            delay: float | None = None
            try:
                response = self._client.request(
                    method,
                    target,
                    params=params,
                    json=body,
                    headers=self._headers,
                    timeout=self._timeout,
                    follow_redirects=True,
                )
            except httpx.TransportError as exc:
                problem = self._redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
            else:
                status = response.status_code
                if 200 <= status < 300 or status in accept:
                    return response
                if (wait := self._rate_limit_wait(response, secondary)) is not None:
                    secondary += not _has_rate_headers(response)
                    if wait > self._max_wait or last:
                        raise TransientError(
                            self._redact(
                                f"GitHub {where}: rate limited ({_describe(response)}); "
                                f"retry in {wait:.0f}s"
                            ),
                            reason="GitHubRateLimited",
                            retry_after=wait,
                        )
                    log.warning(
                        "GitHub %s: rate limited, waiting %.1fs (attempt %d of %d)",
                        where,
                        wait,
                        attempt,
                        self._max_attempts,
                    )
                    self._sleep(wait)
                    continue
                if status < 500:
                    raise self._refused(method, urlsplit(target).path, response)
                problem = self._redact(f"{status} {_describe(response)}")
                delay = _retry_after(response.headers.get("retry-after"), self._clock())
                if delay is not None and delay > self._max_wait:
                    raise TransientError(
                        self._redact(f"GitHub {where}: {problem}; retry in {delay:.0f}s"),
                        reason="GitHubUnavailable",
                        retry_after=delay,
                    )
            if last:
                break
            if delay is None:
                delay = self._backoff(attempt)
            log.warning(
                "GitHub %s: %s; retrying in %.1fs (attempt %d of %d)",
                where,
                problem,
                delay,
                attempt,
                self._max_attempts,
            )
            self._sleep(delay)
        raise TransientError(
            self._redact(f"GitHub {where}: {problem} (gave up after {self._max_attempts} tries)"),
            reason="GitHubUnavailable",
            retry_after=min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0**self._max_attempts),
        )

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, with equal jitter: half the step fixed, half random."""
        step = min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** (attempt - 1))
        return step / 2 + step / 2 * min(max(self._jitter(), 0.0), 1.0)

    def _rate_limit_wait(self, response: httpx.Response, secondary: int) -> float | None:
        """Seconds to wait before retrying a rate-limited answer; None when it is not one."""
        if response.status_code not in {403, 429}:
            return None
        headers = response.headers
        waits: list[float] = []
        if (after := _retry_after(headers.get("retry-after"), self._clock())) is not None:
            waits.append(after)
        if headers.get("x-ratelimit-remaining", "").strip() == "0":
            reset = _int(headers.get("x-ratelimit-reset", "").strip() or None)
            if reset is not None:
                waits.append(max(0.0, reset - self._clock()) + RESET_MARGIN)
            else:
                waits.append(SECONDARY_WAIT)
        if waits:
            return max(waits)
        if response.status_code == 429 or "rate limit" in _describe(response).lower():
            return SECONDARY_WAIT * 2.0**secondary
        return None

    def _refused(self, method: str, path: str, response: httpx.Response) -> PermanentError:
        status = response.status_code
        reason = {
            401: "GitHubUnauthorized",
            403: "GitHubForbidden",
            404: "GitHubNotFound",
            409: "GitHubConflict",
            410: "GitHubGone",
            422: "GitHubInvalid",
        }.get(status, "GitHubRejected")
        hint = {
            401: " (the token is invalid, expired or revoked)",
            403: " (the token lacks a permission or scope)",
            404: f" (no such resource, or the token cannot see {self.repository})",
        }.get(status, "")
        message = f"GitHub {method} {path}: {status} {_describe(response)}{hint}"
        return PermanentError(self._redact(message), reason=reason)

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***")


# -- helpers ------------------------------------------------------------------------------


def _bad_response(what: str) -> TransientError:
    return TransientError(f"GitHub answered unexpectedly: {what}", reason="GitHubBadResponse")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise _bad_response(f"{response.request.url.path} is not JSON") from None


def _get(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _number(data: Any) -> int:
    if (number := _int(_get(data, "number"))) is None:
        raise _bad_response("a pull request without a number")
    return number


def _quote_ref(ref: str) -> str:
    return quote(ref, safe="/")


def _has_rate_headers(response: httpx.Response) -> bool:
    headers = response.headers
    return "retry-after" in headers or headers.get("x-ratelimit-remaining", "").strip() == "0"


def _retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date."""
    if value is None or not (value := value.strip()):
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _describe(response: httpx.Response) -> str:
    """GitHub's ``message`` and ``errors``, else the reason phrase."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or not data.get("message"):
        return response.reason_phrase or "no reason given"
    text = str(data["message"]).strip()
    details = []
    for error in data.get("errors") or ():
        if isinstance(error, dict):
            said = error.get("message") or error.get("code") or ""
            field = ".".join(str(error[k]) for k in ("resource", "field") if error.get(k))
            details.append(f"{field}: {said}" if field else str(said))
        else:
            details.append(str(error))
    if details:
        text += f" ({'; '.join(details)})"
    return text


def _file_bytes(data: Mapping[str, Any]) -> bytes | None:
    """A content-file's bytes; None when GitHub left them out (files over 1 MB)."""
    if data.get("encoding") != "base64" or not isinstance(data.get("content"), str):
        return None
    try:
        return base64.b64decode(data["content"])
    except (binascii.Error, ValueError):
        return None
