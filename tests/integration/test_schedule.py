"""Schedules against a real `prefect server start` (127.0.0.1, free port, SQLite in a temp folder).

Both ways of scheduling are exercised: `seqmnist flow serve --cron ...` and the
production path, `prefect deploy` from prefect.yaml plus a process worker. Every process a test
starts is stopped at the end, passed or failed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from seqmnist.orchestration.fleet import background, free_port
from seqmnist.registry import tags
from support.prefect_fixtures import make_toy_project
from support.project import BIN_DIR, PROJECT_ROOT, run
from support.s3 import CREDENTIALS, s3_server

pytestmark = [pytest.mark.prefect, pytest.mark.slow]
SEQMNIST = str(BIN_DIR / "seqmnist")


def in_prod(project: Path) -> str | None:
    holder = tags.in_stage(project, "seqmnist-rnn", "prod")
    return holder.version if holder else None


FLOW_NAME = "seqmnist-pipeline"
SERVER_START_TIMEOUT_S = 120
DEPLOYMENT_TIMEOUT_S = 120
RUN_TIMEOUT_S = 300
POLL_S = 1.0
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
PREFECT = str(Path(sys.executable).parent / "prefect")


@dataclass(frozen=True)
class Server:
    url: str
    env: dict[str, str]
    logs: Path


def wait_for(what: str, check, timeout_s: float, log: Path, process=None):
    """Poll `check` until it returns something truthy; else fail showing the log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: process exited {process.returncode}\n{log.read_text()[-4000:]}")
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        time.sleep(POLL_S)
    pytest.fail(f"{what}: not done after {timeout_s} s\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home / "home"),
        "PREFECT_API_URL": url,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "DO_NOT_TRACK": "1",
    }
    log = home / "server.log"
    command = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with background(command, home, env, log) as process:

        def healthy() -> bool:
            return httpx.get(f"{url}/health", timeout=5).status_code == 200

        wait_for("prefect server start", healthy, SERVER_START_TIMEOUT_S, log, process)
        yield Server(url=url, env=env, logs=home)


def read_deployment(server: Server, name: str) -> dict | None:
    response = httpx.get(f"{server.url}/deployments/name/{FLOW_NAME}/{name}", timeout=10)
    return response.json() if response.status_code == 200 else None


def crons(deployment: dict) -> list[str]:
    return [item["schedule"].get("cron") for item in deployment["schedules"]]


def run_to_completion(server: Server, deployment: dict, log: Path, parameters: dict) -> dict:
    """Trigger a run of `deployment` now and wait for its final state.

    Requests go through `wait_for`, which retries HTTP errors: the server answers 503 while its
    SQLite database is locked by another writer, and Prefect's own client retries those too.
    """

    def create_run() -> str:
        created = httpx.post(
            f"{server.url}/deployments/{deployment['id']}/create_flow_run",
            json={"parameters": parameters},
            timeout=10,
        )
        created.raise_for_status()
        return created.json()["id"]

    run_id = wait_for("create a flow run", create_run, DEPLOYMENT_TIMEOUT_S, log)

    def final_state() -> dict | None:
        response = httpx.get(f"{server.url}/flow_runs/{run_id}", timeout=10)
        response.raise_for_status()
        state = response.json()["state"]
        return state if state and state["type"] in FINAL_STATES else None

    return wait_for(f"flow run {run_id}", final_state, RUN_TIMEOUT_S, log)


def test_serve_creates_cron_deployment_and_runs_it(server: Server, tmp_path: Path) -> None:
    project = make_toy_project(tmp_path / "toy")
    name, cron = "test-serve", "*/15 * * * *"
    log = tmp_path / "serve.log"
    command = [SEQMNIST, "flow", "serve", "--cron", cron, "--name", name]
    with background(command, project, server.env, log) as serving:
        deployment = wait_for(
            "serve", lambda: read_deployment(server, name), DEPLOYMENT_TIMEOUT_S, log, serving
        )
        assert crons(deployment) == [cron]
        assert deployment["parameters"]["project_dir"] == str(project.resolve())

        state = run_to_completion(server, deployment, log, {})

    assert state["type"] == "COMPLETED", f"{state['message']}\n{log.read_text()[-4000:]}"
    assert in_prod(project) == "v1.0.0"


def test_prefect_yaml_deployment_runs_on_a_worker_from_a_git_clone(
    server: Server, tmp_path: Path
) -> None:
    """The production path: `prefect deploy` from prefect.yaml, a process worker in a folder of
    its own that clones the repository, and a version published to the origin and S3."""
    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    (declared,) = [item for item in spec["deployments"] if item["name"] == "nightly"]
    pool = declared["work_pool"]["name"]
    with s3_server() as s3:
        s3.create_bucket("seqmnist")
        env = {**server.env, **CREDENTIALS}
        project = make_toy_project(tmp_path / "toy")
        origin = tmp_path / "origin.git"
        run(["git", "init", "--quiet", "--bare", str(origin)], tmp_path)
        run(["dvc", "remote", "add", "-d", "s3", "s3://seqmnist/dvc"], project)
        run(["dvc", "remote", "modify", "s3", "endpointurl", s3.endpoint], project)
        run(["git", "commit", "--quiet", "-am", "DVC remote on S3"], project)
        run(["git", "remote", "add", "origin", str(origin)], project)
        run(["git", "push", "--quiet", "origin", "HEAD"], project)
        branch = run(["git", "branch", "--show-current"], project).stdout.strip()
        for name, value in (("seqmnist_repository", str(origin)), ("seqmnist_branch", branch)):
            run([PREFECT, "variable", "set", name, value, "--overwrite"], tmp_path, **env)

        run([PREFECT, "work-pool", "create", pool, "--type", "process"], tmp_path, **env)
        run([PREFECT, "--no-prompt", "deploy", "--all"], PROJECT_ROOT, **env)
        deployment = read_deployment(server, declared["name"])
        assert deployment is not None
        assert crons(deployment) == [item["cron"] for item in declared["schedules"]]
        assert deployment["work_pool_name"] == pool
        assert (deployment.get("global_concurrency_limit") or {}).get("limit") == 1

        worker_dir = tmp_path / "worker"  # shares nothing with the project but the origin
        worker_dir.mkdir()
        log = tmp_path / "worker.log"
        with background([PREFECT, "worker", "start", "--pool", pool], worker_dir, env, log):
            state = run_to_completion(server, deployment, log, {})

    assert state["type"] == "COMPLETED", f"{state['message']}\n{log.read_text()[-4000:]}"
    assert "pushed to origin" in state["message"]
    origin_tags = run(["git", "tag", "--list"], origin).stdout.split()
    assert sorted(origin_tags) == ["seqmnist-rnn#prod#1", "seqmnist-rnn@v1.0.0"]
