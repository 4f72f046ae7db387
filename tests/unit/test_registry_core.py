"""The registry bridge's arithmetic (controller.core.registry): which version a
tag proposes, the spec as the pull request rewrites it, the tags written back."""

from __future__ import annotations

import pytest

from controller.core.registry import (
    Outcome,
    RegistryVersion,
    VersionStatus,
    bump_scalars,
    newest_matching,
    outcome_tags,
    proposal_branch,
)


def v(number: str, status: VersionStatus = VersionStatus.READY, **tags: str) -> RegistryVersion:
    return RegistryVersion("iris", number, status, tags=tags)


VERSIONS = [
    v("1", validated="yes"),
    v("2", validated="no"),
    v("3", validated="yes"),
    v("4", VersionStatus.PENDING, validated="yes"),
    v("10"),
]


@pytest.mark.parametrize(
    ("tag", "value", "after", "expected"),
    [
        ("validated", "yes", "1", "3"),  # the newest READY one with the value
        ("validated", None, "1", "3"),  # any value
        ("validated", "no", "1", "2"),
        ("validated", "no", "2", None),  # not newer than what git runs
        ("validated", "yes", "3", None),
        ("validated", "yes", "0", "3"),
        ("missing", None, "0", None),
        ("validated", "yes", "x", "3"),  # a label git cannot compare counts as oldest
    ],
)
def test_newest_matching(tag: str, value: str | None, after: str, expected: str | None) -> None:
    found = newest_matching(VERSIONS, tag, value, after)
    assert (found.version if found else None) == expected


@pytest.mark.parametrize(
    ("text", "spots", "value", "expected"),
    [
        ("version: 1\n", [(1, 10)], "2", 'version: "2"\n'),
        ('version: "1"   # note\n', [(1, 10)], "12", 'version: "12"   # note\n'),
        ("version: '1'\n", [(1, 10)], "3", 'version: "3"\n'),
        ("a: 1\nb: 1\n", [(1, 4), (2, 4)], "7", 'a: "7"\nb: "7"\n'),
        ("m: {version: 1, x: 2}\n", [(1, 14)], "5", 'm: {version: "5", x: 2}\n'),
    ],
)
def test_bump_scalars_keeps_everything_but_the_values(
    text: str, spots: list[tuple[int, int]], value: str, expected: str
) -> None:
    assert bump_scalars(text, spots, value) == expected


def test_bump_scalars_refuses_a_spot_without_a_scalar() -> None:
    with pytest.raises(ValueError, match="no scalar"):
        bump_scalars("a:\n", [(1, 3)], "1")


def test_outcome_tags_are_one_line_and_bounded() -> None:
    tags = outcome_tags(Outcome.ROLLED_BACK, "worse\nthan   stable " + "x" * 400, at="T")
    assert tags["mdc.status"] == "rolled-back"
    assert "\n" not in tags["mdc.reason"]
    assert tags["mdc.reason"].startswith("worse than stable x")
    assert len(tags["mdc.reason"]) == 250
    assert "mdc.revision" not in tags
    assert proposal_branch("iris", "7") == "mdc/registry/iris/v7"
