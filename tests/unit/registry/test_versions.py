"""versions/history.jsonl: append-only runs, statuses, diffs and the `seqmnist versions` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqmnist.cli import main as cli_main
from seqmnist.errors import HistoryError
from seqmnist.registry import render, versions

ACCURACY = versions.HEADLINE_METRICS["accuracy"]


def record(version: str, epochs: int, accuracy: float) -> dict:
    return {
        "version": version,
        "recorded_at": f"2025-01-0{epochs}T00:00:00+00:00",
        "git_commit": "a" * 40,
        "git_dirty": False,
        "outputs": {"models/onnx": f"hash-{version}"},
        "params": {"train.epochs": epochs, "train.seed": 42},
        "metrics": {ACCURACY: accuracy},
        "promoted": True,
    }


@pytest.fixture
def history(tmp_path: Path) -> Path:
    path = tmp_path / "versions" / "history.jsonl"
    versions.append_run(path, record("aaaa1111", 1, 0.90))
    versions.append_run(path, record("bbbb2222", 2, 0.95))
    return path


def test_statuses_new_unchanged_restored(history: Path) -> None:
    assert [run["status"] for run in versions.load_history(history)] == ["new", "new"]
    assert versions.append_run(history, record("bbbb2222", 2, 0.95))["status"] == "unchanged"
    assert versions.append_run(history, record("aaaa1111", 1, 0.90))["status"] == "restored"
    runs = versions.load_history(history)
    assert len(runs) == 4
    distinct = versions.distinct_versions(runs)
    assert [(v["version"], v["runs"]) for v in distinct] == [("aaaa1111", 2), ("bbbb2222", 2)]


def test_append_never_rewrites_earlier_lines(history: Path) -> None:
    before = history.read_text()
    versions.append_run(history, record("cccc3333", 3, 0.97))
    assert history.read_text().startswith(before)


def test_diff_reports_param_and_metric_deltas(history: Path) -> None:
    old, new = versions.distinct_versions(versions.load_history(history))
    diff = versions.diff_versions(old, new)
    assert diff["params"] == {"train.epochs": [1, 2]}
    assert diff["metrics"][ACCURACY]["delta"] == pytest.approx(0.05)
    assert diff["outputs"] == {"models/onnx": ["hash-aaaa1111", "hash-bbbb2222"]}
    markdown = render.render_diff_markdown(diff, new)
    assert "| train.epochs | 1 | 2 |" in markdown and "+0.0500" in markdown


def test_find_version_by_prefix(history: Path) -> None:
    runs = versions.load_history(history)
    assert versions.find_version(runs, "bbbb")["version"] == "bbbb2222"
    with pytest.raises(HistoryError, match="matches no version"):
        versions.find_version(runs, "zzz")


def test_corrupt_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text('{"version": "a"}\nnot json\n')
    with pytest.raises(HistoryError, match=r"history.jsonl:2"):
        versions.load_history(path)


def test_cli_list_and_diff(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["versions", "list", "--history", str(history)]) == 0
    table = capsys.readouterr().out
    assert "aaaa1111" in table and "0.9500" in table
    assert cli_main(["versions", "list", "--history", str(history), "--json"]) == 0
    assert [row["version"] for row in json.loads(capsys.readouterr().out)] == [
        "aaaa1111",
        "bbbb2222",
    ]
    assert cli_main(["versions", "diff", "--history", str(history)]) == 0
    text = capsys.readouterr().out
    assert "train.epochs: 1 -> 2" in text and "+0.0500" in text
    assert cli_main(["versions", "diff", "bbbb", "aaaa", "--history", str(history), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == {"train.epochs": [2, 1]}


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "none.jsonl"
    assert cli_main(["versions", "list", "--history", str(empty)]) == 0
    assert "no versions recorded yet" in capsys.readouterr().out
    assert cli_main(["versions", "diff", "--history", str(empty)]) == 2
    assert "no versions recorded yet" in capsys.readouterr().err


def test_version_id_changes_with_each_input() -> None:
    base = versions.version_id({"models/onnx": "1"}, {"train.epochs": 1})
    assert base == versions.version_id({"models/onnx": "1"}, {"train.epochs": 1})
    assert base != versions.version_id({"models/onnx": "2"}, {"train.epochs": 1})
    assert base != versions.version_id({"models/onnx": "1"}, {"train.epochs": 2})
