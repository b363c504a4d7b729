"""What produced a model: git commit, dirty flag, data checksums, params. TensorFlow-free."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from seqmnist.paths import DATA_STATS


def _run_git(*args: str, cwd: Path | None) -> subprocess.CompletedProcess[str] | None:
    """git's answer, or None when git could not be run or did not answer in time."""
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None


def _git(*args: str, cwd: Path | None = None) -> str | None:
    done = _run_git(*args, cwd=cwd)
    return done.stdout.strip() if done is not None and done.returncode == 0 else None


def git_version(cwd: Path | None = None) -> dict[str, Any]:
    """The current commit and whether tracked files differ from it (None outside a git repo)."""
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def git_without_commits(cwd: Path | None = None) -> bool:
    """Whether `cwd` is in a git work tree without a commit yet (`git init`, nothing committed)."""
    if _git("rev-parse", "--is-inside-work-tree", cwd=cwd) != "true":
        return False
    done = _run_git("rev-parse", "--verify", "--quiet", "HEAD", cwd=cwd)
    return done is not None and done.returncode == 1  # 1: no such revision; else no evidence


def data_checksums(stats_path: Path = DATA_STATS) -> dict[str, str]:
    """sha256 of each verified raw IDX payload, as recorded by `preprocess`."""
    try:
        stats = json.loads(Path(stats_path).read_text())
    except (OSError, ValueError):
        return {}
    return dict(stats.get("source_sha256", {}))
