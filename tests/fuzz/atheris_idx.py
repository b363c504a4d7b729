"""libFuzzer (atheris) harness for the IDX parser: any exception but DataError is a crash.

    python tests/fuzz/atheris_idx.py -runs=100000 [libFuzzer flags] [corpus folders]

Coverage-guided, so it finds its way through the header checks that random bytes rarely pass.
With no corpus folder given it starts from a few valid files (plain and gzipped) written to a
temporary one. RSS is capped, so a header that makes the parser allocate what it claims is a
crash too. atheris is not in requirements.lock; test_idx_fuzz.py runs this only where it is.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports():
    from seqmnist.data import idx
    from seqmnist.errors import DataError

WORK_DIR = Path(os.environ.get("SEQMNIST_FUZZ_DIR") or tempfile.mkdtemp(prefix="atheris-idx-"))
SAMPLE = WORK_DIR / "sample-idx-ubyte"
RSS_LIMIT_MB = 1024  # Python, numpy and libFuzzer take ~150 MB; a claimed 2 GiB would show
SEED_SHAPES = [(3,), (2, 4, 5), (1, 2, 2, 2)]


def _seed_corpus() -> Path:
    corpus = WORK_DIR / "seeds"
    corpus.mkdir(exist_ok=True)
    for number, shape in enumerate(SEED_SHAPES):
        array = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
        header = bytes([0, 0, idx.UBYTE_CODE, len(shape)])
        data = header + b"".join(size.to_bytes(4, "big") for size in shape) + array.tobytes()
        (corpus / f"plain-{number}").write_bytes(data)
        (corpus / f"gzip-{number}").write_bytes(gzip.compress(data, mtime=0))
    return corpus


def test_one_input(data: bytes) -> None:
    SAMPLE.write_bytes(data)
    with contextlib.suppress(DataError):
        idx.read_idx(SAMPLE)


def main() -> None:
    argv = [*sys.argv, f"-rss_limit_mb={RSS_LIMIT_MB}"]
    if not any(not arg.startswith("-") for arg in argv[1:]):
        argv.append(str(_seed_corpus()))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
