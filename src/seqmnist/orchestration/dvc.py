"""The one adapter to DVC's Python internals: project root, stage graph, lock hashes, params,
metrics, status, remotes and `-S` overrides. Everything else in seqmnist talks to DVC through
these functions or through the `dvc` command line (seqmnist.orchestration.runner).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def stage_order(root: Path, targets: Sequence[str] | None = None) -> list[str]:
    """Stages in dependency order from DVC's graph; with `targets`, those plus what they need.

    Ties (e.g. `evaluate` and `export`, which both only need `train`) keep dvc.yaml's order, so
    the order is stable from run to run.
    """
    import networkx as nx

    with _open_repo(root) as repo:
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


def stale_stages(root: Path) -> list[str]:
    """Stages whose outputs are out of date (what `dvc status` lists), by name."""
    with _open_repo(root) as repo:
        # Keys look like `dvc.yaml:export`, relative to the current folder.
        return sorted(address.rsplit(":", 1)[-1] for address in repo.status())


def default_remote(root: Path) -> str | None:
    """The DVC remote `dvc pull`/`dvc push` would use, or None when none is configured."""
    with _open_repo(root) as repo:
        return repo.config["core"].get("remote") or None


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


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys, so versions can be compared key by key."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def read_output_hashes(root: Path) -> dict[str, str]:
    """Content hashes of the cached data and model outputs, as dvc.lock records them."""
    hashes: dict[str, str] = {}
    with _open_repo(root) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                if out.use_cache and out.hash_info and out.hash_info.value:
                    hashes[str(out.def_path)] = str(out.hash_info.value)
    return dict(sorted(hashes.items()))


def read_metrics(root: Path) -> dict[str, float]:
    """Every numeric metric DVC tracks, keyed `file:dotted.key` so files never collide."""
    with _open_repo(root) as repo:
        shown = repo.metrics.show(on_error="return")
    # Without revs DVC shows only the workspace, under a single key.
    workspace = next(iter(shown.values()), {})
    files = workspace.get("data", {})
    metrics: dict[str, float] = {}
    for file_name, content in files.items():
        for key, value in flatten(content.get("data") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[f"{Path(file_name).as_posix()}:{key}"] = float(value)
    return dict(sorted(metrics.items()))


def read_params(root: Path) -> dict[str, Any]:
    """All params DVC tracks for this workspace, flattened to dotted keys."""
    import dvc.api

    return dict(sorted(flatten(dvc.api.params_show(repo=str(root))).items()))
