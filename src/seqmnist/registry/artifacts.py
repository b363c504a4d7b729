"""Fetch a registered model as downstream users do: `dvc artifacts get`, by stage or version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from seqmnist.errors import PublishError

FETCH_TIMEOUT_S = 600


def fetch_model(
    stage: str | None = None,
    dest: Path = Path("."),
    repo: str | None = None,
    artifact: str | None = None,
    version: str | None = None,
) -> Path:
    """Download the model file registered at `stage` (or `version`) into `dest`; return its path.

    `repo` is any git URL or folder (default: this project's `origin`, else the project itself).
    The file comes from the DVC remote the registering commit names, as for any downstream user.
    """
    from seqmnist.orchestration.dvc import find_project_root
    from seqmnist.registry import git
    from seqmnist.registry.publish import load_publish_params

    root = find_project_root()
    settings = load_publish_params(root)
    artifact = artifact or settings.artifact
    if repo is None:
        origin = git.git(root, "remote", "get-url", settings.git_remote, check=False)
        repo = origin.stdout.strip() if origin.returncode == 0 else str(root)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    selector = ["--stage", stage] if stage else ["--rev", version] if version else []
    command = [sys.executable, "-m", "dvc", "artifacts", "get", repo, artifact, *selector]
    done = subprocess.run(
        [*command, "--out", str(dest), "--force"],
        capture_output=True,
        text=True,
        timeout=FETCH_TIMEOUT_S,
    )
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise PublishError(
            f"`dvc artifacts get {repo} {artifact} {' '.join(selector)}` failed: "
            f"{' / '.join(said[-2:])} (is the version registered and its data in a DVC remote?)"
        )
    files = sorted(path for path in dest.rglob("*.onnx"))
    if not files:
        raise PublishError(f"`dvc artifacts get` wrote no .onnx file into {dest}")
    return files[0]
