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

from enum import StrEnum

__all__ = [
    "ConditionType",
    "InvalidSpec",
    "MdcError",
    "PermanentError",
    "Reason",
    "TransientError",
    "UnsafePath",
]


class Reason(StrEnum):
    """Why a condition is what it is: one CamelCase word, used verbatim in status
    conditions, logs and metrics, so operators can grep for it."""

    ACTOR_FAILED = "ActorFailed"
    ARTIFACT_DIGEST_MISMATCH = "ArtifactDigestMismatch"
    ARTIFACT_IMPORT_FAILED = "ArtifactImportFailed"
    ARTIFACT_MISSING = "ArtifactMissing"
    ARTIFACT_TOO_BIG = "ArtifactTooBig"
    ARTIFACT_UNAVAILABLE = "ArtifactUnavailable"
    BAD_BRANCH = "BadBranch"
    BAD_CONFIG = "BadConfig"
    BAD_REMOTE_URL = "BadRemoteURL"
    BAD_STATUS_FILE = "BadStatusFile"
    BRANCH_NOT_FOUND = "BranchNotFound"
    BUILD_FAILED = "BuildFailed"
    BUILDING = "Building"
    DECIDING = "Deciding"  # the sequential judge gathers evidence
    DEPENDENCIES_FAILED = "DependenciesFailed"  # a model's packages did not resolve or install
    DEPENDENCIES_UNAVAILABLE = "DependenciesUnavailable"  # no index and no local wheel
    CREDENTIALS_UNREADABLE = "CredentialsUnreadable"
    ERROR = "Error"
    EXPORT_FAILED = "ExportFailed"
    FAILED = "Failed"
    GIT_AUTH_FAILED = "GitAuthFailed"
    GIT_HOST_UNTRUSTED = "GitHostUntrusted"
    GITHUB_BAD_RESPONSE = "GitHubBadResponse"
    GITHUB_INVALID = "GitHubInvalid"
    GITHUB_RATE_LIMITED = "GitHubRateLimited"
    GITHUB_TOKEN_UNREADABLE = "GitHubTokenUnreadable"
    GITHUB_UNAVAILABLE = "GitHubUnavailable"
    GIT_UNAVAILABLE = "GitUnavailable"
    INTERNAL_ERROR = "InternalError"
    INVALID_SPEC = "InvalidSpec"
    LOCKED = "Locked"
    METRICS_AMBIGUOUS = "MetricsAmbiguous"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    MODEL_NOT_FOUND = "ModelNotFound"
    MODEL_VERSION_NOT_FOUND = "ModelVersionNotFound"  # the registry has no such version
    NOT_AN_MLFLOW_MODEL = "NotAnMLflowModel"  # no MLmodel, or no python_function flavor
    NVML_UNAVAILABLE = "NVMLUnavailable"
    PASS_FAILED = "PassFailed"  # a reconcile pass failed as a whole
    NODE_LOST = "NodeLost"
    NODE_UNAVAILABLE = "NodeUnavailable"
    NOT_A_COMMIT = "NotACommit"
    NOT_READY = "NotReady"
    NOTHING_TO_REVERT = "NothingToRevert"
    PROXY_COMMAND_FAILED = "ProxyCommandFailed"
    PROXY_CONFIG_INVALID = "ProxyConfigInvalid"
    PROXY_MISSING = "ProxyMissing"
    PROXY_UNAVAILABLE = "ProxyUnavailable"
    PULL_REQUEST_UNREADABLE = "PullRequestUnreadable"
    REGISTRY_NOT_CONFIGURED = "RegistryNotConfigured"  # artifact.mlflow with no tracking URI
    REGISTRY_UNAVAILABLE = "RegistryUnavailable"  # the tracking server did not answer well
    REPLICAS_NOT_READY = "ReplicasNotReady"
    RETRY_LATER = "RetryLater"
    ROUTER_FEATURE_UNSUPPORTED = "RouterFeatureUnsupported"
    ROUTER_PORT_BUSY = "RouterPortBusy"
    SAMPLING_UNSUPPORTED = "SamplingUnsupported"
    SPEC_INVALID = "SpecInvalid"
    STABLE_NOT_READY = "StableNotReady"
    STANDING_BY = "StandingBy"
    STARTING = "Starting"
    STATUS_PUSH_FAILED = "StatusPushFailed"
    STATUS_PUSH_REJECTED = "StatusPushRejected"
    STATE_NOT_WRITABLE = "StateNotWritable"
    START_FAILED = "StartFailed"
    UNBOOKED = "Unbooked"
    UNAVAILABLE = "Unavailable"
    UNSAFE_PATH = "UnsafePath"
    WAITING_FOR_GPUS = "WaitingForGPUs"
    WAITING_FOR_TRAFFIC = "WaitingForTraffic"  # the judge's evidence is neutral at the deadline
    WEBHOOK_SECRET_MISSING = "WebhookSecretMissing"


class ConditionType(StrEnum):
    """What a status condition is about."""

    READY = "Ready"
    SPEC_VALID = "SpecValid"
    GPUS = "GPUs"
    MONITORED = "Monitored"
    SAMPLED = "Sampled"
    STATUS_WRITTEN = "StatusWritten"
    GIT_READ = "GitRead"
    REPORTED = "Reported"
    STATE_SAVED = "StateSaved"
    LEADER = "Leader"
    JUDGED = "Judged"  # the canary judge has reached its verdict (informational)


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
