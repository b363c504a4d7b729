import itertools

import keras
import numpy as np
import pytest

from seqmnist.config import ModelParams
from seqmnist.modeling.model import build_model

COMBINATIONS = list(itertools.product(["lstm", "gru", "simple_rnn"], [1, 2], [False, True]))


@pytest.mark.parametrize(("cell", "layers", "bidirectional"), COMBINATIONS)
def test_every_cell_layers_and_direction_builds_logits(cell, layers, bidirectional):
    params = ModelParams(
        cell=cell, units=8, layers=layers, bidirectional=bidirectional, input_projection=6
    )
    model = build_model(params, time_steps=5, features=7, num_classes=10)
    assert model.input_shape == (None, 5, 7)
    assert model.output_shape == (None, 10)
    logits = model.predict(np.zeros((3, 5, 7), np.float32), verbose=0)
    assert logits.shape == (3, 10)
    recurrent = [layer for layer in model.layers if cell in layer.name]
    assert len(recurrent) == layers


def test_projection_and_dropout_are_optional_layers():
    bare = build_model(ModelParams(input_projection=None, units=4), 3, 3)
    full = build_model(ModelParams(input_projection=8, dropout=0.2, units=4, layers=2), 3, 3)
    assert not any(layer.name == "row_projection" for layer in bare.layers)
    names = [layer.name for layer in full.layers]
    assert "row_projection" in names
    assert names.count("dropout_0") == 1 and "dropout_1" in names


@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_follows_each_recurrent_layer_and_acts_in_training_only(bidirectional):
    """Dropout between the recurrent layers and before the classifier, at `dropout`'s rate."""
    params = ModelParams(
        units=6, layers=2, dropout=0.4, input_projection=None, bidirectional=bidirectional
    )
    model = build_model(params, time_steps=4, features=3)
    recurrent = "Bidirectional" if bidirectional else "LSTM"
    kinds = [type(layer).__name__ for layer in model.layers[1:]]
    assert kinds == [recurrent, "Dropout", recurrent, "Dropout", "Dense"]
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [
        0.4,
        0.4,
    ]
    rows = np.random.default_rng(0).uniform(0, 1, (64, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(rows, training=False), model(rows, training=False))
    assert not np.allclose(model(rows, training=True), model(rows, training=False))

    without = build_model(params.model_copy(update={"dropout": 0.0}), 4, 3)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in without.layers)


@pytest.mark.parametrize(
    ("cell", "layers", "bidirectional"), [("lstm", 1, False), ("gru", 2, True)]
)
def test_unrolled_and_rolled_models_compute_the_same_function(cell, layers, bidirectional):
    params = ModelParams(
        cell=cell, units=8, layers=layers, bidirectional=bidirectional, input_projection=6
    )
    rolled = build_model(params, time_steps=5, features=7)
    unrolled = build_model(params, time_steps=5, features=7, unroll=True)
    unrolled.set_weights(rolled.get_weights())
    rows = np.random.default_rng(0).uniform(0, 1, (4, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(unrolled(rows), rolled(rows), atol=1e-6)
    assert all(getattr(layer, "unroll", True) for layer in unrolled.layers if cell in layer.name)
