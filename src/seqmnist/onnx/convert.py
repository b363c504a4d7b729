"""Keras model -> ONNX, and the checks that make the ONNX file trustworthy.

Conversion goes through `tf2onnx.convert.from_function` with an explicit input signature:
`from_keras` breaks on Keras 3 models, and the traced function lets the graph carry both logits
and softmax probabilities under stable names. Parity compares onnxruntime with TensorFlow running
that same traced function.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqmnist.constants import ORT_PROVIDERS
from seqmnist.errors import ExportError
from seqmnist.onnx import metadata as onnx_meta

EVAL_BATCH = 1000
# Recurrent cells that tf2onnx must turn into the native ONNX op of the same name.
NATIVE_RECURRENT_OPS = {"LSTM": "LSTM"}
LOOP_OP = "Loop"


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

    session = ort.InferenceSession(model_bytes, providers=list(ORT_PROVIDERS))
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
