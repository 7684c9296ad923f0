"""GPU memory this process holds, for `edgespec bench` on the CUDA / TensorRT providers.

nvidia-smi's per-process figure counts what onnxruntime's CUDA arena reserved; the arena keeps
what it once grew to, so read after the runs it is the peak. None where there is no NVIDIA GPU
(on a CPU, or a Jetson without per-process figures: host memory is the device's there).
"""

from __future__ import annotations

import os
import subprocess

from edgespec.runtime.providers import PROVIDERS

GPU_PROVIDERS = tuple(name for name, p in PROVIDERS.items() if p.device == "cuda")


def parse_compute_apps(text: str, pid: int) -> float | None:
    """MiB used by `pid` in `nvidia-smi --query-compute-apps=pid,used_memory --format=csv,
    noheader,nounits` output (summed over GPUs); None if it is not listed."""
    used = [float(mib) for line in text.splitlines() if line.count(",") == 1
            for p, mib in [line.split(",")] if p.strip() == str(pid)
            and mib.strip().replace(".", "", 1).isdigit()]
    return sum(used) if used else None


def device_memory_mb(provider: str) -> float | None:
    if provider not in GPU_PROVIDERS:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):  # no driver tools on this machine
        return None
    return parse_compute_apps(out.stdout, os.getpid())
