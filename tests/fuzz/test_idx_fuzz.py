"""Fuzzing the IDX parser with valid files and mutated ones (dims, type code, truncation, trailing
and flipped bytes, gzip wrapping and corruption): only DataError may escape, a parsed file must
round-trip, and memory follows the bytes a file really holds, never the sizes its header claims.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from math import prod
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from seqmnist.data import idx
from seqmnist.errors import DataError
from support.fuzz_inputs import content_of, dim_sizes, gunzipped_length, idx_files
from support.fuzzing import fuzz_settings, measure, note_input, profile_name, timeout_s
from support.idx_factory import idx_bytes, idx_header

pytestmark = pytest.mark.timeout(timeout_s())

# Python objects, the 1 MiB read chunk and gzip's 128 KiB input buffer: what any parse may need.
PARSE_OVERHEAD = 2 << 20
MEMORY_FACTOR = 3  # the payload read, the array over it, and slack
# Claims of at least this many values, beyond what the file can hold: refused before reading.
HUGE_CLAIM = 1 << 24
ATHERIS_HARNESS = Path(__file__).with_name("atheris_idx.py")
ATHERIS_RUNS = {"ci": 30_000, "long": 2_000_000}  # 2,000 to 20,000 a second here
ATHERIS_TIMEOUT_S = {"ci": 120, "long": 3 * 3600}


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("idx-fuzz")


@fuzz_settings(share=2.0)
@given(
    sample=idx_files(),
    expected_ndim=st.sampled_from([None, idx.LABELS_NDIM, idx.IMAGES_NDIM]),
    max_items=st.sampled_from([idx.MAX_ITEMS, 10, 0]),
)
def test_only_data_errors_escape_and_parsed_files_round_trip(
    fuzz_dir: Path,
    sample: tuple[np.ndarray, bytes, bool],
    expected_ndim: int | None,
    max_items: int,
) -> None:
    note_input()
    array, data, mutated = sample
    path = fuzz_dir / "sample-idx-ubyte"
    path.write_bytes(data)
    measured = measure(lambda: idx.read_idx(path, expected_ndim, max_items))
    real_size = max(len(data), gunzipped_length(data))
    assert measured.peak_bytes < MEMORY_FACTOR * real_size + PARSE_OVERHEAD
    if measured.error is not None:
        if not isinstance(measured.error, DataError):
            raise measured.error
        assert str(path) in str(measured.error)
        event("refused")
        return
    parsed = measured.value
    event("parsed")
    assert parsed.dtype == np.uint8
    assert idx_bytes(parsed) == content_of(data), "a parsed file must be exactly its array"
    if not mutated:
        np.testing.assert_array_equal(parsed, array)


@fuzz_settings()
@given(
    dims=st.lists(dim_sizes, min_size=1, max_size=4).filter(lambda d: prod(d) >= HUGE_CLAIM),
    payload=st.binary(max_size=256),
    gz=st.booleans(),
)
def test_a_huge_claim_is_refused_before_anything_is_allocated(
    fuzz_dir: Path, dims: list[int], payload: bytes, gz: bool
) -> None:
    note_input()
    raw = idx_header(tuple(dims)) + payload
    data = gzip.compress(raw, mtime=0) if gz else raw
    assume(prod(dims) > idx.MAX_GZIP_RATIO * len(data))
    path = fuzz_dir / "huge-idx-ubyte"
    path.write_bytes(data)
    measured = measure(lambda: idx.read_idx(path))
    assert isinstance(measured.error, DataError), measured.error
    assert str(path) in str(measured.error)
    assert measured.peak_bytes < 16 * len(data) + PARSE_OVERHEAD


def test_atheris_harness(tmp_path: Path) -> None:
    """Coverage-guided fuzzing of the same parser with libFuzzer, where atheris is installed
    (it is not in requirements.lock: `uv pip install atheris` to run this)."""
    pytest.importorskip("atheris")
    profile = profile_name()
    done = subprocess.run(
        [
            sys.executable,
            str(ATHERIS_HARNESS),
            f"-runs={ATHERIS_RUNS[profile]}",
            "-max_len=4096",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=ATHERIS_TIMEOUT_S[profile],
        env={**os.environ, "SEQMNIST_FUZZ_DIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    runs = re.search(r"^Done (\d+) runs", done.stderr, re.MULTILINE)
    assert runs, done.stderr[-4000:]
    note_input(int(runs.group(1)))
