"""The environment a model process runs in: BentoML's home, no telemetry, no
package index, no proxies. Pure (the parent environment is read, never changed);
called by the packager and the runtimes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "SECRET_PREFIXES",
    "bentoml_env",
    "without_secrets",
]

#: Variables that carry the controller's credentials: never given to another process.
SECRET_PREFIXES = ("MDC_GIT_", "MDC_WEBHOOK_", "MDC_GITHUB_", "GITHUB_TOKEN", "GH_TOKEN")


def without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` less the controller's credentials (:data:`SECRET_PREFIXES`)."""
    return {k: v for k, v in env.items() if not k.upper().startswith(SECRET_PREFIXES)}


def bentoml_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment BentoML runs in: its home, no telemetry, no package index."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(
        {
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "true",
            "PIP_NO_INDEX": "1",
            "UV_OFFLINE": "1",
            "UV_NO_CACHE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if extra:
        env.update(extra)
    return env
