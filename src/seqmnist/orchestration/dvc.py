"""The one adapter to DVC's Python internals: project root, stage graph, lock hashes, params,
metrics, status, remotes and `-S` overrides. Everything else in seqmnist talks to DVC through
these functions or through the `dvc` command line (seqmnist.orchestration.runner).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from seqmnist.errors import ConfigError, OrchestrationError
from seqmnist.paths import PARAMS_FILE


def find_project_root(start: Path | str | None = None) -> Path:
    """The DVC project holding `start` (default: the current folder), found the way `dvc` does."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Path(Repo.find_root(str(start) if start is not None else None)).resolve()
    except NotDvcRepoError:
        where = Path(start or ".").resolve()
        raise OrchestrationError(f"{where} is not inside a DVC project (no .dvc/ found)") from None


def _open_repo(root: Path):
    from dvc.repo import Repo

    return Repo(str(root))


def _stage_file_order(root: Path) -> list[str]:
    data = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    return list(data.get("stages", {}))


@dataclass(frozen=True)
class Plan:
    """What a run will do: the stages in order, those `dvc status` finds out of date, and the
    DVC remote `dvc pull`/`dvc push` would use (None: none configured)."""

    order: list[str]
    stale: frozenset[str]
    remote: str | None = None


# What an early plan must find unchanged: the stage graph, its lock, its params, DVC's config.
PLAN_INPUTS = ("dvc.yaml", "dvc.lock", str(PARAMS_FILE), ".dvc/config", ".dvc/config.local")
EARLY_PLAN_TIMEOUT_S = 60
_early: dict[tuple[Path, tuple[str, ...]], tuple[subprocess.Popen, list]] = {}


def _inputs_state(root: Path) -> list:
    """(size, mtime_ns, inode) of each of PLAN_INPUTS, None where it is missing."""
    state = []
    for name in PLAN_INPUTS:
        try:
            info = (root / name).stat()
            state.append([info.st_size, info.st_mtime_ns, info.st_ino])
        except FileNotFoundError:
            state.append(None)
    return state


def start_planning(root: Path, targets: Sequence[str] | None = None) -> None:
    """Ask DVC for `plan(root, targets)` in a child process, on another core, while this one
    goes on (`seqmnist flow run` imports Prefect meanwhile, ~1 s). `early_plan` takes its
    answer when the stage graph, lock and params are as they were when it started."""
    command = [sys.executable, "-m", __name__, str(root), *(targets or ())]
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )  # fmt: skip
    _early[(root, tuple(targets or ()))] = (child, _inputs_state(root))


def early_plan(root: Path, targets: Sequence[str] | None = None) -> Plan | None:
    """The plan `start_planning` asked for, if it succeeded and PLAN_INPUTS are unchanged
    since; else None (then call `plan`). Call it holding the workspace
    lock, so that no other flow run changes the workspace between the answer and its use."""
    started = _early.pop((root, tuple(targets or ())), None)
    if started is None:
        return None
    child, inputs = started
    try:
        out, _ = child.communicate(timeout=EARLY_PLAN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return None
    if child.returncode != 0 or _inputs_state(root) != inputs:
        return None
    try:  # the answer is the last line: anything a library printed before it is not
        answer = json.loads(out.strip().splitlines()[-1])
        return Plan(answer["order"], frozenset(answer["stale"]), answer["remote"])
    except (ValueError, IndexError, KeyError, TypeError):
        return None


def plan(root: Path, targets: Sequence[str] | None = None) -> Plan:
    """The stages in dependency order from DVC's graph (with `targets`: those plus what they
    need) and what `dvc status` finds stale, from one look at the repository.

    Ties (e.g. `evaluate` and `export`, which both only need `train`) keep dvc.yaml's order, so
    the order is stable from run to run. DVC's own errors (a dvc.yaml or params.yaml it cannot
    read) come back naming the project.
    """
    from dvc.exceptions import DvcException

    try:
        with _open_repo(root) as repo:
            return Plan(
                _order(repo, root, targets), frozenset(_stale(repo)), _remote(repo)
            )  # fmt: skip
    except DvcException as error:
        raise OrchestrationError(f"DVC cannot plan the run in {root}: {error}") from error


def stale_stages(root: Path) -> list[str]:
    """Stages whose outputs are out of date (what `dvc status` lists), by name."""
    with _open_repo(root) as repo:
        return _stale(repo)


def _order(repo, root: Path, targets: Sequence[str] | None) -> list[str]:
    import networkx as nx

    graph = repo.index.graph
    by_name = {stage.name: stage for stage in graph.nodes}
    unknown = sorted(set(targets or ()) - set(by_name))
    if unknown:
        raise OrchestrationError(
            f"unknown stage(s) {', '.join(unknown)}; dvc.yaml has: {', '.join(by_name)}"
        )
    wanted = set(by_name) if not targets else set(targets)
    for name in list(wanted):
        # DVC's edges point from a stage to the stages it depends on.
        wanted |= {dep.name for dep in nx.descendants(graph, by_name[name])}
    file_order = {name: index for index, name in enumerate(_stage_file_order(root))}
    upstream_first = nx.reverse_view(graph).subgraph(by_name[name] for name in wanted)
    ordered = nx.lexicographical_topological_sort(
        upstream_first, key=lambda stage: f"{file_order.get(stage.name, 0):06d}"
    )
    return [stage.name for stage in ordered]


def _stale(repo) -> list[str]:
    # Keys look like `dvc.yaml:export`, relative to the current folder.
    return sorted(address.rsplit(":", 1)[-1] for address in repo.status())


def _remote(repo) -> str | None:
    return repo.config["core"].get("remote") or None


def default_remote(root: Path) -> str | None:
    """The DVC remote `dvc pull`/`dvc push` would use, or None when none is configured."""
    with _open_repo(root) as repo:
        return _remote(repo)


def apply_param_overrides(root: Path, overrides: Sequence[str]) -> None:
    """Write `key=value` overrides into params.yaml exactly as `dvc exp run -S` does.

    The workspace keeps them (see `git diff params.yaml`), DVC sees the changed params, and
    dvc.lock records them, so the run and its version are reproducible from the files alone.
    """
    if not overrides:
        return
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise ConfigError(f"overrides must look like key=value, e.g. train.epochs=2; got {bad}")
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    try:
        apply_overrides(root / PARAMS_FILE, list(overrides))
    except InvalidArgumentError as exc:
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"invalid override in {list(overrides)}{cause}") from None


if __name__ == "__main__":  # start_planning's child: `python -m ... ROOT [TARGET ...]`
    answer = plan(Path(sys.argv[1]), sys.argv[2:] or None)
    print(json.dumps({**vars(answer), "stale": sorted(answer.stale)}))
