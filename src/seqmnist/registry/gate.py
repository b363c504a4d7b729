"""The quality gate and promotion: a version replaces the promoted model only if it is good enough.

The gate reads only params.yaml's `gate` section, so it never depends on the stages' params.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from seqmnist.config import GateParams
from seqmnist.errors import ConfigError, OrchestrationError
from seqmnist.io import atomic_path, file_sha256, write_json
from seqmnist.paths import EVAL_METRICS, MODEL_CARD, ONNX_MODEL, PARAMS_FILE, PROMOTED_DIR

GATE_METRICS_FILE = EVAL_METRICS
GATE_METRIC = "accuracy"
PROMOTED_MODEL_NAME = ONNX_MODEL.name
PROMOTED_CARD_NAME = MODEL_CARD.name
PROMOTED_POINTER_NAME = "version.json"


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
    path = root / PARAMS_FILE
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        return GateParams.model_validate(raw.get("gate") or {})
    except ValueError as exc:
        raise ConfigError(f"{path}: invalid gate parameters: {exc}") from None


def gate_metric_key() -> str:
    """The metric the gate compares, in the `file:key` form `read_metrics` returns."""
    return f"{GATE_METRICS_FILE.as_posix()}:{GATE_METRIC}"


def read_promoted(root: Path) -> dict[str, Any] | None:
    """The pointer of the currently promoted model, or None before the first promotion."""
    pointer = root / PROMOTED_DIR / PROMOTED_POINTER_NAME
    try:
        return json.loads(pointer.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise OrchestrationError(f"{pointer} is not valid JSON: {exc}") from None


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


def _copy_atomically(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def promote(root: Path, record: Mapping[str, Any], now: datetime | None = None) -> Path:
    """Copy the exported model and card into models/promoted/, then repoint version.json.

    Each file is replaced atomically and version.json is written last, so a reader sees either
    the old or the new model, and version.json names the model whose sha256 it records.
    """
    model, card = root / ONNX_MODEL, root / MODEL_CARD
    if not model.is_file():
        raise OrchestrationError(f"cannot promote: {model} does not exist (did `export` run?)")
    target = root / PROMOTED_DIR
    target.mkdir(parents=True, exist_ok=True)
    _copy_atomically(model, target / PROMOTED_MODEL_NAME)
    if card.is_file():
        _copy_atomically(card, target / PROMOTED_CARD_NAME)
    else:
        (target / PROMOTED_CARD_NAME).unlink(missing_ok=True)
    pointer = {
        "version": record["version"],
        "accuracy": record["metrics"].get(gate_metric_key()),
        "git_commit": record.get("git_commit"),
        "recorded_at": record.get("recorded_at"),
        "promoted_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "model": PROMOTED_MODEL_NAME,
        "model_sha256": file_sha256(target / PROMOTED_MODEL_NAME),
        "source": ONNX_MODEL.as_posix(),
    }
    write_json(target / PROMOTED_POINTER_NAME, pointer)
    return target
