"""Version records: content ids, lookup by version name, diffs, and how people see them."""

from __future__ import annotations

import pytest

from seqmnist.errors import HistoryError
from seqmnist.registry import render, versions

ACCURACY = versions.HEADLINE_METRICS["accuracy"]


def record(version: str, epochs: int, accuracy: float, stages: list[str] | None = None) -> dict:
    return {
        "version": version,
        "created": f"2026-01-0{epochs}T00:00:00+00:00",
        "git_commit": f"{epochs}" * 40,
        "params": {"train.epochs": epochs, "train.seed": 42},
        "outputs": {"models/onnx": f"hash{epochs}"},
        "metrics": {ACCURACY: accuracy, "metrics/evaluate.json:loss": 1 - accuracy},
        "stages": stages or [],
    }


VERSIONS = [record("v1.0.0", 1, 0.98), record("v1.1.0", 2, 0.99, ["prod"])]


def test_content_id_changes_with_each_input():
    base = versions.version_id({"models/onnx": "1"}, {"train.epochs": 1})
    assert base == versions.version_id({"models/onnx": "1"}, {"train.epochs": 1})
    assert base != versions.version_id({"models/onnx": "2"}, {"train.epochs": 1})
    assert base != versions.version_id({"models/onnx": "1"}, {"train.epochs": 2})


def test_find_by_name_or_prefix_and_errors_say_what_exists():
    assert versions.find_version(VERSIONS, "v1.1.0")["git_commit"] == "2" * 40
    assert versions.find_version(VERSIONS, "1.0")["version"] == "v1.0.0"
    with pytest.raises(HistoryError, match=r"matches several versions; .*v1\.0\.0, v1\.1\.0"):
        versions.find_version(VERSIONS, "v1")
    with pytest.raises(HistoryError, match="matches no version"):
        versions.find_version(VERSIONS, "v9")


def test_diff_names_params_metrics_and_outputs():
    diff = versions.diff_versions(*VERSIONS)
    assert (diff["from"], diff["to"]) == ("v1.0.0", "v1.1.0")
    assert diff["params"] == {"train.epochs": [1, 2]}
    assert diff["metrics"][ACCURACY]["delta"] == pytest.approx(0.01)
    assert diff["outputs"] == {"models/onnx": ["hash1", "hash2"]}
    text = render.render_diff_text(diff)
    assert "train.epochs: 1 -> 2" in text and "+0.0100" in text
    markdown = render.render_diff_markdown(diff, "v1.1.0", "new version v1.1.0")
    assert "| train.epochs | 1 | 2 |" in markdown and "`v1.0.0`" in markdown


def test_table_shows_each_version_with_its_stages():
    rows = render.table_rows(VERSIONS)
    assert [(row["version"], row["accuracy"], row["stages"]) for row in rows] == [
        ("v1.0.0", 0.98, "-"),
        ("v1.1.0", 0.99, "prod"),
    ]
    table = render.render_table(rows).splitlines()
    assert table[0].split() == ["version", "registered", "commit", "accuracy", "loss", "stages"]
    assert "no versions registered yet" in render.render_table([])
