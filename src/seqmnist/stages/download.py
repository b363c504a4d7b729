"""`download` stage: the four MNIST IDX files, verified, into data/raw/ all at once.

The mirrors are tried in order (seqmnist.data.mirrors); the files land in a staging folder that
replaces data/raw/ only once all four are verified, so a crash leaves the old folder or none.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from seqmnist.config import DownloadParams
from seqmnist.data.mirrors import MNIST_SHA256, fetch_all
from seqmnist.io import atomic_dir
from seqmnist.paths import RAW_DIR


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def run(
    params: DownloadParams,
    out_dir: Path = RAW_DIR,
    mirror: str | None = None,
    progress: bool = True,
    expected: Mapping[str, str] = MNIST_SHA256,
) -> dict[str, str]:
    """Download and verify every file named in `expected` into `out_dir`, all or nothing.

    `mirror` (URL or folder) is tried before `params.mirrors`. Returns {filename: sha256}.
    """
    mirrors = _unique(([os.fspath(mirror)] if mirror else []) + list(params.mirrors))
    show_progress = progress and sys.stderr.isatty()
    with atomic_dir(Path(out_dir)) as staging:
        return fetch_all(mirrors, staging, params, expected, show_progress)
