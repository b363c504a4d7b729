"""Publish the version a run left in the workspace, in an order a kill -9 cannot break.

The flow pushes the outputs to the DVC remote first (flows/pipeline.py); then, here:
  1. commit dvc.lock, params.yaml and the git-tracked metrics and plots (a changed version only),
     with a message naming the version and its test accuracy;
  2. push that commit to the git remote (fetch and rebase if the branch moved, bounded);
  3. register the version: tag `<artifact>@vX.Y.Z` on it (GTO), then push the tag;
  4. gate it against the version holding the stage, and if it passes, assign the stage
     (`<artifact>#prod#N`), then push that tag.
Every step reads its starting point from git, so a rerun after a kill completes whatever the
last run did not: a tag never exists before its commit, nor is pushed before the data is.
Without a DVC remote nothing is pushed anywhere: the version is committed and tagged locally.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seqmnist.config import PublishParams, load_section
from seqmnist.errors import PublishError
from seqmnist.orchestration.dvc import stale_stages
from seqmnist.paths import PARAMS_FILE
from seqmnist.registry import git, tags
from seqmnist.registry.gate import GateDecision, gate_decision, gate_metric_key, load_gate_params
from seqmnist.registry.history import DVC_LOCK, commit_record, declared_files, workspace_record


@dataclass(frozen=True)
class Publication:
    """What publishing did: the version and its commit, the gate's verdict, what was pushed."""

    record: dict[str, Any]
    decision: GateDecision
    version: str | None = None
    commit: str | None = None
    committed: bool = False
    previous: dict[str, Any] | None = None
    tags: list[str] = field(default_factory=list)
    pushed_to: str | None = None

    @property
    def changed(self) -> bool:
        """Whether this publication committed or tagged anything."""
        return self.committed or bool(self.tags)

    @property
    def summary(self) -> str:
        if self.version is None:
            return self.decision.reason
        what = "new version" if self.committed else "version"
        where = f"pushed to {self.pushed_to}" if self.pushed_to else "local only"
        accuracy = self.record["metrics"].get(gate_metric_key())
        score = f", test accuracy {accuracy:.4f}" if accuracy is not None else ""
        return (
            f"{what} {self.version} at {self.commit[:8]}{score} ({where}); {self.decision.reason}"
        )


def load_publish_params(root: Path) -> PublishParams:
    """Only params.yaml's `publish` section (defaults where it is absent)."""
    return load_section(root / PARAMS_FILE, "publish", PublishParams)


def version_files(root: Path) -> list[str]:
    """What a version commit holds: dvc.lock, params.yaml, every `cache: false` output, and the
    .gitignore files DVC keeps beside its cached outputs."""
    cached, _, tracked = declared_files(yaml.safe_load((root / "dvc.yaml").read_text()) or {})
    ignores = {(Path(path).parent / ".gitignore").as_posix() for path in cached}
    return sorted({DVC_LOCK, str(PARAMS_FILE), *tracked, *ignores})


def _message(settings: PublishParams, semver: tuple[int, int, int], record: dict) -> str:
    accuracy = record["metrics"].get(gate_metric_key())
    score = f"test accuracy {accuracy:.4f}" if accuracy is not None else "no test accuracy"
    version = "v{}.{}.{}".format(*semver)
    return f"{settings.artifact} {version}: {score}\n\ncontent id {record['id']}"


def _gate(root: Path, settings: PublishParams, record: dict, registered) -> tuple:
    """The gate's verdict against the version holding the stage, and the stage tag if assigned."""
    holder = tags.in_stage(root, settings.artifact, settings.stage)
    if holder is not None and holder.commit == registered.commit:
        return GateDecision(True, f"{registered.version} already holds {settings.stage}"), None
    promoted = None
    if holder is not None:
        metrics = commit_record(root, holder.commit)["metrics"]
        promoted = {"version": holder.version, "accuracy": metrics.get(gate_metric_key())}
    decision = gate_decision(record["metrics"], load_gate_params(root), promoted)
    if not decision.promote:
        return decision, None
    tag = tags.assign(root, settings.artifact, settings.stage, registered.version)
    reason = f"{decision.reason}; {registered.version} assigned to {settings.stage}"
    return GateDecision(True, reason), tag


def publish(
    root: Path, dvc_remote: str | None, stale: Collection[str] | None = None
) -> Publication:
    """Commit, push, register and gate the workspace's version (see the module docstring).

    `dvc_remote` names the DVC remote the flow already pushed the outputs to (None: no remote,
    so nothing is pushed to git either). `stale`: the stages `dvc status` lists, when the caller
    knows them (nothing ran since it asked); else asked here.
    """
    settings = load_publish_params(root)
    record = workspace_record(root)
    stale = sorted(stale_stages(root) if stale is None else stale)
    if stale:
        reason = f"not published: stages not up to date: {', '.join(stale)}"
        return Publication(record, GateDecision(False, reason))
    branch = git.current_branch(root)
    if settings.branch and branch != settings.branch:
        raise PublishError(
            f"{root} is on branch {branch!r}, but publish.branch in params.yaml is "
            f"{settings.branch!r}: check out {settings.branch!r} (or set publish.branch: null)"
        )
    git.clear_dead_partial_indexes(root)  # what a publication killed mid-commit left
    push_to = (
        settings.git_remote if dvc_remote and git.has_remote(root, settings.git_remote) else None
    )

    history = tags.registered(root, settings.artifact)
    latest = history[-1] if history else None
    previous = commit_record(root, latest.commit) if latest else None
    semver = tags.next_version(latest, previous, record)
    files = version_files(root)
    committed = bool(git.changed(root, files))
    if committed:
        git.commit(root, files, _message(settings, semver, record))
    if push_to:
        git.push_branch(root, push_to, branch, settings.push_attempts)
    commit = git.head(root)

    new_tags: list[str] = []
    registered = tags.at_commit(root, settings.artifact, commit)
    if registered is None and previous is not None and previous["id"] == record["id"]:
        registered = latest  # same model as the latest version: nothing new to register
    if registered is None:
        new_tags.append(tags.register(root, settings.artifact, semver, commit))
        registered = tags.at_commit(root, settings.artifact, commit)
    if push_to:
        git.push_tags(root, push_to, [registered.tag, *new_tags])
    decision, stage_tag = _gate(root, settings, record, registered)
    if stage_tag:
        new_tags.append(stage_tag)
        if push_to:
            git.push_tags(root, push_to, [stage_tag])
    return Publication(
        record={**record, "git_commit": commit, "version": registered.version},
        decision=decision,
        version=registered.version,
        commit=commit,
        committed=committed,
        previous=_previous(root, settings.artifact, registered),
        tags=new_tags,
        pushed_to=f"{push_to} and DVC remote {dvc_remote!r}" if push_to else None,
    )


def _previous(root: Path, artifact: str, current: tags.Registered) -> dict[str, Any] | None:
    """The record of the latest version registered before `current`, for the diff."""
    earlier = [item for item in tags.registered(root, artifact) if item.semver < current.semver]
    if not earlier:
        return None
    return {**commit_record(root, earlier[-1].commit), "version": earlier[-1].version}
