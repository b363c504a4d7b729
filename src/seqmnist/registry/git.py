"""The git commands publication needs: commit the version's files, push with a bounded
fetch-and-rebase when the branch moved, push tags, read files at a commit.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from seqmnist.errors import PublishError
from seqmnist.io import process_alive

GIT_TIMEOUT_S = 300
# A partial commit (`git commit -- paths`) builds its tree in this temporary index, named by
# its process id; git removes it on the way out, so a killed commit leaves it behind for good.
PARTIAL_INDEX = re.compile(r"^next-index-(\d+)\.lock$")


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run git in `root`; a failure raises PublishError with git's own words."""
    done = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, timeout=GIT_TIMEOUT_S
    )
    if check and done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise PublishError(f"`git {' '.join(args)}` in {root} failed: {' / '.join(said[-3:])}")
    return done


def current_branch(root: Path) -> str:
    branch = git(root, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    if branch == "HEAD":
        raise PublishError(f"{root}: detached HEAD; check out the branch versions go to")
    return branch


def head(root: Path) -> str:
    return git(root, "rev-parse", "HEAD").stdout.strip()


def has_remote(root: Path, remote: str) -> bool:
    return git(root, "remote", "get-url", remote, check=False).returncode == 0


def changed(root: Path, paths: Sequence[str]) -> list[str]:
    """Which of `paths` differ from HEAD (new, modified or deleted)."""
    existing = [path for path in paths if (root / path).exists() or _tracked(root, path)]
    if not existing:
        return []
    out = git(root, "status", "--porcelain", "--untracked-files=all", "--", *existing).stdout
    return [line[3:] for line in out.splitlines() if line.strip()]


def _tracked(root: Path, path: str) -> bool:
    return bool(git(root, "ls-files", "--", path).stdout.strip())


def commit(root: Path, paths: Sequence[str], message: str) -> str:
    """Commit exactly `paths` (whatever else is staged stays out); return the new commit."""
    present = [path for path in paths if (root / path).exists() or _tracked(root, path)]
    git(root, "add", "--all", "--", *present)
    git(root, "commit", "--quiet", "--message", message, "--", *present)
    return head(root)


def clear_dead_partial_indexes(root: Path) -> list[Path]:
    """Remove the temporary indexes of partial commits that were killed; return what was removed.

    A live partial commit holds index.lock for as long as its temporary index exists, so none is
    touched while index.lock is there (whatever the process ids mean in this PID namespace), nor
    one whose process id is still running here.
    """
    git_dir = Path(git(root, "rev-parse", "--absolute-git-dir").stdout.strip())
    if (git_dir / "index.lock").exists():
        return []
    removed = []
    for leftover in git_dir.iterdir():
        found = PARTIAL_INDEX.match(leftover.name)
        if found and not process_alive(int(found.group(1))):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                continue  # left for the next publication; it blocks nothing
            removed.append(leftover)
    return removed


def push_branch(root: Path, remote: str, branch: str, attempts: int) -> None:
    """Push; if rejected because the branch moved, fetch, rebase our commit and try again."""
    for attempt in range(1, attempts + 1):
        pushed = git(root, "push", "--quiet", remote, f"HEAD:refs/heads/{branch}", check=False)
        if pushed.returncode == 0:
            return
        if attempt == attempts:
            break
        git(root, "fetch", "--quiet", remote, branch)
        rebased = git(root, "rebase", "--quiet", f"{remote}/{branch}", check=False)
        if rebased.returncode != 0:
            git(root, "rebase", "--abort", check=False)
            raise PublishError(
                f"git push to {remote}/{branch} was rejected and our version commit does not "
                f"rebase cleanly on the moved branch: {rebased.stderr.strip()}"
            )
    raise PublishError(
        f"git push to {remote}/{branch} failed after {attempts} attempts "
        f"(fetch and rebase in between): {pushed.stderr.strip()}"
    )


def fetch_history(root: Path, remote: str) -> None:
    """The remote's tags and full history: versions other machines registered, and enough
    ancestry to rebase on (a deployment's git_clone step makes a shallow clone)."""
    shallow = git(root, "rev-parse", "--is-shallow-repository").stdout.strip() == "true"
    git(root, "fetch", "--quiet", "--tags", *(["--unshallow"] if shallow else []), remote)


def push_tags(root: Path, remote: str, tags: Sequence[str]) -> None:
    unique = list(dict.fromkeys(tags))
    if unique:
        git(root, "push", "--quiet", remote, *[f"refs/tags/{tag}" for tag in unique])


def show(root: Path, commit: str, path: str) -> str | None:
    """A file's text at a commit, or None where it does not exist."""
    done = git(root, "show", f"{commit}:{path}", check=False)
    return done.stdout if done.returncode == 0 else None


def tags_at(root: Path, commit: str) -> list[str]:
    return git(root, "tag", "--points-at", commit).stdout.split()
