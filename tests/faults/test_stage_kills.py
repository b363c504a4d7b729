"""Fault 1: `kill -9` of `dvc repro` (and the stage it runs) anywhere in each real stage.

One temp copy of the project with quick params is reproduced clean, stage by stage (each timed):
that run's dvc.lock hashes are the reference. Then, for each stage, `dvc repro -f -s <stage>` is
started in a process group of its own and the whole group gets SIGKILL, either at a seeded
random moment (a fraction of the stage's clean duration) or at a chosen one (the instant an
atomic write is under way, right after a training checkpoint). Then the killed command runs again
to completion (`dvc repro -f -s <stage>`: without -f, DVC would check the clean run's outputs
out of its cache, since dvc.lock still names them, and our code's recovery would go untested; a
first run of new params has nothing there), then `dvc repro`, which must find nothing to do:
  - the outputs' hashes must equal the clean run's (training resumes from its checkpoint to the
    same bytes; DVCLive's timings are the only thing allowed to differ);
  - no temp file or folder of an atomic write may be left (kit.partial_files);
  - every output in dvc.lock must be in the workspace and the DVC cache.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from faults import kit

pytestmark = [pytest.mark.faults, pytest.mark.slow]

REPRO_TIMEOUT_S = 900
TRAIN_METRICS = "dvclive/train/metrics.json"
# Where each stage's atomic writes stage their files (src/seqmnist/io.py): beside the target.
WRITE_TEMPS = {
    "download": ("data", ".raw."),
    "preprocess": ("data", ".processed."),
    "evaluate": ("plots", ".misclassified.png."),
    "export": ("models", ".onnx."),
    "train-checkpoint": ("checkpoints", ".train."),
    # DVC deletes models/keras before train runs; atomic_path creates it for the model's temp,
    # so its creation is the moment the final save begins.
    "train-model": ("models", "keras"),
}


@dataclass
class Kill:
    injected: bool
    at_s: float
    log: str


def kill_repro(project: Path, stage: str, log: Path, moment: Callable[[kit.Started], bool]) -> Kill:
    """Run `dvc repro -f -s stage`; SIGKILL its process group as soon as `moment` says so."""
    running = kit.start([*kit.DVC, "repro", "--force", "--single-item", stage], project, log)
    try:
        while running.alive() and not moment(running):
            pass
        at_s = time.monotonic() - running.started
        injected = running.kill_group()
    finally:
        running.stop()
    return Kill(injected, at_s, running.output())


# A moment is a check that may wait up to kit.POLL_S: True means "kill now".
def after(seconds: float) -> Callable[[kit.Started], bool]:
    def check(running: kit.Started) -> bool:
        left = seconds - (time.monotonic() - running.started)
        time.sleep(min(max(left, 0), kit.POLL_S))
        return left <= 0

    return check


def polled(condition: Callable[[], bool]) -> Callable[[kit.Started], bool]:
    def check(_: kit.Started) -> bool:
        if condition():
            return True
        time.sleep(kit.POLL_S)
        return False

    return check


def temp_appears(where: Path, prefix: str) -> Callable[[kit.Started], bool]:
    """Kill as an atomic write's temp named `prefix...` is created in `where` (inotify when the
    folder exists already, else polling)."""
    if where.is_dir():
        watch = kit.Creations(where, prefix)
        return lambda _: watch.seen(kit.POLL_S)

    def exists() -> bool:
        try:
            return any(entry.name.startswith(prefix) for entry in where.iterdir())
        except OSError:
            return False

    return polled(exists)


def restore(project: Path) -> None:
    """Bring the shared project back to the clean run's state: remove what earlier kills left
    (already counted) and reproduce whatever an earlier failed test left stale."""
    kit.remove(project, kit.partial_files(project))
    if not kit.dvc_clean(project):
        kit.dvc(project, "repro", timeout=REPRO_TIMEOUT_S)


def identical_to(reference: kit.RealReference, project: Path) -> tuple[bool, list[str]]:
    """Every output's hash as in the clean run (DVCLive's metrics compared without timings)."""
    now = kit.lock_outs(project)
    differing = []
    for stage, outs in reference.outs.items():
        for path, md5 in outs.items():
            if now.get(stage, {}).get(path) == md5:
                continue
            if path == TRAIN_METRICS and (
                kit.json_without_timings(project / path) == reference.train_metrics
            ):
                continue
            differing.append(path)
    return not differing, differing


def missing_outputs(project: Path) -> list[str]:
    lost = [
        path
        for outs in kit.lock_outs(project).values()
        for path in outs
        if not (project / path).exists()
    ]
    return lost + kit.missing_cache_objects(project)


def check_recovery(
    fault_log,
    reference: kit.RealReference,
    stage: str,
    fault: str,
    kill: Kill,
    detail: str,
    rerun_says: str | None = None,
) -> None:
    """Rerun to completion, compare with the clean run, record the row, assert."""
    project = reference.project
    survivors = kit.survivors(project)
    kit.kill_processes(survivors)
    left_by_kill = kit.partial_files(project)
    rerun = kit.dvc(project, "repro", "--force", "--single-item", stage, check=False)
    rest = kit.dvc(project, "repro", timeout=REPRO_TIMEOUT_S, check=False)
    recovery = rest if rerun.returncode == 0 else rerun
    said = rerun.stdout + rerun.stderr
    left = kit.partial_files(project)
    identical, differing = identical_to(reference, project)
    lost = missing_outputs(project)
    clean = kit.dvc_clean(project)
    survived = recovery.returncode == 0 and clean and not survivors
    notes = []
    if left:
        notes.append("leftover " + ", ".join(sorted({_pattern(path) for path in left})))
    if survivors:
        notes.append("processes survived the group kill")
    if not kill.injected:
        notes.append("stage ended before the kill")
    fault_log.record(
        fault,
        injected=int(kill.injected),
        survived=survived,
        identical=identical,
        partial_files=len(left),
        data_lost=len(lost),
        note="; ".join(notes),
        detail=(
            f"{detail}; killed at {kill.at_s:.2f} s; left by the kill: {left_by_kill}; "
            f"left after the rerun: {left}; differing: {differing}; lost: {lost}"
        ),
    )
    assert not survivors, f"still running after kill -9 of the group: {kit.describe(survivors)}"
    assert recovery.returncode == 0, f"rerun failed:\n{recovery.stdout}\n{recovery.stderr}"
    assert clean, "dvc status is not clean after the rerun"
    assert not lost, f"outputs lost: {lost}"
    assert identical, f"outputs differ from the clean run: {differing}"
    assert "Running stage" not in rest.stdout, f"the rerun changed outputs:\n{rest.stdout}"
    if rerun_says:
        assert rerun_says in said, said[-3000:]
    assert not left, f"temps of killed writes left after the rerun: {left}"


def _pattern(path: str) -> str:
    """`data/.raw.ab12cd34.tmp` -> `data/.raw.*.tmp`, for the table's notes."""
    return re.sub(r"\.[A-Za-z0-9_-]{8}(?:[A-Za-z0-9_-]{14})?\.tmp", ".*.tmp", path)


@pytest.mark.parametrize("seed", kit.fault_seeds())
@pytest.mark.parametrize("stage", kit.REAL_STAGES)
def test_kill_at_a_random_moment(real_reference, fault_log, tmp_path, stage, seed) -> None:
    restore(real_reference.project)
    share = kit.fraction(f"stage/{stage}", seed)
    delay = share * real_reference.durations[stage]
    kill = kill_repro(real_reference.project, stage, tmp_path / "killed.log", after(delay))
    check_recovery(
        fault_log,
        real_reference,
        stage,
        f"kill -9 `dvc repro` during {stage} (random moment)",
        kill,
        f"seed {seed}: {share:.0%} of the clean {real_reference.durations[stage]:.1f} s",
    )


@pytest.mark.parametrize("target", sorted(WRITE_TEMPS))
def test_kill_during_an_atomic_write(real_reference, fault_log, tmp_path, target) -> None:
    restore(real_reference.project)
    stage = target.split("-")[0]
    folder, prefix = WRITE_TEMPS[target]
    moment = temp_appears(real_reference.project / folder, prefix)
    kill = kill_repro(real_reference.project, stage, tmp_path / "killed.log", moment)
    what = {"train-checkpoint": "a checkpoint's", "train-model": "the model's"}.get(target, "its")
    check_recovery(
        fault_log,
        real_reference,
        stage,
        f"kill -9 during {stage}: {what} atomic write",
        kill,
        f"killed when {folder}/{prefix}* appeared",
    )


def test_kill_train_right_after_a_checkpoint(real_reference, fault_log, tmp_path) -> None:
    """The resume path: epoch 1 is checkpointed, the rerun trains epoch 2 only, same bytes."""
    restore(real_reference.project)
    state = real_reference.project / "checkpoints/train/state.json"
    log = tmp_path / "killed.log"
    kill = kill_repro(real_reference.project, "train", log, polled(state.exists))
    assert kill.injected, f"train ended before its first checkpoint:\n{kill.log[-3000:]}"
    check_recovery(
        fault_log,
        real_reference,
        "train",
        "kill -9 train right after a checkpoint (resume)",
        kill,
        "killed when checkpoints/train/state.json appeared",
        rerun_says="resuming from checkpoints/train at epoch 2",
    )
