"""What the numbers were measured on: CPU model, SIMD flags, clock, cores, FP32 peak, versions.

The peak is cores x clock x FP32 FLOPs per cycle per core, where FLOPs/cycle follows from the
widest FMA the flags advertise, assuming two FMA units per core (true of Xeon Scalable Gold and
Platinum parts and of client cores since Haswell; a part with one 512-bit unit has half):
AVX-512F: 2 units x 16 lanes x 2 = 64; AVX2+FMA: 2 x 8 x 2 = 32; AVX: 8 + 8 = 16; SSE: 8.
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
FMA_UNITS = 2
# (flags that must all be present, lanes of fp32 per vector, FMA?) from widest to narrowest.
SIMD_LEVELS: tuple[tuple[str, tuple[str, ...], int, bool], ...] = (
    ("AVX-512F", ("avx512f", "fma"), 16, True),
    ("AVX2+FMA", ("avx2", "fma"), 8, True),
    ("AVX", ("avx",), 8, False),
    ("SSE", ("sse",), 4, False),
)
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


def simd_level(flags: set[str]) -> tuple[str, int]:
    """The widest SIMD level the flags allow, and its FP32 FLOPs per cycle per core."""
    for name, required, lanes, fma in SIMD_LEVELS:
        if all(flag in flags for flag in required):
            per_unit = lanes * 2 if fma else lanes
            return name, per_unit * FMA_UNITS
    return "scalar", 2


def describe() -> Machine:
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    cores = len(os.sched_getaffinity(0))
    clock, source = _clock_mhz(info)
    simd, per_cycle = simd_level(flags)
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
        peak_formula=f"{cores} cores x {clock:.0f} MHz x {per_cycle} FLOP/cycle ({simd}, "
        f"{FMA_UNITS} FMA units)",
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
