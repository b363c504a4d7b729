"""IDX parsing: valid files round-trip; every malformed file is a DataError naming the file."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from seqmnist.data import idx
from seqmnist.errors import DataError
from seqmnist.io import file_sha256
from support.idx_factory import idx_bytes, idx_header, write_bytes

IMAGES = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
LABELS = np.array([0, 9, 4], dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("array", [IMAGES, LABELS], ids=["images", "labels"])
def test_round_trip(tmp_path: Path, array: np.ndarray, gz: bool) -> None:
    path = write_bytes(tmp_path / "file-idx", idx_bytes(array), gz=gz)
    parsed = idx.read_idx(path, expected_ndim=array.ndim)
    assert parsed.dtype == np.uint8
    np.testing.assert_array_equal(parsed, array)


def test_images_and_labels_helpers_check_the_magic(tmp_path: Path) -> None:
    images = write_bytes(tmp_path / "images", idx_bytes(IMAGES))
    labels = write_bytes(tmp_path / "labels", idx_bytes(LABELS))
    assert idx.read_images(images).shape == (3, 4, 5)
    assert idx.read_labels(labels).shape == (3,)
    assert idx.IMAGES_MAGIC == 2051
    assert idx.LABELS_MAGIC == 2049


def test_parsed_array_is_writable(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "images", idx_bytes(IMAGES))
    assert idx.read_images(path).flags.writeable


def test_empty_dataset_is_valid(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "images", idx_header((0, 28, 28)))
    assert idx.read_images(path).shape == (0, 28, 28)


def _error(path: Path, **kwargs: object) -> str:
    with pytest.raises(DataError) as caught:
        idx.read_idx(path, **kwargs)
    message = str(caught.value)
    assert str(path) in message
    return message


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_bad_magic(tmp_path: Path, gz: bool) -> None:
    path = write_bytes(tmp_path / "images", b"\x12\x34" + idx_bytes(IMAGES)[2:], gz=gz)
    message = _error(path, expected_ndim=3)
    assert "not an IDX file" in message
    assert "expected magic 2051" in message


def test_unsupported_data_type(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "images", idx_header((3, 4, 5), dtype_code=0x0D) + bytes(60))
    message = _error(path, expected_ndim=3)
    assert "data type code 0x0d" in message
    assert "expected 0x08" in message


def test_wrong_number_of_dimensions(tmp_path: Path) -> None:
    labels = write_bytes(tmp_path / "labels", idx_bytes(LABELS))
    message = _error(labels, expected_ndim=3)
    assert "has 1 dimension(s) (magic 2049)" in message
    assert "expected magic 2051" in message


def test_zero_dimensions(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "scalar", idx_header(()))
    assert "expected 1..8" in _error(path)


@pytest.mark.parametrize("data", [b"", b"\x00\x00"], ids=["empty", "two-bytes"])
def test_too_short_for_a_header(tmp_path: Path, data: bytes) -> None:
    path = write_bytes(tmp_path / "images", data)
    assert "too short for an IDX header" in _error(path)


def test_truncated_dimension_sizes(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "images", idx_header((3, 4, 5))[:9])
    assert "truncated IDX header; expected 3 dimension sizes" in _error(path)


def test_truncated_plain_file(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "images", idx_bytes(IMAGES)[:-7])
    message = _error(path, expected_ndim=3)
    assert "file is 69 bytes; expected 76" in message


def test_oversized_plain_file(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "images", idx_bytes(IMAGES) + b"extra")
    assert "file is 81 bytes; expected 76" in _error(path, expected_ndim=3)


def test_truncated_gzip_payload(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "images.gz", idx_bytes(IMAGES)[:-7], gz=True)
    assert "truncated; IDX header claims 60 values" in _error(path, expected_ndim=3)


def test_oversized_gzip_payload(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "images.gz", idx_bytes(IMAGES) + b"extra", gz=True)
    assert "unexpected data after the 60 values" in _error(path, expected_ndim=3)


def test_corrupt_gzip_stream(tmp_path: Path) -> None:
    gz = write_bytes(tmp_path / "images.gz", idx_bytes(IMAGES), gz=True).read_bytes()
    path = write_bytes(tmp_path / "broken.gz", gz[: len(gz) // 2])
    assert "corrupt gzip stream" in _error(path, expected_ndim=3)


def test_header_over_the_size_cap(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "images", idx_header((65535, 65535, 65535)) + bytes(10))
    assert "over the limit" in _error(path, expected_ndim=3)


def test_empty_claim_beyond_what_numpy_can_shape(tmp_path: Path) -> None:
    """No values, but dimensions whose product overflows numpy's index type: this used to end in
    numpy's ValueError ("array is too big") instead of a DataError (found by tests/fuzz)."""
    path = write_bytes(tmp_path / "images", idx_header((0, 2**16, 2**16, 2**31)))
    message = _error(path)
    assert f"spanning {2**63} values, over the limit" in message


def test_size_cap_is_configurable(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "images", idx_bytes(IMAGES))
    assert "over the limit of 59" in _error(path, expected_ndim=3, max_items=59)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_header_larger_than_the_file_allocates_nothing(tmp_path: Path, gz: bool) -> None:
    """A header under the cap but far beyond the file is refused before reading the payload."""
    claimed = (1_000_000, 40, 40)  # 1.6 GB claimed by a file of a few bytes
    path = write_bytes(tmp_path / "images", idx_header(claimed) + bytes(100), gz=gz)
    tracemalloc.start()
    try:
        message = _error(path, expected_ndim=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert "1600000000" in message


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in _error(tmp_path / "nowhere")


UNREADABLE = Path("/proc/self/mem")  # a regular file whose first read fails (EIO), even as root


@pytest.mark.skipif(not UNREADABLE.is_file(), reason="needs Linux's /proc/self/mem")
def test_unreadable_file() -> None:
    """Permission denied or an I/O error is a DataError naming the file, not an OSError."""
    assert "cannot read the IDX file" in _error(UNREADABLE)


def test_file_sha256(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "data", b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert file_sha256(path) == expected
