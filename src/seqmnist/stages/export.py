"""`export` stage: Keras model -> verified ONNX model (+ optional int8 variant) and a model card.

The ONNX file is what ships, so it is only published after onnxruntime has reproduced the Keras
model on the whole test set (seqmnist.onnx.convert), all files at once (a staging folder that
replaces models/onnx/).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqmnist.config import ExportParams
from seqmnist.data.dataset import load_split
from seqmnist.errors import DataError, ExportError
from seqmnist.io import atomic_dir, write_json
from seqmnist.onnx import metadata as onnx_meta
from seqmnist.onnx.card import build_facts, model_card
from seqmnist.onnx.convert import (
    Outputs,
    accuracy,
    check_op_types,
    check_parity,
    convert,
    keras_outputs,
    load_keras_model,
    onnx_outputs,
    op_type_counts,
    parity,
    quantize_int8,
    recurrent_cells,
    set_metadata,
)
from seqmnist.onnx.streamline import streamline_lstm
from seqmnist.paths import (
    EVAL_METRICS,
    EXPORT_METRICS,
    EXPORT_REPORT,
    KERAS_MODEL,
    MODEL_CARD,
    MODEL_INFO,
    ONNX_DIR,
    ONNX_INT8_MODEL,
    ONNX_MODEL,
    PROCESSED_DIR,
)

FLOAT_NAME = ONNX_MODEL.name
INT8_NAME = ONNX_INT8_MODEL.name
CARD_NAME = MODEL_CARD.name
REPORT_NAME = EXPORT_REPORT.name
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verified:
    """A converted graph that passed onnx.checker, the op-type check and parity with Keras."""

    proto: Any
    note: str
    op_types: dict[str, int]
    cells: list[str]
    reference: Outputs
    candidate: Outputs
    agreement: dict[str, Any]


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or {} when the file is absent or unreadable (facts optional)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _summary(metrics: dict[str, Any], out_dir: Path) -> str:
    sizes = ", ".join(
        f"{name} {size / 1024:.1f} KiB" for name, size in metrics["file_sizes"].items()
    )
    lines = [
        f"{out_dir}/{FLOAT_NAME} (opset {metrics['opset']}): {sizes}",
        f"  test accuracy: onnx {metrics['onnx_test_accuracy']:.4f}, "
        f"keras {metrics['keras_test_accuracy']:.4f}"
        + (
            f", int8 {metrics['int8_test_accuracy']:.4f}"
            if metrics.get("int8_test_accuracy") is not None
            else ""
        ),
        f"  parity: max |dp| {metrics['max_abs_prob_diff']:.3g} <= {metrics['parity_atol']:.3g}, "
        f"{metrics['argmax_disagreements']} argmax disagreements "
        f"on {metrics['test_images']} images",
        "  op types: " + ", ".join(f"{op} x{n}" for op, n in metrics["op_types"].items()),
    ]
    return "\n".join(lines)


def _load(model_path: Path, processed_dir: Path):
    """The trained model and the test split, checked to fit each other."""
    model = load_keras_model(model_path)
    x_test, y_test = load_split("test", processed_dir)
    time_steps, features = (int(dim) for dim in model.input_shape[1:])
    if x_test.shape[1:] != (time_steps, features):
        raise DataError(
            f"{processed_dir}: test images are {x_test.shape[1:]}, but {model_path} expects "
            f"[time_steps, features] = {(time_steps, features)}"
        )
    return model, x_test, y_test


def _convert_verified(model, params: ExportParams, x_test: np.ndarray) -> Verified:
    """Convert, streamline, check the graph, and prove it matches Keras on every test image."""
    import onnx

    time_steps, features = x_test.shape[1:]
    rewrite = streamline_lstm(convert(model, params.opset, time_steps, features), *x_test.shape[1:])
    log.info("graph %s", rewrite.note)
    try:
        onnx.checker.check_model(rewrite.model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the converted ONNX graph fails onnx.checker: {exc}") from None
    counts, cells = op_type_counts(rewrite.model.graph), recurrent_cells(model)
    check_op_types(counts, cells)
    reference = keras_outputs(model, x_test)
    candidate = onnx_outputs(rewrite.model.SerializeToString(), x_test)
    agreement = parity(reference, candidate)
    check_parity(agreement, params.parity_atol)
    return Verified(rewrite.model, rewrite.note, counts, cells, reference, candidate, agreement)


def _metrics(params: ExportParams, verified: Verified, y_test: np.ndarray) -> dict[str, Any]:
    agreement = {key: value for key, value in verified.agreement.items() if key != "images"}
    return {
        "opset": params.opset,
        "recurrent_cells": verified.cells,
        "graph_rewrite": verified.note,
        "op_types": verified.op_types,
        "keras_test_accuracy": accuracy(verified.reference.predicted, y_test),
        "onnx_test_accuracy": accuracy(verified.candidate.predicted, y_test),
        "test_images": len(y_test),
        "parity_atol": params.parity_atol,
        **agreement,
        "int8_test_accuracy": None,
        "int8_max_abs_prob_diff": None,
        "int8_argmax_disagreements": None,
    }


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """What `dvc metrics` shows of an export: accuracy, parity with Keras, size; the full report
    (op types, rewrite, int8 details) stays in models/onnx/export_report.json."""
    return {
        "onnx_test_accuracy": report["onnx_test_accuracy"],
        "max_abs_prob_diff": report["max_abs_prob_diff"],
        "argmax_disagreements": report["argmax_disagreements"],
        "model_bytes": report["file_sizes"][FLOAT_NAME],
        "int8_test_accuracy": report["int8_test_accuracy"],
    }


def _write_int8(
    float_path: Path, staging: Path, facts: dict, verified: Verified, x_test, y_test, metrics
) -> int:
    """The quantized variant beside the float model, scored against the same Keras reference."""
    import onnx

    int8_path = staging / INT8_NAME
    quantize_int8(float_path, int8_path, facts)
    quantized = onnx_outputs(int8_path.read_bytes(), x_test)
    int8_parity = parity(verified.reference, quantized)
    metrics["int8_test_accuracy"] = accuracy(quantized.predicted, y_test)
    metrics["int8_max_abs_prob_diff"] = int8_parity["max_abs_prob_diff"]
    metrics["int8_argmax_disagreements"] = int8_parity["argmax_disagreements"]
    metrics["int8_op_types"] = op_type_counts(onnx.load(int8_path).graph)
    return int8_path.stat().st_size


def run(
    params: ExportParams,
    model_path: Path = KERAS_MODEL,
    processed_dir: Path = PROCESSED_DIR,
    out_dir: Path = ONNX_DIR,
    metrics_path: Path = EXPORT_METRICS,
    info_path: Path = MODEL_INFO,
    eval_metrics_path: Path = EVAL_METRICS,
) -> dict[str, Any]:
    """Convert, verify against Keras on the whole test set, then publish files and metrics."""
    import onnx

    model, x_test, y_test = _load(model_path, processed_dir)
    verified = _convert_verified(model, params, x_test)
    metrics = _metrics(params, verified, y_test)
    test_metrics = {
        "onnx_accuracy": metrics["onnx_test_accuracy"],
        "keras_accuracy": metrics["keras_test_accuracy"],
        "images": len(y_test),
    }
    facts = build_facts(
        params,
        _read_json(info_path),
        _read_json(eval_metrics_path),
        *x_test.shape[1:],
        test_metrics,
    )
    facts[onnx_meta.META_VERIFICATION] = {**verified.agreement, "parity_atol": params.parity_atol}
    verified_graph = verified.proto.graph.SerializeToString()
    set_metadata(verified.proto, facts)
    if verified.proto.graph.SerializeToString() != verified_graph:
        raise ExportError("internal error: the graph changed after it was verified")

    with atomic_dir(out_dir) as staging:
        float_path = staging / FLOAT_NAME
        onnx.save(verified.proto, float_path)
        sizes = {FLOAT_NAME: float_path.stat().st_size}
        if params.quantize_int8:
            sizes[INT8_NAME] = _write_int8(
                float_path, staging, facts, verified, x_test, y_test, metrics
            )
        metrics["file_sizes"] = sizes
        (staging / CARD_NAME).write_text(model_card(facts, metrics))
        write_json(staging / REPORT_NAME, metrics)
    write_json(Path(metrics_path), headline(metrics))
    log.info("%s", _summary(metrics, Path(out_dir)))
    return metrics
