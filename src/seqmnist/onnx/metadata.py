"""The interface of the shipped ONNX model, shared by `export` (writer) and `predict` (reader).

TensorFlow-free and onnx-free on purpose: the predictor reads these facts through onnxruntime.
Every metadata value is stored as a JSON string under one of the keys below, so a caller in any
language can read it with `InferenceSession.get_modelmeta().custom_metadata_map`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from seqmnist.constants import PIXEL_MAX
from seqmnist.serving import framing

INPUT_NAME = "rows"
LOGITS_NAME = "logits"
PROBABILITIES_NAME = "probabilities"
BATCH_DIM = "batch"
CLASS_LABELS: tuple[str, ...] = tuple(str(digit) for digit in range(10))

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
    "MNIST arrays: float32 value = pixel / 255 in [0, 1], white digit on a black background. "
    "Pictures are first framed like MNIST: gray = ITU-R 601 luma (transparent pixels become "
    "background; invert dark-on-light scans), cropped to the ink's bounding box (ink: at least "
    f"{framing.INK_THRESHOLD:.0%} of the contrast above the median gray level), area-averaged "
    f"(box filter) to fit a {framing.BOX_SIZE}x{framing.BOX_SIZE} box keeping the aspect ratio, "
    "divided by the brightest resulting pixel, and pasted into the "
    f"{framing.CANVAS_SIZE}x{framing.CANVAS_SIZE} canvas with its center of mass (rounded half "
    f"up) on pixel ({framing.CANVAS_SIZE // 2}, {framing.CANVAS_SIZE // 2}). Each image row is "
    "one time step of `features` values, batch-major [batch, time_steps, features]."
)


def framing_spec(time_steps: int, features: int) -> dict[str, Any]:
    """The constants of seqmnist.serving.framing, for other implementations (the web demo)."""
    return {
        "canvas_size": {"height": time_steps, "width": features},
        "box_size": framing.BOX_SIZE,
        "ink_threshold": framing.INK_THRESHOLD,
        "min_contrast": framing.MIN_CONTRAST,
        "background": "median gray level",
        "resampling": framing.RESAMPLING,
        "centering": framing.CENTERING,
        "center_rounding": "half up, onto pixel (height // 2, width // 2)",
        "normalization": "divided by the brightest resampled pixel",
        "luma_weights": list(framing.LUMA_WEIGHTS),
        "luma_shift": framing.LUMA_SHIFT,
    }


def preprocessing_spec(time_steps: int, features: int) -> dict[str, Any]:
    """What a caller must do to a raw image before feeding the model."""
    return {
        "description": PREPROCESSING_TEXT,
        "scale": "pixel / 255",
        "pixel_max": float(PIXEL_MAX),
        "value_range": [0.0, 1.0],
        "polarity": "white digit on black background (MNIST)",
        "layout": "rows as time steps: [batch, time_steps, features]",
        "image_size": {"height": time_steps, "width": features},
        "framing": framing_spec(time_steps, features),
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
