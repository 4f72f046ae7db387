"""The error tree: permanent vs transient, reasons used verbatim in status."""

from __future__ import annotations

import pytest

from controller.errors import InvalidSpec, MdcError, PermanentError, TransientError, UnsafePath


@pytest.mark.parametrize(
    ("error", "permanent", "reason"),
    [
        (InvalidSpec("bad"), True, "InvalidSpec"),
        (UnsafePath("../x"), True, "UnsafePath"),
        (PermanentError("x"), True, "Failed"),
        (PermanentError("x", reason="BuildFailed"), True, "BuildFailed"),
        (TransientError("x"), False, "Unavailable"),
        (TransientError("x", reason="GitUnreachable", retry_after=30), False, "GitUnreachable"),
    ],
)
def test_branches_and_reasons(error: MdcError, permanent: bool, reason: str) -> None:
    assert isinstance(error, MdcError)
    assert isinstance(error, PermanentError) is permanent
    assert isinstance(error, TransientError) is not permanent
    assert error.reason == reason
    assert str(error) == error.message


def test_transient_carries_its_retry_delay() -> None:
    assert TransientError("x", retry_after=12.5).retry_after == 12.5
    with pytest.raises(ValueError, match="retry_after"):
        TransientError("x", retry_after=-1)
