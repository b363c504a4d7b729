"""The IDX file format of MNIST, parsed defensively.

Layout: a 4-byte big-endian magic number (two zero bytes, a data-type code, the number of
dimensions), one 4-byte big-endian size per dimension, then the values in C order. A file that
does not match its own header is rejected with a message naming it, and a header that claims an
absurd size is rejected before anything is allocated for it.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import BinaryIO

import numpy as np

from seqmnist.constants import GZIP_MAGIC
from seqmnist.errors import DataError

UBYTE_CODE = 0x08
IMAGES_NDIM = 3
LABELS_NDIM = 1
IMAGES_MAGIC = (UBYTE_CODE << 8) | IMAGES_NDIM  # 2051
LABELS_MAGIC = (UBYTE_CODE << 8) | LABELS_NDIM  # 2049

MAGIC_SIZE = 4
DIM_SIZE = 4
MAX_NDIM = 8
# One item per byte: 2**31 bytes is 40x the MNIST training images, yet fits in memory.
MAX_ITEMS = 1 << 31
# Deflate cannot compress better than about 1032:1, so a .gz file claiming more is lying.
MAX_GZIP_RATIO = 1032
READ_CHUNK = 1 << 20

_KIND = {IMAGES_NDIM: "images", LABELS_NDIM: "labels"}


@dataclass(frozen=True)
class IdxHeader:
    """What an IDX file says about itself."""

    dtype_code: int
    dims: tuple[int, ...]

    @property
    def header_size(self) -> int:
        return MAGIC_SIZE + DIM_SIZE * len(self.dims)

    @property
    def payload_size(self) -> int:
        return prod(self.dims)

    @property
    def extent(self) -> int:
        """Values the dimensions span with empty ones counted as 1: an empty array of shape
        (0, 2**16, 2**16, 2**31) holds nothing, yet numpy cannot even describe it."""
        return prod(max(size, 1) for size in self.dims)


def _describe_magic(ndim: int) -> str:
    magic = (UBYTE_CODE << 8) | ndim
    kind = _KIND.get(ndim, f"{ndim}-dimensional data")
    return f"magic {magic} (0x{magic:08x}: unsigned bytes, {ndim} dimension(s), {kind})"


def is_gzip(path: Path) -> bool:
    """True if the file starts with the gzip signature (the name's suffix is not trusted)."""
    with open(path, "rb") as handle:
        return handle.read(len(GZIP_MAGIC)) == GZIP_MAGIC


def _read_exact(handle: BinaryIO, size: int) -> bytearray:
    """Read up to `size` bytes in chunks, so memory grows with the data actually present."""
    buffer = bytearray()
    while len(buffer) < size:
        chunk = handle.read(min(READ_CHUNK, size - len(buffer)))
        if not chunk:
            break
        buffer += chunk
    return buffer


def _parse_header(handle: BinaryIO, path: Path, expected_ndim: int | None) -> IdxHeader:
    magic_bytes = handle.read(MAGIC_SIZE)
    if len(magic_bytes) < MAGIC_SIZE:
        raise DataError(f"{path}: {len(magic_bytes)} bytes, too short for an IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", magic_bytes)
    magic = struct.unpack(">I", magic_bytes)[0]
    wanted = f"; expected {_describe_magic(expected_ndim)}" if expected_ndim else ""
    if zero != 0:
        raise DataError(f"{path}: not an IDX file (magic number 0x{magic:08x}){wanted}")
    if dtype_code != UBYTE_CODE:
        raise DataError(
            f"{path}: IDX data type code 0x{dtype_code:02x} is not supported; expected "
            f"0x{UBYTE_CODE:02x} (unsigned byte){wanted}"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(
            f"{path}: IDX file has {ndim} dimension(s) (magic {magic}){wanted}; "
            "is this the right file?"
        )
    if not 1 <= ndim <= MAX_NDIM:
        raise DataError(f"{path}: IDX header claims {ndim} dimensions; expected 1..{MAX_NDIM}")
    dim_bytes = handle.read(DIM_SIZE * ndim)
    if len(dim_bytes) < DIM_SIZE * ndim:
        raise DataError(f"{path}: truncated IDX header; expected {ndim} dimension sizes")
    return IdxHeader(dtype_code, struct.unpack(f">{ndim}I", dim_bytes))


def _check_claimed_size(header: IdxHeader, path: Path, gzipped: bool, max_items: int) -> None:
    """Reject a header whose claimed size is absurd or cannot fit in the file, before reading."""
    payload = header.payload_size
    if header.extent > max_items:
        raise DataError(
            f"{path}: IDX header claims dimensions {header.dims}, spanning {header.extent} "
            f"values, over the limit of {max_items}; the header is corrupt"
        )
    file_size = path.stat().st_size
    if gzipped:
        if payload > MAX_GZIP_RATIO * file_size:
            raise DataError(
                f"{path}: IDX header claims {payload} values, more than a {file_size}-byte "
                "gzip file can hold; the header is corrupt or the file is truncated"
            )
    elif header.header_size + payload != file_size:
        raise DataError(
            f"{path}: file is {file_size} bytes; expected {header.header_size + payload} "
            f"({header.header_size}-byte header + {payload} values for dimensions {header.dims})"
        )


def read_idx(
    path: Path, expected_ndim: int | None = None, max_items: int = MAX_ITEMS
) -> np.ndarray:
    """Parse an unsigned-byte IDX file (gzipped or not) into a uint8 array of its shape."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: IDX file not found")
    try:
        gzipped = is_gzip(path)
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as handle:
            header = _parse_header(handle, path, expected_ndim)
            _check_claimed_size(header, path, gzipped, max_items)
            payload = _read_exact(handle, header.payload_size)
            trailing = handle.read(1)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip stream ({exc})") from None
    except OSError as exc:  # permissions, I/O errors: after BadGzipFile, one of its kind
        raise DataError(f"{path}: cannot read the IDX file ({exc})") from None
    if len(payload) < header.payload_size:
        raise DataError(
            f"{path}: truncated; IDX header claims {header.payload_size} values for dimensions "
            f"{header.dims}, found {len(payload)}"
        )
    if trailing:
        raise DataError(
            f"{path}: unexpected data after the {header.payload_size} values that the IDX "
            f"header claims for dimensions {header.dims}"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(header.dims)


def read_images(path: Path) -> np.ndarray:
    """An IDX image file: uint8 [N, rows, columns]."""
    return read_idx(path, expected_ndim=IMAGES_NDIM)


def read_labels(path: Path) -> np.ndarray:
    """An IDX label file: uint8 [N]."""
    return read_idx(path, expected_ndim=LABELS_NDIM)
