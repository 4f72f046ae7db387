"""NVML discovery against the real library: on a machine with NVIDIA GPUs it
must agree with nvidia-smi; without a driver it must fail the documented way.

Each test runs on the kind of machine it is about and is skipped, with the
reason, on the other (a GPU is hardware, not a dependency CI can install).
"""

from __future__ import annotations

import shutil
import subprocess

import pynvml
import pytest

from controller.adapters.nvml import NVMLUnavailable, read_nvml


def gpu_present() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


HAS_GPU = gpu_present()


@pytest.mark.skipif(
    HAS_GPU, reason="this machine has an NVIDIA driver: the error path cannot occur"
)
def test_without_a_driver_nvml_is_unavailable() -> None:
    with pytest.raises(NVMLUnavailable) as caught:
        read_nvml("node-a")
    assert caught.value.reason == "NVMLUnavailable"
    assert "NVML library not found" in str(caught.value)
    assert "node-a" in str(caught.value)


@pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU or driver on this machine")
def test_discovery_agrees_with_nvidia_smi() -> None:
    smi = shutil.which("nvidia-smi")
    assert smi is not None, "a machine with NVML should have nvidia-smi"
    rows = (
        subprocess.run(
            [
                smi,
                "--query-gpu=index,uuid,name,memory.total,mig.mode.current",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        .stdout.strip()
        .splitlines()
    )
    gpus = read_nvml("this-node")
    assert len(gpus) == len(rows) >= 1
    for gpu, row in zip(gpus, rows, strict=True):
        index, uuid, name, memory_mib, mig = (c.strip() for c in row.split(","))
        assert gpu.index == int(index)
        assert gpu.uuid == uuid
        assert gpu.product == name
        assert abs(gpu.memory - int(memory_mib) * 2**20) < 2**20  # same MiB
        assert gpu.declared is False
        assert gpu.node == "this-node"
        assert gpu.memory_used is not None
        assert 0 <= gpu.memory_used <= gpu.memory
        assert gpu.utilization is None or 0 <= gpu.utilization <= 100
        assert gpu.mig is (None if mig in ("[N/A]", "N/A") else mig == "Enabled")
