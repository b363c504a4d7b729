"""The local model-version history: versions/history.jsonl, appended to by each successful run.

One JSON line per run, never rewritten. A run whose version (git commit + dvc.lock output hashes
+ params) was already recorded is marked `unchanged` (same as the run before) or `restored` (an
older version came back) instead of `new`, so the history shows each model once with its runs.
`seqmnist versions list|diff` reads it; the Prefect flow publishes the same views as artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from seqmnist.errors import SeqmnistError
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
SHORT_COMMIT = 8
FLOAT_DIGITS = 4


class HistoryError(SeqmnistError):
    """The history file is unreadable, or a version reference matches nothing (or too much)."""


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


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{FLOAT_DIGITS}f}"
    return str(value)


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.{FLOAT_DIGITS}f}"


def table_rows(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per version: what the CLI prints and the Prefect table artifact shows."""
    rows = []
    for item in distinct_versions(history):
        commit = (item.get("git_commit") or "-")[:SHORT_COMMIT]
        metrics = item.get("metrics") or {}
        rows.append(
            {
                "version": item["version"],
                "first_recorded_at": item["first_recorded_at"],
                "commit": f"{commit}{'+dirty' if item.get('git_dirty') else ''}",
                "runs": item["runs"],
                **{name: metrics.get(key) for name, key in HEADLINE_METRICS.items()},
                "promoted": bool(item.get("promoted")),
            }
        )
    return rows


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as an aligned plain-text table."""
    if not rows:
        return "no versions recorded yet"
    columns = list(rows[0])
    cells = [[_fmt(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def render_diff_text(diff: Mapping[str, Any]) -> str:
    """A diff for the terminal: one changed key per line."""
    lines = [f"version {diff['from']} -> {diff['to']}"]
    old_commit, new_commit = diff["git_commit"]
    if old_commit != new_commit:
        lines.append(f"git commit: {_fmt(old_commit)} -> {_fmt(new_commit)}")
    for title, section in (("params", diff["params"]), ("outputs", diff["outputs"])):
        lines.append(f"{title}:" if section else f"{title}: unchanged")
        lines += [f"  {key}: {_fmt(a)} -> {_fmt(b)}" for key, (a, b) in section.items()]
    metrics = diff["metrics"]
    lines.append("metrics:" if metrics else "metrics: unchanged")
    for key, m in metrics.items():
        lines.append(
            f"  {key}: {_fmt(m['old'])} -> {_fmt(m['new'])} {_signed(m['delta'])}".rstrip()
        )
    return "\n".join(lines)


def render_diff_markdown(diff: Mapping[str, Any] | None, current: Mapping[str, Any]) -> str:
    """The Prefect Markdown artifact: this version against the previously recorded one."""
    head = f"# seqmnist version `{current['version']}` ({current.get('status', STATUS_NEW)})\n"
    if current.get("gate"):
        head += f"\nGate: {current['gate']}\n"
    if diff is None:
        return head + "\nFirst recorded version: nothing to compare with.\n"
    parts = [head, f"\nCompared with previous version `{diff['from']}`.\n"]
    metrics = diff["metrics"]
    parts.append("\n## Metrics\n")
    if metrics:
        parts.append("\n| metric | previous | this | delta |\n|---|---:|---:|---:|\n")
        parts += [
            f"| {k} | {_fmt(m['old'])} | {_fmt(m['new'])} | {_signed(m['delta'])} |\n"
            for k, m in metrics.items()
        ]
    else:
        parts.append("\nunchanged\n")
    for title, section in (("Params", diff["params"]), ("Outputs", diff["outputs"])):
        parts.append(f"\n## {title}\n")
        if section:
            parts.append("\n| key | previous | this |\n|---|---|---|\n")
            parts += [f"| {k} | {_fmt(a)} | {_fmt(b)} |\n" for k, (a, b) in section.items()]
        else:
            parts.append("\nunchanged\n")
    return "".join(parts)


def previous_version(
    history: Sequence[Mapping[str, Any]], version: str
) -> Mapping[str, Any] | None:
    """The latest recorded run of a version other than `version` (what a new run is compared to)."""
    for run in reversed(history):
        if run["version"] != version:
            return run
    return None


def _diff_refs(history: Sequence[Mapping[str, Any]], refs: Sequence[str]) -> dict[str, Any]:
    versions = distinct_versions(history)
    if len(refs) > 2:
        raise HistoryError(f"diff takes at most two versions, got {len(refs)}")
    if len(refs) == 2:
        return diff_versions(find_version(history, refs[0]), find_version(history, refs[1]))
    if len(refs) == 1:
        return diff_versions(find_version(history, refs[0]), versions[-1] if versions else {})
    if len(versions) < 2:
        raise HistoryError(f"need two recorded versions to diff, found {len(versions)}")
    return diff_versions(versions[-2], versions[-1])


def main(args: argparse.Namespace) -> None:
    """`seqmnist versions [list|diff] [refs...] [--history PATH] [--json]`."""
    path = Path(args.history) if args.history else HISTORY_FILE
    history = load_history(path)
    if args.action == "list":
        if args.refs:
            raise HistoryError("`versions list` takes no version ids; use `versions diff A B`")
        rows = table_rows(history)
        print(json.dumps(rows, indent=2) if args.json else render_table(rows))
        return
    if not history:
        raise HistoryError(f"{path}: no versions recorded yet (run the Prefect flow first)")
    diff = _diff_refs(history, args.refs)
    print(json.dumps(diff, indent=2, default=str) if args.json else render_diff_text(diff))
