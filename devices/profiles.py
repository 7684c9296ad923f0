"""Device profiles: the hardware figures the cost model projects from, shipped as JSON files in
devices/profiles/ (package data), each figure with its source. `cpu` is this host, probed on
first use (memory bandwidth and fp32 matmul throughput measured with numpy) and cached."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from edgespec.runtime.providers import PROVIDERS as RUNTIME_PROVIDERS

KINDS = ("gpu", "cpu")
PROVIDERS = tuple(RUNTIME_PROVIDERS)  # the presets a profile may name
KV_DTYPES = ("float16", "float32")
CPU_CACHE_ENV = "EDGESPEC_CACHE"  # folder for the probed `cpu` profile (default ~/.cache/edgespec)


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    kind: str  # gpu | cpu
    memory_bandwidth_gbs: float  # peak DRAM bandwidth, 1e9 bytes/s
    peak_fp16_tflops: float  # dense; for `cpu` the measured fp32 matmul rate
    memory_gb: float
    unified_memory: bool
    provider: str  # a runtime.providers preset
    kv_dtype: str
    provider_options: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)  # figure name -> where it comes from

    @property
    def bandwidth(self) -> float:  # bytes / s
        return self.memory_bandwidth_gbs * 1e9

    @property
    def peak_flops(self) -> float:  # flop / s
        return self.peak_fp16_tflops * 1e12


_NUMBERS = ("memory_bandwidth_gbs", "peak_fp16_tflops", "memory_gb")


def profile_from_dict(d: dict, where: str) -> DeviceProfile:
    """A validated profile; every problem named with the file it is in."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: a device profile is a JSON object")
    names = {f for f in DeviceProfile.__dataclass_fields__}
    required = names - {"provider_options", "sources"}
    missing, unknown = sorted(required - set(d)), sorted(set(d) - names)
    if missing or unknown:
        raise ValueError(f"{where}: missing keys {missing}, unknown keys {unknown}")
    for key in _NUMBERS:
        value = d[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{where}: {key} must be a positive number, got {value!r}")
    for key, allowed in (("kind", KINDS), ("provider", PROVIDERS), ("kv_dtype", KV_DTYPES)):
        if d[key] not in allowed:
            raise ValueError(f"{where}: {key} {d[key]!r} is not one of {', '.join(allowed)}")
    if not isinstance(d["unified_memory"], bool):
        raise ValueError(f"{where}: unified_memory must be true or false")
    for key in ("provider_options", "sources"):
        if not isinstance(d.get(key, {}), dict):
            raise ValueError(f"{where}: {key} must be an object")
    return DeviceProfile(**{**d, **{k: float(d[k]) for k in _NUMBERS}})


def _shipped() -> dict[str, object]:
    folder = resources.files("edgespec.devices") / "profiles"
    return {p.name[:-5]: p for p in folder.iterdir() if p.name.endswith(".json")}


def list_profiles() -> list[str]:
    return sorted([*_shipped(), "cpu"])


def load_profile(name: str, probe: bool = True) -> DeviceProfile:
    """A shipped profile by name, or `cpu` (this host, probed once and cached)."""
    if name == "cpu":
        return cpu_profile(probe)
    files = _shipped()
    if name not in files:
        raise ValueError(f"unknown device profile {name!r}; known: {', '.join(list_profiles())}")
    text = files[name].read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"device profile {name}.json is not valid JSON ({e})") from None
    return profile_from_dict(data, f"device profile {name}.json")


def _cache_file() -> Path:
    root = os.environ.get(CPU_CACHE_ENV) or Path.home() / ".cache" / "edgespec"
    return Path(root) / "cpu-profile.json"


def probe_cpu(seconds: float = 0.5) -> dict:
    """Measured memory bandwidth (a 256 MiB copy: read + write) and fp32 matmul rate."""
    import numpy as np

    a = np.ones(32 * 1024 * 1024, np.float64)  # 256 MiB: well beyond any L3
    b = np.ones_like(a)  # touched: no first-touch page faults inside the timed copies
    best, runs, t_end = 0.0, 0, time.perf_counter() + seconds
    while time.perf_counter() < t_end or runs < 5:
        t = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t))
        runs += 1
    m = np.ones((1024, 1024), np.float32)
    m @ m
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < seconds / 2 or n == 0:
        m @ m
        n += 1
    flops = n * 2 * 1024 ** 3 / (time.perf_counter() - t)
    return {"memory_bandwidth_gbs": round(best / 1e9, 2),
            "peak_fp16_tflops": round(flops / 1e12, 4)}


def cpu_profile(probe: bool = True) -> DeviceProfile:
    cache = _cache_file()
    if cache.is_file():
        try:
            return profile_from_dict(json.loads(cache.read_text()), str(cache))
        except (ValueError, TypeError):
            pass  # a stale or broken cache is measured again below
    if not probe:
        raise ValueError("the cpu profile has not been probed yet; run `edgespec devices cpu`")
    measured = probe_cpu()
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(
        os, "sysconf") else 0
    profile = DeviceProfile(
        name="cpu", description=f"this host ({os.cpu_count()} logical cores), probed",
        kind="cpu", memory_gb=round(pages / 1e9, 1) or 1.0, unified_memory=True,
        provider="cpu", kv_dtype="float32", **measured,
        sources={"memory_bandwidth_gbs": "measured: best of numpy copies of 256 MiB "
                                         "(bytes read + written per second)",
                 "peak_fp16_tflops": "measured: numpy float32 1024x1024 matmul rate (fp32)",
                 "memory_gb": "os.sysconf physical pages x page size"})
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(profile), indent=2) + "\n")
    os.replace(tmp, cache)
    return profile
