"""Our whole-sequence LSTM kernel against Keras's own LSTM and Bidirectional LSTM: same outputs,
same gradients, in either direction and stacked."""

import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from seqmnist.config import ModelParams
from seqmnist.modeling import fused_lstm
from seqmnist.modeling.fused_lstm import FusedLSTM, KernelBuildError, _ops, kernel_path
from seqmnist.modeling.model import build_model


def _random(rng, shape, scale=1.0):
    return (rng.normal(size=shape) * scale).astype(np.float32)


def _outputs_and_gradients(model, rows, upstream, weights=None):
    """The model's output and d(sum(output * upstream)) for the input and every weight (`weights`
    when the model is a function of them); None for a gradient the model does not compute."""
    rows = tf.constant(rows)
    weights = model.trainable_weights if weights is None else weights
    with tf.GradientTape() as tape:
        tape.watch(rows)  # variables are watched by default
        output = model(rows)
        loss = tf.reduce_sum(output * upstream)
    gradients = tape.gradient(loss, [rows, *weights])
    return [output.numpy()] + [None if g is None else g.numpy() for g in gradients]


def _assert_same(ours, reference):
    assert len(ours) == len(reference)
    for index, (got, want) in enumerate(zip(ours, reference, strict=True)):
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, atol=2e-6 * scale, err_msg=f"tensor {index}")


def _keras_lstm(units, return_sequences=False, bidirectional=False):
    lstm = keras.layers.LSTM(units, return_sequences=return_sequences)
    return keras.layers.Bidirectional(lstm) if bidirectional else lstm


SHAPES = pytest.mark.parametrize(
    ("batch", "steps", "features", "units", "return_sequences"),
    [
        (5, 7, 6, 4, False),
        (1, 3, 2, 3, True),  # fewer rows than threads
        (9, 28, 16, 8, True),
        (3, 1, 4, 5, False),  # one step: no recurrence
    ],
)


@SHAPES
@pytest.mark.parametrize("bidirectional", [False, True], ids=["lstm", "bidirectional"])
def test_matches_keras_lstm_outputs_and_gradients(
    batch, steps, features, units, return_sequences, bidirectional
):
    rng = np.random.default_rng(batch * 100 + steps)
    reference = _keras_lstm(units, return_sequences, bidirectional)
    ours = FusedLSTM(units, return_sequences=return_sequences, bidirectional=bidirectional)
    reference.build((batch, steps, features))
    ours.build((batch, steps, features))
    weights = [_random(rng, w.shape, 0.5) for w in reference.get_weights()]
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in weights]
    reference.set_weights(weights)
    ours.set_weights(weights)
    rows = _random(rng, (batch, steps, features))
    width = units * (2 if bidirectional else 1)
    upstream = _random(rng, (batch, steps, width) if return_sequences else (batch, width))
    _assert_same(
        _outputs_and_gradients(ours, rows, upstream),
        _outputs_and_gradients(reference, rows, upstream),
    )


@SHAPES
def test_reverse_direction_alone_matches_keras_go_backwards(
    batch, steps, features, units, return_sequences
):
    """The op reading time backwards is Keras's LSTM(go_backwards=True), whose outputs come in
    the order it reads them (the last time step first) and end at the first time step; the op
    stores each step's state at its own time index."""
    rng = np.random.default_rng(batch * 100 + steps + 1)
    reference = keras.layers.LSTM(units, return_sequences=return_sequences, go_backwards=True)
    reference.build((batch, steps, features))
    weights = [tf.Variable(_random(rng, w.shape, 0.5)) for w in reference.get_weights()]
    reference.set_weights([w.numpy() for w in weights])

    def ours(rows):
        kernel, recurrent_kernel, bias = weights
        h, _c, _gates = _ops().seqmnist_lstm_sequence(
            x=rows, kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias, reverse=True
        )
        return tf.reverse(h, axis=[1]) if return_sequences else h[:, 0, :]

    rows = _random(rng, (batch, steps, features))
    upstream = _random(rng, (batch, steps, units) if return_sequences else (batch, units))
    _assert_same(
        _outputs_and_gradients(ours, rows, upstream, weights),
        _outputs_and_gradients(reference, rows, upstream),
    )


@pytest.mark.parametrize("bidirectional", [False, True], ids=["lstm", "bidirectional"])
def test_folded_projection_matches_dense_then_lstm(bidirectional):
    """Both directions of a bidirectional layer read the one projection."""
    rng = np.random.default_rng(7)
    batch, steps, features, projection, units = 6, 9, 5, 12, 7
    reference = keras.Sequential(
        [
            keras.Input((steps, features)),
            keras.layers.Dense(projection),
            _keras_lstm(units, bidirectional=bidirectional),
        ]
    )
    ours = keras.Sequential(
        [
            keras.Input((steps, features)),
            FusedLSTM(units, input_projection=projection, bidirectional=bidirectional),
        ]
    )
    weights = [_random(rng, w.shape, 0.5) for w in reference.get_weights()]
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in weights]
    reference.set_weights(weights)
    ours.set_weights(weights)
    rows = _random(rng, (batch, steps, features))
    upstream = _random(rng, (batch, units * (2 if bidirectional else 1)))
    _assert_same(
        _outputs_and_gradients(ours, rows, upstream),
        _outputs_and_gradients(reference, rows, upstream),
    )


def _recurrent_types(model) -> list[type]:
    return [type(layer) for layer in model.layers if "lstm" in layer.name]


@pytest.mark.parametrize("bidirectional", [False, True], ids=["lstm", "bidirectional"])
def test_stacked_model_matches_keras_outputs_and_gradients(bidirectional):
    """Two layers, the first with the folded projection: every LSTM layer runs in our kernel,
    and the second layer's input gradient reaches the first layer's weights."""
    params = ModelParams(
        units=6, layers=2, input_projection=5, dropout=0.0, bidirectional=bidirectional
    )
    rng = np.random.default_rng(21)
    reference = build_model(params, time_steps=8, features=7)
    ours = build_model(params, time_steps=8, features=7, kernel=True)
    assert _recurrent_types(ours) == [FusedLSTM, FusedLSTM]
    weights = [_random(rng, w.shape, 0.5) for w in reference.get_weights()]
    reference.set_weights(weights)
    ours.set_weights(weights)
    rows, upstream = _random(rng, (5, 8, 7)), _random(rng, (5, 10))
    (output, no_input_gradient, *weight_gradients) = _outputs_and_gradients(ours, rows, upstream)
    (want_output, _input_gradient, *want_weight_gradients) = _outputs_and_gradients(
        reference, rows, upstream
    )
    assert no_input_gradient is None  # the first layer reads the data
    _assert_same([output, *weight_gradients], [want_output, *want_weight_gradients])


@pytest.mark.parametrize("readout", ["max", "mean"])
def test_pooled_readout_matches_keras_outputs_and_gradients(readout):
    """The classifier reads every step: the kernel returns the whole sequence and takes a
    gradient for every step of it."""
    params = ModelParams(
        units=6, input_projection=5, dropout=0.0, readout=readout, bidirectional=False
    )
    rng = np.random.default_rng(22)
    reference = build_model(params, time_steps=8, features=7)
    ours = build_model(params, time_steps=8, features=7, kernel=True)
    assert _recurrent_types(ours) == [FusedLSTM]
    assert ours.get_layer(f"{readout}_over_time").input.shape == (None, 8, 6)
    weights = [_random(rng, w.shape, 0.5) for w in reference.get_weights()]
    reference.set_weights(weights)
    ours.set_weights(weights)
    rows, upstream = _random(rng, (5, 8, 7)), _random(rng, (5, 10))
    (output, _, *weight_gradients) = _outputs_and_gradients(ours, rows, upstream)
    (want_output, _, *want_weight_gradients) = _outputs_and_gradients(reference, rows, upstream)
    _assert_same([output, *weight_gradients], [want_output, *want_weight_gradients])


@pytest.mark.parametrize("bidirectional", [False, True], ids=["lstm", "bidirectional"])
def test_fresh_layer_initialises_like_keras(bidirectional):
    """Forget-gate bias 1, the rest 0; orthogonal recurrent weights; in each direction."""
    layer = FusedLSTM(4, bidirectional=bidirectional)
    layer.build((None, 3, 2))
    reverse = [False, True] if bidirectional else [False]
    assert [direction.reverse for direction in layer.directions] == reverse
    for direction in layer.directions:
        bias = direction.bias.numpy()
        np.testing.assert_array_equal(bias, np.r_[np.zeros(4), np.ones(4), np.zeros(8)])
        recurrent = direction.recurrent_kernel.numpy()
        np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(4), atol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["lstm", "bidirectional"])
@pytest.mark.parametrize("layers", [1, 2])
def test_training_model_and_saved_model_compute_the_same_function(layers, bidirectional):
    params = ModelParams(
        units=8, layers=layers, input_projection=6, dropout=0.2, bidirectional=bidirectional
    )
    rolled = build_model(params, time_steps=5, features=7)
    fused = build_model(params, time_steps=5, features=7, kernel=True)
    assert _recurrent_types(fused) == [FusedLSTM] * layers
    assert "row_projection" not in [layer.name for layer in fused.layers]
    rolled.set_weights([w * 3 for w in fused.get_weights()])  # not the initial weights
    fused.set_weights(rolled.get_weights())
    rows = np.random.default_rng(0).uniform(0, 1, (4, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(fused(rows), rolled(rows), atol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["lstm", "bidirectional"])
def test_same_inputs_give_bitwise_identical_gradients(bidirectional):
    rng = np.random.default_rng(3)
    layer = FusedLSTM(16, return_sequences=True, bidirectional=bidirectional)
    layer.build((None, 10, 8))
    rows = _random(rng, (33, 10, 8))
    upstream = _random(rng, (33, 10, 16 * (2 if bidirectional else 1)))
    first = _outputs_and_gradients(layer, rows, upstream)
    second = _outputs_and_gradients(layer, rows, upstream)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_weight_shape_is_named():
    with pytest.raises(tf.errors.InvalidArgumentError, match="kernel must be"):
        _ops().seqmnist_lstm_sequence(
            x=tf.zeros([2, 3, 4]),
            kernel=tf.zeros([5, 8]),
            recurrent_kernel=tf.zeros([2, 8]),
            bias=tf.zeros([8]),
        )


@pytest.mark.parametrize("compiler", ["false", "no-such-compiler-for-seqmnist"])
def test_build_failure_names_the_source_and_the_way_out(tmp_path, monkeypatch, compiler):
    monkeypatch.setenv("SEQMNIST_KERNEL_DIR", str(tmp_path))
    with pytest.raises(KernelBuildError, match=r"lstm_sequence\.cc") as failure:
        kernel_path(compiler)
    assert "train.lstm_backend: keras" in str(failure.value)
    assert not [path for path in tmp_path.rglob("*") if path.is_file()], "nothing half-written"


def test_build_is_kept_and_reused_from_any_copy_of_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMNIST_KERNEL_DIR", str(tmp_path / "builds"))
    built = kernel_path()
    assert built.is_file() and built.is_relative_to(tmp_path / "builds")
    modified = built.stat().st_mtime_ns
    assert kernel_path() == built and built.stat().st_mtime_ns == modified
    copy = tmp_path / "clone/src/seqmnist/modeling/kernels/lstm_sequence.cc"
    copy.parent.mkdir(parents=True)
    shutil.copy(fused_lstm.SOURCE, copy)
    monkeypatch.setattr(fused_lstm, "SOURCE", copy)
    assert kernel_path() == built and built.stat().st_mtime_ns == modified
    assert [path.name for path in tmp_path.rglob("*.so")] == [built.name]


def test_layer_fed_by_data_skips_its_input_gradient():
    rng = np.random.default_rng(11)
    full, data_fed = FusedLSTM(6), FusedLSTM(6, input_gradient=False)
    full.build((None, 4, 3))
    data_fed.build((None, 4, 3))
    data_fed.set_weights(full.get_weights())
    rows, upstream = _random(rng, (5, 4, 3)), _random(rng, (5, 6))
    with_input = _outputs_and_gradients(full, rows, upstream)
    rows_tensor = tf.constant(rows)
    with tf.GradientTape() as tape:
        tape.watch(rows_tensor)
        loss = tf.reduce_sum(data_fed(rows_tensor) * upstream)
    input_gradient, *weight_gradients = tape.gradient(
        loss, [rows_tensor, *data_fed.trainable_weights]
    )
    assert input_gradient is None
    for got, want in zip(weight_gradients, with_input[2:], strict=True):
        np.testing.assert_array_equal(got.numpy(), want)


def test_training_model_starts_where_keras_would():
    """Same seed: the kernel's model has Keras's initial weights and dropout stream."""
    import keras

    from seqmnist.config import TrainParams
    from seqmnist.modeling.training import new_training_model, resolve_backend, seed_everything

    params = TrainParams(
        model=ModelParams(units=8, input_projection=6, dropout=0.3, bidirectional=False)
    )
    seed_everything(params.seed)
    fused = new_training_model(params, 5, 7, resolve_backend("kernel", params.model, []))
    seed_everything(params.seed)
    plain = new_training_model(params, 5, 7, resolve_backend("keras", params.model, []))
    assert any(isinstance(layer, FusedLSTM) for layer in fused.layers)
    assert not any(isinstance(layer, FusedLSTM) for layer in plain.layers)
    for got, want in zip(fused.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    rows = np.random.default_rng(0).uniform(0, 1, (16, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(fused(rows, training=True), plain(rows, training=True), atol=1e-5)
    assert keras.layers.Dropout in {type(layer) for layer in fused.layers}


def test_trained_through_the_kernel_the_saved_keras_model_computes_the_same_logits():
    """A stacked bidirectional model trained a few steps through our kernel and through Keras's
    layers from the same start ends with the same weights; its rolled Keras copy, what is saved
    and exported, computes the kernel-trained model's logits."""
    from seqmnist.config import TrainParams
    from seqmnist.modeling.training import (
        new_training_model,
        resolve_backend,
        rolled_copy,
        seed_everything,
    )

    params = TrainParams(
        model=ModelParams(units=8, layers=2, bidirectional=True, input_projection=6, dropout=0.3)
    )
    rng = np.random.default_rng(5)
    rows = rng.uniform(0, 1, (64, 5, 7)).astype(np.float32)
    labels = rng.integers(0, 10, 64)
    trained, start = {}, None
    for name in ("kernel", "keras"):
        seed_everything(params.seed)
        model = new_training_model(params, 5, 7, resolve_backend(name, params.model, []))
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        start = model.get_weights()
        model.fit(rows, labels, batch_size=16, shuffle=False, verbose=0)  # 4 steps
        trained[name] = model
    assert _recurrent_types(trained["kernel"]) == [FusedLSTM, FusedLSTM]
    assert FusedLSTM not in _recurrent_types(trained["keras"])
    moved = [
        np.abs(w - w0).max() for w, w0 in zip(trained["kernel"].get_weights(), start, strict=True)
    ]
    assert min(moved) > 1e-3, "every weight trained"
    kernel_trained, keras_trained = (trained[name].get_weights() for name in ("kernel", "keras"))
    for got, want in zip(kernel_trained, keras_trained, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)

    saved = rolled_copy(trained["kernel"], params, 5, 7)
    assert FusedLSTM not in _recurrent_types(saved)
    np.testing.assert_allclose(saved(rows), trained["kernel"](rows), atol=1e-5)


def test_bidirectional_kernel_model_reloads_from_a_checkpoint(tmp_path):
    """Checkpoints of the training model keep both directions' weights, in order."""
    params = ModelParams(units=6, layers=2, bidirectional=True, input_projection=5)
    model = build_model(params, time_steps=5, features=7, kernel=True)
    model.set_weights([w + 0.1 for w in model.get_weights()])  # not the initial weights
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(
        tmp_path / "model.keras", custom_objects={"FusedLSTM": FusedLSTM}
    )
    assert [layer.bidirectional for layer in reloaded.layers if isinstance(layer, FusedLSTM)] == [
        True,
        True,
    ]
    rows = np.random.default_rng(0).uniform(0, 1, (4, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(reloaded(rows), model(rows))
