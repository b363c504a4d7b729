"""Inference: our ONNX model in onnxruntime against Keras and PyTorch, plus onnxruntime variants.

    python bench/bench_inference.py            # just this section of bench/run.py, printed
    python bench/bench_inference.py --quick    # few calls (CI)

Models: models/onnx/model.onnx (+ model.int8.onnx) and models/keras/model.keras when the
pipeline has produced them; otherwise the params.yaml architecture with random weights, exported
with seqmnist.onnx.convert.convert (and quantized with its quantize_int8) into a temp
folder: timing does not depend on the weights. PyTorch's own ONNX export of the same
architecture runs in the same onnxruntime. Inputs are random [batch, time_steps, features] rows.
Batch 1 is reported as median latency, batch 256 as samples/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import torch_model
from flops import ModelFlops, percent_of_peak
from timing import Figure, latency, ratio, throughput

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_ONNX = Path("models/onnx/model.onnx")
DEFAULT_INT8 = Path("models/onnx/model.int8.onnx")
DEFAULT_KERAS = Path("models/keras/model.keras")
BIG_BATCH = 256
SEED = 0
TIME_STEPS = 28
FEATURES = 28
ONNX_OPSET = 17
PROVIDERS = ["CPUExecutionProvider"]
SPINNING_KEY = "session.intra_op.allow_spinning"
BASELINE = "default"


@dataclass(frozen=True)
class Plan:
    """Calls per run and runs per figure, for fast (onnxruntime, torch) and slow (Keras) calls."""

    runs: int
    warmup: int
    fast_single_calls: int
    fast_batch_calls: int
    slow_single_calls: int
    slow_batch_calls: int


FULL = Plan(
    runs=5,
    warmup=5,
    fast_single_calls=300,
    fast_batch_calls=10,
    slow_single_calls=20,
    slow_batch_calls=4,
)
QUICK = Plan(
    runs=3,
    warmup=1,
    fast_single_calls=10,
    fast_batch_calls=2,
    slow_single_calls=2,
    slow_batch_calls=1,
)


@dataclass(frozen=True)
class Models:
    onnx: Path
    keras: Path
    int8: Path | None
    note: str


AS_CONVERTED = "ours as converted by tf2onnx, not streamlined (ORT)"
FOLDED_EXPORT = "torch export, folded projection (ORT)"
SHIPPED_GRAPH = ("ours (ORT)", "ours int8 (ORT)")  # and every session variant


def _model_params():
    from seqmnist.config import ModelParams, load_params
    from seqmnist.errors import SeqmnistError

    try:
        return load_params().train.model
    except SeqmnistError:
        return ModelParams()


def build_untrained(folder: Path) -> tuple[Path, Path, Path]:
    """Save the configured architecture with random weights, its ONNX and int8 exports."""
    import keras
    import onnx

    from seqmnist.modeling.model import build_model
    from seqmnist.onnx.convert import convert, quantize_int8
    from seqmnist.onnx.streamline import streamline_lstm

    keras.utils.set_random_seed(SEED)
    model = build_model(_model_params(), time_steps=TIME_STEPS, features=FEATURES)
    keras_path, onnx_path, int8_path = (
        folder / "model.keras",
        folder / "model.onnx",
        folder / "model.int8.onnx",
    )
    model.save(keras_path)
    rewrite = streamline_lstm(
        convert(model, ONNX_OPSET, TIME_STEPS, FEATURES), TIME_STEPS, FEATURES
    )
    onnx.save(rewrite.model, onnx_path)
    quantize_int8(onnx_path, int8_path, {})
    return onnx_path, keras_path, int8_path


def resolve_models(onnx_path: Path, keras_path: Path, folder: Path) -> Models:
    """The pipeline's models when both exist, else untrained ones built in `folder`."""
    if onnx_path.is_file() and keras_path.is_file():
        int8 = onnx_path.with_name(DEFAULT_INT8.name)
        return Models(onnx_path, keras_path, int8 if int8.is_file() else None, "trained")
    built_onnx, built_keras, built_int8 = build_untrained(folder)
    note = f"untrained ({onnx_path} or {keras_path} missing: random weights, timing only)"
    return Models(built_onnx, built_keras, built_int8, note)


def save_as_converted(keras_path: Path, out_path: Path) -> Path:
    """Our model as tf2onnx writes it, before the export stage streamlines the LSTM graph."""
    import onnx

    from seqmnist.onnx.convert import convert, load_keras_model

    model = load_keras_model(keras_path)
    time_steps, features = (int(dim) for dim in model.input_shape[1:])
    onnx.save(convert(model, ONNX_OPSET, time_steps, features), out_path)
    return out_path


def session_variants() -> dict[str, dict[str, object]]:
    """onnxruntime options tried on our model, one change at a time against the default."""
    import onnxruntime as ort

    level = ort.GraphOptimizationLevel
    return {
        BASELINE: {},
        "intra_op_threads=1": {"intra_op_num_threads": 1},
        "intra_op_threads=2": {"intra_op_num_threads": 2},
        "graph_opt=disabled": {"graph_optimization_level": level.ORT_DISABLE_ALL},
        "graph_opt=basic": {"graph_optimization_level": level.ORT_ENABLE_BASIC},
        "graph_opt=extended": {"graph_optimization_level": level.ORT_ENABLE_EXTENDED},
        "execution=parallel": {"execution_mode": ort.ExecutionMode.ORT_PARALLEL},
        "spinning=off": {SPINNING_KEY: "0"},
    }


def make_session(path: Path, options: dict[str, object], optimized_copy: Path | None = None):
    """An InferenceSession with the given SessionOptions attributes or config entries."""
    import onnxruntime as ort

    session_options = ort.SessionOptions()
    for key, value in options.items():
        if key.startswith("session."):
            session_options.add_session_config_entry(key, str(value))
        else:
            setattr(session_options, key, value)
    if optimized_copy is not None:
        session_options.optimized_model_filepath = str(optimized_copy)
    return ort.InferenceSession(str(path), session_options, providers=PROVIDERS)


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    big = np.random.default_rng(SEED).uniform(0, 1, (BIG_BATCH, TIME_STEPS, FEATURES))
    big = big.astype(np.float32)
    return big[:1].copy(), big


def _pair(single: Callable[[], object], batch: Callable[[], object], plan: Plan, slow: bool):
    calls_1 = plan.slow_single_calls if slow else plan.fast_single_calls
    calls_b = plan.slow_batch_calls if slow else plan.fast_batch_calls
    return {
        "b1_latency": latency(single, calls_1, plan.runs, plan.warmup),
        "b256_throughput": throughput(batch, BIG_BATCH, calls_b, plan.runs, plan.warmup),
    }


def time_session(session, plan: Plan) -> dict[str, Figure]:
    one, big = _inputs()
    name = session.get_inputs()[0].name
    return _pair(
        lambda: session.run(None, {name: one}), lambda: session.run(None, {name: big}), plan, False
    )


def time_keras(keras_path: Path, plan: Plan) -> dict[str, dict[str, Figure]]:
    """Keras both ways a user would serve it: model.predict and a direct model(x) call."""
    import keras

    model = keras.saving.load_model(keras_path, compile=False)
    one, big = _inputs()
    predict = _pair(
        lambda: model.predict(one, verbose=0),
        lambda: model.predict(big, batch_size=BIG_BATCH, verbose=0),
        plan,
        True,
    )
    call = _pair(lambda: model(one, training=False), lambda: model(big, training=False), plan, True)
    return {"keras predict": predict, "keras model(x)": call}


def time_torch(folder: Path, plan: Plan) -> dict[str, dict[str, Figure]]:
    """PyTorch eager, and PyTorch's ONNX exports (plain and projection-folded) in onnxruntime."""
    params = _model_params()
    one, big = _inputs()
    predict = torch_model.predictor(params, FEATURES, SEED)
    results = {"torch eager": _pair(lambda: predict(one), lambda: predict(big), plan, False)}
    for label, fused in (
        ("torch export (ORT)", False),
        (FOLDED_EXPORT, True),
    ):
        path = folder / f"torch{'_fused' if fused else ''}.onnx"
        torch_model.export_onnx(params, TIME_STEPS, FEATURES, path, SEED, fused=fused)
        results[label] = time_session(make_session(path, {}), plan)
    return results


def _figures_json(figures: dict[str, Figure], forward: int, executed: int, peak: float) -> dict:
    """The timings, with GFLOP/s at batch 256 on the model's forward FLOPs and on `executed`."""
    entry: dict[str, object] = {key: figure.to_json() for key, figure in figures.items()}
    for prefix, flops in (("b256", forward), ("b256_executed", executed)):
        gflops = figures["b256_throughput"].scaled(flops / 1e9, "GFLOP/s")
        entry[f"{prefix}_gflops"] = gflops.to_json()
        entry[f"{prefix}_percent_of_peak"] = percent_of_peak(gflops.median, peak)
    entry["executed_flops_per_image"] = executed
    return entry


def _projection_folded(graph: dict) -> bool:
    """Whether an inspected graph's first recurrent op reads the rows with no product before it:
    the projection folded into its W, as the export stage streamlines forward and bidirectional
    LSTM stacks."""
    return not {"MatMul", "Gemm"} & set(graph["recurrent"][0]["x_input_path"])


def run(models: Models, folder: Path, plan: Plan, flops: ModelFlops, peak: float) -> dict:
    """Every inference figure, the ratios the issue asks for, the best option set, the graphs."""
    import graph_check

    timed: dict[str, dict[str, Figure]] = {}
    variants = {}
    for label, options in session_variants().items():
        variants[label] = time_session(make_session(models.onnx, options), plan)
        print(f"  onnxruntime {label}: {_short(variants[label])}", flush=True)
    timed["ours (ORT)"] = variants[BASELINE]
    if models.int8 is not None:
        timed["ours int8 (ORT)"] = time_session(make_session(models.int8, {}), plan)
    as_converted = save_as_converted(models.keras, folder / "ours.as_converted.onnx")
    timed[AS_CONVERTED] = time_session(make_session(as_converted, {}), plan)
    timed.update(time_keras(models.keras, plan))
    torch_note = None
    if torch_model.available():
        timed.update(time_torch(folder, plan))
    else:
        torch_note = f"skipped: torch not installed ({torch_model.TORCH_INSTALL_HINT})"
    for label, figures in timed.items():
        print(f"  {label}: {_short(figures)}", flush=True)

    ours = timed["ours (ORT)"]
    ratios = {}
    for label, figures in timed.items():
        if label == "ours (ORT)":
            continue
        ratios[label] = {
            "b1_latency_theirs_over_ours": ratio(figures["b1_latency"], ours["b1_latency"]),
            "b256_throughput_ours_over_theirs": ratio(
                ours["b256_throughput"], figures["b256_throughput"]
            ),
        }
    best_b1 = min(variants, key=lambda label: variants[label]["b1_latency"].median)
    best_b256 = max(variants, key=lambda label: variants[label]["b256_throughput"].median)
    graphs = {
        "ours (shipped)": graph_check.inspect(models.onnx, folder / "ours.optimized.onnx"),
        "ours as converted": graph_check.inspect(
            as_converted, folder / "ours.as_converted.optimized.onnx"
        ),
    }
    torch_export = folder / "torch.onnx"
    if torch_export.is_file():
        graphs["torch export"] = graph_check.inspect(torch_export, folder / "torch.optimized.onnx")
    shipped = (
        flops.folded_forward if _projection_folded(graphs["ours (shipped)"]) else flops.forward
    )
    executed = {FOLDED_EXPORT: flops.folded_forward} | dict.fromkeys(SHIPPED_GRAPH, shipped)
    return {
        "models": {"onnx": str(models.onnx), "keras": str(models.keras), "weights": models.note},
        "int8": "measured" if models.int8 else "absent (export.quantize_int8 off)",
        "torch": torch_note or "measured",
        "batch": BIG_BATCH,
        "runs": plan.runs,
        "runtimes": {
            label: _figures_json(f, flops.forward, executed.get(label, flops.forward), peak)
            for label, f in timed.items()
        },
        "ratios_against_ours": ratios,
        "session_variants": {
            label: _figures_json(f, flops.forward, shipped, peak) for label, f in variants.items()
        },
        "best_session_variant": {"b1_latency": best_b1, "b256_throughput": best_b256},
        "graphs": graphs,
    }


def _short(figures: dict[str, Figure]) -> str:
    return (
        f"b1 {figures['b1_latency'].median:.3f} ms, "
        f"b{BIG_BATCH} {figures['b256_throughput'].median:,.0f} samples/s"
    )


def main(argv: list[str] | None = None) -> int:
    import json

    from flops import model_flops
    from machine import describe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX, help="ONNX model")
    parser.add_argument("--keras", type=Path, default=DEFAULT_KERAS, help="Keras model")
    parser.add_argument("--quick", action="store_true", help="few calls (CI smoke run)")
    args = parser.parse_args(argv)
    flops = model_flops(_model_params(), TIME_STEPS, FEATURES)
    with tempfile.TemporaryDirectory(prefix="seqmnist-bench-") as tmp:
        models = resolve_models(args.onnx, args.keras, Path(tmp))
        result = run(
            models, Path(tmp), QUICK if args.quick else FULL, flops, describe().peak_gflops
        )
    print(json.dumps(result["ratios_against_ours"], indent=2))
    print(json.dumps(result["best_session_variant"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
