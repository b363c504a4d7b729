import itertools

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


def test_lstm_defaults_avoid_recurrent_dropout():
    model = build_model(ModelParams(), 28, 28)
    lstm = model.get_layer("lstm_0")
    assert lstm.recurrent_dropout == 0


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
