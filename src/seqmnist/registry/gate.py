"""The quality gate: a version replaces the promoted one only if it is good enough.

The gate reads only params.yaml's `gate` section, so it never depends on the stages' params.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqmnist.config import GateParams, load_section
from seqmnist.paths import EVAL_METRICS, PARAMS_FILE

GATE_METRICS_FILE = EVAL_METRICS
GATE_METRIC = "accuracy"


@dataclass(frozen=True)
class GateDecision:
    """Whether a version may replace the promoted model, and why (shown as the flow's state).

    `blocked` is True only when the gate rejected the model; a run that was never meant to
    produce a promotable model (a subset of stages left others stale) is neither.
    """

    promote: bool
    reason: str
    blocked: bool = False


def load_gate_params(root: Path) -> GateParams:
    """Only the `gate` section of params.yaml: the gate must not depend on the stages' params."""
    return load_section(root / PARAMS_FILE, "gate", GateParams)


def gate_metric_key() -> str:
    """The metric the gate compares, in the `file:key` form version records use."""
    return f"{GATE_METRICS_FILE.as_posix()}:{GATE_METRIC}"


def gate_decision(
    metrics: Mapping[str, float], gate: GateParams, promoted: Mapping[str, Any] | None
) -> GateDecision:
    """Promote only above the absolute floor and not much worse than the promoted model."""
    key = gate_metric_key()
    accuracy = metrics.get(key)
    if accuracy is None:
        return GateDecision(False, f"not promoted: no {key} metric (did `evaluate` run?)", True)
    if accuracy < gate.min_test_accuracy:
        return GateDecision(
            False,
            f"not promoted: test accuracy {accuracy:.4f} is below "
            f"gate.min_test_accuracy {gate.min_test_accuracy:.4f}",
            True,
        )
    if promoted is not None and promoted.get("accuracy") is not None:
        floor = float(promoted["accuracy"]) - gate.max_regression
        if accuracy < floor:
            return GateDecision(
                False,
                f"not promoted: test accuracy {accuracy:.4f} regresses more than "
                f"gate.max_regression {gate.max_regression:.4f} from promoted version "
                f"{promoted.get('version')} ({float(promoted['accuracy']):.4f})",
                True,
            )
    return GateDecision(True, f"promoted: test accuracy {accuracy:.4f} passed the gate")
