"""The environment a model process runs in: a minimal one, built from an allow
list, never a copy of the controller's.

The service code in the spec repository is untrusted (anyone can open a pull
request), and ``bentoml build`` and ``bentoml serve`` run it. So every model
process -- the artifact import, the build, each release, locally or on Ray --
starts with only:

* what a process and BentoML need from the parent: :data:`PASSED` (``PATH``,
  ``HOME``, ``LANG``, ``PYTHONPATH`` ...) and the variables whose names start
  with :data:`PASSED_PREFIXES` (``LC_*``, ``BENTOML_*``, the GPU stack's
  ``CUDA_*``/``NVIDIA_*``/``NCCL_*``, thread counts);
* BentoML's home, telemetry off, no package index, no proxies;
* the variables the release is given (``extra``: its GPUs and memory bound).

Never the controller's credentials: no ``MDC_*`` variable from the parent, and
nothing whose name looks like a secret (:func:`is_secret`) -- not even from
``extra``. Pure (the parent environment is read, never changed); called by the
packager and the runtimes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "PASSED",
    "PASSED_PREFIXES",
    "PYTHON_ENV_LABEL",
    "PYTHON_SITE_LABEL",
    "SECRET_PREFIXES",
    "bentoml_env",
    "is_secret",
    "model_env",
    "without_secrets",
]

#: The bento labels that name the environment of a model's own packages (built by
#: the packager, read by the runtimes: its ``site`` goes first on PYTHONPATH).
PYTHON_ENV_LABEL = "mdc.dev/python-env"
PYTHON_SITE_LABEL = "mdc.dev/python-site"

#: Variables that carry the controller's credentials: never given to another process.
SECRET_PREFIXES = (
    "MDC_GIT_",
    "MDC_WEBHOOK_",
    "MDC_GITHUB_",
    "MDC_ARTIFACT_",
    "GITHUB_TOKEN",
    "GH_TOKEN",
)

#: A name that says it holds a secret (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``, ...).
_SECRET_WORD = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|API_?KEY|PRIVATE_KEY")

#: Variables a model process keeps from the controller's environment, by name.
PASSED = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "PYTHONPATH",
        "PYTHONHOME",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
    }
)

#: ... and by prefix: locale, BentoML's own settings, the GPU stack.
PASSED_PREFIXES = ("LC_", "BENTOML_", "CUDA_", "NVIDIA_", "NCCL_", "GPU_DEVICE_ORDINAL")


def is_secret(name: str) -> bool:
    """Whether ``name`` is one of the controller's credentials, any ``MDC_*``
    variable of the parent, or a name that says it holds a secret."""
    upper = name.upper()
    return upper.startswith(SECRET_PREFIXES) or bool(_SECRET_WORD.search(upper))


def without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` less the controller's credentials and anything named like a secret."""
    return {k: v for k, v in env.items() if not is_secret(k)}


def model_env(parent: Mapping[str, str]) -> dict[str, str]:
    """What a model process keeps of ``parent``: :data:`PASSED` and
    :data:`PASSED_PREFIXES`, less ``MDC_*``, secrets and proxies."""
    return {
        k: v
        for k, v in parent.items()
        if (k in PASSED or k.startswith(PASSED_PREFIXES))
        and not k.startswith("MDC_")
        and not is_secret(k)
        and not k.lower().endswith("_proxy")
    }


def bentoml_env(
    home: Path,
    extra: Mapping[str, str] | None = None,
    parent: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment BentoML runs in: :func:`model_env` of ``parent`` (default:
    this process's), its home, no telemetry, no package index, and ``extra`` (less
    anything that looks like a secret)."""
    env = model_env(os.environ if parent is None else parent)
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
        env.update(without_secrets(extra))
    return env
