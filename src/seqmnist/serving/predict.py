"""Classify digits with the shipped ONNX model, using onnxruntime only (never TensorFlow).

This is what the people downstream run, so it imports nothing heavier than numpy, Pillow and
onnxruntime, and turns every bad input into one clear SeqmnistError naming the file.

Python API:
    predictor = Predictor("models/onnx/model.onnx")
    batch = load_inputs(Path("digit.png"), predictor.time_steps, predictor.features)
    probabilities = predictor.predict(batch)          # float32 [N, 10]

Accepted inputs (pixel polarity as in MNIST: white digit on black, unless `dark_on_light`):
  - PNG/JPEG (any image Pillow reads) of any size: turned upright by its EXIF orientation,
    converted to grayscale (transparent pixels become background), then framed like MNIST
    (seqmnist.serving.framing: cropped to the ink, scaled into 20x20, centered by center of
    mass in 28x28), so a small digit anywhere in a big picture reads as well as a centered one.
    `frame=False` (`--no-frame`) resizes the whole picture to [time_steps, features] instead;
  - .npy arrays [N, time_steps, features] or [time_steps, features], either uint8 0..255 or
    floating point already scaled to 0..1 (the model's own input; values outside fail);
  - IDX image files (.gz or not), uint8 [N, time_steps, features] like the MNIST files.
`dark_on_light` inverts pictures only (PNG/JPEG: scans and drawings are usually dark on light);
.npy and IDX inputs are arrays in the model's own convention, already framed like MNIST, and are
never inverted nor framed, so one call can mix a scanned picture with MNIST files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from seqmnist.constants import GZIP_MAGIC, ORT_PROVIDERS, PIXEL_MAX, PREDICT_BATCH_SIZE
from seqmnist.errors import DataError, InputFileError, ModelFileError, SeqmnistError
from seqmnist.onnx import metadata as onnx_meta
from seqmnist.serving import framing

NPY_SUFFIX = ".npy"
NPY_MAGIC = b"\x93NUMPY"
# What numpy raises on a malformed .npy file: its header parser also lets the tokenizer's errors
# through (a header with an unclosed bracket: tokenize.TokenError; descr ',24': SyntaxError).
NPY_READ_ERRORS = (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError)
# Bytes an array can span, empty dimensions counted as 1: numpy cannot describe more.
NPY_MAX_BYTES = np.iinfo(np.intp).max
# .npy header layouts by format version; 3.0 is 2.0's with a UTF-8 header (non-ASCII field names
# of structured dtypes, refused anyway), so 2.0's reader reads it.
NPY_HEADER_READERS = {
    (1, 0): npy_format.read_array_header_1_0,
    (2, 0): npy_format.read_array_header_2_0,
    (3, 0): npy_format.read_array_header_2_0,
}
IDX_UBYTE_CODE = 0x08
FLOAT_SLACK = 1e-6
PLAIN_MODES = ("L", "LA", "RGB", "RGBA")  # Pillow modes framing.to_gray reads as they are
# Pixels converted to numpy at a time: a huge picture's copies stay near 16 MiB (RGBA).
DECODE_STRIP_PIXELS = 1 << 22
# The most pixels one byte of a picture can encode: PNG at 1 bit a pixel with deflate's 1032:1
# limit; JPEG at one Huffman-coded bit per 8x8 block. Other formats get PNG's. A header claiming
# more than FREE_PIXELS plus this per byte of its file is forged or truncated, and is refused
# before Pillow allocates the picture it claims.
MAX_PIXELS_PER_BYTE = {"PNG": 8 * 1032, "JPEG": 8 * 64}
DEFAULT_PIXELS_PER_BYTE = MAX_PIXELS_PER_BYTE["PNG"]
FREE_PIXELS = 1 << 22  # any file may claim 2048 x 2048 pixels (16 MiB decoded as RGBA)


@dataclass(frozen=True)
class Prediction:
    """One classified image: where it came from and what the model says."""

    source: str
    index: int
    label: str
    probability: float
    probabilities: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.source,
            "index": self.index,
            "label": self.label,
            "probability": self.probability,
            "probabilities": self.probabilities,
        }


def _static_dim(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


class Predictor:
    """An onnxruntime session plus the model's input geometry and class labels."""

    def __init__(self, model_path: Path | str) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelFileError(
                f"{self.model_path}: ONNX model not found (run `dvc pull` or `dvc repro export`)"
            )
        if self.model_path.stat().st_size == 0:
            raise ModelFileError(f"{self.model_path}: empty file; expected an ONNX model")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: warnings would clutter CLI output
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=list(ORT_PROVIDERS)
            )
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(
                f"{self.model_path}: not a readable ONNX model (truncated or another format?); "
                f"onnxruntime said: {reason}"
            ) from None
        self.metadata = onnx_meta.decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        self._check_interface()

    def _check_interface(self) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 3 or inputs[0].type != "tensor(float)":
            described = [(item.name, item.shape, item.type) for item in inputs]
            raise ModelFileError(
                f"{self.model_path}: expected one float32 input [batch, time_steps, features]; "
                f"the model has {described}"
            )
        self.input_name = inputs[0].name
        time_steps, features = (_static_dim(dim) for dim in inputs[0].shape[1:])
        if time_steps is None or features is None:
            raise ModelFileError(
                f"{self.model_path}: input {self.input_name!r} has shape {inputs[0].shape}; "
                "expected fixed time_steps and features"
            )
        self.time_steps, self.features = time_steps, features
        names = [output.name for output in self.session.get_outputs()]
        probability_names = [name for name in names if "prob" in name.lower()]
        self.output_name = (probability_names or names)[-1]
        labels = self.metadata.get(onnx_meta.META_CLASS_LABELS)
        num_classes = self.session.get_outputs()[names.index(self.output_name)].shape[-1]
        if not isinstance(labels, list):
            count = num_classes if isinstance(num_classes, int) else len(onnx_meta.CLASS_LABELS)
            labels = [str(index) for index in range(count)]
        self.class_labels: list[str] = [str(label) for label in labels]

    def predict(self, x: np.ndarray, batch_size: int = PREDICT_BATCH_SIZE) -> np.ndarray:
        """Class probabilities [N, classes] for [N, T, F] (or one [T, F]) model inputs."""
        if batch_size < 1:
            raise SeqmnistError(f"batch size must be at least 1, got {batch_size}")
        x = to_model_input(np.asarray(x), "array", self.time_steps, self.features)
        chunks = [
            self.session.run([self.output_name], {self.input_name: x[start : start + batch_size]})[
                0
            ]
            for start in range(0, len(x), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.class_labels)))


def to_model_input(
    array: np.ndarray, source: str, time_steps: int, features: int, invert: bool = False
) -> np.ndarray:
    """Validate and scale an array to float32 [N, T, F] in [0, 1] (uint8 is divided by 255)."""
    expected = (
        f"expected [N, {time_steps}, {features}] or [{time_steps}, {features}], "
        f"uint8 0..255 or float 0..1"
    )
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or array.shape[1:] != (time_steps, features):
        raise InputFileError(f"{source}: array of shape {array.shape}; {expected}")
    if array.dtype == np.uint8:
        scaled = array.astype(np.float32) / PIXEL_MAX
    elif np.issubdtype(array.dtype, np.floating):
        # Checked before the cast to float32, which would turn 1e300 into inf (and warn).
        if array.size and not np.isfinite(array).all():
            raise InputFileError(f"{source}: array holds NaN or infinite values; {expected}")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK:
            raise InputFileError(
                f"{source}: float values span [{low:g}, {high:g}]; {expected} "
                "(divide 0..255 pixels by 255, or save them as uint8)"
            )
        scaled = array.astype(np.float32)
    else:
        raise InputFileError(f"{source}: array of dtype {array.dtype}; {expected}")
    if invert:
        scaled = 1.0 - scaled
    return np.ascontiguousarray(scaled, dtype=np.float32)


def _pixel_mode(image) -> str:
    """The Pillow mode whose pixels framing.to_gray reads: L, LA, RGB or RGBA."""
    if image.mode in PLAIN_MODES and "transparency" not in image.info:
        return image.mode
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    return "RGBA" if has_alpha else "RGB"


def _check_claimed_pixels(image, path: Path) -> None:
    """Refuse a header claiming more pixels than its file can encode, before anything is decoded:
    Pillow allocates what the header claims (a 333-byte JPEG can claim 9000 x 9000)."""
    width, height = image.size
    file_size = path.stat().st_size
    density = MAX_PIXELS_PER_BYTE.get(image.format, DEFAULT_PIXELS_PER_BYTE)
    limit = FREE_PIXELS + density * file_size
    if width * height > limit:
        raise InputFileError(
            f"{path}: its {image.format or 'image'} header claims {width}x{height} = "
            f"{width * height} pixels, over the {limit} a {file_size}-byte file can encode; "
            "the file is truncated or its header is corrupt"
        )


def _decode_gray(path: Path, background: int) -> np.ndarray:
    """The picture, upright by its EXIF orientation, as uint8 gray [H, W] on `background`.

    Converted in strips, so a huge picture needs little beyond Pillow's own decoded copy (whose
    size Pillow's decompression-bomb limit bounds).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            _check_claimed_pixels(image, path)
            ImageOps.exif_transpose(image, in_place=True)
            mode = _pixel_mode(image)
            width, height = image.size
            gray = np.empty((height, width), np.uint8)
            step = max(1, DECODE_STRIP_PIXELS // max(1, width))
            for top in range(0, height, step):
                strip = image.crop((0, top, width, min(top + step, height))).convert(mode)
                gray[top : top + step] = framing.to_gray(np.asarray(strip), background)
    # Pillow reports some broken files as SyntaxError (e.g. "broken PNG file" for a cut chunk)
    # or EOFError, not OSError.
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        Image.DecompressionBombError,
    ) as exc:
        raise InputFileError(
            f"{path}: not a readable image ({exc}); expected a PNG or JPEG image, "
            "a .npy array or an IDX image file"
        ) from None
    return gray


def _load_image(
    path: Path, time_steps: int, features: int, dark_on_light: bool, frame: bool
) -> np.ndarray:
    """A picture as float32 [1, time_steps, features]: framed like MNIST, or just resized."""
    gray = _decode_gray(path, PIXEL_MAX if dark_on_light else 0)  # [H, W]
    if frame:
        light_on_dark = framing.invert(gray) if dark_on_light else gray
        return framing.frame_gray(light_on_dark, str(path), (time_steps, features))[np.newaxis]
    from PIL import Image

    resized = Image.fromarray(gray).resize((features, time_steps), Image.Resampling.LANCZOS)
    return to_model_input(
        np.asarray(resized), str(path), time_steps, features, invert=dark_on_light
    )


def _check_npy_header(handle: BinaryIO, path: Path, expected: str) -> None:
    """Refuse Python objects (a pickle, never loaded) and a header claiming more data than the
    file holds, before numpy allocates the array it claims."""
    version = npy_format.read_magic(handle)
    if version not in NPY_HEADER_READERS:
        raise InputFileError(f"{path}: .npy format version {version} is not supported; {expected}")
    shape, _, dtype = NPY_HEADER_READERS[version](handle)
    if dtype.hasobject:
        raise InputFileError(
            f"{path}: not a readable .npy array: it holds Python objects ({dtype}), which are "
            f"never unpickled; {expected}"
        )
    extent = prod(max(size, 1) for size in shape) * max(dtype.itemsize, 1)
    if any(size < 0 for size in shape) or extent > NPY_MAX_BYTES:
        raise InputFileError(
            f"{path}: its .npy header claims shape {shape} of {dtype}, which no array can have; "
            f"{expected}"
        )
    held = path.stat().st_size - handle.tell()
    claimed = prod(shape) * dtype.itemsize
    if claimed > held:
        raise InputFileError(
            f"{path}: truncated; its .npy header claims shape {shape} of {dtype} = {claimed} "
            f"bytes, the file holds {held}; {expected}"
        )


def _load_npy(path: Path, time_steps: int, features: int) -> np.ndarray:
    expected = (
        f"expected a numeric .npy file [N, {time_steps}, {features}] or [{time_steps}, {features}]"
    )
    try:
        with open(path, "rb") as handle:
            _check_npy_header(handle, path, expected)
            handle.seek(0)
            array = npy_format.read_array(handle, allow_pickle=False)
    except NPY_READ_ERRORS as exc:
        raise InputFileError(f"{path}: not a readable .npy array ({exc}); {expected}") from None
    return to_model_input(array, str(path), time_steps, features)


def _load_idx(path: Path, time_steps: int, features: int) -> np.ndarray:
    from seqmnist.data.idx import read_idx

    try:
        array = read_idx(path)
    except DataError as exc:  # the parser's own errors already name the file and the fault
        raise InputFileError(str(exc)) from None
    if array.ndim not in (2, 3):
        raise InputFileError(
            f"{path}: IDX file with {array.ndim} dimension(s) {array.shape} (a label file?); "
            f"expected an IDX image file [N, {time_steps}, {features}]"
        )
    return to_model_input(array, str(path), time_steps, features)


def _looks_like_idx(head: bytes) -> bool:
    """Two zero bytes, then the unsigned-byte type code: the IDX magic of MNIST files."""
    return len(head) >= 4 and head[:2] == b"\x00\x00" and head[2] == IDX_UBYTE_CODE


def load_inputs(
    path: Path, time_steps: int, features: int, dark_on_light: bool = False, frame: bool = True
) -> np.ndarray:
    """Read one input file as float32 [N, time_steps, features] in [0, 1], by its content.

    `dark_on_light` inverts pictures and `frame` frames them like MNIST (else they are resized
    whole); arrays (.npy, IDX) are taken as they are.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: input file not found")
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(NPY_MAGIC))
    except OSError as exc:  # permissions, I/O errors
        raise InputFileError(f"{path}: cannot read the input file ({exc})") from None
    if head.startswith(NPY_MAGIC):
        return _load_npy(path, time_steps, features)
    if _looks_like_idx(head) or head.startswith(GZIP_MAGIC):
        return _load_idx(path, time_steps, features)
    if path.suffix.lower() == NPY_SUFFIX:
        raise InputFileError(f"{path}: not a .npy file (no NUMPY header)")
    return _load_image(path, time_steps, features, dark_on_light, frame)


def classify(
    predictor: Predictor,
    paths: Sequence[Path],
    dark_on_light: bool = False,
    batch_size: int = PREDICT_BATCH_SIZE,
    frame: bool = True,
) -> list[Prediction]:
    """Load every input, run them through the model in batches, one Prediction per image."""
    arrays, sources = [], []
    for path in paths:
        array = load_inputs(path, predictor.time_steps, predictor.features, dark_on_light, frame)
        arrays.append(array)
        sources += [(str(path), index) for index in range(len(array))]
    if not arrays:
        return []
    probabilities = predictor.predict(np.concatenate(arrays), batch_size=batch_size)
    predictions = []
    for (source, index), row in zip(sources, probabilities, strict=True):
        best = int(row.argmax())
        predictions.append(
            Prediction(
                source=source,
                index=index,
                label=predictor.class_labels[best],
                probability=float(row[best]),
                probabilities=[round(float(value), 6) for value in row],
            )
        )
    return predictions


def main(args: argparse.Namespace) -> None:
    """`seqmnist predict`: one line per image, or JSON with --json."""
    predictor = Predictor(args.model)
    predictions = classify(
        predictor, args.inputs, args.dark_on_light, args.batch_size, frame=not args.no_frame
    )
    try:
        _print(predictions, predictor, args)
    except BrokenPipeError:
        # The reader (e.g. `| head`) stopped early: not an error; keep Python from complaining
        # again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _print(predictions: list[Prediction], predictor: Predictor, args: argparse.Namespace) -> None:
    if args.json:
        payload = {
            "model": str(args.model),
            "class_labels": predictor.class_labels,
            "predictions": [prediction.as_dict() for prediction in predictions],
        }
        print(json.dumps(payload, indent=2))
        return
    for prediction in predictions:
        print(
            f"{prediction.source}[{prediction.index}]: {prediction.label} "
            f"({prediction.probability:.4f})"
        )
