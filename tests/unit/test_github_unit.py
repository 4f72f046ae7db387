"""GitHubReporter's pure parts, and answers no well-behaved GitHub gives (httpx.MockTransport)."""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable

import httpx
import pytest

from controller.adapters.github.client import (
    COMMENT_LIMIT,
    Comment,
    GitHubReporter,
    fit_comment,
    fit_description,
)
from controller.adapters.github.webhook import PullRequestEvent, parse_event
from controller.errors import PermanentError, TransientError

NOW = 1_750_000_000.0
MARKER = "<!-- m -->"


def reporter_with(
    answer: Callable[[httpx.Request], httpx.Response], naps: list[float] | None = None
) -> GitHubReporter:
    client = httpx.Client(transport=httpx.MockTransport(answer))
    sleep = naps.append if naps is not None else (lambda _: None)
    return GitHubReporter(
        "o/r", "ghp_secret", client=client, sleep=sleep, clock=lambda: NOW, jitter=lambda: 0.0
    )


def test_a_link_to_another_host_is_not_followed() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url.host))
        link = '<https://evil.example/repos/o/r/issues/1/comments?page=2>; rel="next"'
        return httpx.Response(200, json=[], headers={"link": link})

    with pytest.raises(PermanentError, match="another host"):
        reporter_with(answer).find_comment(1, MARKER)
    assert seen == ["api.github.com"]


def test_a_link_that_goes_round_in_circles_stops() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        link = '<https://api.github.com/repos/o/r/pulls?page=2>; rel="next"'
        return httpx.Response(200, json=[], headers={"link": link})

    with pytest.raises(TransientError, match="circles"):
        reporter_with(answer).find_comment(1, MARKER)


def test_retry_after_may_be_an_http_date() -> None:
    naps: list[float] = []
    answers = iter(
        [
            httpx.Response(429, headers={"retry-after": email.utils.formatdate(NOW + 12)}),
            httpx.Response(201, json={}),
        ]
    )
    reporter_with(lambda _: next(answers), naps).set_status("a" * 40, "c", "success", "d")
    assert naps == [12.0]


def test_a_2xx_that_is_not_json_is_transient() -> None:
    reporter = reporter_with(lambda _: httpx.Response(200, text="<html>maintenance</html>"))
    with pytest.raises(TransientError) as caught:
        reporter.permission("someone")
    assert caught.value.reason == "GitHubBadResponse"


@pytest.mark.parametrize(
    ("repository", "token", "api_url", "match"),
    [
        ("no-slash", "t", "https://api.github.com", "owner/name"),
        ("o/..", "t", "https://api.github.com", "owner/name"),
        ("o/r", "  ", "https://api.github.com", "token is empty"),
        ("o/r", "secret words", "https://api.github.com", "contains whitespace"),
        ("o/r", "t", "ftp://example.com", "http"),
    ],
)
def test_the_constructor_refuses_nonsense(
    repository: str, token: str, api_url: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match) as caught:
        GitHubReporter(repository, token, api_url=api_url)
    assert "secret" not in str(caught.value)


def test_fit_description() -> None:
    assert fit_description("short") == "short"
    cut = fit_description("word " * 40)
    assert len(cut) == 140
    assert cut.endswith("\N{HORIZONTAL ELLIPSIS}")


def test_fit_comment_closes_an_open_code_fence() -> None:
    body = "intro\n```\n" + "\n".join(f"line {i}" for i in range(20_000))
    fitted = fit_comment(body, MARKER)
    assert len(fitted) <= COMMENT_LIMIT
    assert fitted.startswith(MARKER)
    kept = fitted[: fitted.index("\n\n---\n")]
    assert kept.count("```") == 2
    assert fit_comment("small", MARKER) == f"{MARKER}\nsmall"
    assert fit_comment("small") == "small"


def test_fit_comment_cuts_a_body_without_newlines() -> None:
    fitted = fit_comment("x" * 100_000, MARKER, limit=1000)
    assert len(fitted) <= 1000
    assert fitted.startswith(MARKER + "\n" + "x" * 100)


def test_a_comment_of_a_deleted_user() -> None:
    url = "https://github.com/o/r/pull/1#issuecomment-7"
    data = {"id": 7, "body": None, "user": None, "html_url": url}
    assert Comment.from_api(json.loads(json.dumps(data))) == Comment(7, "", "", url)
    with pytest.raises(TransientError):
        Comment.from_api({"body": "no id"})


@pytest.mark.parametrize(("merged", "expected"), [(True, True), (False, False), (None, False)])
def test_a_closed_pull_requests_merged_flag_is_read(merged: bool | None, expected: bool) -> None:
    pull: dict[str, object] = {"head": {"sha": "a" * 40, "ref": "x"}, "base": {"ref": "main"}}
    if merged is not None:
        pull["merged"] = merged
    payload = {"action": "closed", "number": 3, "pull_request": pull}
    payload["repository"] = {"full_name": "o/r"}
    event = parse_event("pull_request", payload)
    assert isinstance(event, PullRequestEvent)
    assert event.merged is expected
