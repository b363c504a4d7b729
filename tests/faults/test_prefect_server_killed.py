"""Fault 7: the Prefect server dies (SIGKILL) while a flow runs a stage.

A real `prefect server start` (127.0.0.1, SQLite in a temp folder) serves `seqmnist flow run`
on the toy pipeline, whose stages are made slow; the server is killed while train runs. Within
bounded times the stage subprocesses (`dvc repro` and its grandchild) must end, then the flow
process itself (it keeps going without the API, and Prefect's client retries a while before it
gives up): nothing left running unsupervised. The server is then started again on the same port
and database, and a rerun completes, with v1.0.0 published once.
"""

from __future__ import annotations

import contextlib
import subprocess
import time

import httpx
import pytest

from faults import kit
from support.prefect_fixtures import TOY_PARAMS, make_toy_project

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.prefect]

STAGE_SLEEP_S = 4  # every toy stage sleeps this long
STAGES_BOUND_S = 5 * STAGE_SLEEP_S + 120  # for the stages left to end
FLOW_BOUND_S = 360  # for the flow process to give up on the API, once its stages ended
FLOW_TIMEOUT_S = 600


def flow_run_states(url: str) -> list[str]:
    """The state of every flow run the server knows, oldest first."""
    try:
        response = httpx.post(
            f"{url}/flow_runs/filter", json={"sort": "START_TIME_ASC"}, timeout=10
        )
        response.raise_for_status()
    except httpx.HTTPError as error:
        return [f"unreadable: {error}"]
    return [(run.get("state") or {}).get("type", "?") for run in response.json()]


def test_prefect_server_killed_during_a_stage(fault_log, toy_reference, tmp_path) -> None:
    params = {**TOY_PARAMS, "train": {**TOY_PARAMS["train"], "sleep_s": STAGE_SLEEP_S}}
    project = make_toy_project(tmp_path / "toy", params)
    server = kit.PrefectServer(tmp_path / "server")
    try:
        server.start()
        env = server.env
        command = [kit.SEQMNIST, "flow", "run"]
        with kit.started(command, project, tmp_path / "first.log", env) as first:
            kit.wait_until(
                "toy train running",
                lambda: kit.running_cmdline(project, "toy_stages.py train") or not first.alive(),
                FLOW_TIMEOUT_S,
                0.05,
            )
            injected = first.alive()
            server.kill()
            killed = time.monotonic()
            deadline = killed + STAGES_BOUND_S
            while time.monotonic() < deadline and [
                process for process in kit.processes_in(project) if process.pid != first.pid
            ]:
                time.sleep(0.5)
            stages = time.monotonic() - killed
            with contextlib.suppress(subprocess.TimeoutExpired):
                first.process.wait(timeout=FLOW_BOUND_S)
            lingered = time.monotonic() - killed
            running = kit.processes_in(project)
            seen = kit.describe(running)
            first_code = first.process.poll()
            kit.kill_processes(running)
        first_output = first.output()
        tags_after_first = sorted(kit.git(project, "tag", "--list").split())

        server.start()
        states = flow_run_states(server.url)
        with kit.started(command, project, tmp_path / "rerun.log", env) as rerun:
            code = rerun.wait(FLOW_TIMEOUT_S)
    finally:
        server.stop()

    tags = sorted(kit.git(project, "tag", "--list").split())
    versions = int(kit.git(project, "rev-list", "--count", "HEAD")) - 1  # minus "toy pipeline"
    once = tags == sorted([kit.VERSION_TAG, kit.PROD_TAG]) and versions == 1
    identical = kit.lock_outs(project) == toy_reference
    left = kit.partial_files(project)
    zombie = "RUNNING" in states
    fault_log.record(
        "Prefect server killed during a stage",
        injected=int(injected),
        survived=not running and code == 0 and once,
        identical=identical,
        partial_files=len(left),
        data_lost=len(kit.missing_cache_objects(project)),
        note="; ".join(
            part
            for part in (
                f"still running after {lingered:.0f} s: {seen}" if running else "",
                f"the killed run went on: published {', '.join(tags_after_first) or 'nothing'}, "
                f"exit {first_code} {lingered:.0f} s after the API died"
                if not running
                else "",
                "the killed run stays RUNNING on the restarted server" if zombie else "",
            )
            if part
        ),
        detail=(
            f"stages ended {stages:.0f} s after the kill, the flow {lingered:.0f} s after "
            f"(exit {first_code}); "
            f"left running: {seen}; tags after the first run {tags_after_first}; runs on the "
            f"restarted server {states}; rerun exit {code}; tags {tags}; versions {versions}; "
            f"first run's last line: {(first_output.strip().splitlines() or [''])[-1][:300]}"
        ),
    )
    assert injected, f"the flow ended before train ran:\n{first_output[-3000:]}"
    assert not running, f"still running {lingered:.0f} s after the server died: {seen}"
    assert code == 0, rerun.output()[-4000:]
    assert once, f"tags {tags}, {versions} version commits"
    assert identical and not left
