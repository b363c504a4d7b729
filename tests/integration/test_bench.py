"""The benchmark suite's quick mode runs end to end and writes its results (no timing asserted);
its FLOP counts match hand arithmetic, and its PyTorch reference is the configured architecture.

CI installs only requirements.lock, so torch is usually absent: the PyTorch figures must then be
skipped with a reason, not fail the suite. The pipeline-overhead section reproduces a temp
project for real, so it lives in a slow test of its own.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqmnist.config import ModelParams, TrainParams, load_params
from support.project import PROJECT_ROOT

BENCH = PROJECT_ROOT / "bench"
RUN = BENCH / "run.py"
TIMEOUT_S = 600
HAS_TORCH = importlib.util.find_spec("torch") is not None
ROWS = 28  # time steps and features of an MNIST image read row by row
TWO_LAYER_BIDIRECTIONAL = ModelParams(units=64, layers=2, bidirectional=True, input_projection=32)
# LSTM 1 x 128 one way, projection 28 -> 128 (the default's shape), whose FLOPs are counted by
# hand below whatever the default becomes.
ONE_LAYER_FORWARD = ModelParams(units=128, bidirectional=False)
REFERENCE_CASES = [
    ModelParams(),
    TWO_LAYER_BIDIRECTIONAL,
    ModelParams(cell="gru"),
    ModelParams(cell="simple_rnn", units=32, input_projection=None),
]
PARITY_ATOL = 1e-5


def bench_module(name: str):
    """A module of bench/, a folder of scripts that import each other by bare name."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


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
    assert set(flops["executed_training"]) == {"keras", "torch"}
    keras = sections["training"]["keras"]["samples_per_s"]
    assert len(keras["runs"]) >= 3 and keras["min"] <= keras["median"] <= keras["max"]
    assert sections["training"]["keras"]["executed_percent_of_peak"] > 0
    defaults = load_params(PROJECT_ROOT / "params.yaml").train
    flipped_model = defaults.model.model_copy(
        update={"bidirectional": not defaults.model.bidirectional}
    )
    assert sections["training_flipped"]["bidirectional"] == flipped_model.bidirectional
    other_way = sections["training_flipped"]["keras"]
    counts = bench_module("training").executed_flops(
        defaults.model_copy(update={"model": flipped_model})
    )
    assert other_way["executed_flops_per_sample"] == counts["keras"].training
    assert other_way["samples_per_s"]["median"] > 0
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
    _, got, rule = bench_module("machine").simd_level(flags, vendor, family, model)
    assert got == per_cycle and rule


def test_flops_of_one_layer_by_hand() -> None:
    flops = bench_module("flops")
    params = ONE_LAYER_FORWARD  # LSTM 1 x 128, projection 28 -> 128, 10 classes
    model = flops.model_flops(params, ROWS, ROWS)

    assert model.projection == 2 * 28 * 28 * 128 == 200_704
    assert model.recurrent == 2 * 28 * 4 * (128 + 128) * 128 == 7_340_032
    assert model.classifier == 2 * 128 * 10 == 2_560
    assert model.forward == 7_543_296 and model.training == 22_629_888
    # folded: layer 1 reads the 28 features, no projection
    assert model.folded_forward == 2 * 28 * 4 * (28 + 128) * 128 + 2_560 == 4_475_392
    kernel = flops.executed(params, ROWS, ROWS, "k", folded=True, data_input_gradient=False)
    # 3 x folded forward, less layer 1's input gradient 2*28*4*28*128 = 802,816
    assert kernel.training == 3 * 4_475_392 - 802_816 == 12_623_360
    torch = flops.executed(params, ROWS, ROWS, "t", folded=False, data_input_gradient=False)
    # 3 x forward, less the projection's input gradient
    assert torch.training == 3 * 7_543_296 - 200_704 == 22_429_184
    assert torch.formula == "3 x forward - 2*T*F*P (no input gradient for the projection)"


def test_flops_of_two_bidirectional_layers_by_hand() -> None:
    flops = bench_module("flops")
    params = TWO_LAYER_BIDIRECTIONAL  # LSTM 2 x 64 x 2 directions, projection 28 -> 32
    model = flops.model_flops(params, ROWS, ROWS)

    layer_1 = 2 * (2 * 28 * 4 * (32 + 64) * 64)  # two directions over the 32-wide projection
    layer_2 = 2 * (2 * 28 * 4 * (128 + 64) * 64)  # over both directions of layer 1, 2 x 64
    assert (layer_1, layer_2) == (2_752_512, 5_505_024)
    assert model.projection == 2 * 28 * 28 * 32 == 50_176
    assert model.recurrent == layer_1 + layer_2
    assert model.classifier == 2 * 128 * 10 == 2_560
    assert model.forward == 8_310_272
    folded_layer_1 = 2 * (2 * 28 * 4 * (28 + 64) * 64)
    assert model.folded_forward == folded_layer_1 + layer_2 + 2_560 == 8_145_408
    kernel = flops.executed(params, ROWS, ROWS, "k", folded=True, data_input_gradient=False)
    # layer 1's input gradient in both directions: 2 * 2*28*4*28*64 = 802,816
    assert kernel.training == 3 * 8_145_408 - 802_816 == 23_633_408
    torch = flops.executed(params, ROWS, ROWS, "t", folded=False, data_input_gradient=False)
    assert torch.training == 3 * 8_310_272 - 50_176 == 24_880_640


def test_without_a_projection_only_pytorchs_lstm_takes_the_rows_gradient() -> None:
    flops, torch_model = bench_module("flops"), bench_module("torch_model")
    for cell, computed in (("lstm", True), ("gru", False), ("simple_rnn", False)):
        params = ONE_LAYER_FORWARD.model_copy(update={"cell": cell, "input_projection": None})
        computes = torch_model.data_input_gradient(params)
        count = flops.executed(params, ROWS, ROWS, "t", folded=False, data_input_gradient=computes)
        assert computes == computed
        forward = flops.model_flops(params, ROWS, ROWS).forward
        rows_gradient = 2 * 28 * flops.GATES[cell] * 28 * 128
        assert count.training == 3 * forward - (0 if computes else rows_gradient)


def test_executed_counts_follow_the_training_backend() -> None:
    training = bench_module("training")
    params = TrainParams(model=ONE_LAYER_FORWARD, lstm_backend="kernel")
    counts = training.executed_flops(params)

    assert counts["keras"].label == training.OURS["kernel"]
    assert counts["keras"].training == 12_623_360
    assert counts["torch"].training == 22_429_184
    keras_layers = training.executed_flops(params.model_copy(update={"lstm_backend": "keras"}))
    assert keras_layers["keras"].training == counts["torch"].training


def _keras_model(params: ModelParams):
    import keras

    from seqmnist.modeling.model import build_model

    keras.utils.set_random_seed(0)
    return build_model(params, ROWS, ROWS)


@pytest.mark.parametrize(
    "params",
    REFERENCE_CASES,
    ids=lambda p: f"{p.cell}-{p.layers}x{p.units}{'-bi' * p.bidirectional}",
)
def test_pytorch_reference_has_the_keras_models_trainable_parameters(params) -> None:
    pytest.importorskip("torch")
    reference = bench_module("torch_model").build(params, ROWS)

    trainable = sum(p.numel() for p in reference.parameters() if p.requires_grad)
    assert trainable == _keras_model(params).count_params()


def _keras_state_dict(keras_model, params: ModelParams) -> dict[str, np.ndarray]:
    """An LSTM model's Keras weights under the reference's names: Dense kernels transposed; per
    layer and direction W, U, b into weight_ih, weight_hh, bias_ih (bias_hh stays zero)."""
    state = {}
    for module, layer in (("projection", "row_projection"), ("logits", "logits")):
        kernel, bias = keras_model.get_layer(layer).get_weights()
        state[f"{module}.weight"], state[f"{module}.bias"] = kernel.T, bias
    directions = ("", "_reverse") if params.bidirectional else ("",)
    for index in range(params.layers):
        name = f"bi_lstm_{index}" if params.bidirectional else f"lstm_{index}"
        weights = keras_model.get_layer(name).get_weights()  # forward W, U, b, then backward
        for position, suffix in enumerate(directions):
            kernel, recurrent, bias = weights[3 * position : 3 * position + 3]
            state[f"recurrent.weight_ih_l{index}{suffix}"] = kernel.T
            state[f"recurrent.weight_hh_l{index}{suffix}"] = recurrent.T
            state[f"recurrent.bias_ih_l{index}{suffix}"] = bias
    return state


@pytest.mark.parametrize(
    "params",
    [
        ONE_LAYER_FORWARD,
        TWO_LAYER_BIDIRECTIONAL,
        ModelParams(readout="max"),
        ModelParams(readout="mean"),
    ],
    ids=["1x128", "2x64bi", "max-readout", "mean-readout"],
)
def test_pytorch_reference_computes_the_keras_models_function(params) -> None:
    """Keras's weights in the reference give Keras's logits: same layers in the same order, the
    last step of a bidirectional layer read as Keras's Bidirectional reads it, pooled readouts
    pooled over the same steps."""
    torch = pytest.importorskip("torch")
    keras_model = _keras_model(params)
    reference = bench_module("torch_model").build(params, ROWS).eval()
    state = _keras_state_dict(keras_model, params)
    loaded = reference.load_state_dict(
        {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in state.items()},
        strict=False,
    )
    assert loaded.missing_keys and all("bias_hh" in name for name in loaded.missing_keys)
    rows = np.random.default_rng(0).uniform(0, 1, (4, ROWS, ROWS)).astype(np.float32)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(theirs, keras_model(rows, training=False), atol=PARITY_ATOL)


@pytest.mark.parametrize(
    "params", [ONE_LAYER_FORWARD, TWO_LAYER_BIDIRECTIONAL], ids=["1x128", "2x64bi"]
)
def test_folded_pytorch_reference_computes_the_same_function(params) -> None:
    torch = pytest.importorskip("torch")
    torch_model = bench_module("torch_model")
    rows = np.random.default_rng(0).uniform(0, 1, (4, ROWS, ROWS)).astype(np.float32)
    outputs = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = torch_model.build(params, ROWS, fused=fused).eval()
        with torch.no_grad():
            outputs.append(model(torch.from_numpy(rows)).numpy())
    assert model.projection is None
    np.testing.assert_allclose(outputs[1], outputs[0], atol=PARITY_ATOL)
