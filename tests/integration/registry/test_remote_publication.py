"""Versions that leave the machine: a bare git origin and a real S3 server on 127.0.0.1 as the
DVC remote, the toy pipeline under the real flow, and a second clone that sees everything.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from seqmnist.registry import tags
from support.prefect_fixtures import make_toy_project
from support.project import run
from support.s3 import S3Server, s3_server

pytestmark = pytest.mark.prefect
ARTIFACT = "seqmnist-rnn"
BUCKET = "seqmnist"
ACCURACY = "metrics/evaluate.json:accuracy"


@pytest.fixture
def s3():
    with s3_server() as server:
        server.create_bucket(BUCKET)
        yield server


def remote_toy(tmp_path: Path, s3: S3Server) -> tuple[Path, Path]:
    """The toy project with an S3 DVC remote and a bare git origin, both configured and pushed."""
    origin = tmp_path / "origin.git"
    run(["git", "init", "--quiet", "--bare", str(origin)], tmp_path)
    project = make_toy_project(tmp_path / "work")
    run(["dvc", "remote", "add", "-d", "s3", f"s3://{BUCKET}/dvc"], project)
    run(["dvc", "remote", "modify", "s3", "endpointurl", s3.endpoint], project)
    run(["git", "commit", "--quiet", "-am", "DVC remote on S3"], project)
    run(["git", "remote", "add", "origin", str(origin)], project)
    run(["git", "push", "--quiet", "origin", "HEAD"], project)
    return project, origin


def run_flow(pipeline: ModuleType, project: Path, **options):
    return pipeline.seqmnist_pipeline(project_dir=str(project), **options, return_state=True)


def origin_state(origin: Path) -> tuple[int, list[str]]:
    """(commits on every branch, tags) of the bare origin."""
    count = int(run(["git", "rev-list", "--count", "--all"], origin).stdout)
    return count, sorted(run(["git", "tag", "--list"], origin).stdout.split())


def test_versions_are_published_and_fetchable_from_another_clone(
    pipeline: ModuleType, tmp_path: Path, s3: S3Server
) -> None:
    project, origin = remote_toy(tmp_path, s3)

    first = run_flow(pipeline, project)
    second = run_flow(pipeline, project, set_params=["train.quality=0.97"])

    assert first.is_completed() and second.is_completed(), second.message
    assert "pushed to origin" in second.message
    _, origin_tags = origin_state(origin)
    assert origin_tags == sorted(
        [f"{ARTIFACT}@v1.0.0", f"{ARTIFACT}@v1.1.0", f"{ARTIFACT}#prod#1", f"{ARTIFACT}#prod#2"]
    )

    clone = tmp_path / "clone"
    run(["git", "clone", "--quiet", str(origin), str(clone)], tmp_path)
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    run(
        ["dvc", "artifacts", "get", str(origin), ARTIFACT, "--stage", "prod",
         "-o", str(fetched / "model.onnx")],
        fetched,
    )  # fmt: skip
    assert (fetched / "model.onnx").read_bytes() == (
        project / "models/onnx/model.onnx"
    ).read_bytes()
    run(
        ["dvc", "artifacts", "get", str(origin), ARTIFACT, "--rev", "v1.0.0",
         "-o", str(fetched / "v1.onnx")],
        fetched,
    )  # fmt: skip
    assert b"quality=0.95" in (fetched / "v1.onnx").read_bytes()

    diff = json.loads(
        run(
            ["dvc", "metrics", "diff", f"{ARTIFACT}@v1.0.0", f"{ARTIFACT}@v1.1.0", "--json"],
            clone,
        ).stdout
    )
    assert diff["metrics/evaluate.json"]["accuracy"]["diff"] == pytest.approx(0.02)
    params = json.loads(
        run(
            ["dvc", "params", "diff", f"{ARTIFACT}@v1.0.0", f"{ARTIFACT}@v1.1.0", "--json"], clone
        ).stdout
    )
    quality = params["params.yaml"]["train.quality"]
    assert (quality["old"], quality["new"]) == (0.95, 0.97)

    listed = [
        json.loads(run(["seqmnist", "versions", "list", "--json"], where).stdout)
        for where in (project, clone)
    ]
    assert listed[0] == listed[1]
    assert [(row["version"], row["stages"]) for row in listed[1]] == [
        ("v1.0.0", "-"),
        ("v1.1.0", "prod"),
    ]

    run(["dvc", "pull", "--quiet"], clone)
    assert "Running stage" not in run(["dvc", "repro"], clone).stdout
    assert run(["git", "status", "--porcelain"], clone).stdout == ""


def test_remote_down_publishes_nothing_and_a_rerun_completes(
    pipeline: ModuleType, tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, origin = remote_toy(tmp_path, s3)
    assert run_flow(pipeline, project).is_completed()
    published = origin_state(origin)

    repro_stage = pipeline.repro_stage

    def remote_dies_after_export(project_dir, stage, *args):
        result = repro_stage(project_dir, stage, *args)
        if stage == "export":
            s3.stop()  # the stages ran; now the push of their outputs cannot reach S3
        return result

    monkeypatch.setattr(pipeline, "repro_stage", remote_dies_after_export)
    failed = run_flow(pipeline, project, set_params=["train.quality=0.97"])
    monkeypatch.undo()

    assert failed.is_failed()
    assert "`dvc push` with DVC remote 's3'" in failed.message
    assert origin_state(origin) == published, "no commit and no tag may name missing data"
    assert [item.version for item in tags.registered(project, ARTIFACT)] == ["v1.0.0"]

    s3.start()
    rerun = run_flow(pipeline, project)

    assert rerun.is_completed(), rerun.message
    commits, origin_tags = origin_state(origin)
    assert commits == published[0] + 1
    assert f"{ARTIFACT}@v1.1.0" in origin_tags and f"{ARTIFACT}#prod#2" in origin_tags
