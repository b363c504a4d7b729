"""Hypothesis strategies for the fuzz tests (tests/fuzz/): IDX files, valid ones first, then
mutated the ways real files go wrong (and the ways forged ones are built).
"""

from __future__ import annotations

import gzip
import zlib
from math import prod

import numpy as np
from hypothesis import event
from hypothesis import strategies as st

from seqmnist.data import idx
from support.idx_factory import idx_bytes, idx_header

U32_MAX = 2**32 - 1

type_codes = st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]) | st.integers(0, 255)
dim_sizes = st.sampled_from([0, 1, 2**16, 2**31, U32_MAX]) | st.integers(0, U32_MAX)


small_shapes = st.lists(st.integers(0, 6), min_size=1, max_size=4).map(tuple)


@st.composite
def uint8_arrays(draw: st.DrawFn, shapes: st.SearchStrategy[tuple[int, ...]]) -> np.ndarray:
    """A uint8 array of a shape drawn from `shapes`, any values."""
    shape = draw(shapes)
    data = draw(st.binary(min_size=prod(shape), max_size=prod(shape)))
    return np.frombuffer(data, np.uint8).reshape(shape)


def _mutate_header(draw: st.DrawFn, data: bytearray) -> None:
    """Overwrite one field of the header with a plausible wrong value (if the file has it)."""
    dims_present = max(0, (len(data) - idx.MAGIC_SIZE) // idx.DIM_SIZE)
    if len(data) < idx.MAGIC_SIZE:
        return
    field = draw(
        st.sampled_from(
            ["zeros", "type", "ndim", "dim"] if dims_present else ["zeros", "type", "ndim"]
        )
    )
    event(f"header field: {field}")
    if field == "zeros":
        data[0:2] = draw(st.binary(min_size=2, max_size=2))
    elif field == "type":
        data[2] = draw(type_codes)
    elif field == "ndim":
        data[3] = draw(st.integers(0, 255))
    else:
        start = idx.MAGIC_SIZE + idx.DIM_SIZE * draw(st.integers(0, dims_present - 1))
        data[start : start + idx.DIM_SIZE] = draw(dim_sizes).to_bytes(idx.DIM_SIZE, "big")


def _claim_any_dims(draw: st.DrawFn, data: bytearray) -> bytearray:
    """Replace the header by a valid one claiming any dimensions (zero, huge, overflowing)."""
    ndim = draw(st.integers(1, idx.MAX_NDIM))
    dims = tuple(draw(st.lists(dim_sizes, min_size=ndim, max_size=ndim)))
    header_size = idx.MAGIC_SIZE + idx.DIM_SIZE * (data[3] if len(data) > 3 else 0)
    return bytearray(idx_header(dims)) + data[header_size:]


def mutate_bytes(draw: st.DrawFn, data: bytearray) -> bytearray:
    """Truncate, extend, or flip bytes anywhere (header or payload): for any format."""
    kind = draw(st.sampled_from(["truncate", "append", "flip"]))
    event(f"bytes: {kind}")
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    if data:
        position = draw(st.integers(0, len(data) - 1))
        data[position] ^= draw(st.integers(1, 255))
    return data


def _gzip(draw: st.DrawFn, data: bytes) -> bytes:
    """Wrap in gzip as the mirrors do, sometimes corrupt the stream itself."""
    wrapped = gzip.compress(data, compresslevel=draw(st.integers(0, 9)), mtime=0)
    damage = draw(st.sampled_from(["none", "truncate", "flip", "garbage", "two members"]))
    event(f"gzip: {damage}")
    if damage == "truncate":
        return wrapped[: draw(st.integers(2, len(wrapped)))]
    if damage == "flip":
        position = draw(st.integers(2, len(wrapped) - 1))
        return wrapped[:position] + bytes([wrapped[position] ^ 0xFF]) + wrapped[position + 1 :]
    if damage == "garbage":
        return wrapped + draw(st.binary(min_size=1, max_size=32))
    if damage == "two members":
        return wrapped + gzip.compress(draw(st.binary(max_size=32)), mtime=0)
    return wrapped


@st.composite
def idx_files(
    draw: st.DrawFn, shapes: st.SearchStrategy[tuple[int, ...]] = small_shapes
) -> tuple[np.ndarray, bytes, bool]:
    """(the valid array it started from, the file's bytes, whether any mutation was applied).

    Mutations: wrong header fields, a valid header claiming any dims, truncated, extended or
    flipped bytes; then maybe gzip, itself maybe truncated, flipped or followed by more data.
    """
    array = draw(uint8_arrays(shapes))
    data = bytearray(idx_bytes(array))
    mutations = draw(st.lists(st.sampled_from(["header", "claim", "bytes"]), max_size=3))
    for mutation in mutations:
        if mutation == "header":
            _mutate_header(draw, data)
        elif mutation == "claim":
            data = _claim_any_dims(draw, data)
        else:
            data = mutate_bytes(draw, data)
    gz = draw(st.booleans())
    return array, _gzip(draw, bytes(data)) if gz else bytes(data), bool(mutations)


def gunzipped_length(data: bytes) -> int:
    """How many bytes the gzip members at the start of `data` really decompress to."""
    total = 0
    while data:
        member = zlib.decompressobj(wbits=31)
        try:
            total += len(member.decompress(data))
        except zlib.error:
            break
        if not member.eof:
            break
        data = member.unused_data
    return total


def content_of(data: bytes) -> bytes | None:
    """The IDX bytes a file holds (gunzipped when it is gzip), None if gzip cannot decode it."""
    if not data.startswith(idx.GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        return None
