"""Sweeps on a real fleet (orchestration/fleet.py, what `seqmnist fleet up` starts): PostgreSQL,
`prefect server start` on it, a loopback S3 store, a bare git origin and two process workers in
folders of their own that share nothing but those. Trials are DVC experiments of the toy
pipeline (stages of milliseconds), so what is tested is the orchestration, not the training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from seqmnist.orchestration import fleet as fleet_module
from seqmnist.registry import tags
from support.prefect_fixtures import make_toy_project
from support.project import BIN_DIR, run

pytestmark = [pytest.mark.prefect, pytest.mark.slow]
SEQMNIST = str(BIN_DIR / "seqmnist")
SWEEP_TIMEOUT_S = 600
RUNNING_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[fleet_module.Fleet, Path]]:
    root = tmp_path_factory.mktemp("fleet")
    project = make_toy_project(root / "toy")
    with fleet_module.running(project, root / "fleet", workers=2) as running:
        yield running, project


def sweep(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SEQMNIST, "sweep", "run", *args], cwd=project, env=env, capture_output=True, text=True,
        timeout=SWEEP_TIMEOUT_S,
    )  # fmt: skip


def table_artifact(api_url: str, key: str) -> list[dict]:
    response = httpx.post(
        f"{api_url}/artifacts/latest/filter", json={"artifacts": {"key": {"any_": [key]}}}
    )
    response.raise_for_status()
    (artifact,) = response.json()
    return json.loads(artifact["data"])


def flow_runs(api_url: str, flow_name: str) -> list[dict]:
    response = httpx.post(
        f"{api_url}/flow_runs/filter", json={"flows": {"name": {"any_": [flow_name]}}}
    )
    response.raise_for_status()
    return response.json()


def test_sweep_runs_every_trial_once_across_workers_and_promotes_the_best(fleet, tmp_path):
    running, project = fleet
    qualities = (0.91, 0.95, 0.93, 0.92)
    trials = [arg for q in qualities for arg in ("--trial", f"train.quality={q}")]
    # A second sweep at the same time shares the workers and the origin, and corrupts nothing.
    other = ("--trial", "train.quality=0.5", "--trial", "train.quality=0.6")
    with subprocess.Popen(
        [SEQMNIST, "sweep", "run", "--id", "sw3", *other], cwd=project, env=running.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as concurrent:  # fmt: skip
        done = sweep(
            project, running.env, "--id", "sw1", "--max-parallel", "4", "--promote-best", *trials
        )
        concurrent_output, _ = concurrent.communicate(timeout=SWEEP_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert concurrent.returncode == 0, concurrent_output
    assert [row["train.quality"] for row in table_artifact(running.api_url, "sw3")] == [0.5, 0.6]
    assert "best sw1-1" in done.stdout  # quality 0.95: the lowest validation loss

    table = table_artifact(running.api_url, "sw1")
    assert [row["trial"] for row in table] == ["sw1-0", "sw1-1", "sw1-2", "sw1-3"]
    assert [row["train.quality"] for row in table] == list(qualities)
    assert {row["worker"] for row in table} == {"w1", "w2"}  # both workers ran trials

    # A third clone, sharing nothing with the workers, sees the four experiments and metrics.
    clone = tmp_path / "clone"
    run(["git", "clone", "--quiet", running.repository, str(clone)], tmp_path)
    env = {**os.environ, **running.env}
    run(["dvc", "exp", "pull", "origin", "sw1-0", "sw1-1", "sw1-2", "sw1-3"], clone, **env)
    shown = json.loads(run(["dvc", "exp", "show", "--all-commits", "--json"], clone, **env).stdout)
    experiments = {
        rev["name"]: rev for baseline in shown for exp in (baseline.get("experiments") or [])
        for rev in exp["revs"]
    }  # fmt: skip
    assert set(experiments) == {"sw1-0", "sw1-1", "sw1-2", "sw1-3"}
    metrics = experiments["sw1-1"]["data"]["metrics"]["metrics/evaluate.json"]["data"]
    assert metrics["accuracy"] == pytest.approx(0.95)

    # --promote-best: the pipeline deployment published sw1-1 through the gate.
    run(["git", "fetch", "--quiet", "--tags", "origin"], clone)
    holder = tags.in_stage(clone, "seqmnist-rnn", "prod")
    assert holder is not None and holder.version == "v1.0.0"
    promoted = run(["git", "show", f"{holder.commit}:params.yaml"], clone).stdout
    assert "quality: 0.95" in promoted


def test_a_killed_worker_crashes_its_trial_and_the_sweep_resubmits_it(fleet):
    running, project = fleet
    trials = (
        "--trial",
        "train.quality=0.94 train.sleep_s=20",
        "--trial",
        "train.quality=0.96 train.sleep_s=20",
    )
    with subprocess.Popen(
        [SEQMNIST, "sweep", "run", "--id", "sw2", "--max-parallel", "2", *trials],
        cwd=project, env=running.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as started:  # fmt: skip
        deadline = time.monotonic() + RUNNING_TIMEOUT_S
        while (
            sum(
                run_["state_type"] == "RUNNING" and run_["name"].startswith("sw2-")
                for run_ in flow_runs(running.api_url, "seqmnist-trial")
            )
            < 2
        ):
            assert time.monotonic() < deadline, "the two trials did not both start"
            time.sleep(1)
        busy = {
            name: psutil.Process(worker.pid).children(recursive=True)
            for name, worker in running.workers.items()
        }
        killed = next((name for name, children in busy.items() if children), None)
        assert killed, "no worker runs a trial"
        victim = running.workers[killed]
        for process in [psutil.Process(victim.pid), *busy[killed]]:  # the machine dies: all
            process.send_signal(signal.SIGKILL)
        output, _ = started.communicate(timeout=SWEEP_TIMEOUT_S)
    assert started.returncode == 0, output

    table = table_artifact(running.api_url, "sw2")
    assert [row["trial"] for row in table] == ["sw2-0", "sw2-1"]  # each exactly once
    assert killed not in {row["worker"] for row in table}
    states = [
        r["state_type"]
        for r in flow_runs(running.api_url, "seqmnist-trial")
        if r["name"].startswith("sw2-")
    ]
    assert states.count("CRASHED") == 1 and states.count("COMPLETED") == 2


def test_fleet_up_starts_everything_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    """`seqmnist fleet up` (what `make fleet` runs) from a project without a git origin."""
    project = make_toy_project(tmp_path / "toy")
    folder = tmp_path / "fleet"
    command = [SEQMNIST, "fleet", "up", "--workers", "1", "--dir", str(folder)]
    with subprocess.Popen(
        command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as fleet_up:
        assert fleet_up.stdout is not None
        lines = []
        for line in fleet_up.stdout:
            lines.append(line)
            if "Ctrl-C stops the fleet" in line:
                break
        printed = "".join(lines)
        assert "export PREFECT_API_URL=http://127.0.0.1:" in printed, printed
        api_url = printed.split("export PREFECT_API_URL=")[1].split()[0]
        assert httpx.get(f"{api_url}/health").status_code == 200
        pool = httpx.get(f"{api_url}/work_pools/seqmnist-process/queues/publish").json()
        assert pool["concurrency_limit"] == 1  # runs that publish never race
        data_dirs = {folder.resolve(), (folder / "postgres").resolve()}
        started = [p for p in psutil.process_iter() if _runs_in(p, data_dirs)]
        assert len(started) >= 4  # postgres, S3, the Prefect server, a worker

        fleet_up.send_signal(signal.SIGINT)
        assert fleet_up.wait(timeout=120) == 0
    assert git_remote_url(project) == str(folder.resolve() / "origin.git")
    left = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline() for p in left]


def _runs_in(process: psutil.Process, folders: set[Path]) -> bool:
    try:
        cwd = Path(process.cwd())
    except (psutil.Error, OSError):
        return False
    return any(cwd == folder or folder in cwd.parents for folder in folders)


def git_remote_url(project: Path) -> str:
    return run(["git", "remote", "get-url", "origin"], project).stdout.strip()
