"""The one request path to GitHub's REST API: pinned headers, pagination, rate limits, retries.

Owns :class:`GitHubAPI`, through which every call mdc makes to GitHub goes, following GitHub's
published rules: the pinned headers on each request (``X-GitHub-Api-Version`` 2022-11-28, the
JSON media type, the token, a ``User-Agent``), ``Link`` pagination with ``per_page=100``, rate
limits honoured (``retry-after``, else ``x-ratelimit-reset`` when ``x-ratelimit-remaining`` is
0, else at least a minute, growing, for a secondary limit) and 5xx or network failures retried
with exponential backoff and jitter. A wait longer than ``max_wait`` is never slept: it becomes
a :class:`~controller.errors.TransientError` carrying ``retry_after`` so the reconciler can come
back later. Refusals become :class:`~controller.errors.PermanentError` (``GitHubUnauthorized``,
``GitHubForbidden``, ``GitHubNotFound``, ``GitHubInvalid`` ...). A link to another host is never
followed, and the token never appears in a message, a log line or a repr.

Also the small readers of GitHub's answers (:func:`response_json`, :func:`field_of`,
:func:`as_int`, :func:`describe_response`, :func:`bad_response`). Called by
:class:`~controller.adapters.github.client.GitHubReporter`, which says what to ask.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from controller import __version__
from controller.core.backoff import backoff_delay
from controller.errors import PermanentError, Reason, TransientError

__all__ = [
    "API_VERSION",
    "DEFAULT_API_URL",
    "MAX_PAGES",
    "MEDIA_TYPE",
    "PER_PAGE",
    "GitHubAPI",
    "as_int",
    "bad_response",
    "describe_response",
    "field_of",
    "response_json",
]

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.github.com"
#: The REST API version every request pins (``X-GitHub-Api-Version``).
API_VERSION = "2022-11-28"
MEDIA_TYPE = "application/vnd.github+json"
PER_PAGE = 100
#: A list longer than this many pages is a broken ``Link`` chain, not data.
MAX_PAGES = 1000
#: Waiting until ``x-ratelimit-reset`` exactly can still be early by clock skew.
RESET_MARGIN = 1.0
#: "Otherwise, wait for at least one minute before retrying" (secondary rate limits).
SECONDARY_WAIT = 60.0
_BACKOFF_BASE = 1.0
_BACKOFF_CAP = 30.0


class GitHubAPI:
    """Authenticated, retried calls to one GitHub API root on behalf of ``repository``
    (named in refusals)."""

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
        self.repository = repository
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
        self._headers = {
            "Accept": MEDIA_TYPE,
            "X-GitHub-Api-Version": API_VERSION,
            "Authorization": f"Bearer {token}",
            "User-Agent": f"mdc/{__version__}",
        }

    def __repr__(self) -> str:
        return f"GitHubAPI(api_url={self.api_url!r})"

    def close(self) -> None:
        """Close the HTTP client when this made it."""
        if self._own_client:
            self._client.close()

    def pages(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        empty_on: tuple[int, ...] = (),
    ) -> Iterator[list[Any]]:
        """Each page of a list, following ``Link: <...>; rel="next"``; an answer whose
        status is in ``empty_on`` ends the list (nothing more in it)."""
        url = path
        query: dict[str, str] | None = {**(params or {}), "per_page": str(PER_PAGE)}
        seen: set[str] = set()
        while True:
            response = self.request("GET", url, params=query, accept=empty_on)
            if response.status_code in empty_on:
                return
            data = response_json(response)
            if not isinstance(data, list):
                raise bad_response(f"{path} did not answer a list")
            yield data
            following = response.links.get("next", {}).get("url")
            if not following:
                return
            if following in seen or len(seen) >= MAX_PAGES:
                raise bad_response(f"{path}: the Link header goes round in circles")
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
                reason=Reason.GITHUB_INVALID,
            )
        return url

    def request(
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
                                f"GitHub {where}: rate limited ({describe_response(response)}); "
                                f"retry in {wait:.0f}s"
                            ),
                            reason=Reason.GITHUB_RATE_LIMITED,
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
                    raise self.refused(method, urlsplit(target).path, response)
                problem = self._redact(f"{status} {describe_response(response)}")
                delay = _retry_after(response.headers.get("retry-after"), self._clock())
                if delay is not None and delay > self._max_wait:
                    raise TransientError(
                        self._redact(f"GitHub {where}: {problem}; retry in {delay:.0f}s"),
                        reason=Reason.GITHUB_UNAVAILABLE,
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
            reason=Reason.GITHUB_UNAVAILABLE,
            retry_after=min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0**self._max_attempts),
        )

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, with equal jitter: half the step fixed, half random."""
        return backoff_delay(attempt, _BACKOFF_BASE, _BACKOFF_CAP, jitter=self._jitter())

    def _rate_limit_wait(self, response: httpx.Response, secondary: int) -> float | None:
        """Seconds to wait before retrying a rate-limited answer; None when it is not one."""
        if response.status_code not in {403, 429}:
            return None
        headers = response.headers
        waits: list[float] = []
        if (after := _retry_after(headers.get("retry-after"), self._clock())) is not None:
            waits.append(after)
        if headers.get("x-ratelimit-remaining", "").strip() == "0":
            reset = as_int(headers.get("x-ratelimit-reset", "").strip() or None)
            if reset is not None:
                waits.append(max(0.0, reset - self._clock()) + RESET_MARGIN)
            else:
                waits.append(SECONDARY_WAIT)
        if waits:
            return max(waits)
        if response.status_code == 429 or "rate limit" in describe_response(response).lower():
            return SECONDARY_WAIT * 2.0**secondary
        return None

    def refused(self, method: str, path: str, response: httpx.Response) -> PermanentError:
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
        message = f"GitHub {method} {path}: {status} {describe_response(response)}{hint}"
        return PermanentError(self._redact(message), reason=reason)

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***")


# -- reading GitHub's answers ---------------------------------------------------------------


def bad_response(what: str) -> TransientError:
    return TransientError(
        f"GitHub answered unexpectedly: {what}", reason=Reason.GITHUB_BAD_RESPONSE
    )


def response_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise bad_response(f"{response.request.url.path} is not JSON") from None


def field_of(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


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


def describe_response(response: httpx.Response) -> str:
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
