"""The Prefect flow against a real Prefect API (one per session) and real DVC repositories."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from seqmnist.paths import PROMOTED_DIR, VERSIONS_FILE
from seqmnist.registry import versions
from support.prefect_fixtures import make_toy_project
from support.project import QUICK_PARAMS, make_project

pytestmark = pytest.mark.prefect
pytest_plugins = ["prefect_fixtures"]  # the session's one Prefect API and the flow module
ACCURACY = versions.HEADLINE_METRICS["accuracy"]


def run_flow(pipeline: ModuleType, project: Path, **options):
    return pipeline.seqmnist_pipeline(project_dir=str(project), **options, return_state=True)


def history(project: Path) -> list[dict]:
    return versions.load_history(project / VERSIONS_FILE)


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
    assert [run["status"] for run in history(project)] == ["new"]


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
    assert history(project) == []


def test_runs_with_different_params_record_versions_and_diff(
    pipeline: ModuleType,
    tmp_path: Path,
) -> None:
    from prefect.artifacts import Artifact

    project = make_toy_project(tmp_path / "toy")

    first = run_flow(pipeline, project)
    again = run_flow(pipeline, project)
    better = run_flow(pipeline, project, set_params=["train.quality=0.97"])

    assert first.is_completed() and again.is_completed() and better.is_completed()
    runs = history(project)
    assert [run["status"] for run in runs] == ["new", "unchanged", "new"]
    assert runs[0]["version"] == runs[1]["version"] != runs[2]["version"]
    diff = versions.diff_versions(runs[1], runs[2])
    assert diff["params"] == {"train.quality": [0.95, 0.97]}
    assert diff["metrics"][ACCURACY]["delta"] == pytest.approx(0.02)
    assert set(diff["outputs"]) == {"models/keras", "models/onnx"}

    table = Artifact.get(pipeline.VERSIONS_TABLE_KEY)
    assert table is not None
    assert [row["version"] for row in json.loads(table.data)] == [
        runs[0]["version"],
        runs[2]["version"],
    ]
    markdown = Artifact.get(pipeline.VERSION_DIFF_KEY)
    assert markdown is not None
    assert "| train.quality | 0.9500 | 0.9700 |" in markdown.data
    assert f"`{runs[2]['version']}`" in markdown.data


def test_gate_blocks_worse_model_and_keeps_the_promoted_one(
    pipeline: ModuleType,
    tmp_path: Path,
) -> None:
    project = make_toy_project(tmp_path / "toy")
    promoted = project / PROMOTED_DIR

    good = run_flow(pipeline, project)
    assert good.is_completed(), good.message
    pointer = json.loads((promoted / "version.json").read_text())
    model = (promoted / "model.onnx").read_bytes()

    worse = run_flow(pipeline, project, set_params=["train.quality=0.93"])

    assert worse.is_failed() and worse.name == "NotPromoted"
    assert "regresses more than gate.max_regression" in worse.message
    assert json.loads((promoted / "version.json").read_text()) == pointer
    assert (promoted / "model.onnx").read_bytes() == model
    assert b"0.93" in (project / "models/onnx/model.onnx").read_bytes()
    runs = history(project)
    assert [run["promoted"] for run in runs] == [True, False]


def test_subset_run_records_but_does_not_promote(
    pipeline: ModuleType,
    tmp_path: Path,
) -> None:
    project = make_toy_project(tmp_path / "toy")

    state = run_flow(pipeline, project, stages=["evaluate"])

    assert state.is_completed(), state.message
    assert "stages not up to date: export" in state.message
    assert not (project / PROMOTED_DIR).exists()


def test_cli_help_documents_the_options(pipeline: ModuleType, capsys) -> None:
    for command in ("run", "serve"):
        with pytest.raises(SystemExit) as done:
            pipeline.main([command, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        for option in ("--force", "--stages", "--set", "--stage-timeout"):
            assert option in text
    assert "--cron" in text


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
    (run,) = history(project)
    assert 0.0 < run["metrics"][ACCURACY] <= 1.0
    assert {"data/raw", "data/processed", "models/keras", "models/onnx"} <= set(run["outputs"])
    assert run["params"]["train.epochs"] == QUICK_PARAMS["train.epochs"]
    promoted = project / PROMOTED_DIR
    assert (promoted / "model.onnx").stat().st_size > 0
    assert (promoted / "MODEL_CARD.md").is_file()
    pointer = json.loads((promoted / "version.json").read_text())
    assert pointer["version"] == run["version"]

    again = run_flow(pipeline, project)
    assert again.is_completed(), again.message
    assert history(project)[-1]["status"] == "unchanged"
