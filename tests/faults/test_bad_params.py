"""Fault 6: params.yaml that is not valid YAML, or that has unknown keys.

Every stage command must exit 2 with one message naming params.yaml and the line (YAML) or the
dotted field (unknown key), and write nothing. `dvc repro` and the flow are run on the same
broken file: DVC deletes a stage's outputs before running its command (they stay in the DVC
cache, so `dvc checkout` brings them back: nothing is lost), and the flow must fail with the
same message rather than retry a stage that cannot succeed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from faults import kit
from support.project import PROJECT_ROOT, make_project

pytestmark = [pytest.mark.faults]

ATTEMPT = re.compile(r"Task run 'download' - Running stage 'download'")
STAGE_TIMEOUT_S = 300
FLOW_TIMEOUT_S = 600
# (what is wrong, edit of params.yaml, what the message must name)
BROKEN = {
    "not valid YAML": ("  connect_timeout_s:", "  connect_timeout_s: [", "line "),
    "unknown key": ("  connect_timeout_s:", "  connect_timeoutz:", "download.connect_timeoutz"),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mnist_mirror: Path) -> Path:
    """A copy of the project with the download stage reproduced (outputs DVC can delete)."""
    project = make_project(tmp_path_factory.mktemp("params") / "proj", kit.REAL_PARAMS)
    shutil.copytree(PROJECT_ROOT / "flows", project / "flows")  # what `seqmnist flow` runs
    kit.dvc(project, "repro", "download", SEQMNIST_MIRROR=str(mnist_mirror.resolve()))
    return project


def broken(project: Path, kind: str) -> str:
    good = (project / "params.yaml").read_text()
    old, new, _ = BROKEN[kind]
    assert good.count(old) == 1, f"params.yaml has no single {old!r} to break"
    (project / "params.yaml").write_text(good.replace(old, new, 1))
    return good


def message_ok(stderr: str, names: str) -> bool:
    return (
        "params.yaml" in stderr and names in stderr and "Traceback (most recent call" not in stderr
    )


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_stage_commands_refuse_bad_params(project, fault_log, kind) -> None:
    good = broken(project, kind)
    names = BROKEN[kind][2]
    failures = []
    try:
        for stage in kit.REAL_STAGES:
            before = kit.tree_digest(project)
            done = subprocess.run(
                [kit.SEQMNIST, stage], cwd=project, capture_output=True, text=True,
                timeout=STAGE_TIMEOUT_S,
            )  # fmt: skip
            written = sorted(set(kit.tree_digest(project).items()) ^ set(before.items()))
            ok = done.returncode == 2 and message_ok(done.stderr, names) and not written
            fault_log.record(
                f"params.yaml {kind}: `seqmnist <stage>`",
                survived=ok,
                partial_files=len(kit.partial_files(project)),
                data_lost=len(written),
                note="" if ok else f"{stage}: exit {done.returncode}",
                detail=f"{stage}: exit {done.returncode}: {done.stderr.strip()[-400:]}",
            )
            if not ok:
                failures.append(f"{stage}: exit {done.returncode}, wrote {written}\n{done.stderr}")
    finally:
        (project / "params.yaml").write_text(good)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_dvc_repro_with_bad_params(project, fault_log, kind) -> None:
    good = broken(project, kind)
    names = BROKEN[kind][2] if kind == "unknown key" else "params.yaml"
    try:
        done = kit.dvc(project, "repro", "download", check=False)
    finally:
        (project / "params.yaml").write_text(good)
    deleted = not (project / "data/raw").exists()
    kit.dvc(project, "checkout", "download")  # what DVC removed comes back from its cache
    lost = kit.missing_cache_objects(project)
    clean = kit.dvc_clean(project, "download")
    ok = done.returncode != 0 and message_ok(done.stderr, names)
    fault_log.record(
        f"params.yaml {kind}: `dvc repro`",
        survived=ok and clean,
        partial_files=len(kit.partial_files(project)),
        data_lost=len(lost) + (0 if clean else 1),
        note="DVC deleted the stage's outputs first (`dvc checkout` restores them)"
        if deleted
        else "",
        detail=f"exit {done.returncode}: {done.stderr.strip()[-400:]}",
    )
    assert ok, done.stderr
    assert clean and not lost


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_flow_with_bad_params(project, fault_log, prefect_url, tmp_path, kind) -> None:
    good = broken(project, kind)
    names = BROKEN[kind][2] if kind == "unknown key" else "params.yaml"
    started = time.monotonic()
    try:
        done = subprocess.run(
            [kit.SEQMNIST, "flow", "run", "--stages", "download"], cwd=project,
            capture_output=True, text=True, timeout=FLOW_TIMEOUT_S,
            env={**os.environ, "PREFECT_API_URL": prefect_url},
        )  # fmt: skip
    finally:
        (project / "params.yaml").write_text(good)
    took = time.monotonic() - started
    attempts = len(ATTEMPT.findall(done.stdout + done.stderr))
    deleted = not (project / "data/raw").exists()
    kit.dvc(project, "checkout", "download")
    lost = kit.missing_cache_objects(project)
    final = (done.stderr.strip().splitlines() or [""])[-1]
    ok = done.returncode != 0 and names in done.stderr and attempts <= 1
    fault_log.record(
        f"params.yaml {kind}: `seqmnist flow run`",
        survived=ok,
        partial_files=len(kit.partial_files(project)),
        data_lost=len(lost),
        note=(f"stage run {attempts}x over {took:.0f} s before failing" if attempts > 1 else "")
        + ("; DVC deleted its outputs" if deleted else ""),
        detail=f"exit {done.returncode} after {took:.0f} s: {final[:300]}",
    )
    assert done.returncode != 0, done.stdout[-3000:]
    assert names in done.stderr, done.stderr[-3000:]
    assert not lost
    assert attempts <= 1, f"the flow retried the stage: {attempts} runs over {took:.0f} s"
