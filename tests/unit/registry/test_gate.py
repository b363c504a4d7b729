"""The quality gate and promotion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqmnist.config import GateParams
from seqmnist.errors import OrchestrationError
from seqmnist.registry import gate

ACCURACY = gate.gate_metric_key()


@pytest.mark.parametrize(
    ("accuracy", "promoted_accuracy", "promote", "reason"),
    [
        (0.995, None, True, "passed"),
        (0.98, None, False, "below gate.min_test_accuracy"),
        (0.995, 0.996, True, "passed"),
        (0.992, 0.996, False, "regresses"),
        (None, None, False, "no metrics/evaluate.json:accuracy"),
    ],
)
def test_gate(
    accuracy: float | None, promoted_accuracy: float | None, promote: bool, reason: str
) -> None:
    params = GateParams(min_test_accuracy=0.99, max_regression=0.002)
    metrics = {} if accuracy is None else {ACCURACY: accuracy}
    promoted = (
        None if promoted_accuracy is None else {"version": "v0", "accuracy": promoted_accuracy}
    )
    decision = gate.gate_decision(metrics, params, promoted)
    assert decision.promote is promote and decision.blocked is not promote
    assert reason in decision.reason


def test_promote_writes_model_card_and_pointer(tmp_path: Path) -> None:
    (tmp_path / "models/onnx").mkdir(parents=True)
    (tmp_path / "models/onnx/model.onnx").write_bytes(b"onnx")
    (tmp_path / "models/onnx/MODEL_CARD.md").write_text("# card")
    record = {"version": "v1", "metrics": {ACCURACY: 0.99}, "git_commit": "abc"}
    folder = gate.promote(tmp_path, record)
    assert (folder / "model.onnx").read_bytes() == b"onnx"
    assert (folder / "MODEL_CARD.md").read_text() == "# card"
    pointer = json.loads((folder / "version.json").read_text())
    assert pointer["version"] == "v1" and pointer["accuracy"] == 0.99
    assert gate.read_promoted(tmp_path) == pointer
    assert sorted(p.name for p in folder.iterdir()) == [
        "MODEL_CARD.md",
        "model.onnx",
        "version.json",
    ]


def test_promote_without_export_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OrchestrationError, match="did `export` run"):
        gate.promote(tmp_path, {"version": "v1", "metrics": {}})
