"""The downstream predictor: onnxruntime only, PNG/JPEG/npy/IDX inputs, clear errors, no TF.

Uses the tiny LSTM model of the `tiny_export` fixture (tests/tiny_export.py), trained on bar
images (class k is a bright vertical bar at column 4 + 2k); it classifies those bars perfectly.
"""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from seqmnist.cli import main as cli_main
from seqmnist.errors import SeqmnistError
from seqmnist.serving.predict import Predictor, classify, load_inputs
from support.tiny_data import BAR_OFFSET, BAR_SIZE, BAR_WIDTH, bar_images
from support.tiny_export import TinyExport

DIGIT = 3
PNG_SIZE = (84, 56)  # width, height: neither 28 nor square
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


@pytest.fixture(scope="module")
def exported(tiny_export: TinyExport) -> TinyExport:
    return tiny_export


@pytest.fixture(scope="module")
def predictor(exported: TinyExport) -> Predictor:
    return Predictor(exported.onnx_path)


@pytest.fixture(scope="module")
def samples() -> tuple[np.ndarray, np.ndarray]:
    """Twenty synthetic images in [0, 1] with their labels (two of each class)."""
    labels = np.repeat(np.arange(10), 2).astype(np.uint8)
    return bar_images(labels, np.random.default_rng(11)), labels


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = False) -> Path:
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def bar_png(path: Path, digit: int, dark_on_light: bool) -> Path:
    """A bigger, non-square drawing of class `digit`'s bar, optionally dark on light."""
    from PIL import Image, ImageDraw

    width, height = PNG_SIZE
    scale = width / BAR_SIZE
    background, ink = (255, 0) if dark_on_light else (0, 255)
    image = Image.new("L", PNG_SIZE, background)
    left = (BAR_OFFSET + BAR_WIDTH * digit) * scale
    ImageDraw.Draw(image).rectangle(
        [left, height * 0.1, left + BAR_WIDTH * scale - 1, height * 0.9], fill=ink
    )
    image.convert("RGB").save(path)
    return path


def test_predictor_reads_geometry_and_labels_from_the_model(predictor: Predictor) -> None:
    assert (predictor.time_steps, predictor.features) == (28, 28)
    assert predictor.input_name == "rows"
    assert predictor.output_name == "probabilities"
    assert predictor.class_labels == [str(digit) for digit in range(10)]


def test_npy_float_uint8_and_single_image(
    predictor: Predictor, samples: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, labels = samples
    np.save(tmp_path / "float.npy", x)
    np.save(tmp_path / "uint8.npy", np.round(x * 255).astype(np.uint8))
    np.save(tmp_path / "one.npy", x[5])
    results = classify(
        predictor, [tmp_path / "float.npy", tmp_path / "uint8.npy", tmp_path / "one.npy"]
    )
    assert len(results) == 2 * len(x) + 1
    assert [int(r.label) for r in results[: len(x)]] == labels.tolist()
    assert [int(r.label) for r in results[len(x) : 2 * len(x)]] == labels.tolist()
    assert results[-1].label == str(labels[5]) and results[-1].index == 0
    probabilities = predictor.predict(x, batch_size=3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(predictor.predict(x, batch_size=256), probabilities, atol=1e-6)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images(
    predictor: Predictor, samples: tuple[np.ndarray, np.ndarray], tmp_path: Path, compress: bool
) -> None:
    x, labels = samples
    path = write_idx(tmp_path / "images-idx3-ubyte", np.round(x * 255), IDX_IMAGES_MAGIC, compress)
    results = classify(predictor, [path])
    assert [int(r.label) for r in results] == labels.tolist()


@pytest.mark.parametrize("dark_on_light", [False, True])
def test_png_of_another_size(predictor: Predictor, tmp_path: Path, dark_on_light: bool) -> None:
    path = bar_png(tmp_path / "digit.png", DIGIT, dark_on_light)
    (result,) = classify(predictor, [path], dark_on_light=dark_on_light)
    assert result.label == str(DIGIT)
    assert result.probability > 0.5


def test_jpeg_dark_on_light_needs_the_flag(predictor: Predictor, tmp_path: Path) -> None:
    png = bar_png(tmp_path / "digit.png", DIGIT, dark_on_light=True)
    from PIL import Image

    jpeg = tmp_path / "digit.jpg"
    Image.open(png).save(jpeg, quality=95)
    x = load_inputs(jpeg, 28, 28, dark_on_light=True)
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    assert x.mean() < 0.5, "inverted: mostly black background"
    assert load_inputs(jpeg, 28, 28).mean() > 0.5


def test_cli_text_and_json(exported: TinyExport, tmp_path: Path, capsys) -> None:
    """--dark-on-light inverts the scan only: arrays in the same call stay as they are."""
    png = bar_png(tmp_path / "a.png", 7, dark_on_light=True)
    arrays = tmp_path / "b.npy"
    np.save(arrays, bar_images(np.array([1, 2], np.uint8), np.random.default_rng(0)))
    args = ["predict", str(png), str(arrays), "--dark-on-light", "--model", str(exported.onnx_path)]
    assert cli_main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"{png}[0]: 7",
        f"{arrays}[0]: 1",
        f"{arrays}[1]: 2",
    ]
    args = [
        "predict",
        str(arrays),
        "--json",
        "--batch-size",
        "1",
        "--model",
        str(exported.onnx_path),
    ]
    assert cli_main(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in payload["predictions"]] == ["1", "2"]
    assert len(payload["predictions"][0]["probabilities"]) == 10


def _bad_inputs(tmp_path: Path, exported: TinyExport) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the error must contain besides the file name)."""
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    png = bar_png(tmp_path / "whole.png", 1, dark_on_light=False)
    truncated_png = tmp_path / "truncated.png"
    truncated_png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    wrong_shape = tmp_path / "wrong_shape.npy"
    np.save(wrong_shape, np.zeros((4, 28, 27), np.float32))
    wrong_dtype = tmp_path / "wrong_dtype.npy"
    np.save(wrong_dtype, np.zeros((4, 28, 28), np.int64))
    unscaled = tmp_path / "unscaled.npy"
    np.save(unscaled, np.full((1, 28, 28), 255.0, np.float32))
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    labels = write_idx(tmp_path / "labels-idx1-ubyte", np.arange(5), IDX_LABELS_MAGIC)
    return {
        "missing": (tmp_path / "absent.png", "not found"),
        "text": (text, "not a readable image"),
        "truncated png": (truncated_png, "not a readable image"),
        "wrong shape": (wrong_shape, "(4, 28, 27)"),
        "wrong dtype": (wrong_dtype, "int64"),
        "unscaled float": (unscaled, "divide 0..255 pixels by 255"),
        "object array": (objects, "not a readable .npy array"),
        "idx labels": (labels, "expected an IDX image file"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "text",
        "truncated png",
        "wrong shape",
        "wrong dtype",
        "unscaled float",
        "object array",
        "idx labels",
    ],
)
def test_bad_input_names_file_and_expectation(
    case: str, predictor: Predictor, exported: TinyExport, tmp_path: Path
) -> None:
    path, words = _bad_inputs(tmp_path, exported)[case]
    with pytest.raises(SeqmnistError) as caught:
        classify(predictor, [path])
    assert str(path) in str(caught.value)
    assert words in str(caught.value)


def _bad_models(tmp_path: Path, exported: TinyExport) -> dict[str, Path]:
    whole = exported.onnx_path.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(whole[: len(whole) // 2])
    text = tmp_path / "text.onnx"
    text.write_text("definitely not protobuf")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(exported.model_path.read_bytes())
    return {
        "missing": tmp_path / "absent.onnx",
        "truncated": truncated,
        "text": text,
        "empty": empty,
        "keras zip": keras_file,
    }


@pytest.mark.parametrize("case", ["missing", "truncated", "text", "empty", "keras zip"])
def test_bad_model_file_is_one_clear_error(
    case: str, exported: TinyExport, tmp_path: Path, capsys
) -> None:
    path = _bad_models(tmp_path, exported)[case]
    with pytest.raises(SeqmnistError, match="ONNX model") as caught:
        Predictor(path)
    assert str(path) in str(caught.value)
    png = bar_png(tmp_path / "x.png", 0, dark_on_light=False)
    assert cli_main(["predict", str(png), "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqmnist predict: error: ") and "Traceback" not in err


def test_predict_never_imports_tensorflow(exported: TinyExport, tmp_path: Path) -> None:
    """Downstream users have onnxruntime and nothing else: API and CLI must not pull in TF."""
    png = bar_png(tmp_path / "digit.png", DIGIT, dark_on_light=True)
    npy = tmp_path / "x.npy"
    np.save(npy, bar_images(np.array([4], np.uint8), np.random.default_rng(1)))
    idx = write_idx(tmp_path / "x-idx3-ubyte.gz", np.zeros((2, 28, 28)), IDX_IMAGES_MAGIC, True)
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from seqmnist.serving.predict import Predictor, classify
        from seqmnist.cli import main
        predictor = Predictor(Path({str(exported.onnx_path)!r}))
        results = classify(predictor, [Path({str(png)!r})], dark_on_light=True)
        assert results[0].label == "{DIGIT}", results
        assert len(classify(predictor, [Path({str(npy)!r}), Path({str(idx)!r})])) == 3
        assert main(["predict", {str(npy)!r}, "--model", {str(exported.onnx_path)!r}]) == 0
        heavy = sorted(name for name in sys.modules
                       if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "tf_keras"))
        assert not heavy, heavy
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")
