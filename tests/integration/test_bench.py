"""The benchmark suite's quick mode runs end to end and writes its results (no timing asserted).

CI installs only requirements.lock, so torch is usually absent: the PyTorch figures must then be
skipped with a reason, not fail the suite. The pipeline-overhead section reproduces a temp
project for real, so it lives in a slow test of its own.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.project import PROJECT_ROOT

RUN = PROJECT_ROOT / "bench" / "run.py"
TIMEOUT_S = 600
HAS_TORCH = importlib.util.find_spec("torch") is not None


def run_bench(out: Path, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--output-dir", str(out), *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert (out / "results.md").is_file()
    return json.loads((out / "results.json").read_text())


def test_quick_mode_writes_every_figure(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "--skip", "pipeline")

    assert result["mode"] == "quick"
    assert result["machine"]["peak_gflops"] > 0
    sections = result["sections"]
    flops = sections["flops"]
    assert flops["training_per_sample"] == 3 * flops["forward_per_sample"] > 0
    keras = sections["training"]["keras"]["samples_per_s"]
    assert len(keras["runs"]) >= 3 and keras["min"] <= keras["median"] <= keras["max"]
    inference = sections["inference"]
    assert inference["runtimes"]["ours (ORT)"]["b1_latency"]["median"] > 0
    assert "keras predict" in inference["runtimes"]
    assert inference["best_session_variant"]["b1_latency"] in inference["session_variants"]
    shipped = inference["graphs"]["ours (shipped)"]
    assert shipped["recurrent"], "the export has no native recurrent op"
    assert "ours as converted by tf2onnx, not streamlined (ORT)" in inference["runtimes"]
    assert "status" in sections["accuracy"]


def test_pytorch_parts_run_or_say_why_not(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "--only", "training")

    training = result["sections"]["training"]
    if not HAS_TORCH:
        assert training["torch"].startswith("skipped: torch not installed")
        pytest.skip("torch not installed (bench extra): PyTorch comparison not exercised")
    assert training["ratio_ours_over_torch"] > 0


@pytest.mark.slow
def test_quick_pipeline_overhead(tmp_path: Path, mnist_mirror: Path) -> None:
    result = run_bench(tmp_path, "--only", "pipeline")

    pipeline = result["sections"]["pipeline"]
    assert pipeline["first_repro_s"] > 0
    assert pipeline["dvc_repro_noop"]["median"] > 0


def test_training_profile_lists_ops_and_the_matmul_share() -> None:
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / "profile_training.py"), "--steps", "2"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "MatMul" in done.stdout
    assert "matrix products:" in done.stdout and "% of op time" in done.stdout


@pytest.mark.parametrize(
    ("vendor", "family", "model", "flags", "per_cycle"),
    [
        ("GenuineIntel", 6, 207, {"avx512f", "avx2", "fma"}, 64),  # Xeon, two 512-bit units
        ("AuthenticAMD", 25, 17, {"avx512f", "avx2", "fma"}, 32),  # EPYC Zen 4: 256-bit halves
        ("AuthenticAMD", 26, 2, {"avx512f", "avx2", "fma"}, 64),  # Zen 5
        ("AuthenticAMD", 23, 49, {"avx2", "fma"}, 32),  # Zen 2
        ("AuthenticAMD", 23, 1, {"avx2", "fma"}, 16),  # Zen 1
        ("GenuineIntel", 6, 63, {"avx2", "fma"}, 32),  # Haswell
    ],
)
def test_peak_follows_the_cores_real_fma_throughput(vendor, family, model, flags, per_cycle):
    sys.path.insert(0, str(PROJECT_ROOT / "bench"))
    try:
        import machine
    finally:
        sys.path.remove(str(PROJECT_ROOT / "bench"))
    _, got, rule = machine.simd_level(flags, vendor, family, model)
    assert got == per_cycle and rule
