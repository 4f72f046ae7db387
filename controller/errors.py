"""The error tree every part of mdc raises, and the reasons status conditions show.

Two branches, because the reconciler treats them differently:

* :class:`PermanentError` -- retrying cannot help (a bad spec, a failed build).
  The model stalls until its spec changes.
* :class:`TransientError` -- the world may heal (git, metrics or GPUs are
  unavailable). The pass is retried after :attr:`TransientError.retry_after`.

Each error carries a ``reason``: a short CamelCase word used verbatim as the
reason of a status condition, so operators can grep for it. Callers anywhere in
the package raise these; the reconciler and the CLI catch them.
"""

from __future__ import annotations

__all__ = [
    "InvalidSpec",
    "MdcError",
    "PermanentError",
    "TransientError",
    "UnsafePath",
]


class MdcError(Exception):
    """Base of every error mdc raises on purpose."""

    #: Default reason for the class; an instance may carry a more precise one.
    default_reason = "Error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason

    def __str__(self) -> str:
        return self.message


class PermanentError(MdcError):
    """Retrying will not help until the input changes."""

    default_reason = "Failed"


class TransientError(MdcError):
    """Something outside mdc failed; retry after ``retry_after`` seconds."""

    default_reason = "Unavailable"

    def __init__(
        self, message: str, *, reason: str | None = None, retry_after: float = 5.0
    ) -> None:
        super().__init__(message, reason=reason)
        if retry_after < 0:
            raise ValueError(f"retry_after must be >= 0, got {retry_after}")
        self.retry_after = retry_after


class InvalidSpec(PermanentError):
    """The spec repository holds one or more invalid files.

    ``diagnostics`` lists every problem found (see :mod:`controller.spec.kinds`); the
    message is the first of them, rendered like a compiler error.
    """

    default_reason = "InvalidSpec"

    def __init__(self, message: str, diagnostics: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.diagnostics = diagnostics


class UnsafePath(PermanentError):
    """A path in the spec repository would leave the repository."""

    default_reason = "UnsafePath"
