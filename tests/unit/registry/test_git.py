"""Publication's git helpers against real git processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from seqmnist.registry import git
from support.project import run

WAIT_S = 20


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        time.sleep(0.05)


def test_a_killed_partial_commits_index_is_cleared_and_a_live_ones_kept(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "--quiet"], repo)
    (repo / "a.txt").write_text("1\n")
    run(["git", "add", "a.txt"], repo)
    run(["git", "commit", "--quiet", "--message", "first"], repo)
    (repo / "a.txt").write_text("2\n")
    # A partial commit that holds its temporary index while its "editor" waits.
    editor = tmp_path / "editor.sh"
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
        assert git.clear_dead_partial_indexes(repo) == [], "a live commit's index is kept"
        assert partial.exists()
    finally:
        os.killpg(committing.pid, signal.SIGKILL)
        committing.wait()
    assert partial.exists(), "git leaves the index of a killed commit behind"
    # The kill also left index.lock; git commits its index before dropping the partial one,
    # so a kill between the two leaves only the partial index (as the fault tests saw).
    (repo / ".git" / "index.lock").unlink()

    assert git.clear_dead_partial_indexes(repo) == [partial]
    new = git.commit(repo, ["a.txt"], "second")

    assert git.show(repo, new, "a.txt") == "2\n"
    assert not [name for name in os.listdir(repo / ".git") if name.endswith(".lock")]
