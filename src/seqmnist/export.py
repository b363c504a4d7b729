"""`export` stage: Keras model -> verified ONNX model (+ optional int8 variant) and a model card.

The ONNX file is what ships, so it is only published after onnxruntime has reproduced the Keras
model on the whole test set. Conversion goes through `tf2onnx.convert.from_function` with an
explicit input signature: `from_keras` breaks on Keras 3 models, and the traced function lets the
graph carry both logits and softmax probabilities under stable names.
"""

from __future__ import annotations

import json
import logging
import platform
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqmnist import __version__, onnx_graph, onnx_meta
from seqmnist.config import ExportParams
from seqmnist.dataset import NUM_CLASSES, load_split
from seqmnist.errors import DataError, SeqmnistError
from seqmnist.io import atomic_dir, write_json
from seqmnist.paths import (
    EVAL_METRICS,
    EXPORT_METRICS,
    KERAS_MODEL,
    MODEL_CARD,
    MODEL_INFO,
    ONNX_DIR,
    ONNX_INT8_MODEL,
    ONNX_MODEL,
    PROCESSED_DIR,
)
from seqmnist.provenance import data_checksums, git_version

FLOAT_NAME = ONNX_MODEL.name
INT8_NAME = ONNX_INT8_MODEL.name
CARD_NAME = MODEL_CARD.name
EVAL_BATCH = 1000
# Recurrent cells that tf2onnx must turn into the native ONNX op of the same name.
NATIVE_RECURRENT_OPS = {"LSTM": "LSTM"}
LOOP_OP = "Loop"
PROVIDERS = ["CPUExecutionProvider"]


class ExportError(SeqmnistError):
    """The model could not be converted, or the ONNX model does not behave like the Keras one."""


@dataclass(frozen=True)
class Outputs:
    """Logits and probabilities for a whole split, from one runtime."""

    logits: np.ndarray
    probabilities: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def load_keras_model(model_path: Path):
    """Load the trained Keras model, with an error that says which stage produces it."""
    import keras

    model_path = Path(model_path)
    if not model_path.is_file():
        raise ExportError(f"{model_path}: Keras model not found; run `dvc repro train` first")
    try:
        return keras.saving.load_model(model_path, compile=False)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{model_path}: not a loadable Keras model ({exc})") from None


def recurrent_cells(model) -> list[str]:
    """Class names of the recurrent layers (unwrapping Bidirectional), e.g. ['LSTM']."""
    cells = []
    for layer in model.layers:
        inner = getattr(layer, "forward_layer", None) or layer
        name = type(inner).__name__
        if name in {"LSTM", "GRU", "SimpleRNN"}:
            cells.append(name)
    return cells


def _serving_function(model):
    """A traced function returning named logits and probabilities (names become ONNX outputs)."""
    import tensorflow as tf

    @tf.function
    def serve(rows):
        logits = model(rows, training=False)
        return {
            onnx_meta.LOGITS_NAME: logits,
            onnx_meta.PROBABILITIES_NAME: tf.nn.softmax(logits, axis=-1),
        }

    return serve


def _name_batch_dim(graph) -> None:
    """Give the dynamic leading dimension of every graph input and output one stable name."""
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = onnx_meta.BATCH_DIM


def convert(model, opset: int, time_steps: int, features: int):
    """Convert a Keras model to an ONNX ModelProto with input `rows` and two named outputs."""
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    signature = [tf.TensorSpec([None, time_steps, features], tf.float32, name=onnx_meta.INPUT_NAME)]
    try:
        proto, _ = tf2onnx.convert.from_function(
            _serving_function(model), input_signature=signature, opset=opset
        )
    except Exception as exc:
        raise ExportError(f"tf2onnx could not convert model {model.name!r}: {exc}") from exc
    input_names = [value.name for value in proto.graph.input]
    output_names = [value.name for value in proto.graph.output]
    expected = [onnx_meta.LOGITS_NAME, onnx_meta.PROBABILITIES_NAME]
    if input_names != [onnx_meta.INPUT_NAME] or sorted(output_names) != sorted(expected):
        raise ExportError(
            f"converted graph has inputs {input_names} and outputs {output_names}; "
            f"expected [{onnx_meta.INPUT_NAME!r}] and {expected}"
        )
    _name_batch_dim(proto.graph)
    proto.graph.name = model.name
    proto.doc_string = f"seqmnist {model.name}: MNIST digits read row by row (rows = time steps)"
    return proto


def op_type_counts(graph) -> dict[str, int]:
    """Node op types of a graph, subgraphs (Loop/If bodies) included, most frequent first."""
    counts: Counter[str] = Counter()
    pending = [graph]
    while pending:
        current = pending.pop()
        for node in current.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.HasField("g"):
                    pending.append(attr.g)
                pending.extend(attr.graphs)
    return dict(counts.most_common())


def check_op_types(counts: dict[str, int], cells: list[str]) -> None:
    """A cell with a native ONNX op must become that op: a Loop is an unrolled, slow fallback."""
    for cell in sorted(set(cells)):
        native = NATIVE_RECURRENT_OPS.get(cell)
        if native is None:
            continue
        if native not in counts or LOOP_OP in counts:
            raise ExportError(
                f"the {cell} model converted to op types {counts}; expected native {native} ops "
                f"and no {LOOP_OP} (tf2onnx did not recognise the Keras {cell} pattern)"
            )


def keras_outputs(model, x: np.ndarray) -> Outputs:
    """Reference outputs: the same traced function that was converted, run by TensorFlow."""
    serve = _serving_function(model)
    logits, probabilities = [], []
    for start in range(0, len(x), EVAL_BATCH):
        result = serve(x[start : start + EVAL_BATCH])
        logits.append(result[onnx_meta.LOGITS_NAME].numpy())
        probabilities.append(result[onnx_meta.PROBABILITIES_NAME].numpy())
    return Outputs(np.concatenate(logits), np.concatenate(probabilities))


def onnx_outputs(model_bytes: bytes, x: np.ndarray) -> Outputs:
    """Outputs of onnxruntime, addressing inputs and outputs by the names the session reports."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=PROVIDERS)
    input_name = session.get_inputs()[0].name
    names = [output.name for output in session.get_outputs()]
    logits_index = names.index(onnx_meta.LOGITS_NAME)
    probs_index = names.index(onnx_meta.PROBABILITIES_NAME)
    logits, probabilities = [], []
    for start in range(0, len(x), EVAL_BATCH):
        result = session.run(None, {input_name: x[start : start + EVAL_BATCH]})
        logits.append(result[logits_index])
        probabilities.append(result[probs_index])
    return Outputs(np.concatenate(logits), np.concatenate(probabilities))


def parity(reference: Outputs, candidate: Outputs) -> dict[str, Any]:
    """How far two runtimes' outputs are apart on the same images."""
    disagree = reference.predicted != candidate.predicted
    return {
        "max_abs_prob_diff": float(np.abs(reference.probabilities - candidate.probabilities).max()),
        "max_abs_logit_diff": float(np.abs(reference.logits - candidate.logits).max()),
        "argmax_disagreements": int(disagree.sum()),
        "images": len(disagree),
    }


def check_parity(result: dict[str, Any], atol: float) -> None:
    """Fail unless every probability is within `atol` and every predicted class is the same."""
    diff, disagreements = result["max_abs_prob_diff"], result["argmax_disagreements"]
    if diff > atol or disagreements:
        raise ExportError(
            f"onnxruntime and Keras disagree on the test set: max |p_onnx - p_keras| = {diff:.3g} "
            f"(allowed {atol:.3g}, {diff / atol:.3g}x), predicted class differs on "
            f"{disagreements} of {result['images']} images"
        )


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float((predicted == labels).mean())


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or {} when the file is absent or unreadable (facts optional)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def producer_versions() -> dict[str, str]:
    """Versions of everything that produced or verified the file."""
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {
        "seqmnist": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def build_facts(
    params: ExportParams,
    model_info: dict[str, Any],
    eval_metrics: dict[str, Any],
    time_steps: int,
    features: int,
    test_metrics: dict[str, Any],
) -> dict[str, Any]:
    """Everything written into metadata_props and the model card (one source for both)."""
    version = git_version()
    checksums = data_checksums() or dict(model_info.get("data_sha256") or {})
    return {
        onnx_meta.META_MODEL_VERSION: {
            **version,
            "train_git_commit": model_info.get("git_commit"),
            "train_git_dirty": model_info.get("git_dirty"),
            "seqmnist": __version__,
        },
        onnx_meta.META_DATA_SHA256: checksums,
        onnx_meta.META_PARAMS: {
            "train": model_info.get("params", {}),
            "export": params.model_dump(),
        },
        onnx_meta.META_TEST_METRICS: {**test_metrics, "evaluate": eval_metrics},
        onnx_meta.META_INPUT_SPEC: onnx_meta.input_spec(time_steps, features),
        onnx_meta.META_OUTPUT_SPEC: onnx_meta.output_spec(NUM_CLASSES),
        onnx_meta.META_PREPROCESSING: onnx_meta.preprocessing_spec(time_steps, features),
        onnx_meta.META_CLASS_LABELS: list(onnx_meta.CLASS_LABELS),
        onnx_meta.META_PRODUCER: producer_versions(),
    }


def set_metadata(proto, facts: dict[str, Any]) -> None:
    """Replace metadata_props with `facts`, JSON-encoded."""
    del proto.metadata_props[:]
    for key, value in sorted(onnx_meta.encode_metadata(facts).items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def quantize_int8(float_path: Path, int8_path: Path, facts: dict[str, Any]) -> None:
    """Dynamic int8 quantization of weights (LSTM and MatMul), keeping the metadata."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(float_path, int8_path, weight_type=QuantType.QInt8)
    proto = onnx.load(int8_path)
    set_metadata(
        proto,
        {**facts, onnx_meta.META_QUANTIZATION: {"method": "dynamic", "weight_type": "QInt8"}},
    )
    onnx.save(proto, int8_path)


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def model_card(facts: dict[str, Any], metrics: dict[str, Any]) -> str:
    """MODEL_CARD.md, generated from the same facts as the ONNX metadata."""
    version = facts[onnx_meta.META_MODEL_VERSION]
    spec = facts[onnx_meta.META_INPUT_SPEC]
    prep = facts[onnx_meta.META_PREPROCESSING]
    train = facts[onnx_meta.META_PARAMS]["train"]
    arch = train.get("model", {}) if isinstance(train, dict) else {}
    evaluate = facts[onnx_meta.META_TEST_METRICS].get("evaluate", {})
    dirty = " (uncommitted changes)" if version.get("git_dirty") else ""
    _, time_steps, features = spec["shape"]
    lines = [
        "# seqmnist model card",
        "",
        f"Recurrent MNIST digit classifier that reads a {time_steps}x{features} image row by row "
        "(one row per time step), exported to ONNX for onnxruntime. Generated by `seqmnist "
        "export`; the same facts are stored in the ONNX file's metadata_props.",
        "",
        "## Version",
        "",
        f"- git commit: `{version.get('git_commit')}`{dirty}",
        f"- trained at commit: `{version.get('train_git_commit')}`",
        f"- seqmnist {version.get('seqmnist')}",
        "",
        "## Input",
        "",
        f"- `{spec['name']}`: {spec['dtype']} `[{', '.join(map(str, spec['shape']))}]` "
        f"(`{onnx_meta.BATCH_DIM}` is dynamic)",
        f"- preprocessing: {prep['description']}",
        "",
        "## Outputs",
        "",
        f"- `{onnx_meta.LOGITS_NAME}`: float32 `[batch, {NUM_CLASSES}]`",
        f"- `{onnx_meta.PROBABILITIES_NAME}`: float32 `[batch, {NUM_CLASSES}]`, softmax of logits",
        f"- class labels (index order): {', '.join(facts[onnx_meta.META_CLASS_LABELS])}",
        "",
        "## Architecture",
        "",
        *[f"- {key}: {value}" for key, value in sorted(arch.items())],
        "",
        "## Test-set results",
        "",
        "| model | accuracy |",
        "| --- | --- |",
        f"| Keras (this export) | {_fmt(metrics['keras_test_accuracy'])} |",
        f"| ONNX float32 | {_fmt(metrics['onnx_test_accuracy'])} |",
    ]
    if metrics.get("int8_test_accuracy") is not None:
        lines.append(f"| ONNX int8 (dynamic) | {_fmt(metrics['int8_test_accuracy'])} |")
    if "accuracy" in evaluate:
        lines.append(f"| `evaluate` stage | {_fmt(evaluate['accuracy'])} |")
    lines += [
        "",
        f"Parity with Keras on all {metrics['test_images']} test images: max |p_onnx - p_keras| "
        f"= {metrics['max_abs_prob_diff']:.3g} (allowed {metrics['parity_atol']:.3g}), "
        f"{metrics['argmax_disagreements']} predicted-class disagreements.",
        "",
        "## Files",
        "",
        *[f"- `{name}`: {size:,} bytes" for name, size in metrics["file_sizes"].items()],
        f"- op types ({FLOAT_NAME}): "
        + ", ".join(f"{op} x{count}" for op, count in metrics["op_types"].items()),
        "",
        "## Data",
        "",
        *[f"- `{name}`: sha256 `{sha}`" for name, sha in sorted(facts["data_sha256"].items())],
        "",
        "## Producer",
        "",
        *[f"- {name} {ver}" for name, ver in facts[onnx_meta.META_PRODUCER].items()],
        "",
        "## Use",
        "",
        "```python",
        "import numpy as np, onnxruntime as ort",
        f'session = ort.InferenceSession("{FLOAT_NAME}")',
        f"rows = images.astype(np.float32) / 255  # uint8 [N, {time_steps}, {features}], "
        "white digit on black",
        f'probabilities = session.run(["{onnx_meta.PROBABILITIES_NAME}"], '
        "{session.get_inputs()[0].name: rows})[0]",
        "labels = probabilities.argmax(axis=1)",
        "```",
        "",
        "Or `seqmnist predict IMAGE.png` (onnxruntime only, no TensorFlow).",
        "",
        "## Limitations",
        "",
        "Trained on MNIST only: centred, size-normalised handwritten digits. Other images should "
        "be cropped to the digit with a margin like MNIST's before resizing.",
        "",
    ]
    return "\n".join(lines)


def _summary(metrics: dict[str, Any], out_dir: Path) -> str:
    sizes = ", ".join(
        f"{name} {size / 1024:.1f} KiB" for name, size in metrics["file_sizes"].items()
    )
    lines = [
        f"export: {out_dir}/{FLOAT_NAME} (opset {metrics['opset']}): {sizes}",
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

    model = load_keras_model(model_path)
    x_test, y_test = load_split("test", processed_dir)
    time_steps, features = (int(dim) for dim in model.input_shape[1:])
    if x_test.shape[1:] != (time_steps, features):
        raise DataError(
            f"{processed_dir}: test images are {x_test.shape[1:]}, but {model_path} expects "
            f"[time_steps, features] = {(time_steps, features)}"
        )

    rewrite = onnx_graph.streamline_lstm(
        convert(model, params.opset, time_steps, features), time_steps, features
    )
    proto = rewrite.model
    print(f"export: graph {rewrite.note}")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the converted ONNX graph fails onnx.checker: {exc}") from None
    counts = op_type_counts(proto.graph)
    cells = recurrent_cells(model)
    check_op_types(counts, cells)

    verified_graph = proto.graph.SerializeToString()
    reference = keras_outputs(model, x_test)
    candidate = onnx_outputs(proto.SerializeToString(), x_test)
    agreement = parity(reference, candidate)
    check_parity(agreement, params.parity_atol)

    test_metrics = {
        "onnx_accuracy": accuracy(candidate.predicted, y_test),
        "keras_accuracy": accuracy(reference.predicted, y_test),
        "images": len(y_test),
    }
    facts = build_facts(
        params,
        _read_json(info_path),
        _read_json(eval_metrics_path),
        time_steps,
        features,
        test_metrics,
    )
    facts[onnx_meta.META_VERIFICATION] = {**agreement, "parity_atol": params.parity_atol}
    set_metadata(proto, facts)
    if proto.graph.SerializeToString() != verified_graph:
        raise ExportError("internal error: the graph changed after it was verified")

    metrics: dict[str, Any] = {
        "opset": params.opset,
        "recurrent_cells": cells,
        "graph_rewrite": rewrite.note,
        "op_types": counts,
        "keras_test_accuracy": test_metrics["keras_accuracy"],
        "onnx_test_accuracy": test_metrics["onnx_accuracy"],
        "test_images": len(y_test),
        "parity_atol": params.parity_atol,
        **agreement,
        "int8_test_accuracy": None,
        "int8_max_abs_prob_diff": None,
        "int8_argmax_disagreements": None,
    }
    del metrics["images"]
    with atomic_dir(out_dir) as staging:
        float_path = staging / FLOAT_NAME
        onnx.save(proto, float_path)
        sizes = {FLOAT_NAME: float_path.stat().st_size}
        if params.quantize_int8:
            int8_path = staging / INT8_NAME
            quantize_int8(float_path, int8_path, facts)
            quantized = onnx_outputs(int8_path.read_bytes(), x_test)
            int8_parity = parity(reference, quantized)
            metrics["int8_test_accuracy"] = accuracy(quantized.predicted, y_test)
            metrics["int8_max_abs_prob_diff"] = int8_parity["max_abs_prob_diff"]
            metrics["int8_argmax_disagreements"] = int8_parity["argmax_disagreements"]
            sizes[INT8_NAME] = int8_path.stat().st_size
            metrics["int8_op_types"] = op_type_counts(onnx.load(int8_path).graph)
        metrics["file_sizes"] = sizes
        (staging / CARD_NAME).write_text(model_card(facts, metrics))
    write_json(Path(metrics_path), metrics)
    print(_summary(metrics, Path(out_dir)))
    return metrics
