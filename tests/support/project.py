"""Real git+DVC projects in temp folders, and the quick params the pipeline tests train with."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_MNIST = PROJECT_ROOT.parent / "shared" / "mnist"
BIN_DIR = Path(sys.executable).parent
# Files a temporary project copy needs to run the pipeline with DVC.
PROJECT_FILES = ("dvc.yaml", "params.yaml", "src", ".dvcignore")


def run(cmd: list[str], cwd: Path, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output if it exits non-zero."""
    done = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def set_params(project: Path, overrides: dict[str, object]) -> None:
    """Write dotted overrides (``train.model.units``) into a project's params.yaml."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def init_repo(dest: Path, message: str) -> Path:
    """Turn a folder into a git+DVC repository with everything in it committed."""
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.email", "tests@seqmnist.invalid"], dest)
    run(["git", "config", "user.name", "seqmnist tests"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["dvc", "config", "core.analytics", "false"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", message], dest)
    return dest


def make_project(dest: Path, params_overrides: dict[str, object] | None = None) -> Path:
    """A fresh git+DVC repository holding a copy of this project's pipeline."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    if params_overrides:
        set_params(dest, params_overrides)
    return init_repo(dest, "pipeline")


QUICK_PARAMS: dict[str, object] = {
    "train.max_train_samples": 3000,
    "train.epochs": 2,
    "train.batch_size": 64,
    "train.learning_rate": 0.005,
    "train.model.units": 32,
    "train.model.input_projection": 32,
    "export.quantize_int8": True,
    "gate.min_test_accuracy": 0.0,
}
