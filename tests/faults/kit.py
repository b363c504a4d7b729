"""What the fault tests share: processes started in their own group and killed with SIGKILL at a
chosen moment, scans for what a kill leaves half-written, DVC lock hashes, a git origin and an
S3 DVC remote for the toy pipeline, and a real `prefect server start` that can be killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from seqmnist.orchestration.fleet import free_port, stop_group
from support.project import BIN_DIR, make_project, run

SEEDS_ENV = "SEQMNIST_FAULT_SEEDS"
DVC = [sys.executable, "-m", "dvc"]
SEQMNIST = str(BIN_DIR / "seqmnist")
PREFECT = str(BIN_DIR / "prefect")
ARTIFACT = "seqmnist-rnn"
VERSION_TAG = f"{ARTIFACT}@v1.0.0"
PROD_TAG = f"{ARTIFACT}#prod#1"
POLL_S = 0.005
STOP_GRACE_S = 15

# What seqmnist's atomic writes leave while they run (src/seqmnist/io.py, modeling/checkpoints.py)
# and what DVC's own do (dvc_objects.fs.utils.tmp_fname): a kill at the wrong moment leaves them.
#   atomic_path:        .<name>.<8 chars>.tmp<suffixes>   (a file beside the target)
#   atomic_dir:         .<name>.<8 chars>.tmp/             (a folder beside the target)
#   discard_checkpoint: .<name>.<8 chars>/                 (beside checkpoints/train)
#   DVC:                <name>.<22 chars>.tmp              (cache objects, checkouts)
ATOMIC_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\..+)?$")
CHECKPOINT_ASIDE = re.compile(r"^\.train\.[A-Za-z0-9_]{8}$")
DVC_TEMP = re.compile(r"^.*\.[A-Za-z0-9_-]{22}\.tmp$")
GIT_LOCK = re.compile(r"^.+\.lock$")
# Timings DVCLive logs next to the metrics: a rerun may never reproduce them.
TIMING_KEYS = re.compile(r"seconds|per_second")


def fault_seeds() -> list[int]:
    """The seeds of the random kill moments: SEQMNIST_FAULT_SEEDS of them (default 1)."""
    return list(range(max(1, int(os.environ.get(SEEDS_ENV, "1")))))


def fraction(label: str, seed: int, low: float = 0.05, high: float = 0.95) -> float:
    """A reproducible random fraction for one (fault, seed)."""
    return random.Random(f"{label}/{seed}").uniform(low, high)


# Quick params for the real pipeline: the kill tests need it to run in seconds, and twice the
# same. Two epochs, so that a kill can land between two checkpoints and training resumes.
REAL_PARAMS: dict[str, object] = {
    "train.max_train_samples": 2000,
    "train.epochs": 2,
    "train.batch_size": 64,
    "train.learning_rate": 0.005,
    "train.model.units": 32,
    "train.model.input_projection": 32,
    "export.quantize_int8": False,
    "gate.min_test_accuracy": 0.0,
}
REAL_STAGES = ("download", "preprocess", "train", "evaluate", "export")
OUTPUT_FOLDERS = ("data", "models", "metrics", "plots", "dvclive")


@dataclass(frozen=True)
class RealReference:
    """The real pipeline run clean once: the project, its hashes and how long each stage took."""

    project: Path
    outs: dict[str, dict[str, str]]
    durations: dict[str, float]
    train_metrics: Any  # dvclive/train/metrics.json without its timings
    pristine: Path  # the clean outputs, kept aside for tests that need them intact


def keep_outputs(project: Path, dest: Path) -> Path:
    """The project's outputs set aside: data/ as hard links (large, and only ever replaced by
    rename), the small rest as copies."""
    dest.mkdir(parents=True)
    for name in OUTPUT_FOLDERS:
        if name == "data":
            hardlink_tree(project / name, dest / name)
        else:
            shutil.copytree(project / name, dest / name, symlinks=True)
    return dest


def real_project_from(reference: RealReference, dest: Path) -> Path:
    """A fresh git+DVC copy of the project holding the reference's clean outputs (not tracked
    by this copy's DVC: the tests using it run the stage commands themselves)."""
    project = make_project(dest, REAL_PARAMS)
    for name in OUTPUT_FOLDERS:
        source = reference.pristine / name
        if name == "data":
            hardlink_tree(source, project / name)
        else:
            shutil.copytree(source, project / name, symlinks=True)
    return project


# --------------------------------------------------------------------------- processes


@dataclass
class Started:
    """A command running in a process group of its own, its output in a file."""

    process: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill_group(self) -> bool:
        """SIGKILL the whole group at once; True if the command was still running."""
        was_alive = self.alive()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_GRACE_S)
        return was_alive

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(
                f"{' '.join(self.process.args)} still running after {timeout:.0f} s:\n"
                f"{self.output()[-4000:]}"
            ) from None

    def stop(self) -> None:
        """Stop the group however the test ended (SIGTERM, then SIGKILL)."""
        stop_group(self.process)


def start(cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> Started:
    """Start `cmd` as the leader of a new process group (what `kill -9 -PGID` hits)."""
    out = open(log, "w")  # noqa: SIM115 - the child owns it; closed below once it is inherited
    try:
        process = subprocess.Popen(
            cmd,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        out.close()
    return Started(process, log)


@contextlib.contextmanager
def started(cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None):
    """`start`, and stop the whole group when the block ends, passed or failed."""
    running = start(cmd, cwd, log, env)
    try:
        yield running
    finally:
        running.stop()


def wait_until(what: str, check: Callable[[], Any], timeout_s: float, poll_s: float = POLL_S):
    """Poll `check` until it returns something truthy; else fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(poll_s)
    raise AssertionError(f"{what}: not seen within {timeout_s:.0f} s")


class Creations:
    """inotify on one folder: `seen(timeout)` returns as soon as an entry whose name starts with
    `prefix` is created (or renamed) there, so a kill lands within the write's first moments.
    Polling would miss writes of a few milliseconds."""

    IN_MOVED_TO = 0x80
    IN_CREATE = 0x100
    IN_NONBLOCK = 0o4000
    HEADER = struct.Struct("iIII")

    def __init__(self, folder: Path, prefix: str) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.prefix = prefix.encode()
        self.fd = self.libc.inotify_init1(self.IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        mask = self.IN_CREATE | self.IN_MOVED_TO
        if self.libc.inotify_add_watch(self.fd, os.fsencode(folder), mask) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch failed on {folder}")

    def seen(self, timeout_s: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout_s)
        if not ready:
            return False
        data = os.read(self.fd, 65536)
        offset = 0
        while offset < len(data):
            _, _, _, size = self.HEADER.unpack_from(data, offset)
            name = data[offset + self.HEADER.size : offset + self.HEADER.size + size].rstrip(b"\0")
            offset += self.HEADER.size + size
            if name.startswith(self.prefix):
                return True
        return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    __del__ = close


def processes_in(project: Path) -> list[psutil.Process]:
    """Every live process whose working folder is inside `project` (stages, dvc, flows)."""
    root = str(project.resolve())
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            cwd = process.cwd()
            inside = cwd == root or cwd.startswith(root + os.sep)
            if inside and process.pid != os.getpid() and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def describe(processes: list[psutil.Process]) -> str:
    lines = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            lines.append(f"{process.pid}: {' '.join(process.cmdline())[:160]}")
    return "; ".join(lines)


def running_cmdline(project: Path, needle: str) -> psutil.Process | None:
    for process in processes_in(project):
        with contextlib.suppress(psutil.Error):
            if needle in " ".join(process.cmdline()):
                return process
    return None


def survivors(project: Path, grace_s: float = 10) -> list[psutil.Process]:
    """Processes still running in `project` after `grace_s` (SIGKILLed ones take a moment)."""
    deadline = time.monotonic() + grace_s
    while (left := processes_in(project)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def kill_processes(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=STOP_GRACE_S)


# --------------------------------------------------------------------------- files


def partial_files(root: Path) -> list[str]:
    """What kills left half-written under `root`: temp files and folders of atomic writes
    (seqmnist's and DVC's, the DVC cache included) and git lock files. DVC's own scratch
    folder (.dvc/tmp: locks, indexes) is not data and is skipped."""
    found = []
    skip = {root / ".dvc" / "tmp"}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [name for name in dirs if here / name not in skip]
        parts = (root.name, *here.relative_to(root).parts)
        inside_git = any(part == ".git" or part.endswith(".git") for part in parts)
        for name in [*dirs, *files]:
            if inside_git:
                hit = GIT_LOCK.match(name)
            else:
                hit = (
                    ATOMIC_TEMP.match(name) or DVC_TEMP.match(name) or CHECKPOINT_ASIDE.match(name)
                )
            if hit:
                found.append(str((here / name).relative_to(root)))
        dirs[:] = [name for name in dirs if str((here / name).relative_to(root)) not in found]
    return sorted(found)


def remove(root: Path, relative_paths: list[str]) -> None:
    for relative in relative_paths:
        path = root / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def hardlink_tree(source: Path, dest: Path) -> None:
    """A copy of `source` whose files are hard links (free; safe for files only ever replaced
    by rename, as every stage output and DVC cache object is)."""
    shutil.copytree(source, dest, copy_function=os.link, symlinks=True)


def tree_digest(root: Path, skip: tuple[str, ...] = (".git", ".dvc")) -> dict[str, tuple]:
    """Every file under `root` (but `skip`), with size and mtime: to prove nothing was written."""
    listing = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] in skip:
            continue
        stat = path.lstat()
        listing[str(relative)] = (path.is_dir(), stat.st_size, stat.st_mtime_ns)
    return listing


# --------------------------------------------------------------------------- DVC


def lock_outs(project: Path) -> dict[str, dict[str, str]]:
    """{stage: {output path: md5}} from dvc.lock."""
    path = project / "dvc.lock"
    if not path.exists():
        return {}
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    return {
        name: {out["path"]: out.get("md5", "") for out in stage.get("outs", [])}
        for name, stage in stages.items()
    }


def without_timings(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_timings(v) for k, v in node.items() if not TIMING_KEYS.search(k)}
    return node


def json_without_timings(path: Path) -> Any:
    return without_timings(json.loads(path.read_text())) if path.exists() else None


def dvc(project: Path, *args: str, timeout: float = 900, check: bool = True, **env: str):
    """`dvc ...` in `project`; with check, a failure fails the test with DVC's output."""
    if check:
        return run([*DVC, *args], project, timeout=timeout, **env)
    return subprocess.run(
        [*DVC, *args], cwd=project, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **env},
    )  # fmt: skip


def dvc_clean(project: Path, *targets: str) -> bool:
    """`dvc status` finds nothing to do (every output present and matching dvc.lock)."""
    done = dvc(project, "status", "--json", *targets, check=False)
    return done.returncode == 0 and json.loads(done.stdout or "{}") == {}


def cached_outputs(project: Path) -> set[str]:
    """Outputs dvc.yaml keeps in the DVC cache (all but `cache: false`)."""
    stages = (yaml.safe_load((project / "dvc.yaml").read_text()) or {}).get("stages", {})
    cached = set()
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                if isinstance(entry, dict):
                    path, options = next(iter(entry.items()))
                else:
                    path, options = entry, {}
                if (options or {}).get("cache", True):
                    cached.add(path)
    return cached


def missing_cache_objects(project: Path) -> list[str]:
    """Outputs in dvc.lock whose objects (for folders: every file of the listing) are not in
    the local DVC cache: data a kill lost for good."""
    cache = project / ".dvc" / "cache" / "files" / "md5"
    if not (project / "dvc.lock").exists():
        return []
    stages = (yaml.safe_load((project / "dvc.lock").read_text()) or {}).get("stages", {})
    cached = cached_outputs(project)
    missing = []
    for stage in stages.values():
        for out in stage.get("outs", []):
            md5 = out.get("md5", "")
            if not md5 or out["path"] not in cached:
                continue
            obj = cache / md5[:2] / md5[2:]
            if not obj.exists():
                missing.append(out["path"])
                continue
            if md5.endswith(".dir"):
                for entry in json.loads(obj.read_text()):
                    item = cache / entry["md5"][:2] / entry["md5"][2:]
                    if not item.exists():
                        missing.append(f"{out['path']}/{entry['relpath']}")
    return missing


# --------------------------------------------------------------------------- git


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo).stdout.strip()


def ref_exists(repo: Path, ref: str) -> bool:
    done = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", ref], cwd=repo, capture_output=True, text=True
    )
    return done.returncode == 0


def loose_ref(git_dir: Path, ref: str) -> str | None:
    """A ref read from the file git writes (cheap enough to poll every few ms), or packed-refs."""
    path = git_dir / ref
    with contextlib.suppress(OSError):
        return path.read_text().strip() or None
    with contextlib.suppress(OSError):
        for line in (git_dir / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    return None


# --------------------------------------------------------------------------- network services


@dataclass
class PrefectServer:
    """`prefect server start` on 127.0.0.1 with SQLite in `home`; stoppable, killable and
    restartable on the same port and database."""

    home: Path
    port: int = field(default_factory=free_port)
    running: Started | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def env(self) -> dict[str, str]:
        return {
            "PREFECT_HOME": str(self.home / "home"),
            "PREFECT_API_URL": self.url,
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.home / 'db.sqlite'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_CLI_PROMPT": "false",
        }

    def healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout_s: float = 180) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log = self.home / f"server-{self.starts}.log"
        cmd = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self.running = start(cmd, self.home, log, self.env)

        def up() -> bool:
            if not self.running.alive():
                raise AssertionError(f"prefect server exited:\n{self.running.output()[-3000:]}")
            return self.healthy()

        wait_until("prefect server start", up, timeout_s, poll_s=0.5)
        return self

    def kill(self) -> None:
        """SIGKILL the server and everything it started, as an OOM killer or a crash would."""
        if self.running is not None:
            self.running.kill_group()
            self.running = None

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()
            self.running = None
