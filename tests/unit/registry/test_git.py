"""Publication's git helpers against real git processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from seqmnist.registry import git
from support.project import init_repo

WAIT_S = 20


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        time.sleep(0.05)


def killed_partial_commit(repo: Path, editor_dir: Path) -> Path:
    """Start `git commit -- a.txt` (a partial commit), wait until it holds its temporary index
    (its "editor" waits), check that a live one is kept, then kill it; return the index it left."""
    (repo / "a.txt").write_text("2\n")
    editor = editor_dir / "editor.sh"
    editor.write_text("#!/bin/sh\nsleep 60\n")
    editor.chmod(0o755)
    committing = subprocess.Popen(
        ["git", "commit", "--", "a.txt"],
        cwd=repo,
        env={**os.environ, "GIT_EDITOR": str(editor)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial = repo / ".git" / f"next-index-{committing.pid}.lock"
    try:
        _wait_for(partial.exists, partial.name)
        (repo / ".git" / "index.lock").rename(repo / "index.lock.aside")
        assert git.clear_dead_partial_indexes(repo) == [], "a running commit's index is kept"
        (repo / "index.lock.aside").rename(repo / ".git" / "index.lock")
        assert git.clear_dead_partial_indexes(repo) == [], "kept while index.lock is held"
        assert partial.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(committing.pid, signal.SIGKILL)
        committing.wait()
    assert partial.exists(), "git leaves the index of a killed commit behind"
    # The kill also left index.lock; git commits its index before dropping the partial one,
    # so a kill between the two leaves only the partial index (as the fault tests saw).
    (repo / ".git" / "index.lock").unlink()
    return partial


def test_a_killed_partial_commits_index_is_cleared_and_a_live_ones_kept(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("1\n")
    init_repo(repo, "first")
    partial = killed_partial_commit(repo, tmp_path)

    assert [path.name for path in git.clear_dead_partial_indexes(repo)] == [partial.name]
    new = git.commit(repo, ["a.txt"], "second")

    assert git.show(repo, new, "a.txt") == "2\n"
    assert not [name for name in os.listdir(repo / ".git") if name.endswith(".lock")]
