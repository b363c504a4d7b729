"""Versions read from git, so every clone shows the same history: the record of any commit
(params, metrics, data and model hashes, from the files DVC keeps in git) and the registered
versions with the stages they hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from seqmnist.paths import PARAMS_FILE
from seqmnist.provenance import git_version
from seqmnist.registry import git
from seqmnist.registry.tags import Registered, registered
from seqmnist.registry.versions import flatten, version_id

DVC_YAML = "dvc.yaml"
DVC_LOCK = "dvc.lock"
Reader = Callable[[str], str | None]


def _entry_path(entry: Any) -> tuple[str, bool]:
    """(path, cached) of a dvc.yaml outs/metrics/plots entry."""
    if isinstance(entry, dict):
        path, options = next(iter(entry.items()))
        return str(path), (options or {}).get("cache", True) is not False
    return str(entry), True


def declared_files(dvc_yaml: dict) -> tuple[set[str], list[str], list[str]]:
    """(cached outputs, metrics files, git-tracked files) that dvc.yaml declares."""
    cached, metrics, tracked = set(), [], []
    for stage in (dvc_yaml.get("stages") or {}).values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path, is_cached = _entry_path(entry)
                if is_cached and kind == "outs":
                    cached.add(path)
                elif not is_cached:
                    tracked.append(path)
                if kind == "metrics":
                    metrics.append(path)
    return cached, metrics, tracked


def record_from(read: Reader) -> dict[str, Any]:
    """Params, metrics and output hashes as the files in one tree (workspace or commit) say."""
    dvc_yaml = yaml.safe_load(read(DVC_YAML) or "") or {}
    lock = yaml.safe_load(read(DVC_LOCK) or "") or {}
    cached, metric_files, _ = declared_files(dvc_yaml)
    outputs = {
        out["path"]: str(out.get("md5") or out.get("hash") or "")
        for stage in (lock.get("stages") or {}).values()
        for out in stage.get("outs", [])
        if out["path"] in cached
    }
    params = flatten(yaml.safe_load(read(str(PARAMS_FILE)) or "") or {})
    metrics: dict[str, float] = {}
    for name in metric_files:
        text = read(name)
        content = json.loads(text) if text else {}
        for key, value in flatten(content).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[f"{name}:{key}"] = float(value)
    outputs, params = dict(sorted(outputs.items())), dict(sorted(params.items()))
    return {
        "id": version_id(outputs, params),
        "outputs": outputs,
        "params": params,
        "metrics": dict(sorted(metrics.items())),
    }


def workspace_record(root: Path) -> dict[str, Any]:
    """The record of what the workspace holds now."""

    def read(path: str) -> str | None:
        file = root / path
        return file.read_text() if file.is_file() else None

    return {
        **record_from(read),
        **git_version(root),
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def commit_record(root: Path, commit: str) -> dict[str, Any]:
    return {**record_from(lambda path: git.show(root, commit, path)), "git_commit": commit}


def stages_by_commit(root: Path, artifact: str) -> dict[str, list[str]]:
    """Which stages each commit currently holds (the latest assignment of each stage)."""
    out = git.git(root, "tag", "--list", f"{artifact}#*").stdout.split()
    latest: dict[str, tuple[int, str]] = {}
    for tag in out:
        _, stage, number = tag.split("#")
        if number.isdigit() and (stage not in latest or int(number) > latest[stage][0]):
            latest[stage] = (int(number), tag)
    holders: dict[str, list[str]] = {}
    for stage, (_, tag) in sorted(latest.items()):
        commit = git.git(root, "rev-list", "-n", "1", tag).stdout.strip()
        holders.setdefault(commit, []).append(stage)
    return holders


def versions(root: Path, artifact: str) -> list[dict[str, Any]]:
    """Every registered version, oldest first, with its record and the stages it holds."""
    holders = stages_by_commit(root, artifact)
    return [_describe(root, item, holders) for item in registered(root, artifact)]


def _describe(root: Path, item: Registered, holders: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "version": item.version,
        "created": item.created,
        "stages": holders.get(item.commit, []),
        **commit_record(root, item.commit),
    }
