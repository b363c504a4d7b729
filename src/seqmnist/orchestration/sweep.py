"""Sweeps as DVC experiments: a grid of param overrides becomes named trials, each trial one
`dvc exp run` pushed to the git origin (`dvc exp push`: the ref to git, the data to the DVC
remote), and the sweep's table is read back from those refs, so every clone sees the same
trials. The best trial is chosen by validation loss, never by test accuracy.
"""

from __future__ import annotations

import itertools
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from seqmnist.errors import ConfigError, OrchestrationError
from seqmnist.orchestration import runner
from seqmnist.paths import PARAMS_FILE
from seqmnist.registry import git, history
from seqmnist.registry.git import GIT_TIMEOUT_S

# The table's metric columns. The best trial is the lowest `val_loss` (the best epoch's, as
# train records it); test accuracy is reported, never used to choose.
METRIC_COLUMNS = {
    "val_loss": "dvclive/train/metrics.json:best_val_loss",
    "val_accuracy": "dvclive/train/metrics.json:val.accuracy",
    "test_accuracy": "metrics/evaluate.json:accuracy",
}
SELECTION_COLUMN = "val_loss"
WORKER_ENV = "SEQMNIST_WORKER"  # a worker's name in the sweep table (default: the host name)
EXP_REFS = "refs/exps"
SWEEP_ID_FORMAT = "sweep-%Y%m%d-%H%M%S"
# DVC experiment names are git ref components; ours are `<sweep id>-<trial index>`.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Trial:
    """One experiment of a sweep: its DVC experiment name and its `-S` overrides."""

    name: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Experiment:
    """A pushed experiment as the git origin lists it."""

    name: str
    baseline: str  # the commit it was run on
    commit: str  # the experiment's own commit (params, dvc.lock, metrics)


def new_sweep_id(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime(SWEEP_ID_FORMAT)


def _split(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ConfigError(f"{flag} {item!r}: expected key=value, e.g. train.units=64,128")
    return key.strip(), value.strip()


def expand_grid(grid: Sequence[str]) -> list[tuple[str, ...]]:
    """`["train.units=64,128", "train.dropout=0.2,0.3"]` -> the 4 combinations, in order."""
    axes = []
    for item in grid:
        key, values = _split(item, "--grid")
        axes.append([f"{key}={value.strip()}" for value in values.split(",") if value.strip()])
    return [tuple(combo) for combo in itertools.product(*axes)] if axes else []


def plan(
    sweep_id: str, grid: Sequence[str] = (), trials: Sequence[str] = (), fixed: Sequence[str] = ()
) -> list[Trial]:
    """The sweep's trials: the grid's combinations, then each `--trial` list, plus `--set`s.

    `trials` items are space-separated overrides ("train.units=64 train.layers=2").
    """
    if not NAME_PATTERN.match(sweep_id):
        raise ConfigError(f"sweep id {sweep_id!r}: expected lowercase letters, digits and -")
    for item in fixed:
        _split(item, "--set")
    combos = expand_grid(grid)
    for item in trials:
        combos.append(tuple(f"{k}={v}" for k, v in (_split(o, "--trial") for o in item.split())))
    if not combos:
        raise ConfigError("a sweep needs at least one --grid or --trial")
    return [
        Trial(name=f"{sweep_id}-{index}", overrides=(*fixed, *combo))
        for index, combo in enumerate(combos)
    ]


def validate(root: Path, trials: Sequence[Trial]) -> None:
    """Apply each trial's overrides to a copy of params.yaml before any trial is submitted, so
    a typo fails here, naming the trial, not on a worker an hour later. DVC rejects unknown
    keys; seqmnist's schema then checks types and values (a project whose params.yaml is not
    seqmnist's, like the tests' toy pipeline, gets DVC's key check only)."""
    from seqmnist.config import load_params
    from seqmnist.orchestration.dvc import apply_param_overrides

    try:
        load_params(root / PARAMS_FILE)
        typed = True
    except ConfigError:
        typed = False
    with tempfile.TemporaryDirectory(prefix="seqmnist-sweep-") as scratch:
        copy = Path(scratch) / PARAMS_FILE.name
        for trial in trials:
            shutil.copyfile(root / PARAMS_FILE, copy)
            try:
                apply_param_overrides(Path(scratch), trial.overrides)
                if typed:
                    load_params(copy)
            except ConfigError as exc:
                where = f"trial {trial.name} ({' '.join(trial.overrides)})"
                raise ConfigError(f"{where}: {exc}") from None


def pushed_experiments(root: Path, remote: str, prefix: str = "") -> dict[str, Experiment]:
    """Experiments on the git remote (one `git ls-remote`), by name, optionally by prefix."""
    listed = git.git(root, "ls-remote", remote, f"{EXP_REFS}/*").stdout
    found = {}
    for line in listed.splitlines():
        commit, ref = line.split("\t")
        parts = ref.split("/")  # refs/exps/<baseline[:2]>/<baseline[2:]>/<name>
        if len(parts) == 5 and parts[4].startswith(prefix):
            found[parts[4]] = Experiment(parts[4], parts[2] + parts[3], commit)
    return found


def fetch_experiments(root: Path, remote: str) -> None:
    """Bring the remote's experiment refs (git objects only, no data) into this clone."""
    git.git(root, "fetch", "--quiet", remote, f"+{EXP_REFS}/*:{EXP_REFS}/*")


def check_out_baseline(root: Path, remote: str, baseline: str) -> None:
    """Put the trial's clone on the sweep's commit (the deployment cloned the branch tip)."""
    if git.head(root) == baseline:
        return
    if git.git(root, "cat-file", "-e", f"{baseline}^{{commit}}", check=False).returncode:
        shallow = git.git(root, "rev-parse", "--is-shallow-repository").stdout.strip() == "true"
        git.git(root, "fetch", "--quiet", *(["--unshallow"] if shallow else []), remote)
    git.git(root, "checkout", "--quiet", "--detach", baseline)


def rows(root: Path, experiments: Sequence[Experiment]) -> list[dict[str, Any]]:
    """One row per experiment: the params any trial changed against its baseline, and the
    metrics, from the experiment commits' own files (`fetch_experiments` brought them in)."""
    records, changed_keys = [], set()
    for exp in sorted(experiments, key=_trial_order):
        record = history.commit_record(root, exp.commit)
        base = history.commit_record(root, exp.baseline)["params"]
        changed_keys |= {k for k, v in record["params"].items() if base.get(k) != v}
        records.append((exp, record))
    return [
        {
            "trial": exp.name,
            **{key: record["params"].get(key) for key in sorted(changed_keys)},
            **{column: record["metrics"].get(key) for column, key in METRIC_COLUMNS.items()},
            "commit": exp.commit[:7],
        }
        for exp, record in records
    ]


def _trial_order(exp: Experiment) -> tuple[str, int]:
    stem, _, index = exp.name.rpartition("-")
    return (stem, int(index)) if index.isdigit() else (exp.name, -1)


def best(table: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial with the lowest validation loss (trials without one are never chosen)."""
    scored = [row for row in table if isinstance(row.get(SELECTION_COLUMN), float)]
    return min(scored, key=lambda row: row[SELECTION_COLUMN]) if scored else None


def require_pushed(root: Path, remote: str, commit: str) -> None:
    """Trials clone the remote: the sweep's commit must be there."""
    git.git(root, "fetch", "--quiet", remote)
    branches = git.git(root, "branch", "--remotes", "--contains", commit, check=False).stdout
    if not any(line.strip().startswith(f"{remote}/") for line in branches.splitlines()):
        raise OrchestrationError(
            f"commit {commit[:7]} is not on git remote {remote!r}: push it first "
            "(the trials run on workers that clone the remote)"
        )


def baseline(root: Path, remote: str) -> str:
    """The commit the sweep's trials run on: this checkout's, once it is on the remote."""
    commit = git.head(root)
    require_pushed(root, remote, commit)
    return commit


def _dvc(root: Path, args: Sequence[str], timeout_s: float, hint: str, on_line=None) -> float:
    """Run `dvc <args>` in `root`; return its seconds, or raise naming the command and `hint`."""
    result = runner.run_command(runner.dvc(*args), root, timeout_s, on_line)
    if result.timed_out or result.returncode != 0:
        outcome = "timed out" if result.timed_out else f"exited with code {result.returncode}"
        raise OrchestrationError(f"`dvc {' '.join(args)}` {outcome}: {hint}\n{result.log_tail}")
    return result.duration_s


def run_experiment(
    root: Path, name: str, overrides: Sequence[str], timeout_s: float, on_line=None
) -> float:
    """`dvc exp run -n <name> -S ...` in this clone; return its seconds."""
    set_params = [arg for override in overrides for arg in ("-S", override)]
    args = ("exp", "run", "--name", name, *set_params)
    return _dvc(root, args, timeout_s, f"trial {name} did not finish", on_line)


def push_experiment(root: Path, remote: str, name: str) -> float:
    """`dvc exp push`: the experiment's ref to the git remote, its data to the DVC remote."""
    hint = f"could not push trial {name} to git remote {remote!r} and the DVC remote"
    return _dvc(root, ("exp", "push", remote, name), GIT_TIMEOUT_S, hint)


def apply_experiment(root: Path, remote: str, name: str) -> None:
    """Bring a pushed experiment into this workspace (its params, dvc.lock and outputs), so
    the pipeline publishes it without training it again."""
    hint = f"is {name!r} an experiment pushed to git remote {remote!r}?"
    for args in (("exp", "pull", remote, name), ("exp", "apply", name)):
        _dvc(root, args, GIT_TIMEOUT_S, hint)


def table(
    root: Path, remote: str, sweep_id: str, where: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The sweep's trials as the remote has them, with where each ran (`where`: by trial, the
    timing a trial reported, or the exception it ended with)."""
    fetch_experiments(root, remote)
    found = pushed_experiments(root, remote, prefix=f"{sweep_id}-")
    out = rows(root, list(found.values()))
    for row in out:
        extra = (where or {}).get(row["trial"])
        if isinstance(extra, dict):
            row.update(extra)
    return out
