"""Fuzzing the predictor's readers (seqmnist.serving.predict.load_inputs): pictures made by Pillow
then corrupted, .npy files of every dtype and shape with forged headers (pickles included, never
to be unpickled), IDX files, and bytes that merely start like one of them.

Only InputFileError, naming the file, may escape; what is read is float32 [N, 28, 28] in [0, 1];
and a header claiming more than its file holds is refused before anything is allocated for it.
"""

from __future__ import annotations

import io
import zlib
from math import prod
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, event, example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from seqmnist.constants import GZIP_MAGIC
from seqmnist.errors import InputFileError
from seqmnist.serving import predict
from support.fuzz_inputs import U32_MAX, idx_files, mutate_bytes, small_shapes
from support.fuzzing import fuzz_settings, measure, note_input, timeout_s

pytestmark = [
    pytest.mark.timeout(timeout_s()),
    # Pillow's own notices about the corrupt pictures fed to it on purpose.
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning:PIL"),
]

SIDE = 28  # the model's time_steps and features
PICTURE_SIDE = 40
# Python objects, Pillow's and numpy's buffers for a picture of at most PICTURE_SIDE squared.
READ_OVERHEAD = 2 << 20
# A uint8 file becomes float32 (4 bytes a byte), scaled in a second copy; plus slack.
ARRAY_MEMORY_FACTOR = 12
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_SIZE_FIELD = slice(16, 24)  # IHDR's width and height, right after the signature
JPEG_SIGNATURE = b"\xff\xd8"
# Start-of-frame markers (they hold the size), and the start of the scan (no size after it).
JPEG_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
JPEG_SOS = 0xDA
FORMAT_MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["L", "P"],
    "BMP": ["1", "L", "P", "RGB"],
    "TIFF": ["1", "L", "LA", "RGB", "RGBA", "CMYK", "I;16", "F"],
    "WEBP": ["RGB", "RGBA"],
}
EXIF_ORIENTATION = 0x0112
NUMERIC_DESCRS = ["|u1", "<f4", ">f4", "<f8", "<f2", "|i1", "<u2", "<i8", "|b1", "<c8"]
OTHER_DTYPES = [np.dtype(spec) for spec in ["<U3", "|S2", "<M8[D]", "<m8[s]", "|V4", "|V0"]] + [
    np.dtype([("a", "<f4")])
]
NPY_ALIGN = 64
DTYPE_CHARACTERS = "()[]{},:'<>|=fiubcSUVOMm0123456789 "  # what numpy's dtype strings are made of

image_shapes = (
    st.tuples(st.integers(0, 3), st.just(SIDE), st.just(SIDE))
    | st.just((SIDE, SIDE))
    | small_shapes
)


def check_read(path: Path, read) -> np.ndarray | None:
    """Call the reader; an InputFileError naming `path` passes, anything else escapes."""
    try:
        x = read()
    except InputFileError as exc:
        assert str(path) in str(exc)
        event("refused")
        return None
    event("read")
    assert x.dtype == np.float32 and x.ndim == 3 and x.shape[1:] == (SIDE, SIDE)
    if x.size:
        assert x.min() >= -predict.FLOAT_SLACK and x.max() <= 1 + predict.FLOAT_SLACK
    return x


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    Image.init()  # import every format plugin now, not inside a memory measurement
    return tmp_path_factory.mktemp("readers-fuzz")


# --- pictures --------------------------------------------------------------------------------


@st.composite
def gray_pictures(draw: st.DrawFn) -> np.ndarray:
    """uint8 [H, W]: a bright block on a dark field (a 'digit'), noise, or one flat level."""
    height, width = draw(st.integers(1, PICTURE_SIDE)), draw(st.integers(1, PICTURE_SIDE))
    kind = draw(st.sampled_from(["digit", "noise", "flat"]))
    event(f"picture: {kind}")
    if kind == "noise":
        data = draw(st.binary(min_size=height * width, max_size=height * width))
        return np.frombuffer(data, np.uint8).reshape(height, width)
    gray = np.full((height, width), draw(st.integers(0, 255)), np.uint8)
    if kind == "digit":
        top, left = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        bottom, right = draw(st.integers(top + 1, height)), draw(st.integers(left + 1, width))
        gray[top:bottom, left:right] = draw(st.integers(0, 255))
    return gray


def fix_png_crcs(data: bytearray) -> None:
    """Recompute every whole chunk's CRC, so that corrupted fields reach Pillow's decoders."""
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        end = position + 8 + length
        if end + 4 > len(data):
            return
        data[end : end + 4] = zlib.crc32(data[position + 4 : end]).to_bytes(4, "big")
        position = end + 4


def jpeg_size_field(data: bytes) -> int | None:
    """Offset of the height and width (16 bits each) in a JPEG's start-of-frame segment."""
    position = len(JPEG_SIGNATURE)
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker in JPEG_SOF_MARKERS:
            return position + 5  # marker (2), length (2), precision (1)
        if marker == JPEG_SOS:
            return None
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None


def claim_size(data: bytearray, width: int, height: int) -> bool:
    """Rewrite a PNG's or JPEG's declared size; False if the file has no size field to rewrite."""
    if data.startswith(PNG_SIGNATURE) and len(data) >= PNG_SIZE_FIELD.stop:
        data[PNG_SIZE_FIELD] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
        fix_png_crcs(data)
        return True
    field = jpeg_size_field(data) if data.startswith(JPEG_SIGNATURE) else None
    if field is None or field + 4 > len(data):
        return False
    data[field : field + 4] = (height & 0xFFFF).to_bytes(2, "big") + (width & 0xFFFF).to_bytes(
        2, "big"
    )
    return True


def _save_options(draw: st.DrawFn, image_format: str, mode: str) -> dict:
    from PIL import Image

    options: dict = {}
    if image_format in ("PNG", "JPEG", "WEBP") and draw(st.booleans()):
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = draw(st.integers(0, 9))  # 1-8 valid, 0 and 9 not
        options["exif"] = exif.tobytes()
    if image_format == "JPEG":
        options["quality"] = draw(st.integers(1, 100))
        options["progressive"] = draw(st.booleans())
        options["optimize"] = draw(st.booleans())
    elif image_format == "PNG" and mode in ("L", "RGB", "P") and draw(st.booleans()):
        options["transparency"] = 0 if mode != "RGB" else (0, 0, 0)
    elif image_format == "TIFF":
        options["compression"] = draw(
            st.sampled_from([None, "tiff_lzw", "tiff_adobe_deflate", "packbits"])
        )
    elif image_format == "WEBP":
        options["lossless"] = draw(st.booleans())
    return options


@st.composite
def picture_files(draw: st.DrawFn) -> bytes:
    """A picture saved by Pillow (PNG and JPEG half the time), then maybe corrupted."""
    from PIL import Image

    image_format = draw(st.sampled_from(["PNG", "JPEG"]) | st.sampled_from(sorted(FORMAT_MODES)))
    mode = draw(st.sampled_from(FORMAT_MODES[image_format]))
    event(f"format: {image_format} {mode}")
    image = Image.fromarray(draw(gray_pictures())).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, image_format, **_save_options(draw, image_format, mode))
    data = bytearray(buffer.getvalue())
    for damage in draw(st.lists(st.sampled_from(["bytes", "size", "crc"]), max_size=3)):
        event(f"damage: {damage}")
        if damage == "bytes":
            data = mutate_bytes(draw, data)
        elif damage == "size":
            claim_size(data, draw(st.integers(0, U32_MAX)), draw(st.integers(0, U32_MAX)))
        elif data.startswith(PNG_SIGNATURE):
            fix_png_crcs(data)
    return bytes(data)


# Found by CI's fuzzing (2026-12-01): an EXIF chunk, then an IDAT whose CRC is cut off. Pillow
# reads the EXIF orientation, then raises SyntaxError ("broken PNG file") while loading.
TRUNCATED_PNG_WITH_EXIF = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\t\x00\x00\x00\x01\x01\x00\x00\x00\x00"
    b"$\xb9\xb9\xd0\x00\x00\x00\x1aeXIfMM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00"
    b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\xb5\xb7~S\x00\x00\x00\nIDATx\x9cc`\x00\x00\x00"
    b"\x02\x00\x01H\xaf\xa4q\x00\x00\x00\x00"
)


@fuzz_settings(share=1.0)
@given(data=picture_files(), dark_on_light=st.booleans(), frame=st.booleans())
@example(data=TRUNCATED_PNG_WITH_EXIF, dark_on_light=False, frame=False)
def test_pictures(fuzz_dir: Path, data: bytes, dark_on_light: bool, frame: bool) -> None:
    note_input()
    path = fuzz_dir / "picture"
    path.write_bytes(data)
    x = check_read(path, lambda: predict.load_inputs(path, SIDE, SIDE, dark_on_light, frame))
    assert x is None or len(x) == 1


@fuzz_settings(share=0.5)
@given(
    data=picture_files().filter(lambda data: data.startswith((PNG_SIGNATURE, JPEG_SIGNATURE))),
    side=st.integers(2**11, 2**16 - 1),
)
def test_a_picture_claiming_more_pixels_than_its_file_holds(
    fuzz_dir: Path, data: bytes, side: int
) -> None:
    """A 600-byte JPEG claiming 12000 x 12000 pixels once made Pillow decode 144 M of them."""
    note_input()
    forged = bytearray(data)
    image_format = "PNG" if data.startswith(PNG_SIGNATURE) else "JPEG"
    density = predict.MAX_PIXELS_PER_BYTE[image_format]
    assume(claim_size(forged, side, side))
    assume(side * side > predict.FREE_PIXELS + density * len(forged))
    event(f"forged: {image_format}")
    path = fuzz_dir / "forged-picture"
    path.write_bytes(forged)
    measured = measure(lambda: predict.load_inputs(path, SIDE, SIDE))
    assert isinstance(measured.error, InputFileError), measured.error
    assert str(path) in str(measured.error)
    assert measured.peak_bytes < 16 * len(forged) + READ_OVERHEAD


# --- .npy arrays -----------------------------------------------------------------------------


class Tripwire:
    """Unpickling this creates `path`: proof that a .npy file's pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return exec, (f"open({str(self.path)!r}, 'w').close()",)


def npy_bytes(header: str, payload: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy file: magic, version, header length, the header padded as numpy pads it."""
    length_size = 2 if version == (1, 0) else 4
    prefix = len(predict.NPY_MAGIC) + 2 + length_size
    padding = -(prefix + len(header) + 1) % NPY_ALIGN
    text = (header + " " * padding + "\n").encode("latin1")
    return (
        predict.NPY_MAGIC
        + bytes(version)
        + len(text).to_bytes(length_size, "little")
        + text
        + payload
    )


def npy_header(descr: str, fortran_order: str, shape: str) -> str:
    return f"{{'descr': {descr}, 'fortran_order': {fortran_order}, 'shape': {shape}, }}"


dims = st.integers(-2, 64) | st.sampled_from([0, 2**31, 2**40, 2**62, 2**63, 10**8])
wrong_header_fields = {
    "descr": st.sampled_from(
        [repr(d) for d in NUMERIC_DESCRS]
        + [repr(np.lib.format.dtype_to_descr(dtype)) for dtype in OTHER_DTYPES]
        + ["'O'", "5"]
    )
    | st.text(
        st.sampled_from(DTYPE_CHARACTERS) | st.characters(max_codepoint=0xFF), max_size=8
    ).map(repr),
    "fortran_order": st.sampled_from(["True", "False", "1", "None", "'yes'"]),
    "shape": st.lists(dims, max_size=4).map(lambda shape: repr(tuple(shape)))
    | st.sampled_from(["(2.5,)", "'abc'", "[28, 28]", "(28, 28", "()"]),
}


@st.composite
def arrays_to_save(draw: st.DrawFn, tripwire: Tripwire) -> np.ndarray:
    """Numeric arrays (pixels, unit floats, any floats), other dtypes, or pickled objects."""
    kind = draw(st.sampled_from(["pixels", "unit floats", "numeric", "other", "objects"]))
    event(f"array: {kind}")
    shape = draw(image_shapes)
    if kind == "objects":
        return np.array([tripwire] * max(1, prod(shape) % 5), dtype=object)
    if kind == "other":
        return np.zeros(shape, draw(st.sampled_from(OTHER_DTYPES)))
    if kind == "numeric":
        dtype = np.dtype(draw(st.sampled_from(NUMERIC_DESCRS)))
        return draw(hnp.arrays(dtype, shape))
    dtype = np.uint8 if kind == "pixels" else draw(st.sampled_from([np.float32, np.float64]))
    elements = st.floats(0, 1, width=32) if kind == "unit floats" else None
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def npy_files(draw: st.DrawFn, tripwire: Tripwire) -> bytes:
    """An array saved by numpy, then maybe a header field forged, the version changed or bytes
    corrupted."""
    array = draw(arrays_to_save(tripwire))
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype.hasobject)
    saved = buffer.getvalue()
    version = (saved[6], saved[7])
    header_end = len(predict.NPY_MAGIC) + 2 + 2 + int.from_bytes(saved[8:10], "little")
    payload = saved[header_end:]
    fields = {
        "descr": repr(np.lib.format.dtype_to_descr(array.dtype)),
        "fortran_order": repr(draw(st.booleans())),
        "shape": repr(array.shape),
    }
    damage = draw(st.sampled_from(["none", "header", "version", "bytes"]))
    event(f"npy damage: {damage}")
    if damage == "header":
        field = draw(st.sampled_from(sorted(fields)))
        fields[field] = draw(wrong_header_fields[field])
    elif damage == "version":
        version = draw(st.sampled_from([(2, 0), (3, 0), (0, 0), (4, 1)]))
    data = npy_bytes(npy_header(**fields), payload, version)
    if damage == "bytes":
        data = bytes(mutate_bytes(draw, bytearray(data)))
    return data


@fuzz_settings(share=1.0)
@given(data=st.data())
def test_npy_arrays(fuzz_dir: Path, data: st.DataObject) -> None:
    note_input()
    sentinel = fuzz_dir / "unpickled"
    content = data.draw(npy_files(Tripwire(sentinel)))
    path = fuzz_dir / "array.npy"
    path.write_bytes(content)
    measured = measure(lambda: check_read(path, lambda: predict.load_inputs(path, SIDE, SIDE)))
    if measured.error is not None:
        raise measured.error
    assert not sentinel.exists(), "a pickle inside a .npy file was loaded"
    assert measured.peak_bytes < ARRAY_MEMORY_FACTOR * len(content) + READ_OVERHEAD


@fuzz_settings(share=0.5)
@given(shape=st.lists(dims, min_size=1, max_size=4), payload=st.binary(max_size=256))
def test_a_npy_header_claiming_more_than_its_file_holds(
    fuzz_dir: Path, shape: list[int], payload: bytes
) -> None:
    """(10**8, 28, 28) float32 over 16 bytes once made numpy try to allocate 292 GiB."""
    note_input()
    content = npy_bytes(npy_header("'<f4'", "False", repr(tuple(shape))), payload)
    path = fuzz_dir / "claims.npy"
    path.write_bytes(content)
    measured = measure(lambda: predict.load_inputs(path, SIDE, SIDE))
    if measured.error is None:
        assert 4 * prod(shape) <= len(payload)
    else:
        assert isinstance(measured.error, InputFileError), measured.error
    assert measured.peak_bytes < ARRAY_MEMORY_FACTOR * len(content) + READ_OVERHEAD


# --- IDX, and bytes that only look like one of the formats --------------------------------------


@fuzz_settings(share=1.0)
@given(sample=idx_files(shapes=image_shapes))
def test_idx_images(fuzz_dir: Path, sample: tuple[np.ndarray, bytes, bool]) -> None:
    note_input()
    _, content, _ = sample
    path = fuzz_dir / "images-idx3-ubyte"
    path.write_bytes(content)
    check_read(path, lambda: predict.load_inputs(path, SIDE, SIDE))


@fuzz_settings(share=1.0)
@given(
    head=st.sampled_from(
        [predict.NPY_MAGIC, b"\x00\x00\x08\x03", GZIP_MAGIC, PNG_SIGNATURE, b"\xff\xd8\xff", b""]
    ),
    tail=st.binary(max_size=64),
    suffix=st.sampled_from([".npy", ".png", ".jpg", ".gz", ""]),
)
def test_bytes_that_only_start_like_an_input(
    fuzz_dir: Path, head: bytes, tail: bytes, suffix: str
) -> None:
    note_input()
    path = fuzz_dir / f"input{suffix}"
    path.write_bytes(head + tail)
    check_read(path, lambda: predict.load_inputs(path, SIDE, SIDE))
