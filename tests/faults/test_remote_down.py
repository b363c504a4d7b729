"""Fault 3: the DVC remote is unreachable when the flow pushes the version's data.

tests/integration/registry/test_remote_publication.py already injects exactly this fault (the
S3 server stops after the stages; the flow must fail naming the remote and publish nothing: no
commit, no tag on the origin; the server restarts on the same port and a rerun publishes), so
it is run here as it is, in a pytest of its own, and its verdict goes into the table; its temp
folder is then scanned for partial files.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from faults import kit
from support.project import PROJECT_ROOT

pytestmark = [pytest.mark.faults, pytest.mark.prefect]

COVERING_TEST = (
    "tests/integration/registry/test_remote_publication.py"
    "::test_remote_down_publishes_nothing_and_a_rerun_completes"
)
TIMEOUT_S = 600


def test_dvc_remote_down_during_push(fault_log, tmp_path) -> None:
    basetemp = tmp_path / "inner"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", COVERING_TEST, "-q", "-p", "no:cacheprovider",
         f"--basetemp={basetemp}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    passed = done.returncode == 0 and " passed" in done.stdout
    left = kit.partial_files(basetemp) if basetemp.exists() else []
    last = (done.stdout.strip().splitlines() or [""])[-1]
    fault_log.record(
        "DVC remote unreachable during the flow's push",
        survived=passed,
        partial_files=len(left),
        data_lost=None,
        note=f"verdict of {COVERING_TEST.split('::')[-1]}",
        detail=f"exit {done.returncode}: {last}; left: {left}",
    )
    assert passed, done.stdout[-4000:] + done.stderr[-2000:]
    assert not left, f"partial files: {left}"
