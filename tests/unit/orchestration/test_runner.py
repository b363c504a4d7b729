"""Stage subprocesses: DVC's skip detection, exit codes, log tails, timeouts."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest

from seqmnist.errors import StageFailed
from seqmnist.orchestration import runner
from support.prefect_fixtures import make_toy_project


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return make_toy_project(tmp_path / "toy")


def test_run_stage_runs_then_skips_unchanged(toy: Path) -> None:
    lines: list[str] = []
    first = runner.run_stage(toy, "download", on_line=lines.append)
    second = runner.run_stage(toy, "download")
    forced = runner.run_stage(toy, "download", force=True)
    assert (first.skipped, second.skipped, forced.skipped) == (False, True, False)
    assert any("toy stage download done" in line for line in lines)
    assert "data/raw" in (toy / "dvc.lock").read_text()


def test_failed_stage_carries_exit_code_and_log_tail(
    toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_file = tmp_path / "failures"
    fail_file.write_text("5")
    monkeypatch.setenv("TOY_FAIL_FILE", str(fail_file))
    monkeypatch.setenv("TOY_FAIL_STAGE", "download")
    with pytest.raises(StageFailed) as caught:
        runner.run_stage(toy, "download")
    error = caught.value
    assert (error.stage, error.returncode, error.timed_out) == ("download", 3, False)
    assert "transient error in download" in error.log_tail
    assert "stage 'download' failed" in str(error) and "exited with code 3" in str(error)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_command_past_its_timeout_is_killed(tmp_path: Path) -> None:
    result = runner.run_command([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, 1)
    assert result.timed_out and result.returncode is None and result.duration_s < 30
