"""The model registry as git tags in GTO's format, the convention `dvc artifacts get` reads:
`seqmnist-rnn@v1.2.0` registers a version at a commit, `seqmnist-rnn#prod#3` is the third
assignment to the stage `prod`. Tags are written with GTO and read back with plain git.

Bump rule for a new version, against the latest registered one: major when the model's interface
changes (input shape or classes), minor when params or data change, patch otherwise (same
params and data, e.g. retrained after a code change). The first version is v1.0.0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from seqmnist.registry.git import git

FIRST_VERSION = (1, 0, 0)
# What makes a new version "major": the model's interface as seen downstream.
INTERFACE_PARAMS = ("train.model.cell", "train.model.bidirectional")


@dataclass(frozen=True, order=True)
class Registered:
    """One registered version: its semver, the commit it names, its tag."""

    semver: tuple[int, int, int]
    commit: str
    tag: str
    created: str

    @property
    def version(self) -> str:
        return "v{}.{}.{}".format(*self.semver)


def _tags(root: Path, pattern: str) -> list[tuple[str, str, str]]:
    """(tag name, commit it points at, creation date) for tags matching a glob."""
    out = git(
        root,
        "for-each-ref",
        f"refs/tags/{pattern}",
        "--format=%(refname:strip=2)\t%(*objectname)%(objectname)\t%(creatordate:iso-strict)",
    ).stdout
    rows = []
    for line in out.splitlines():
        name, objects, created = line.split("\t")
        rows.append((name, objects[:40], created))  # annotated: the commit comes first
    return rows


def registered(root: Path, artifact: str) -> list[Registered]:
    """Every registered version of `artifact`, oldest semver first."""
    pattern = re.compile(rf"^{re.escape(artifact)}@v(\d+)\.(\d+)\.(\d+)$")
    versions = []
    for name, commit, created in _tags(root, f"{artifact}@v*"):
        if match := pattern.match(name):
            semver = (int(match[1]), int(match[2]), int(match[3]))
            versions.append(Registered(semver, commit, name, created))
    return sorted(versions)


def in_stage(root: Path, artifact: str, stage: str) -> Registered | None:
    """The version most recently assigned to `stage` (the highest `#stage#N`), if any."""
    pattern = re.compile(rf"^{re.escape(artifact)}#{re.escape(stage)}#(\d+)$")
    assignments = [
        (int(match[1]), commit)
        for name, commit, _ in _tags(root, f"{artifact}#{stage}#*")
        if (match := pattern.match(name))
    ]
    if not assignments:
        return None
    commit = max(assignments)[1]
    at_commit = [item for item in registered(root, artifact) if item.commit == commit]
    return at_commit[-1] if at_commit else None


def at_commit(root: Path, artifact: str, commit: str) -> Registered | None:
    matches = [item for item in registered(root, artifact) if item.commit == commit]
    return matches[-1] if matches else None


def next_version(
    latest: Registered | None, previous_record: dict | None, record: dict
) -> tuple[int, int, int]:
    """The semver for `record`, by the bump rule in this module's docstring."""
    if latest is None or previous_record is None:
        return FIRST_VERSION
    major, minor, patch = latest.semver
    before, after = previous_record, record
    interface = any(
        before["params"].get(key) != after["params"].get(key) for key in INTERFACE_PARAMS
    )
    if interface:
        return (major + 1, 0, 0)
    data = {k: v for k, v in before["outputs"].items() if k.startswith("data/")}
    if before["params"] != after["params"] or data != {
        k: v for k, v in after["outputs"].items() if k.startswith("data/")
    }:
        return (major, minor + 1, 0)
    return (major, minor, patch + 1)


def register(root: Path, artifact: str, semver: tuple[int, int, int], commit: str) -> str:
    """Write the version tag with GTO; returns the tag's name."""
    import gto.api

    version = "v{}.{}.{}".format(*semver)
    gto.api.register(str(root), artifact, ref=commit, version=version)
    return f"{artifact}@{version}"


def assign(root: Path, artifact: str, stage: str, version: str) -> str:
    """Assign `stage` to a registered version with GTO; returns the new `#stage#N` tag."""
    import gto.api

    before = {name for name, _, _ in _tags(root, f"{artifact}#{stage}#*")}
    gto.api.assign(str(root), artifact, stage, version=version)
    (tag,) = {name for name, _, _ in _tags(root, f"{artifact}#{stage}#*")} - before
    return tag
