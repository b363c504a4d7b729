"""`evaluate` stage: score the trained model on the held-out test set, and only there.

The metric functions are pure numpy on (labels, logits), so they are tested on hand-made
predictions; `run` wires them to the model, DVC metrics and plots.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from seqmnist.config import EvaluateParams
from seqmnist.constants import NUM_CLASSES
from seqmnist.data.dataset import load_split
from seqmnist.errors import DataError
from seqmnist.io import atomic_open, write_json
from seqmnist.paths import (
    CONFUSION_CSV,
    EVAL_METRICS,
    KERAS_MODEL,
    MISCLASSIFIED_PNG,
    PER_CLASS_CSV,
    PROCESSED_DIR,
)

PREDICT_BATCH = 1024
GRID_COLUMNS = 5
log = logging.getLogger(__name__)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def cross_entropy(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean sparse categorical cross-entropy of logits, as Keras computes it."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[actual, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def classification_metrics(labels: np.ndarray, logits: np.ndarray, num_classes: int) -> dict:
    """Accuracy, loss, per-class precision/recall/F1 and their macro averages.

    A class never predicted has precision 0 (and F1 0), the convention that penalises it.
    """
    predicted = logits.argmax(axis=1)
    counts = confusion_matrix(labels, predicted, num_classes)
    true_positive = np.diag(counts).astype(np.float64)
    predicted_total = counts.sum(axis=0)
    actual_total = counts.sum(axis=1)
    precision = np.divide(
        true_positive, predicted_total, out=np.zeros(num_classes), where=predicted_total > 0
    )
    recall = np.divide(
        true_positive, actual_total, out=np.zeros(num_classes), where=actual_total > 0
    )
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0
    )
    per_class = {
        str(index): {
            "precision": round(float(precision[index]), 6),
            "recall": round(float(recall[index]), 6),
            "f1": round(float(f1[index]), 6),
            "support": int(actual_total[index]),
        }
        for index in range(num_classes)
    }
    return {
        "accuracy": round(float((predicted == labels).mean()), 6),
        "loss": round(cross_entropy(labels, logits), 6),
        "errors": int((predicted != labels).sum()),
        "samples": len(labels),
        "macro": {
            "precision": round(float(precision.mean()), 6),
            "recall": round(float(recall.mean()), 6),
            "f1": round(float(f1.mean()), 6),
        },
        "per_class": per_class,
    }


def most_confident_mistakes(
    labels: np.ndarray, probabilities: np.ndarray, count: int
) -> np.ndarray:
    """Indices of wrong predictions, most confident first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def write_confusion_csv(path: Path, labels: np.ndarray, predicted: np.ndarray) -> None:
    """One row per test image, the layout DVC's `confusion` plot template reads."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows(zip(labels.tolist(), predicted.tolist(), strict=True))
    with atomic_open(path) as handle:
        handle.write(buffer.getvalue().encode())


def headline(metrics: dict) -> dict:
    """The few numbers people compare across versions (`dvc metrics diff`, `dvc exp show`)."""
    return {
        "accuracy": metrics["accuracy"],
        "loss": metrics["loss"],
        "errors": metrics["errors"],
        "macro_f1": metrics["macro"]["f1"],
    }


def write_per_class_csv(path: Path, metrics: dict) -> None:
    """Precision, recall, F1 and support per class: a plot, not ten times four metric columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", "precision", "recall", "f1", "support"])
    for label, scores in metrics["per_class"].items():
        writer.writerow([label, *(scores[key] for key in ("precision", "recall", "f1", "support"))])
    with atomic_open(path) as handle:
        handle.write(buffer.getvalue().encode())


def write_mistakes_grid(
    path: Path, images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, indices
) -> None:
    """A PNG grid of the given test images titled 'true -> predicted (confidence)'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(indices) // GRID_COLUMNS))
    figure, axes = plt.subplots(rows, GRID_COLUMNS, figsize=(2 * GRID_COLUMNS, 2.3 * rows))
    for slot, axis in enumerate(np.atleast_1d(axes).ravel()):
        axis.axis("off")
        if slot >= len(indices):
            continue
        index = indices[slot]
        predicted = int(probabilities[index].argmax())
        axis.imshow(images[index], cmap="gray", vmin=0, vmax=1)
        axis.set_title(
            f"#{index}: {labels[index]} -> {predicted} ({probabilities[index, predicted]:.2f})",
            fontsize=9,
        )
    if not len(indices):
        figure.suptitle("no misclassified test images")
    else:
        figure.suptitle("Most confident mistakes (test #: true -> predicted (probability))")
    figure.tight_layout()
    with atomic_open(path) as handle:
        figure.savefig(handle, format="png", dpi=80)
    plt.close(figure)


def run(
    params: EvaluateParams,
    model_path: Path = KERAS_MODEL,
    processed_dir: Path = PROCESSED_DIR,
    metrics_path: Path = EVAL_METRICS,
    confusion_path: Path = CONFUSION_CSV,
    grid_path: Path = MISCLASSIFIED_PNG,
    per_class_path: Path = PER_CLASS_CSV,
) -> dict:
    """Evaluate on the test split: headline metrics, per-class scores, confusion data, mistakes."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise DataError(f"{model_path}: trained model not found; run `dvc repro train` first")
    x_test, y_test = load_split("test", processed_dir)

    import keras

    model = keras.models.load_model(model_path)
    expected = tuple(model.input_shape[1:])
    if x_test.shape[1:] != expected:
        raise DataError(
            f"{processed_dir}/test_x.npy: sequences of shape {x_test.shape[1:]} do not fit "
            f"{model_path}, which expects {expected}"
        )
    logits = np.asarray(model.predict(x_test, batch_size=PREDICT_BATCH, verbose=0), np.float64)
    metrics = classification_metrics(y_test, logits, NUM_CLASSES)
    probabilities = softmax(logits)
    predicted = probabilities.argmax(axis=1)

    write_json(Path(metrics_path), headline(metrics))
    write_per_class_csv(Path(per_class_path), metrics)
    write_confusion_csv(Path(confusion_path), y_test, predicted)
    mistakes = most_confident_mistakes(y_test, probabilities, params.misclassified_grid)
    write_mistakes_grid(Path(grid_path), x_test, y_test, probabilities, mistakes)
    log.info(
        "test accuracy %.4f (%d errors in %d), loss %.4f, macro F1 %.4f",
        metrics["accuracy"],
        metrics["errors"],
        metrics["samples"],
        metrics["loss"],
        metrics["macro"]["f1"],
    )
    return metrics
