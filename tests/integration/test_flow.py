"""The Prefect flow against a real Prefect API (one per session) and real DVC repositories."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from seqmnist.orchestration.lock import workspace_lock
from seqmnist.registry import history, tags, versions
from support.prefect_fixtures import make_toy_project
from support.project import QUICK_PARAMS, make_project, run

pytestmark = pytest.mark.prefect
ARTIFACT = "seqmnist-rnn"
ACCURACY = versions.HEADLINE_METRICS["accuracy"]


def run_flow(pipeline: ModuleType, project: Path, **options):
    return pipeline.seqmnist_pipeline(project_dir=str(project), **options, return_state=True)


def registered(project: Path) -> list[str]:
    return [item.version for item in tags.registered(project, ARTIFACT)]


def in_prod(project: Path) -> str | None:
    holder = tags.in_stage(project, ARTIFACT, "prod")
    return holder.version if holder else None


def failing_toy_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str, times: int
) -> tuple[Path, Path]:
    """A toy project whose `stage` fails its next `times` runs (count kept in the returned file)."""
    project = make_toy_project(tmp_path / "toy")
    failures = tmp_path / "failures"
    failures.write_text(str(times))
    monkeypatch.setenv("TOY_FAIL_FILE", str(failures))
    monkeypatch.setenv("TOY_FAIL_STAGE", stage)
    return project, failures


def test_transient_stage_failure_is_retried(
    pipeline: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project, failures = failing_toy_project(tmp_path, monkeypatch, "train", times=1)

    state = run_flow(pipeline, project)

    assert state.is_completed(), state.message
    assert failures.read_text() == "0", "train should have failed once, then succeeded"
    assert registered(project) == ["v1.0.0"]


def test_stage_that_keeps_failing_fails_the_flow(
    pipeline: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project, failures = failing_toy_project(tmp_path, monkeypatch, "preprocess", times=99)

    state = run_flow(pipeline, project)

    assert state.is_failed()
    assert "stage 'preprocess' failed" in state.message
    assert "exited with code 3" in state.message
    assert "transient error in preprocess" in state.message
    assert int(failures.read_text()) == 99 - (pipeline.STAGE_RETRIES + 1)
    assert not (project / "models/keras").exists(), "downstream stages must not run"
    assert registered(project) == []


def git(project: Path, *args: str) -> str:
    return run(["git", *args], project).stdout.strip()


def test_runs_with_different_params_register_versions_and_diff(
    pipeline: ModuleType,
    tmp_path: Path,
) -> None:
    from prefect.artifacts import Artifact

    project = make_toy_project(tmp_path / "toy")
    commits_before = int(git(project, "rev-list", "--count", "HEAD"))

    first = run_flow(pipeline, project)
    again = run_flow(pipeline, project)
    better = run_flow(pipeline, project, set_params=["train.quality=0.97"])

    assert first.is_completed() and again.is_completed() and better.is_completed()
    assert "local only" in first.message
    assert registered(project) == ["v1.0.0", "v1.1.0"], "params changed: a minor bump"
    assert int(git(project, "rev-list", "--count", "HEAD")) == commits_before + 2
    assert "seqmnist-rnn v1.1.0: test accuracy 0.9700" in git(project, "log", "-1", "--format=%B")
    assert git(project, "status", "--porcelain", "--untracked-files=no") == ""
    assert in_prod(project) == "v1.1.0"
    listed = history.versions(project, ARTIFACT)
    diff = versions.diff_versions(listed[0], listed[1])
    assert diff["params"] == {"train.quality": [0.95, 0.97]}
    assert diff["metrics"][ACCURACY]["delta"] == pytest.approx(0.02)
    assert set(diff["outputs"]) == {"models/keras", "models/onnx"}

    table = Artifact.get(pipeline.VERSIONS_TABLE_KEY)
    assert table is not None
    rows = json.loads(table.data)
    assert [(row["version"], row["stages"]) for row in rows] == [
        ("v1.0.0", "-"),
        ("v1.1.0", "prod"),
    ]
    markdown = Artifact.get(pipeline.VERSION_DIFF_KEY)
    assert markdown is not None
    assert "| train.quality | 0.9500 | 0.9700 |" in markdown.data
    assert "`v1.0.0`" in markdown.data


def test_gate_blocks_worse_model_and_keeps_the_promoted_one(
    pipeline: ModuleType,
    tmp_path: Path,
) -> None:
    project = make_toy_project(tmp_path / "toy")

    good = run_flow(pipeline, project)
    assert good.is_completed(), good.message
    worse = run_flow(pipeline, project, set_params=["train.quality=0.93"])

    assert worse.is_failed() and worse.name == "NotPromoted"
    assert "regresses more than gate.max_regression" in worse.message
    assert registered(project) == ["v1.0.0", "v1.1.0"], "a blocked version is still registered"
    assert in_prod(project) == "v1.0.0"
    assert b"0.93" in (project / "models/onnx/model.onnx").read_bytes()


def test_a_second_run_in_the_same_workspace_is_refused(
    pipeline: ModuleType,
    tmp_path: Path,
) -> None:
    project = make_toy_project(tmp_path / "toy")

    with workspace_lock(project):  # as a first run holds it
        refused = run_flow(pipeline, project)

    assert refused.is_failed()
    assert f"another seqmnist flow run is using {project}" in refused.message
    assert registered(project) == [] and not (project / "dvc.lock").exists()
    assert run_flow(pipeline, project).is_completed()


def test_subset_run_publishes_nothing(
    pipeline: ModuleType,
    tmp_path: Path,
) -> None:
    project = make_toy_project(tmp_path / "toy")

    state = run_flow(pipeline, project, stages=["evaluate"])

    assert state.is_completed(), state.message
    assert "stages not up to date: export" in state.message
    assert registered(project) == []


def test_stages_restored_from_the_run_cache_are_published(
    pipeline: ModuleType,
    tmp_path: Path,
) -> None:
    """Params A, then B, then A again: DVC restores A's outputs from its run cache (no stage
    "runs"), so the flow must ask DVC again before publishing, not trust its status from before."""
    project = make_toy_project(tmp_path / "toy")
    for quality in ("0.96", "0.97", "0.96"):
        state = run_flow(pipeline, project, set_params=[f"train.quality={quality}"])
        assert state.is_completed(), state.message
        assert "not up to date" not in state.message, state.message
    assert registered(project) == ["v1.0.0", "v1.1.0", "v1.2.0"]
    assert history.versions(project, ARTIFACT)[-1]["metrics"][ACCURACY] == 0.96


@pytest.mark.slow
def test_real_pipeline_with_quick_params(
    pipeline: ModuleType,
    tmp_path: Path,
    mnist_mirror: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEQMNIST_MIRROR", str(mnist_mirror))
    project = make_project(tmp_path / "proj", QUICK_PARAMS)

    state = run_flow(pipeline, project, stage_timeout_s=1800)

    assert state.is_completed(), state.message
    (version,) = history.versions(project, ARTIFACT)
    assert 0.0 < version["metrics"][ACCURACY] <= 1.0
    assert {"data/raw", "data/processed", "models/keras", "models/onnx"} <= set(version["outputs"])
    assert version["params"]["train.epochs"] == QUICK_PARAMS["train.epochs"]
    assert version["stages"] == ["prod"]

    again = run_flow(pipeline, project)
    assert again.is_completed(), again.message
    assert registered(project) == ["v1.0.0"], "an unchanged version is not registered again"
