"""The downstream predictor: onnxruntime only, PNG/JPEG/npy/IDX inputs, clear errors, no TF.

Uses the tiny LSTM model of the `tiny_export` fixture (tests/tiny_export.py), trained on bar
images (class k is a bright vertical bar at column 4 + 2k); it classifies those bars perfectly.
Its class is the bar's position, which framing pictures like MNIST (the default since issue 16)
removes by design, so the tests that classify bar pictures pass `frame=False` / `--no-frame`.
Framing itself is tested in test_framing.py here and, with real digits, in tests/integration/web.
"""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

from seqmnist.cli import main as cli_main
from seqmnist.errors import InputFileError, SeqmnistError
from seqmnist.serving import framing
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
    (result,) = classify(predictor, [path], dark_on_light=dark_on_light, frame=False)
    assert result.label == str(DIGIT)
    assert result.probability > 0.5


def center_of_mass(image: np.ndarray) -> tuple[float, float]:
    rows, columns = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    return float((rows * image).sum() / image.sum()), float((columns * image).sum() / image.sum())


@pytest.mark.parametrize("dark_on_light", [False, True])
def test_pictures_are_framed_like_mnist_by_default(tmp_path: Path, dark_on_light: bool) -> None:
    """The bar at column 10 of 28 moves to the center; --no-frame leaves it where it was."""
    path = bar_png(tmp_path / "digit.png", DIGIT, dark_on_light)
    framed = load_inputs(path, 28, 28, dark_on_light=dark_on_light)
    plain = load_inputs(path, 28, 28, dark_on_light=dark_on_light, frame=False)
    assert framed.shape == plain.shape == (1, 28, 28) and framed.dtype == np.float32
    assert framed.max() == 1.0
    assert np.count_nonzero(framed[0].any(axis=1)) == framing.BOX_SIZE, "long side fills the box"
    assert np.round(center_of_mass(framed[0])).tolist() == [14, 14]
    bar_column = (BAR_OFFSET + BAR_WIDTH * DIGIT + BAR_WIDTH / 2) * 28 / BAR_SIZE
    assert abs(center_of_mass(plain[0])[1] - bar_column) < 1.5


def test_arrays_are_never_framed(predictor: Predictor, tmp_path: Path) -> None:
    x = bar_images(np.array([DIGIT], np.uint8), np.random.default_rng(2))
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_array_equal(load_inputs(tmp_path / "x.npy", 28, 28), x)
    (result,) = classify(predictor, [tmp_path / "x.npy"])
    assert result.label == str(DIGIT)


def test_transparent_pixels_become_background(tmp_path: Path) -> None:
    from PIL import Image

    gray = np.zeros((60, 40), np.uint8)
    gray[10:50, 18:23] = 255
    opaque = tmp_path / "opaque.png"
    Image.fromarray(gray).save(opaque)
    rgba = np.zeros((60, 40, 4), np.uint8)
    rgba[..., :3] = 255 - gray[..., None]  # the colour under alpha 0 must not matter
    rgba[10:50, 18:23] = 255
    see_through = tmp_path / "transparent.png"
    Image.fromarray(rgba, "RGBA").save(see_through)
    np.testing.assert_array_equal(load_inputs(see_through, 28, 28), load_inputs(opaque, 28, 28))
    dark = load_inputs(see_through, 28, 28, dark_on_light=True, frame=False)
    assert dark.max() == 0, "white ink on white (transparent) paper, inverted: all black"


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """Phones store pictures sideways with an EXIF Orientation; browsers honour it, so do we."""
    from PIL import Image

    gray = np.zeros((60, 40), np.uint8)
    gray[5:15, 5:35] = 255  # a short horizontal bar near the top
    upright = tmp_path / "upright.png"
    Image.fromarray(gray).save(upright)
    sideways = tmp_path / "sideways.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(gray).rotate(90, expand=True).save(sideways, exif=exif)
    np.testing.assert_array_equal(
        load_inputs(sideways, 28, 28, frame=False), load_inputs(upright, 28, 28, frame=False)
    )


def test_decompression_bomb_limit_still_applies(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels: over twice the limit
    with pytest.raises(InputFileError, match="not a readable image") as caught:
        load_inputs(path, 28, 28)
    assert str(path) in str(caught.value) and "decompression bomb" in str(caught.value)


def test_jpeg_dark_on_light_needs_the_flag(predictor: Predictor, tmp_path: Path) -> None:
    png = bar_png(tmp_path / "digit.png", DIGIT, dark_on_light=True)
    from PIL import Image

    jpeg = tmp_path / "digit.jpg"
    Image.open(png).save(jpeg, quality=95)
    x = load_inputs(jpeg, 28, 28, dark_on_light=True, frame=False)
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    assert x.mean() < 0.5, "inverted: mostly black background"
    assert load_inputs(jpeg, 28, 28, frame=False).mean() > 0.5
    assert load_inputs(jpeg, 28, 28, dark_on_light=True).max() == 1.0
    # Framed, a forgotten flag is an error rather than a confident guess on a white picture.
    with pytest.raises(InputFileError, match=r"no digit found.*--dark-on-light"):
        load_inputs(jpeg, 28, 28)


def test_cli_text_and_json(exported: TinyExport, tmp_path: Path, capsys) -> None:
    """--dark-on-light inverts the scan only: arrays in the same call stay as they are."""
    png = bar_png(tmp_path / "a.png", 7, dark_on_light=True)
    arrays = tmp_path / "b.npy"
    np.save(arrays, bar_images(np.array([1, 2], np.uint8), np.random.default_rng(0)))
    model = ["--model", str(exported.onnx_path)]
    args = ["predict", str(png), str(arrays), "--dark-on-light", "--no-frame", *model]
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
    from PIL import Image

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
    truncated_idx = write_idx(tmp_path / "images-idx3-ubyte", np.zeros((2, 28, 28)), 0x803)
    truncated_idx.write_bytes(truncated_idx.read_bytes()[:-1])
    blank = tmp_path / "blank.png"
    Image.new("RGB", PNG_SIZE, (12, 12, 12)).save(blank)
    return {
        "missing": (tmp_path / "absent.png", "not found"),
        "text": (text, "not a readable image"),
        "truncated png": (truncated_png, "not a readable image"),
        "wrong shape": (wrong_shape, "(4, 28, 27)"),
        "wrong dtype": (wrong_dtype, "int64"),
        "unscaled float": (unscaled, "divide 0..255 pixels by 255"),
        "object array": (objects, "never unpickled"),
        "idx labels": (labels, "expected an IDX image file"),
        "truncated idx": (truncated_idx, "expected 1584 (16-byte header + 1568 values"),
        "blank picture": (blank, "no digit found"),
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
        "truncated idx",
        "blank picture",
    ],
)
def test_bad_input_names_file_and_expectation(
    case: str, predictor: Predictor, exported: TinyExport, tmp_path: Path
) -> None:
    path, words = _bad_inputs(tmp_path, exported)[case]
    with pytest.raises(InputFileError) as caught:  # IDX files' errors were DataErrors
        classify(predictor, [path])
    assert str(path) in str(caught.value)
    assert words in str(caught.value)


def _forged_npy(path: Path, header: str, payload: bytes) -> Path:
    """A .npy file whose header text is `header`, unchecked, padded to 128 bytes as numpy pads."""
    text = (header.ljust(NPY_HEADER_TEXT - 1) + "\n").encode()
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + payload)
    return path


NPY_HEADER_TEXT = 118  # after the 10-byte prefix: 128 bytes, a multiple of numpy's 64


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000, 28, 28), }",
            "truncated; its .npy header claims shape (100000000, 28, 28) of float32 = "
            "313600000000 bytes, the file holds 16",
        ),
        ("{'descr': ',24', 'fortran_order': False, 'shape': (1, 28, 28), }", "not a readable"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 28, 28, }", "not a readable"),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 9223372036854775808), }",
            "which no array can have",
        ),
    ],
    ids=["claims-292-GiB", "descr-numpy-cannot-parse", "unclosed-bracket", "beyond-numpy"],
)
def test_forged_npy_header_is_refused_before_anything_is_allocated(
    tmp_path: Path, header: str, words: str
) -> None:
    """Found by tests/fuzz: numpy's reader let MemoryError (after trying to allocate the 292 GiB
    claimed; 30 MB for a claim of 10,000 images), SyntaxError or tokenize.TokenError out."""
    path = _forged_npy(tmp_path / "forged.npy", header, payload=bytes(16))
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nor numpy's overflow warnings on the way
            with pytest.raises(InputFileError) as caught:
                load_inputs(path, 28, 28)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(caught.value) and words in str(caught.value)
    assert peak < 1 << 20


class _Tripwire:
    """Creates `path` when unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return exec, (f"open({str(self.path)!r}, 'w').close()",)


def test_pickles_in_npy_files_are_never_loaded(tmp_path: Path) -> None:
    sentinel = tmp_path / "unpickled"
    path = tmp_path / "objects.npy"
    np.save(path, np.array([_Tripwire(sentinel)], dtype=object), allow_pickle=True)
    with pytest.raises(InputFileError, match="holds Python objects"):
        load_inputs(path, 28, 28)
    assert not sentinel.exists()


def test_floats_beyond_float32_are_named_not_cast(tmp_path: Path) -> None:
    """1e300 was cast to inf first: a RuntimeWarning, then "holds NaN or infinite values"."""
    path = tmp_path / "huge.npy"
    np.save(path, np.full((1, 28, 28), 1e300))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputFileError, match=r"float values span \[1e\+300, 1e\+300\]"):
            load_inputs(path, 28, 28)


def test_picture_claiming_more_pixels_than_its_file_holds(tmp_path: Path) -> None:
    """Found by tests/fuzz: a 333-byte JPEG whose header claims 9000 x 9000 pixels was decoded
    whole (81 M pixels of filler, hundreds of MB); now refused before Pillow decodes it. (Under
    Pillow's decompression-bomb limits, which do not look at the file's size.)"""
    from PIL import Image

    path = tmp_path / "forged.jpg"
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    size_field = data.index(b"\xff\xc0\x00\x0b") + 5  # SOF0 of one component: height, width
    data[size_field : size_field + 4] = struct.pack(">HH", 9000, 9000)
    path.write_bytes(data)
    with pytest.raises(InputFileError):  # once first: Pillow's imports are not measured
        load_inputs(path, 28, 28)
    tracemalloc.start()
    try:
        with pytest.raises(InputFileError) as caught:
            load_inputs(path, 28, 28)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert str(path) in message and "claims 9000x9000 = 81000000 pixels" in message
    assert "truncated or its header is corrupt" in message
    assert peak < 1 << 20


UNREADABLE = Path("/proc/self/mem")  # a regular file whose first read fails (EIO), even as root


@pytest.mark.skipif(not UNREADABLE.is_file(), reason="needs Linux's /proc/self/mem")
def test_unreadable_input_file() -> None:
    """Permission denied or an I/O error is an InputFileError naming the file, not an OSError."""
    with pytest.raises(InputFileError, match=f"{UNREADABLE}: cannot read the input file"):
        load_inputs(UNREADABLE, 28, 28)


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
        results = classify(predictor, [Path({str(png)!r})], dark_on_light=True, frame=False)
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
