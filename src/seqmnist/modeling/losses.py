"""Label smoothing for integer labels: Keras's sparse cross-entropy has no `label_smoothing`, and
one-hot labels would change every batch, metric and the ONNX parity checks that read them."""

from __future__ import annotations

import keras

# What the smoothed runs also report, on validation too: the cross-entropy against the true
# labels, which early stopping and the recipe choices compare (train.run's val/loss).
TRUE_LABEL_LOSS = "nll"


@keras.saving.register_keras_serializable(package="seqmnist")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy on logits against (1 - smoothing) x one-hot(label) + smoothing / classes."""

    def __init__(self, smoothing: float, name: str = "smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smoothing = smoothing

    def call(self, y_true, y_pred):
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        # y_pred: (batch, classes) logits -> one-hot targets of the same shape
        targets = keras.ops.one_hot(labels, keras.ops.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(
            targets, y_pred, from_logits=True, label_smoothing=self.smoothing
        )

    def get_config(self) -> dict:
        return {**super().get_config(), "smoothing": self.smoothing}


def training_loss(smoothing: float) -> keras.losses.Loss:
    if smoothing:
        return SmoothedSparseCrossentropy(smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def loss_metrics(smoothing: float) -> list[keras.metrics.Metric]:
    """Accuracy, and the true-label cross-entropy when the training loss is smoothed."""
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if smoothing:
        metrics.append(
            keras.metrics.SparseCategoricalCrossentropy(name=TRUE_LABEL_LOSS, from_logits=True)
        )
    return metrics
