import numpy as np
import pytest

from seqmnist.modeling.losses import SmoothedSparseCrossentropy, training_loss


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("smoothing", [0.05, 0.1, 0.3])
def test_smoothed_loss_is_the_cross_entropy_against_soft_targets(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 10)).astype("float32") * 3
    labels = np.array([0, 3, 9, 3, 5, 1])
    targets = np.full((6, 10), smoothing / 10)
    targets[np.arange(6), labels] += 1 - smoothing
    expected = -(targets * log_softmax(logits)).sum(axis=1).mean()
    got = float(SmoothedSparseCrossentropy(smoothing)(labels, logits))
    assert got == pytest.approx(expected, rel=1e-5)


def test_no_smoothing_is_keras_sparse_cross_entropy():
    import keras

    logits = np.random.default_rng(1).normal(size=(4, 10)).astype("float32")
    labels = np.array([[2], [7], [0], [9]])  # Keras's (batch, 1) label shape, as batches give
    plain = training_loss(0.0)
    assert isinstance(plain, keras.losses.SparseCategoricalCrossentropy)
    assert float(SmoothedSparseCrossentropy(1e-12)(labels, logits)) == pytest.approx(
        float(plain(labels, logits)), rel=1e-5
    )
