"""Versions for people: the table `seqmnist versions list` prints and the Prefect flow shows,
and diffs as terminal text or Markdown.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from seqmnist.errors import HistoryError
from seqmnist.registry.versions import HEADLINE_METRICS, diff_versions, find_version

SHORT_COMMIT = 8
FLOAT_DIGITS = 4


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{FLOAT_DIGITS}f}"
    return str(value)


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.{FLOAT_DIGITS}f}"


def table_rows(versions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per registered version: what the CLI prints and the Prefect table shows."""
    rows = []
    for item in versions:
        metrics = item.get("metrics") or {}
        rows.append(
            {
                "version": item["version"],
                "registered": item.get("created", "")[:19],
                "commit": (item.get("git_commit") or "-")[:SHORT_COMMIT],
                **{name: metrics.get(key) for name, key in HEADLINE_METRICS.items()},
                "stages": ",".join(item.get("stages") or []) or "-",
            }
        )
    return rows


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as an aligned plain-text table."""
    if not rows:
        return "no versions registered yet (run the Prefect flow: `seqmnist flow run`)"
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


def render_diff_markdown(diff: Mapping[str, Any] | None, title: str, summary: str) -> str:
    """The Prefect Markdown artifact: this version against the previously registered one."""
    head = f"# seqmnist {title}\n\n{summary}\n"
    if diff is None:
        return head + "\nFirst registered version: nothing to compare with.\n"
    parts = [head, f"\nCompared with the previous version `{diff['from']}`.\n"]
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


def _diff_refs(versions: Sequence[Mapping[str, Any]], refs: Sequence[str]) -> dict[str, Any]:
    if len(refs) > 2:
        raise HistoryError(f"diff takes at most two versions, got {len(refs)}")
    if len(refs) == 2:
        return diff_versions(find_version(versions, refs[0]), find_version(versions, refs[1]))
    if len(refs) == 1:
        return diff_versions(find_version(versions, refs[0]), versions[-1])
    if len(versions) < 2:
        raise HistoryError(f"need two registered versions to diff, found {len(versions)}")
    return diff_versions(versions[-2], versions[-1])


def main(args: argparse.Namespace) -> None:
    """`seqmnist versions [list|diff] [refs...] [--json]`: read from the git tags of this clone."""
    from seqmnist.orchestration.dvc import find_project_root
    from seqmnist.registry.history import versions as registered_versions
    from seqmnist.registry.publish import load_publish_params

    root = find_project_root(args.project)
    versions = registered_versions(root, load_publish_params(root).artifact)
    if args.action == "list":
        if args.refs:
            raise HistoryError("`versions list` takes no version ids; use `versions diff A B`")
        rows = table_rows(versions)
        print(json.dumps(rows, indent=2) if args.json else render_table(rows))
        return
    diff = _diff_refs(versions, args.refs)
    print(json.dumps(diff, indent=2, default=str) if args.json else render_diff_text(diff))
