"""Subprocesses for the flow: `dvc repro` of one stage and `dvc pull`/`push`, with their output
streamed line by line, a timeout that kills the whole process group, and DVC's exit codes read
back. A Prefect task timeout cannot interrupt a blocking wait, so the limit lives here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from seqmnist.environment import QUIET_CHILD_ENV
from seqmnist.errors import LOG_TAIL_LINES, OrchestrationError, StageFailed

DEFAULT_STAGE_TIMEOUT_S = 6 * 3600.0
DEFAULT_SYNC_TIMEOUT_S = 1800.0
KILL_GRACE_S = 10.0  # from SIGTERM to SIGKILL
KILL_POLL_S = 0.1
# dvc prints this for each stage it actually runs; its absence means DVC skipped the stage.
DVC_RUNNING_MARKER = "Running stage"
# ...and this when the stage's command fails: "failed to run: <cmd>, exited with 3".
DVC_EXIT_PATTERN = re.compile(r"failed to run: .*, exited with (-?\d+)")
# DVC's advice after a run ("To track the changes with git, run: git add dvc.lock", ...): the
# flow records versions itself, so in its log these lines are noise.
DVC_GIT_HINTS = re.compile(
    r"^(To track the changes with git|To enable auto staging|Use `dvc push` to send"
    r"|\s+git add |\s+dvc config core\.autostage)"
)

# The process group of the `dvc` command a flow is running, recorded in the workspace: a flow
# killed with -9 cannot stop that group itself (it runs in a session of its own, so a timeout can
# kill it whole), so the next flow run there does (stop_left_behind).
CHILD_GROUP_FILE = Path(".dvc/tmp/seqmnist-child.json")
GROUP_TOKEN_ENV = "SEQMNIST_GROUP_TOKEN"  # marks the recorded command's processes as ours

LineSink = Callable[[str], None]


@dataclass(frozen=True)
class CommandResult:
    """How a subprocess ended, with the tail of its combined stdout/stderr."""

    returncode: int | None
    log_tail: str
    duration_s: float
    timed_out: bool
    ran_stage: bool


@dataclass(frozen=True)
class StageResult:
    """One stage as the flow saw it: skipped by DVC (unchanged) or actually run."""

    stage: str
    skipped: bool
    duration_s: float


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for `dvc`: this interpreter's bin/ first (so stages find `seqmnist`)."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        path = f"{bin_dir}{os.pathsep}{path}"
    return {**os.environ, **QUIET_CHILD_ENV, "PATH": path, **(extra or {})}


def _group_exists(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_exited(group: int, within_s: float, reap: Callable[[], object]) -> bool:
    """Whether every process of `group` is gone within `within_s`; `reap` collects the leader's
    exit status if it is our child (its zombie would keep the group alive)."""
    deadline = time.monotonic() + within_s
    while True:
        reap()
        if not _group_exists(group):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(KILL_POLL_S)


def _stop_group(group: int, reap: Callable[[], object] = lambda: None) -> None:
    """Stop a command and everything it started (dvc runs the stage as a grandchild).

    SIGTERM to the whole process group; whatever of it is still there after KILL_GRACE_S gets
    SIGKILL, even once the leader has exited: a stage's own children may ignore SIGTERM.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    if not _group_exited(group, KILL_GRACE_S, reap):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def _kill_group(process: subprocess.Popen[str]) -> None:
    """Stop the command (the leader of its group: start_new_session) and all it started."""
    _stop_group(process.pid, process.poll)
    process.wait()


def _record_group(root: Path, process: subprocess.Popen[str], cmd: Sequence[str], token: str):
    from seqmnist.io import write_json

    path = root / CHILD_GROUP_FILE
    record = {
        "pgid": process.pid,
        "token": token,
        "root": str(root.resolve()),
        "command": list(cmd),
    }
    write_json(path, record)
    return path


def _group_members(group: int) -> Iterator[Path]:
    """/proc/<pid> of every process in process group `group`."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rpartition(")")[2].split()[2]) == group:
                    yield entry
            except (OSError, ValueError, IndexError):
                continue  # ended meanwhile


def _carries(member: Path, token: str) -> bool:
    try:
        return f"{GROUP_TOKEN_ENV}={token}".encode() in (member / "environ").read_bytes().split(
            b"\0"
        )
    except OSError:
        return False


def stop_left_behind(root: Path) -> str | None:
    """Stop the command a killed flow run left running in `root`; say what was stopped.

    Call it holding the workspace lock (lock.workspace_lock): the run that recorded the group is
    then known to be dead. The group is stopped only if one of its processes carries the
    record's token in its environment: a pid reused since (hours later, after a reboot) or a
    record copied with the workspace (its `root` differs) names nothing of ours.
    """
    path = root / CHILD_GROUP_FILE
    try:
        record = json.loads(path.read_text())
        group, token, recorded_root = int(record["pgid"]), str(record["token"]), record["root"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError):
        path.unlink(missing_ok=True)  # unreadable: nothing can be identified by it
        return None
    stopped = None
    ours = recorded_root == str(root.resolve()) and any(
        _carries(member, token) for member in _group_members(group)
    )
    if ours:
        try:
            _stop_group(group)
            stopped = f"process group {group} ({' '.join(record.get('command', []))})"
        except PermissionError:
            stopped = f"nothing: process group {group} is another user's"
    path.unlink(missing_ok=True)
    return stopped


def run_command(
    cmd: Sequence[str],
    cwd: Path,
    timeout_s: float,
    on_line: LineSink | None = None,
    record_group: bool = False,
) -> CommandResult:
    """Run `cmd`, streaming its lines to `on_line`; kill its whole process group on timeout.

    A Prefect task timeout cannot interrupt a blocking wait, so the limit lives here.
    `record_group`: note the group in `cwd`'s CHILD_GROUP_FILE while it runs (see
    stop_left_behind); for commands run in a DVC project under the flow's workspace lock.
    """
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    ran_stage = False
    started = time.monotonic()
    token = uuid.uuid4().hex
    process = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=child_env({GROUP_TOKEN_ENV: token} if record_group else None),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,
    )

    def pump() -> None:
        nonlocal ran_stage
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            ran_stage = ran_stage or DVC_RUNNING_MARKER in line
            if on_line is not None and line.strip() and not DVC_GIT_HINTS.match(line):
                on_line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    record = None
    try:
        record = _record_group(cwd, process, cmd, token) if record_group else None
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
    except BaseException:
        _kill_group(process)
        raise
    finally:
        if record is not None:
            record.unlink(missing_ok=True)
    reader.join(timeout=KILL_GRACE_S)
    return CommandResult(
        returncode=None if timed_out else process.returncode,
        log_tail="\n".join(tail),
        duration_s=time.monotonic() - started,
        timed_out=timed_out,
        ran_stage=ran_stage,
    )


def dvc(*args: str) -> list[str]:
    """A `dvc` command line that uses the DVC installed beside this interpreter."""
    return [sys.executable, "-m", "dvc", *args]


def repro_command(stage: str, force: bool = False) -> list[str]:
    """`dvc repro` for one stage only: the flow already runs its upstream stages first."""
    return dvc("repro", "--single-item", *(["--force"] if force else []), stage)


def stage_exit_code(log: str) -> int | None:
    """The stage command's own exit code from DVC's error line (`dvc repro` itself exits 255)."""
    found = DVC_EXIT_PATTERN.findall(log)
    return int(found[-1]) if found else None


def run_stage(
    root: Path,
    stage: str,
    *,
    force: bool = False,
    timeout_s: float = DEFAULT_STAGE_TIMEOUT_S,
    on_line: LineSink | None = None,
) -> StageResult:
    """Reproduce one stage through DVC; raise StageFailed (exit code + log tail) if it fails."""
    result = run_command(repro_command(stage, force), root, timeout_s, on_line, record_group=True)
    if result.timed_out or result.returncode != 0:
        returncode = stage_exit_code(result.log_tail) or result.returncode
        raise StageFailed(stage, returncode, result.log_tail, result.timed_out)
    return StageResult(stage=stage, skipped=not result.ran_stage, duration_s=result.duration_s)


def sync_with_remote(
    root: Path, direction: str, timeout_s: float = DEFAULT_SYNC_TIMEOUT_S
) -> CommandResult:
    """`dvc pull` (tolerating outputs the remote does not have yet) or `dvc push`."""
    from seqmnist.orchestration.dvc import default_remote

    if direction not in {"pull", "push"}:
        raise ValueError(f"direction must be 'pull' or 'push', not {direction!r}")
    cmd = dvc("pull", "--allow-missing") if direction == "pull" else dvc("push")
    result = run_command(cmd, root, timeout_s, record_group=True)
    if result.timed_out or result.returncode != 0:
        outcome = "timed out" if result.timed_out else f"exited with code {result.returncode}"
        raise OrchestrationError(
            f"`dvc {direction}` with DVC remote {default_remote(root)!r} {outcome}\n"
            f"{result.log_tail}"
        )
    return result
