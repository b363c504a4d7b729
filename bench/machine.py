"""What the numbers were measured on: CPU model, SIMD flags, clock, cores, FP32 peak, versions.

The peak is cores x clock x FP32 FLOPs per cycle per core. FLOPs per cycle come from the core's
real vector throughput, not from the widest instructions it accepts (`PEAK_RULES`):
  - Intel with AVX-512F: two 512-bit FMA units, 2 x 16 lanes x 2 = 64 (Xeon Scalable Gold and
    Platinum and later server parts; Intel 64 and IA-32 Optimization Reference Manual). Parts
    with one 512-bit unit (some Silver/Bronze) have half: the rule cannot see that from flags.
  - AMD Zen 4 (family 0x19 with AVX-512F): 512-bit FMAs run as two 256-bit halves on two FMA
    pipes, 2 x 8 x 2 = 32 (AMD Software Optimization Guide for Family 19h).
  - AMD Zen 5 (family 0x1A): two full 512-bit FMA pipes, 64.
  - AVX2 with FMA (two 256-bit FMA units: Intel since Haswell, AMD since Zen 2): 32; Zen 1
    (family 0x17, models below 0x30) splits them into 128-bit halves: 16.
  - AVX without FMA: 8 + 8 = 16; SSE: 8.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
MAX_FREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
ZEN1_FAMILY = 0x17
ZEN2_FIRST_MODEL = 0x30
ZEN4_FAMILY = 0x19
REPORTED_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
)
PACKAGES = (
    "tensorflow",
    "keras",
    "torch",
    "onnxruntime",
    "onnx",
    "tf2onnx",
    "numpy",
    "dvc",
    "prefect",
)
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_ENABLE_ONEDNN_OPTS",
    "MKL_NUM_THREADS",
)


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    cpu_family_model: str
    cores: int
    clock_mhz: float
    clock_source: str
    flags: list[str]
    simd: str
    flops_per_cycle_per_core: int
    peak_gflops: float
    peak_formula: str
    load_average: list[float]


def _cpuinfo() -> dict[str, str]:
    """Fields of the first processor block of /proc/cpuinfo (empty off Linux)."""
    if not CPUINFO.is_file():
        return {}
    fields: dict[str, str] = {}
    for line in CPUINFO.read_text().splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _clock_mhz(info: dict[str, str]) -> tuple[float, str]:
    """The max frequency when the kernel exposes it, else cpuinfo's current MHz (VMs: nominal)."""
    if MAX_FREQ.is_file():
        return int(MAX_FREQ.read_text()) / 1000, str(MAX_FREQ)
    if "cpu MHz" in info:
        return float(info["cpu MHz"]), "/proc/cpuinfo cpu MHz"
    return 0.0, "unknown"


def simd_level(flags: set[str], vendor: str = "", family: int = 0, model: int = 0):
    """(level, FP32 FLOPs per cycle per core, the rule applied) for this CPU."""
    amd = vendor == "AuthenticAMD"
    if "avx512f" in flags and "fma" in flags:
        if amd and family == ZEN4_FAMILY:
            return "AVX-512F", 32, "AMD Zen 4: 512-bit FMA as two 256-bit halves, 2 pipes x 8 x 2"
        if amd:
            return "AVX-512F", 64, "AMD Zen 5: two 512-bit FMA pipes, 2 x 16 x 2"
        return "AVX-512F", 64, "Intel: two 512-bit FMA units, 2 x 16 x 2 (one-unit parts: half)"
    if "avx2" in flags and "fma" in flags:
        if amd and family == ZEN1_FAMILY and model < ZEN2_FIRST_MODEL:
            return "AVX2+FMA", 16, "AMD Zen 1: 256-bit FMA as two 128-bit halves, 2 x 4 x 2"
        return "AVX2+FMA", 32, "two 256-bit FMA units, 2 x 8 x 2"
    if "avx" in flags:
        return "AVX", 16, "256-bit add + multiply, 8 + 8"
    if "sse" in flags:
        return "SSE", 8, "128-bit add + multiply, 4 + 4"
    return "scalar", 2, "scalar add + multiply"


def describe() -> Machine:
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    cores = len(os.sched_getaffinity(0))
    clock, source = _clock_mhz(info)
    family, model = int(info.get("cpu family", 0)), int(info.get("model", 0))
    simd, per_cycle, rule = simd_level(flags, info.get("vendor_id", ""), family, model)
    peak = cores * clock * 1e6 * per_cycle / 1e9
    return Machine(
        cpu_model=info.get("model name", platform.processor() or "unknown"),
        cpu_family_model=f"family {info.get('cpu family', '?')} model {info.get('model', '?')}",
        cores=cores,
        clock_mhz=clock,
        clock_source=source,
        flags=[flag for flag in REPORTED_FLAGS if flag in flags],
        simd=simd,
        flops_per_cycle_per_core=per_cycle,
        peak_gflops=round(peak, 1),
        peak_formula=f"{cores} cores x {clock:.0f} MHz x {per_cycle} FLOP/cycle ({simd}: {rule})",
        load_average=[round(value, 2) for value in os.getloadavg()],
    )


def _git_commit() -> str:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def versions() -> dict[str, str]:
    """Versions of Python and of every package a figure depends on ('absent' if not installed)."""
    found = {"python": platform.python_version(), "git": _git_commit()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def environment() -> dict[str, str]:
    """Thread-related environment variables that change the figures when set."""
    return {name: os.environ[name] for name in THREAD_ENV if name in os.environ}


def machine_json() -> dict[str, object]:
    return {**asdict(describe()), "versions": versions(), "environment": environment()}
