"""After the stages: record the version the workspace holds, gate it, promote it if it passes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from seqmnist.orchestration.dvc import read_metrics, read_output_hashes, read_params, stale_stages
from seqmnist.provenance import git_version
from seqmnist.registry.gate import (
    GateDecision,
    gate_decision,
    load_gate_params,
    promote,
    read_promoted,
)
from seqmnist.registry.versions import (
    HISTORY_FILE,
    append_run,
    load_history,
    previous_version,
    version_id,
)


def build_version(root: Path, now: datetime | None = None) -> dict[str, Any]:
    """The record of what the workspace holds now: code, data/model hashes, params, metrics."""
    git = git_version(root)
    outputs = read_output_hashes(root)
    params = read_params(root)
    return {
        "version": version_id(outputs, params),
        "recorded_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "git_commit": git["git_commit"],
        "git_dirty": git["git_dirty"],
        "outputs": outputs,
        "params": params,
        "metrics": read_metrics(root),
    }


@dataclass(frozen=True)
class RunOutcome:
    """What a successful pipeline run produced: its history entry, the gate's verdict, the diff."""

    entry: dict[str, Any]
    decision: GateDecision
    previous: dict[str, Any] | None
    history: list[dict[str, Any]]


def decide(root: Path, record: Mapping[str, Any]) -> GateDecision:
    """Gate the workspace's version; never promote outputs DVC considers out of date."""
    stale = stale_stages(root)
    if stale:
        return GateDecision(False, f"not promoted: stages not up to date: {', '.join(stale)}")
    promoted = read_promoted(root)
    if promoted is not None and promoted.get("version") == record["version"]:
        return GateDecision(True, f"promoted: version {record['version']} already is")
    return gate_decision(record["metrics"], load_gate_params(root), promoted)


def finish_run(root: Path, run_id: str | None = None) -> RunOutcome:
    """Record the version the run left in the workspace, gate it, and promote it if it passes.

    The history line is written last, so it says whether this run promoted its model.
    """
    record = build_version(root)
    decision = decide(root, record)
    promoted = read_promoted(root)
    if decision.promote and (promoted or {}).get("version") != record["version"]:
        promote(root, record)
    history_path = root / HISTORY_FILE
    before = load_history(history_path)
    entry = append_run(
        history_path,
        {**record, "promoted": decision.promote, "gate": decision.reason, "flow_run_id": run_id},
    )
    previous = previous_version(before, record["version"])
    return RunOutcome(entry, decision, dict(previous) if previous else None, [*before, entry])
