"""The interface of the shipped ONNX model, shared by `export` (writer) and `predict` (reader).

TensorFlow-free and onnx-free on purpose: the predictor reads these facts through onnxruntime.
Every metadata value is stored as a JSON string under one of the keys below, so a caller in any
language can read it with `InferenceSession.get_modelmeta().custom_metadata_map`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

INPUT_NAME = "rows"
LOGITS_NAME = "logits"
PROBABILITIES_NAME = "probabilities"
BATCH_DIM = "batch"
CLASS_LABELS: tuple[str, ...] = tuple(str(digit) for digit in range(10))
PIXEL_MAX = 255.0

# metadata_props keys; values are JSON.
META_MODEL_VERSION = "model_version"
META_DATA_SHA256 = "data_sha256"
META_PARAMS = "params"
META_TEST_METRICS = "test_metrics"
META_INPUT_SPEC = "input_spec"
META_OUTPUT_SPEC = "output_spec"
META_PREPROCESSING = "preprocessing"
META_CLASS_LABELS = "class_labels"
META_PRODUCER = "producer"
META_VERIFICATION = "verification"
META_QUANTIZATION = "quantization"

PREPROCESSING_TEXT = (
    "Grayscale image, white digit on a black background (invert dark-on-light scans), "
    "resized to time_steps x features pixels; float32 value = pixel / 255 in [0, 1]; "
    "each image row is one time step of `features` values, batch-major "
    "[batch, time_steps, features]."
)


def preprocessing_spec(time_steps: int, features: int) -> dict[str, Any]:
    """What a caller must do to a raw image before feeding the model."""
    return {
        "description": PREPROCESSING_TEXT,
        "scale": "pixel / 255",
        "pixel_max": PIXEL_MAX,
        "value_range": [0.0, 1.0],
        "polarity": "white digit on black background (MNIST)",
        "layout": "rows as time steps: [batch, time_steps, features]",
        "image_size": {"height": time_steps, "width": features},
    }


def input_spec(time_steps: int, features: int) -> dict[str, Any]:
    """The single model input, as metadata."""
    return {
        "name": INPUT_NAME,
        "shape": [BATCH_DIM, time_steps, features],
        "dtype": "float32",
    }


def output_spec(num_classes: int) -> dict[str, Any]:
    """The two model outputs, as metadata."""
    return {
        LOGITS_NAME: {"shape": [BATCH_DIM, num_classes], "dtype": "float32"},
        PROBABILITIES_NAME: {
            "shape": [BATCH_DIM, num_classes],
            "dtype": "float32",
            "note": "softmax of logits",
        },
    }


def encode_metadata(facts: Mapping[str, Any]) -> dict[str, str]:
    """Metadata values as compact, key-sorted JSON strings (ONNX stores strings only)."""
    return {key: json.dumps(value, sort_keys=True) for key, value in facts.items()}


def decode_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """Parse JSON metadata values; a value that is not JSON is kept as the raw string."""
    decoded: dict[str, Any] = {}
    for key, raw in props.items():
        try:
            decoded[key] = json.loads(raw)
        except ValueError:
            decoded[key] = raw
    return decoded
