"""The minimal environment of a model process (issue 18, item 5)."""

from __future__ import annotations

from pathlib import Path

from controller.core.environment import bentoml_env, is_secret

PARENT = {
    "PATH": "/usr/bin",
    "HOME": "/home/mdc",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONPATH": "/opt/lib",
    "BENTOML_CONFIG": "/etc/bentoml.yaml",
    "CUDA_VISIBLE_DEVICES": "0",
    "NVIDIA_VISIBLE_DEVICES": "all",
    "MDC_GIT_TOKEN": "t1",
    "MDC_GIT_TOKEN_FILE": "/run/secrets/git",
    "MDC_GITHUB_TOKEN": "t2",
    "MDC_WEBHOOK_SECRET": "t3",
    "MDC_ARTIFACT_TOKEN": "t4",
    "MDC_NODE_NAME": "gpu-a",
    "GITHUB_TOKEN": "t5",
    "GH_TOKEN": "t6",
    "AWS_SECRET_ACCESS_KEY": "t7",
    "HF_TOKEN": "t8",
    "https_proxy": "http://proxy:3128",
    "SOMETHING_ELSE": "x",
}


def test_only_what_a_model_process_needs_passes() -> None:
    env = bentoml_env(Path("/store"), parent=PARENT)
    assert {k: env[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH")} == {
        k: PARENT[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH")
    }
    assert env["BENTOML_CONFIG"] == "/etc/bentoml.yaml"
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["BENTOML_HOME"] == "/store"
    assert env["BENTOML_DO_NOT_TRACK"] == "true"
    assert not any(k.startswith("MDC_") for k in env)
    assert not {"GITHUB_TOKEN", "GH_TOKEN", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"} & set(env)
    assert "https_proxy" not in env
    assert "SOMETHING_ELSE" not in env
    assert not {f"t{i}" for i in range(1, 9)} & set(env.values())


def test_the_release_variables_pass_but_never_a_credential() -> None:
    extra = {
        "CUDA_VISIBLE_DEVICES": "GPU-1",
        "MDC_GPU_MEMORY_LIMIT_BYTES": "1024",
        "MDC_GIT_TOKEN": "leak",
    }
    env = bentoml_env(Path("/store"), extra, parent=PARENT)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-1"
    assert env["MDC_GPU_MEMORY_LIMIT_BYTES"] == "1024"
    assert "MDC_GIT_TOKEN" not in env


def test_secret_names() -> None:
    for name in ("MDC_GIT_TOKEN", "mdc_webhook_secret", "GITHUB_TOKEN", "DB_PASSWORD", "X_API_KEY"):
        assert is_secret(name), name
    for name in ("PATH", "CUDA_VISIBLE_DEVICES", "MDC_GPU_MEMORY_LIMIT_BYTES", "LANG"):
        assert not is_secret(name), name
