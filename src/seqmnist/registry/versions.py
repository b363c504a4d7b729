"""Model versions as data: content ids, lookup by version name, and diffs between two.

A content id hashes dvc.lock's data and model hashes plus the params, so the same model has the
same id whatever commit records it. Registered versions (v1.2.0) are git tags
(seqmnist.registry.tags); their records are read from git (seqmnist.registry.history).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from seqmnist.errors import HistoryError

# Metrics worth a column in tables; every metric is still compared by `diff`.
HEADLINE_METRICS = {
    "accuracy": "metrics/evaluate.json:accuracy",
    "loss": "metrics/evaluate.json:loss",
}
ID_LENGTH = 12


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


def version_id(outputs: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """A short id that changes exactly when a data/model output or a param changes."""
    payload = json.dumps(
        {"outputs": dict(outputs), "params": dict(params)}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:ID_LENGTH]


def find_version(versions: Sequence[Mapping[str, Any]], ref: str) -> Mapping[str, Any]:
    """The version named `ref` (v1.2.0, 1.2.0, or a prefix such as v1.2); errors say what exists."""
    wanted = ref if ref.startswith("v") else f"v{ref}"
    exact = [item for item in versions if item["version"] == wanted]
    matches = exact or [item for item in versions if item["version"].startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(item["version"] for item in versions) or "none registered"
    problem = "matches several versions" if matches else "matches no version"
    raise HistoryError(f"{ref!r} {problem}; registered versions: {known}")


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
        "from": old.get("version") or old.get("id"),
        "to": new.get("version") or new.get("id"),
        "git_commit": [old.get("git_commit"), new.get("git_commit")],
        "params": changed("params"),
        "metrics": metrics,
        "outputs": changed("outputs"),
    }
