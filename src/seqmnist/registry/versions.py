"""Model versions: their ids, the history of runs that produced them, and diffs between two.

A version id is a hash of content, not of a commit: dvc.lock's data and model hashes plus the
params. Committing dvc.lock after a run therefore does not make the same model a new version;
the commit is kept in the record as provenance. A run whose version was already recorded is
marked `unchanged` (same as the run before) or `restored` (an older version came back).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from seqmnist.errors import HistoryError
from seqmnist.paths import VERSIONS_FILE

HISTORY_FILE = VERSIONS_FILE
STATUS_NEW = "new"
STATUS_UNCHANGED = "unchanged"
STATUS_RESTORED = "restored"
# Metrics worth a column in tables; every metric is still compared by `diff`.
HEADLINE_METRICS = {
    "accuracy": "metrics/evaluate.json:accuracy",
    "loss": "metrics/evaluate.json:loss",
}
VERSION_ID_LENGTH = 12


def version_id(outputs: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """A short id that changes exactly when a data/model output or a param changes.

    Content, not commit: committing dvc.lock after a run does not make the same model a new
    version. The commit is kept in the record as provenance.
    """
    payload = json.dumps(
        {"outputs": dict(outputs), "params": dict(params)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:VERSION_ID_LENGTH]


def load_history(path: Path = HISTORY_FILE) -> list[dict[str, Any]]:
    """Every recorded run, oldest first; an absent file is an empty history."""
    path = Path(path)
    if not path.exists():
        return []
    runs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            runs.append(json.loads(line))
        except ValueError as exc:
            raise HistoryError(f"{path}:{number}: not a JSON record: {exc}") from None
    return runs


def run_status(history: Sequence[Mapping[str, Any]], version: str) -> str:
    """`new` the first time a version is seen; otherwise whether it is a repeat or a return."""
    if not any(run["version"] == version for run in history):
        return STATUS_NEW
    return STATUS_UNCHANGED if history[-1]["version"] == version else STATUS_RESTORED


def append_run(path: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """Append one run (with its status) to the history; earlier lines are never touched."""
    path = Path(path)
    entry = {**record, "status": run_status(load_history(path), record["version"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return entry


def distinct_versions(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per version (its latest run), ordered by first appearance, with a run count."""
    latest: dict[str, dict[str, Any]] = {}
    first_seen: dict[str, str] = {}
    runs: dict[str, int] = {}
    for run in history:
        version = run["version"]
        first_seen.setdefault(version, run.get("recorded_at", ""))
        runs[version] = runs.get(version, 0) + 1
        latest[version] = dict(run)
    return [
        {**run, "first_recorded_at": first_seen[version], "runs": runs[version]}
        for version, run in latest.items()
    ]


def find_version(history: Sequence[Mapping[str, Any]], ref: str) -> dict[str, Any]:
    """The version whose id starts with `ref`; errors say what exists."""
    versions = distinct_versions(history)
    matches = [item for item in versions if item["version"].startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(item["version"] for item in versions) or "none recorded"
    problem = "matches several versions" if matches else "matches no version"
    raise HistoryError(f"{ref!r} {problem}; known versions: {known}")


def _delta(old: Any, new: Any) -> float | None:
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (old, new))
    return float(new) - float(old) if numeric else None


def diff_versions(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What changed from `old` to `new`: params, metrics (with deltas), outputs and commit."""

    def changed(section: str) -> dict[str, list[Any]]:
        before, after = old.get(section) or {}, new.get(section) or {}
        keys = sorted(set(before) | set(after))
        return {k: [before.get(k), after.get(k)] for k in keys if before.get(k) != after.get(k)}

    metrics = {
        key: {"old": a, "new": b, "delta": _delta(a, b)}
        for key, (a, b) in changed("metrics").items()
    }
    return {
        "from": old["version"],
        "to": new["version"],
        "git_commit": [old.get("git_commit"), new.get("git_commit")],
        "params": changed("params"),
        "metrics": metrics,
        "outputs": changed("outputs"),
    }


def previous_version(
    history: Sequence[Mapping[str, Any]], version: str
) -> Mapping[str, Any] | None:
    """The latest recorded run of a version other than `version` (what a new run is compared to)."""
    for run in reversed(history):
        if run["version"] != version:
            return run
    return None
