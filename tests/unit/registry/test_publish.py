"""Publication against real git and DVC in a toy project: commit, push, tags, bump rule, and
the order that lets a rerun finish what a killed run started."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from seqmnist.errors import PublishError
from seqmnist.orchestration import runner
from seqmnist.registry import publish, tags
from support.prefect_fixtures import make_toy_project
from support.project import run, set_params

ARTIFACT = "seqmnist-rnn"
STAGES = ["download", "preprocess", "train", "evaluate", "export"]


def reproduce(project: Path) -> None:
    for stage in STAGES:
        runner.run_stage(project, stage)


def git(project: Path, *args: str) -> str:
    return run(["git", *args], project).stdout.strip()


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    project = make_toy_project(tmp_path / "toy")
    reproduce(project)
    return project


def with_origin(project: Path, tmp_path: Path) -> Path:
    origin = tmp_path / "origin.git"
    run(["git", "init", "--quiet", "--bare", str(origin)], tmp_path)
    git(project, "remote", "add", "origin", str(origin))
    git(project, "push", "--quiet", "origin", "HEAD")
    return origin


def record(params: dict, data: str = "d1") -> dict:
    return {"params": params, "outputs": {"data/raw": data, "models/onnx": "m"}}


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (record({"train.epochs": 20}), (1, 2, 4)),  # same params and data: patch
        (record({"train.epochs": 30}), (1, 3, 0)),  # params changed: minor
        (record({"train.epochs": 20}, data="d2"), (1, 3, 0)),  # data changed: minor
        (record({"train.epochs": 20, "train.model.cell": "gru"}), (2, 0, 0)),  # interface
    ],
)
def test_bump_rule(after: dict, expected: tuple[int, int, int]) -> None:
    latest = tags.Registered((1, 2, 3), "c" * 40, f"{ARTIFACT}@v1.2.3", "")
    assert tags.next_version(latest, record({"train.epochs": 20}), after) == expected
    assert tags.next_version(None, None, after) == tags.FIRST_VERSION


def test_first_publication_commits_registers_and_promotes(toy: Path) -> None:
    commits = int(git(toy, "rev-list", "--count", "HEAD"))
    done = publish.publish(toy, dvc_remote=None)

    assert (done.version, done.committed, done.pushed_to) == ("v1.0.0", True, None)
    assert int(git(toy, "rev-list", "--count", "HEAD")) == commits + 1
    assert git(toy, "tag", "--points-at", "HEAD").split() == [
        f"{ARTIFACT}#prod#1",
        f"{ARTIFACT}@v1.0.0",
    ]
    assert "local only" in done.summary
    again = publish.publish(toy, dvc_remote=None)
    assert (again.version, again.committed, again.tags) == ("v1.0.0", False, [])
    assert int(git(toy, "rev-list", "--count", "HEAD")) == commits + 1


def test_a_rejected_push_is_rebased_onto_the_moved_branch(toy: Path, tmp_path: Path) -> None:
    origin = with_origin(toy, tmp_path)
    other = tmp_path / "other"
    run(["git", "clone", "--quiet", str(origin), str(other)], tmp_path)
    (other / "NOTES.md").write_text("someone else's commit\n")
    git(other, "add", "NOTES.md")
    git(other, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "--quiet", "-m", "notes")
    git(other, "push", "--quiet", "origin", "HEAD")

    done = publish.publish(toy, dvc_remote="s3")

    assert done.pushed_to and done.pushed_to.startswith("origin")
    branch = git(toy, "branch", "--show-current")
    log = git(origin, "log", "--format=%s", branch).splitlines()
    assert log[:2] == ["seqmnist-rnn v1.0.0: test accuracy 0.9500", "notes"]
    tagged = git(origin, "rev-list", "-n", "1", f"{ARTIFACT}@v1.0.0")
    assert tagged == git(origin, "rev-parse", branch), "the tag names the rebased commit"


def test_a_run_killed_after_its_commit_is_completed_by_the_next(
    toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = with_origin(toy, tmp_path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between the commit and the tag")

    monkeypatch.setattr(tags, "register", killed)
    with pytest.raises(KeyboardInterrupt):
        publish.publish(toy, dvc_remote="s3")
    monkeypatch.undo()
    assert git(origin, "tag", "--list") == "", "no tag before its commit is complete"
    commits = int(git(toy, "rev-list", "--count", "HEAD"))

    done = publish.publish(toy, dvc_remote="s3")

    assert (done.version, done.committed) == ("v1.0.0", False)
    assert int(git(toy, "rev-list", "--count", "HEAD")) == commits
    assert f"{ARTIFACT}@v1.0.0" in git(origin, "tag", "--list").split()


def test_publication_clears_what_a_commit_killed_mid_way_left(toy: Path) -> None:
    """The temporary index of a killed partial commit (tests/unit/registry/test_git.py makes a
    real one) is gone after the next publication."""
    ended = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    leftover = toy / ".git" / f"next-index-{ended.stdout.strip()}.lock"
    leftover.write_bytes(b"DIRC")

    publish.publish(toy, dvc_remote=None)

    assert not leftover.exists()


def test_wrong_branch_is_refused_by_name(toy: Path) -> None:
    set_params(toy, {"publish": {"branch": "release"}})
    with pytest.raises(PublishError, match=r"publish\.branch in params\.yaml is 'release'"):
        publish.publish(toy, dvc_remote=None)
