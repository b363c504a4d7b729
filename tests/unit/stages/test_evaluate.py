import csv

import numpy as np
import pytest

from seqmnist.stages.evaluate import (
    classification_metrics,
    confusion_matrix,
    cross_entropy,
    most_confident_mistakes,
    softmax,
    write_confusion_csv,
    write_mistakes_grid,
)


def one_hot_logits(predicted, num_classes, scale=10.0):
    logits = np.zeros((len(predicted), num_classes))
    logits[np.arange(len(predicted)), predicted] = scale
    return logits


def test_metrics_on_known_predictions():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    metrics = classification_metrics(labels, one_hot_logits(predicted, 3), 3)
    assert metrics["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert metrics["errors"] == 2
    # class 0: tp 1, predicted 2, actual 2; class 1: tp 2, predicted 3; class 2: tp 1, predicted 1
    assert metrics["per_class"]["0"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert metrics["per_class"]["1"]["precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert metrics["per_class"]["1"]["recall"] == 1.0
    assert metrics["per_class"]["1"]["f1"] == pytest.approx(0.8, abs=1e-6)
    assert metrics["per_class"]["2"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": 0.666667,
        "support": 2,
    }
    assert metrics["macro"]["recall"] == pytest.approx((0.5 + 1 + 0.5) / 3, abs=1e-6)


def test_class_never_predicted_scores_zero_not_nan():
    labels = np.array([0, 1, 2])
    metrics = classification_metrics(labels, one_hot_logits(np.array([0, 1, 1]), 3), 3)
    assert metrics["per_class"]["2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_cross_entropy_matches_definition_and_is_stable():
    logits = np.array([[2.0, 1.0, 0.1], [1000.0, 0.0, -1000.0]])
    labels = np.array([0, 0])
    expected_first = -np.log(np.exp(2.0) / np.exp([2.0, 1.0, 0.1]).sum())
    assert cross_entropy(labels, logits) == pytest.approx(expected_first / 2)
    assert np.allclose(softmax(logits).sum(axis=1), 1.0)


def test_confusion_matrix_counts_actual_by_predicted():
    counts = confusion_matrix(np.array([0, 0, 1]), np.array([1, 0, 1]), 2)
    assert counts.tolist() == [[1, 1], [0, 1]]


def test_most_confident_mistakes_come_first():
    labels = np.array([0, 1, 2, 0])
    probabilities = np.array(
        [[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.0, 0.05, 0.95], [0.01, 0.99, 0.0]]
    )
    assert most_confident_mistakes(labels, probabilities, 5).tolist() == [3, 1]
    assert most_confident_mistakes(labels, probabilities, 1).tolist() == [3]


def test_plot_files_are_written(tmp_path):
    labels = np.array([3, 4])
    write_confusion_csv(tmp_path / "confusion.csv", labels, np.array([3, 5]))
    rows = list(csv.DictReader((tmp_path / "confusion.csv").open()))
    assert rows == [{"actual": "3", "predicted": "3"}, {"actual": "4", "predicted": "5"}]
    images = np.random.default_rng(0).uniform(size=(2, 6, 6))
    probabilities = softmax(one_hot_logits(np.array([3, 5]), 10, scale=2.0))
    write_mistakes_grid(tmp_path / "grid.png", images, labels, probabilities, np.array([1]))
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp*"))
