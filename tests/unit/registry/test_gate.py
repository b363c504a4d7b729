"""The quality gate and promotion."""

from __future__ import annotations

import pytest

from seqmnist.config import GateParams
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
