"""A local fleet on 127.0.0.1 to try sweeps, each piece standing in for its production form:

    PostgreSQL cluster + `prefect server start`  ->  a Prefect server (on PostgreSQL) or Cloud
    loopback S3 server (moto), the DVC remote     ->  an S3 bucket
    bare git repository (unless the project has an origin)  ->  the team's git server
    N `prefect worker start` processes, a folder each  ->  process workers on N machines
                                                         (or a Docker / Kubernetes work pool)

PostgreSQL, not SQLite: with several workers writing at once SQLite answers 503 "database is
locked". Machine-level settings (the DVC remote, credentials) go to each worker through its
environment and a DVC global config in the fleet folder, as they would on real machines.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import yaml

from seqmnist.environment import TELEMETRY_OFF
from seqmnist.errors import MissingExtraError, OrchestrationError
from seqmnist.orchestration.sweep import WORKER_ENV
from seqmnist.registry import git

PREFECT_YAML = "prefect.yaml"
BUCKET = "seqmnist"
DVC_REMOTE = "fleet"
GIT_REMOTE = "origin"
DATABASE = "prefect"
PG_USER = "postgres"  # the system account Debian's postgresql package creates
PUBLISH_QUEUE_LIMIT = 1  # two runs that publish would race to commit and tag
HEARTBEAT_S = 30  # flow runs report every 30 s (Prefect's minimum) ...
ZOMBIE_AFTER = timedelta(seconds=90)  # ... and are marked Crashed after 90 s of silence
WORKER_POLL_S = 2
START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 15
POLL_S = 0.5
# moto accepts any credentials; real machines get theirs from their own environment.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "seqmnist-fleet",
    "AWS_SECRET_ACCESS_KEY": "seqmnist-fleet-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Fleet:
    """A running fleet: what a shell needs to talk to it, and its processes."""

    folder: Path
    api_url: str
    s3_endpoint: str
    repository: str
    env: dict[str, str]
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    def shell_exports(self) -> str:
        keys = ("PREFECT_API_URL", "DVC_GLOBAL_CONFIG_DIR", *S3_CREDENTIALS)
        return "\n".join(f"export {key}={self.env[key]}" for key in keys)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def background(
    cmd: list[str], cwd: Path, env: dict[str, str], log: Path, user: str | None = None
) -> Iterator[subprocess.Popen]:
    """Start `cmd` in a process group of its own; stop the whole group however the block ends."""
    with open(log, "a") as out:
        process = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, user=user,
        )  # fmt: skip
        try:
            yield process
        finally:
            stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_until(what: str, ready: Callable[[], bool], log: Path, process=None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise OrchestrationError(f"{what} exited ({process.returncode}); see {log}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(POLL_S)
    raise OrchestrationError(f"{what} not ready after {START_TIMEOUT_S} s; see {log}")


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = found[-1] if found else shutil.which("initdb")
    if not initdb:
        raise OrchestrationError(
            "PostgreSQL not found (no initdb): install it, e.g. `apt-get install postgresql`"
        )
    return Path(initdb).parent


@contextmanager
def postgres(folder: Path) -> Iterator[str]:
    """A PostgreSQL cluster for the fleet, on a free port of 127.0.0.1; yields Prefect's URL.

    PostgreSQL refuses to run as root: as root, the cluster runs as the `postgres` account, in
    a folder that account can reach (linked from the fleet folder).
    """
    bin_dir, user = _pg_bin(), (PG_USER if os.geteuid() == 0 else None)
    link = folder / "postgres"
    if user and not link.exists():
        data = Path(tempfile.mkdtemp(prefix="seqmnist-fleet-pg-"))
        shutil.chown(data, user, user)
        link.symlink_to(data)
    data = link.resolve()
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    if not (data / "PG_VERSION").exists():
        subprocess.run(
            [bin_dir / "initdb", "-D", data, "-U", DATABASE, "--auth=trust", "-E", "UTF8"],
            check=True, capture_output=True, env=env, user=user, cwd=data,
        )  # fmt: skip
    port = free_port()
    log = folder / "postgres.log"
    cmd = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(data),
           "-c", "listen_addresses=127.0.0.1"]  # fmt: skip
    with background(cmd, data, env, log, user=user) as process:
        ready = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
        wait_until("postgres", lambda: subprocess.run(ready).returncode == 0, log, process)
        created = subprocess.run(
            [bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", DATABASE, DATABASE],
            capture_output=True, text=True,
        )  # fmt: skip
        if created.returncode and "already exists" not in created.stderr:
            raise OrchestrationError(f"createdb failed: {created.stderr.strip()}")
        yield f"postgresql+asyncpg://{DATABASE}@127.0.0.1:{port}/{DATABASE}"


# --------------------------------------------------------------------------- S3, git, DVC


@contextmanager
def s3_store(folder: Path, env: dict[str, str]) -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1, with the fleet's bucket; yields its URL."""
    try:
        import boto3
        import moto.server  # noqa: F401
    except ModuleNotFoundError as exc:
        needs = f"the fleet's S3 store needs {exc.name}: pip install -e '.[dev]'"
        raise MissingExtraError(needs) from None
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    log = folder / "s3.log"
    with background(cmd, folder, env, log) as process:
        client = boto3.client(
            "s3", endpoint_url=endpoint,
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
        )  # fmt: skip
        wait_until("S3 server", lambda: client.list_buckets() is not None, log, process)
        client.create_bucket(Bucket=BUCKET)
        yield endpoint


def dvc_machine_config(folder: Path, endpoint: str) -> Path:
    """A DVC global config naming the fleet's S3 store as the default remote, for every process
    of the fleet (a project that sets its own remote in .dvc/config keeps it)."""
    config_dir = folder / "dvc-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config").write_text(
        f"[core]\n    remote = {DVC_REMOTE}\n"
        f"['remote \"{DVC_REMOTE}\"']\n    url = s3://{BUCKET}/dvc\n    endpointurl = {endpoint}\n"
    )
    return config_dir


def git_origin(project: Path, folder: Path) -> str:
    """The repository workers clone: the project's origin, or a bare one made in the fleet."""
    if git.has_remote(project, GIT_REMOTE):
        return git.git(project, "remote", "get-url", GIT_REMOTE).stdout.strip()
    bare = folder / "origin.git"
    if not bare.exists():
        git.git(folder, "init", "--quiet", "--bare", str(bare))
    git.git(project, "remote", "add", GIT_REMOTE, str(bare))
    git.git(project, "push", "--quiet", GIT_REMOTE, "HEAD")
    return str(bare)


# --------------------------------------------------------------------------- Prefect


@contextmanager
def prefect_server(folder: Path, database_url: str, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    server_env = {**env, "PREFECT_API_DATABASE_CONNECTION_URL": database_url}
    cmd = [_prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    log = folder / "prefect-server.log"
    with background(cmd, folder, server_env, log) as process:
        import httpx

        wait_until(
            "prefect server",
            lambda: httpx.get(f"{url}/health", timeout=5).status_code == 200,
            log,
            process,
        )
        yield url


def _prefect() -> str:
    return str(Path(sys.executable).parent / "prefect")


def work_pool(project: Path) -> tuple[str, dict[str, str]]:
    """The work pool prefect.yaml deploys to, and the queue of each deployment."""
    spec = yaml.safe_load((project / PREFECT_YAML).read_text())
    pools = {item["work_pool"]["name"] for item in spec["deployments"]}
    if len(pools) != 1:
        raise OrchestrationError(f"{project / PREFECT_YAML}: expected one work pool, got {pools}")
    queues = {item["name"]: item["work_pool"]["work_queue_name"] for item in spec["deployments"]}
    return pools.pop(), queues


def configure_prefect(project: Path, repository: str, env: dict[str, str]) -> str:
    """Pool, queues (the publishing one limited to one run), variables, the zombie-run
    automation, then `prefect deploy --all` from prefect.yaml. Returns the pool's name."""
    pool, queues = work_pool(project)
    branch = git.current_branch(project)
    script = _CONFIGURE.format(
        pool=pool, queues=sorted(set(queues.values())), publish=queues.get("nightly"),
        limit=PUBLISH_QUEUE_LIMIT, repository=repository, branch=branch,
        within=ZOMBIE_AFTER.total_seconds(),
    )  # fmt: skip
    for cmd in ([sys.executable, "-c", script], [_prefect(), "--no-prompt", "deploy", "--all"]):
        done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
        if done.returncode:
            raise OrchestrationError(f"configuring Prefect failed:\n{done.stdout}{done.stderr}")
    return pool


# Run against the fleet's API in a child process, so this process's Prefect settings stay as
# they are. Idempotent: a fleet restarted on its own folder finds everything in place.
_CONFIGURE = """
from datetime import timedelta
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectAlreadyExists
from prefect.variables import Variable

with get_client(sync_client=True) as client:
    client.create_work_pool(WorkPoolCreate(name={pool!r}, type="process"), overwrite=True)
    for queue in {queues!r}:
        limit = {limit} if queue == {publish!r} else None
        try:
            client.create_work_queue(queue, work_pool_name={pool!r}, concurrency_limit=limit)
        except ObjectAlreadyExists:
            pass
    if not client.read_automations_by_name("crash-silent-flow-runs"):
        Automation(
            name="crash-silent-flow-runs",
            description="A deployment's flow run that goes silent (its worker died) is marked "
                        "Crashed.",
            # After Running too: a run killed before its first heartbeat reached the server
            # sent none. Deployments' runs only: runs started from a terminal send no heartbeats.
            trigger=EventTrigger(
                after={{"prefect.flow-run.heartbeat", "prefect.flow-run.Running"}},
                expect={{"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                        "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                        "prefect.flow-run.Crashed"}},
                match=ResourceSpecification({{"prefect.resource.id": ["prefect.flow-run.*"]}}),
                match_related=ResourceSpecification({{"prefect.resource.role": "deployment"}}),
                for_each={{"prefect.resource.id"}},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds={within}),
            ),
            actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                        message="no heartbeat: its worker stopped")],
        ).create()
Variable.set("seqmnist_repository", {repository!r}, overwrite=True)
Variable.set("seqmnist_branch", {branch!r}, overwrite=True)
"""


def start_worker(
    stack: ExitStack, fleet: Fleet, pool: str, name: str, limit: int
) -> subprocess.Popen:
    """A process worker in a folder of its own (its runs' clones go to its tmp/)."""
    home = fleet.folder / "workers" / name
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env = {**fleet.env, WORKER_ENV: name, "TMPDIR": str(home / "tmp"),
           "PREFECT_HOME": str(home / "prefect-home")}  # fmt: skip
    cmd = [_prefect(), "worker", "start", "--pool", pool, "--name", name, "--limit", str(limit)]
    process = stack.enter_context(background(cmd, home, env, home / "worker.log"))
    fleet.workers[name] = process
    return process


@contextmanager
def running(
    project: Path, folder: Path, workers: int = 2, runs_per_worker: int = 1
) -> Iterator[Fleet]:
    """The whole fleet, up; everything stopped when the block ends, also on errors."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    base_env = {
        **os.environ, **TELEMETRY_OFF, **S3_CREDENTIALS,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_HOME": str(folder / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_POLL_S),
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),
    }  # fmt: skip
    with ExitStack() as stack:
        database_url = stack.enter_context(postgres(folder))
        endpoint = stack.enter_context(s3_store(folder, base_env))
        api_url = stack.enter_context(prefect_server(folder, database_url, base_env))
        env = {**base_env, "PREFECT_API_URL": api_url,
               "DVC_GLOBAL_CONFIG_DIR": str(dvc_machine_config(folder, endpoint))}  # fmt: skip
        repository = git_origin(project, folder)
        fleet = Fleet(folder, api_url, endpoint, repository, env)
        pool = configure_prefect(project, repository, env)
        for index in range(1, workers + 1):
            start_worker(stack, fleet, pool, f"w{index}", runs_per_worker)
        yield fleet


def main(project: Path, folder: Path, workers: int) -> int:
    """`seqmnist fleet up`: start, print how to use it, stop everything on Ctrl-C."""
    with running(project, folder, workers) as fleet:
        print(
            f"fleet up in {fleet.folder}: Prefect {fleet.api_url} (UI: drop the /api), "
            f"S3 {fleet.s3_endpoint}, git origin {fleet.repository}, "
            f"workers {', '.join(fleet.workers)}\n\n"
            f"In another shell, from {project}:\n{fleet.shell_exports()}\n"
            "git push origin HEAD   # trials clone the origin\n"
            "seqmnist sweep run --set train.epochs=3 --grid train.model.units=64,128\n\n"
            "Ctrl-C stops the fleet.",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while all(worker.poll() is None for worker in fleet.workers.values()):
                time.sleep(1)
            print("a worker exited; stopping the fleet", file=sys.stderr)
            return 1
    return 0
