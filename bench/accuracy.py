"""Time to 99% accuracy with the default params, read from the train stage's DVCLive output.

Training again here would cost the whole run; the train stage already logs validation accuracy
per epoch (dvclive/train/plots/metrics/val/accuracy.tsv) and the median epoch time
(dvclive/train/metrics.json), and `evaluate` writes the final test accuracy.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from seqmnist.paths import EVAL_METRICS, TRAIN_LIVE_DIR

TARGET = 0.99
VAL_ACCURACY = TRAIN_LIVE_DIR / "plots" / "metrics" / "val" / "accuracy.tsv"
TRAIN_METRICS = TRAIN_LIVE_DIR / "metrics.json"
EPOCH_SECONDS_KEY = "median_epoch_seconds"


def run(root: Path, max_train_samples: int | None) -> dict:
    """Epochs and estimated seconds until validation accuracy first reached the target."""
    curve_path, metrics_path = root / VAL_ACCURACY, root / TRAIN_METRICS
    if not (curve_path.is_file() and metrics_path.is_file()):
        return {"status": f"not measured: no full training run ({curve_path} missing)"}
    if max_train_samples is not None:
        return {"status": f"not measured: params cap train.max_train_samples={max_train_samples}"}
    with curve_path.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    metrics = json.loads(metrics_path.read_text())
    epoch_seconds = metrics.get(EPOCH_SECONDS_KEY)
    accuracies = [float(row["accuracy"]) for row in rows]
    result: dict[str, object] = {
        "target": TARGET,
        "source": str(curve_path),
        "val_accuracy_per_epoch": accuracies,
        "median_epoch_seconds": epoch_seconds,
        "epochs_run": len(accuracies),
    }
    eval_path = root / EVAL_METRICS
    if eval_path.is_file():
        result["final_test_accuracy"] = json.loads(eval_path.read_text()).get("accuracy")
    hit = next((i for i, value in enumerate(accuracies) if value >= TARGET), None)
    if hit is None:
        result["status"] = f"validation accuracy never reached {TARGET}"
        return result
    result["status"] = "measured (single training run; seconds = epochs x median epoch time)"
    result["epochs_to_target"] = hit + 1
    if epoch_seconds:
        result["seconds_to_target"] = (hit + 1) * float(epoch_seconds)
        result["training_seconds_total"] = len(accuracies) * float(epoch_seconds)
    return result
