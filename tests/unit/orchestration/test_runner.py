"""Stage subprocesses: DVC's skip detection, exit codes, log tails, timeouts; the retry policy."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from prefect.states import Failed

from seqmnist.errors import StageFailed
from seqmnist.orchestration import runner
from support.prefect_fixtures import load_pipeline, make_toy_project
from support.project import init_repo

STAGE_RETRY_DELAYS_S = [30.0, 60.0]  # README: "retried twice (30 s, then 60 s apart)"
RETRY_JITTER = 0.2
RETRY_SAMPLES = 200
STAGE_TIMEOUT_S = 8.0  # dvc takes 1-3 s to start the stage here
GRACE_S = 1.0  # SIGTERM to SIGKILL, shortened from runner.KILL_GRACE_S
EXIT_WAIT_S = 5.0  # for killed processes to be gone from the process table
# A stage whose command starts a grandchild; both write their pids, then sleep for 10 minutes.
SLEEPY_STAGE = textwrap.dedent(
    """
    import os, pathlib, signal, subprocess, sys, time

    grandchild = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
    pathlib.Path("pids").write_text(f"{os.getpid()} {grandchild.pid}")
    time.sleep(600)
    """
)
GRANDCHILDREN = {
    "obeys SIGTERM": "import time; time.sleep(600)",
    "ignores SIGTERM": "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "time.sleep(600)",
}


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


def test_stage_retry_policy_waits_30_then_60_seconds_with_jitter() -> None:
    """The delays Prefect's engine schedules for flows/pipeline.py's repro_stage task, without
    waiting them (the flow tests run with the delays patched to 0)."""
    from prefect.task_engine import SyncTaskRunEngine
    from prefect.types._datetime import now

    task = load_pipeline().repro_stage
    assert task.retries == len(STAGE_RETRY_DELAYS_S)
    assert task.retry_delay_seconds == STAGE_RETRY_DELAYS_S
    assert task.retry_jitter_factor == RETRY_JITTER
    delays: list[list[float]] = [[] for _ in STAGE_RETRY_DELAYS_S]
    for _ in range(RETRY_SAMPLES):
        engine = SyncTaskRunEngine(task=task)
        engine.task_run = object()  # retry_condition_fn only asks whether there is one
        engine.logger = logging.getLogger("seqmnist.tests.retry_policy")
        scheduled = []
        engine.set_state = lambda state, force=False, scheduled=scheduled: scheduled.append(state)
        for attempt in delays:
            started = now("UTC")
            assert engine.handle_retry(RuntimeError("stage failed"))
            attempt.append((scheduled[-1].state_details.scheduled_time - started).total_seconds())
        assert not engine.handle_retry(RuntimeError("stage failed")), "a third retry"
    for base, observed in zip(STAGE_RETRY_DELAYS_S, delays, strict=True):
        low, high = base * (1 - RETRY_JITTER), base * (1 + RETRY_JITTER)
        assert low <= min(observed) < base < max(observed) <= high, (base, observed[:10])


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def sleepy_project(tmp_path: Path) -> Path:
    project = tmp_path / "sleepy"
    project.mkdir()
    (project / "sleepy.py").write_text(SLEEPY_STAGE)
    stages = {"sleepy": {"cmd": 'python sleepy.py "$GRANDCHILD"', "outs": ["never-written"]}}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    return init_repo(project, "a stage that outlives any timeout")


@pytest.mark.parametrize("grandchild", list(GRANDCHILDREN))
def test_stage_timeout_kills_what_dvc_started(
    sleepy_project: Path, monkeypatch: pytest.MonkeyPatch, grandchild: str
) -> None:
    """`dvc repro` runs the stage's command as its grandchild, which starts one more process:
    past the timeout, all of them must be gone, even one that ignores SIGTERM."""
    monkeypatch.setenv("GRANDCHILD", GRANDCHILDREN[grandchild])
    monkeypatch.setattr(runner, "KILL_GRACE_S", GRACE_S)
    started = time.monotonic()
    with pytest.raises(StageFailed) as caught:
        runner.run_stage(sleepy_project, "sleepy", timeout_s=STAGE_TIMEOUT_S)
    elapsed = time.monotonic() - started
    assert caught.value.timed_out and caught.value.returncode is None
    assert "timed out" in str(caught.value)
    assert elapsed < STAGE_TIMEOUT_S + GRACE_S + EXIT_WAIT_S
    pids_file = sleepy_project / "pids"
    assert pids_file.is_file(), f"dvc did not start the stage within {STAGE_TIMEOUT_S} s"
    pids = [int(pid) for pid in pids_file.read_text().split()]
    deadline = time.monotonic() + EXIT_WAIT_S
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in pids if _alive(pid)]
    for pid in survivors:  # do not leave them to the machine
        os.kill(pid, 9)
    assert survivors == [], "stage processes survived the timeout"


@pytest.mark.parametrize(
    ("returncode", "timed_out", "retried"),
    [(2, False, False), (1, False, True), (None, True, True)],
    ids=["bad input", "stage error", "timeout"],
)
def test_stage_failing_on_bad_input_is_not_retried(
    returncode: int | None, timed_out: bool, retried: bool
) -> None:
    """Exit 2 is seqmnist's bad input (params.yaml, data): the same run would fail again, so
    Prefect's engine schedules no retry; other failures keep the policy above."""
    from prefect.task_engine import SyncTaskRunEngine

    engine = SyncTaskRunEngine(task=load_pipeline().repro_stage)
    engine.task_run = object()
    engine.logger = logging.getLogger("seqmnist.tests.retry_policy")
    engine.set_state = lambda state, force=False: None
    failure = StageFailed("download", returncode, "log", timed_out)
    assert engine.handle_retry(failure) is retried
    # Prefect treats a condition that raises as "no retry": ask the condition itself too.
    assert load_pipeline()._worth_retrying(None, None, Failed(data=failure)) is retried


LEFT_RUNNING = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from seqmnist.orchestration import runner

    runner.run_command([sys.executable, "-c", "import time; time.sleep(600)"], Path(sys.argv[1]),
                       600, record_group=True)
    """
)


def _wait_for(condition, what: str, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {within_s} s"
        time.sleep(0.05)


def test_the_next_run_stops_what_a_killed_run_left_running(tmp_path: Path) -> None:
    """kill -9 of a flow leaves its command running in a session of its own (B4 of the fault
    suite); the recorded group lets the next run in the workspace stop it."""
    record = tmp_path / runner.CHILD_GROUP_FILE
    flow = subprocess.Popen([sys.executable, "-c", LEFT_RUNNING, str(tmp_path)])
    _wait_for(record.is_file, "the command's group recorded")
    group = json.loads(record.read_text())["pgid"]
    flow.kill()
    flow.wait()
    assert _alive(group), "the command died with the flow: nothing to test"
    stopped = runner.stop_left_behind(tmp_path)
    assert stopped and str(group) in stopped and "time.sleep(600)" in stopped
    _wait_for(lambda: not _alive(group), "the left command stopped", EXIT_WAIT_S)
    assert not record.exists()
    assert runner.stop_left_behind(tmp_path) is None


@pytest.mark.parametrize("record", ["reused pid", "copied workspace"])
def test_a_group_that_is_not_ours_is_left_alone(tmp_path: Path, record: str) -> None:
    """A record whose pgid now names another process group (a pid reused hours later), or a
    record copied with the workspace (`cp -a` while a flow ran), must stop nothing."""
    theirs = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        start_new_session=True,
        env={**os.environ, runner.GROUP_TOKEN_ENV: "their-token"},
    )
    try:
        path = tmp_path / runner.CHILD_GROUP_FILE
        path.parent.mkdir(parents=True)
        token, root = (
            ("our-token", str(tmp_path)) if record == "reused pid" else ("their-token", "/else")
        )
        stale = {"pgid": theirs.pid, "token": token, "root": root, "command": ["dvc", "repro"]}
        path.write_text(json.dumps(stale))
        assert runner.stop_left_behind(tmp_path) is None
        assert _alive(theirs.pid) and not path.exists()
    finally:
        theirs.kill()
        theirs.wait()
