"""Fault 4: a second `dvc repro`, or a second flow run, in a workspace where one is running.

The second must be refused with a clear message (DVC's lock on the outputs; the flow's own
workspace lock, orchestration/lock.py) and the first must complete untouched: the same output
hashes as a clean run of the toy pipeline, one version registered once.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from faults import kit
from support.prefect_fixtures import TOY_PARAMS, make_toy_project

pytestmark = [pytest.mark.faults]

SLOW_TRAIN_S = 6  # the toy train stage sleeps this long: the window the second run lands in
RUN_TIMEOUT_S = 300
DVC_REFUSALS = ("is busy, it is being blocked by", "Unable to acquire lock")
FLOW_REFUSAL = "another seqmnist flow run is using"
FLOW_LOCK = Path(".dvc/tmp/seqmnist-flow.lock")


def slow_toy(dest: Path) -> Path:
    params = {**TOY_PARAMS, "train": {**TOY_PARAMS["train"], "sleep_s": SLOW_TRAIN_S}}
    return make_toy_project(dest, params)


def toy_train_running(project: Path) -> bool:
    return kit.running_cmdline(project, "toy_stages.py train") is not None


MOMENTS = ["during train"] + [f"random {seed}" for seed in kit.fault_seeds()]


@pytest.mark.parametrize("moment", MOMENTS)
def test_second_dvc_repro_is_refused(fault_log, toy_reference, tmp_path, moment) -> None:
    project = slow_toy(tmp_path / "toy")
    with kit.started([*kit.DVC, "repro"], project, tmp_path / "first.log") as first:
        if moment == "during train":
            kit.wait_until("toy train running", lambda: toy_train_running(project), 120, 0.05)
        else:
            seed = int(moment.split()[1])
            time.sleep(kit.fraction("second-repro", seed, 0.0, 1.0) * (SLOW_TRAIN_S + 8))
        first_alive = first.alive()
        second = kit.dvc(project, "repro", check=False, timeout=RUN_TIMEOUT_S)
        first_rc = first.wait(RUN_TIMEOUT_S)
    refused = second.returncode != 0 and any(text in second.stderr for text in DVC_REFUSALS)
    clear = second.returncode == 0 or refused
    identical = kit.lock_outs(project) == toy_reference
    left = kit.partial_files(project)
    clean = kit.dvc_clean(project)
    fault_log.record(
        "two `dvc repro` at once in one workspace",
        injected=int(first_alive),
        survived=first_rc == 0 and clear and clean,
        identical=identical,
        partial_files=len(left),
        data_lost=len(kit.missing_cache_objects(project)),
        note="" if clear else "second run failed unclearly",
        detail=(
            f"{moment}: second exit {second.returncode} ({'refused' if refused else 'ran'}): "
            f"{second.stderr.strip()[-300:]}"
        ),
    )
    assert first_rc == 0, f"the first run failed:\n{first.output()[-3000:]}"
    if moment == "during train":
        assert refused, f"second run not refused:\n{second.stdout}\n{second.stderr}"
    assert clear, f"second run failed without a clear refusal:\n{second.stderr}"
    assert identical and clean and not left


def test_second_flow_run_is_refused(fault_log, toy_reference, prefect_url, tmp_path) -> None:
    project = slow_toy(tmp_path / "toy")
    env = {"PREFECT_API_URL": prefect_url}
    command = [kit.SEQMNIST, "flow", "run"]
    with kit.started(command, project, tmp_path / "first.log", env) as first:
        lock = project / FLOW_LOCK
        kit.wait_until(
            "the first run holds the workspace lock",
            lambda: lock.exists() and lock.read_text().strip() == str(first.pid),
            120,
            0.05,
        )
        kit.wait_until("toy train running", lambda: toy_train_running(project), 120, 0.05)
        second = subprocess.run(
            command, cwd=project, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
            env={**os.environ, **env},
        )  # fmt: skip
        first_alive_after = first.alive()
        first_rc = first.wait(RUN_TIMEOUT_S)
    refused = second.returncode != 0 and FLOW_REFUSAL in second.stderr
    tags = sorted(kit.git(project, "tag", "--list").split())
    versions = int(kit.git(project, "rev-list", "--count", "HEAD")) - 1  # minus "toy pipeline"
    identical = kit.lock_outs(project) == toy_reference
    once = tags == sorted([kit.VERSION_TAG, kit.PROD_TAG]) and versions == 1
    traceback = "Traceback (most recent call last)" in second.stderr
    fault_log.record(
        "two flow runs at once in one workspace",
        survived=refused and first_rc == 0 and once,
        identical=identical,
        partial_files=len(kit.partial_files(project)),
        data_lost=len(kit.missing_cache_objects(project)),
        note="the refused run's log holds a traceback (Prefect's)" if traceback else "",
        detail=(
            f"second exit {second.returncode}; first alive after: {first_alive_after}; "
            f"tags {tags}; version commits {versions}; "
            f"last line: {(second.stderr.strip().splitlines() or [''])[-1][:300]}"
        ),
    )
    assert refused, f"second run not refused:\n{second.stdout[-2000:]}\n{second.stderr[-3000:]}"
    assert first_alive_after, "the refusal stopped the first run"
    assert first_rc == 0, first.output()[-3000:]
    assert once, f"tags {tags}, {versions} version commits"
    assert identical
