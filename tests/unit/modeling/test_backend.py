"""`train.lstm_backend`: which layers train, on machines with and without a GPU.

No GPU here can run TensorFlow for this project: the GPU side is tested with TensorFlow's device
list patched to report one, which is all `auto` reads.
"""

import logging

import keras
import pytest
import tensorflow as tf

from seqmnist.config import ModelParams, TrainParams
from seqmnist.modeling.fused_lstm import FusedLSTM
from seqmnist.modeling.model import build_model
from seqmnist.modeling.training import Backend, new_training_model, resolve_backend
from seqmnist.stages import train
from support.tiny_data import FEATURES, TIME_STEPS, train_on_tiny_data, write_processed

FAKE_GPU = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
LSTM = ModelParams(cell="lstm", units=8, input_projection=6, bidirectional=False)
LSTM_MODELS = {
    "lstm": LSTM,
    "bidirectional lstm": ModelParams(cell="lstm", units=8, input_projection=6, bidirectional=True),
    "stacked bidirectional lstm": ModelParams(cell="lstm", units=8, layers=2, bidirectional=True),
}
OTHER_MODELS = {
    "gru": ModelParams(cell="gru", units=8, bidirectional=False),
    "simple_rnn": ModelParams(cell="simple_rnn", units=8, bidirectional=False),
}


@pytest.mark.parametrize("model", LSTM_MODELS.values(), ids=LSTM_MODELS.keys())
@pytest.mark.parametrize(
    ("requested", "gpus", "name", "unroll"),
    [
        ("auto", [], "kernel", False),
        ("auto", [FAKE_GPU], "keras", False),
        ("kernel", [], "kernel", False),
        ("kernel", [FAKE_GPU], "kernel", False),
        ("keras", [], "keras", True),
        ("keras", [FAKE_GPU], "keras", False),
    ],
)
def test_lstm_backend_for_each_request_with_and_without_a_gpu(model, requested, gpus, name, unroll):
    backend = resolve_backend(requested, model, gpus)
    assert (backend.name, backend.unroll) == (name, unroll)
    assert ("1 GPU visible" if gpus else "no GPU visible") in backend.reason


@pytest.mark.parametrize("model", OTHER_MODELS.values(), ids=OTHER_MODELS.keys())
@pytest.mark.parametrize(
    ("requested", "gpus", "unroll"),
    [
        ("auto", [], True),
        ("auto", [FAKE_GPU], False),
        ("kernel", [], True),
        ("kernel", [FAKE_GPU], True),
        ("keras", [], True),
        ("keras", [FAKE_GPU], False),
    ],
)
def test_layers_our_kernel_cannot_train_go_to_keras(model, requested, gpus, unroll):
    backend = resolve_backend(requested, model, gpus)
    assert (backend.name, backend.unroll) == ("keras", unroll)
    if requested != "keras" and unroll:
        assert "our kernel trains LSTM layers only" in backend.reason


def test_backend_reads_as_the_log_line_says():
    assert str(resolve_backend("auto", LSTM, [])) == "kernel (no GPU visible)"
    assert str(resolve_backend("auto", LSTM, [FAKE_GPU])) == "keras, rolled (1 GPU visible)"
    assert str(resolve_backend("keras", LSTM, [])) == (
        "keras, unrolled (train.lstm_backend: keras, no GPU visible)"
    )


def test_kernel_form_of_a_model_it_cannot_train_is_refused():
    with pytest.raises(ValueError, match="LSTM layers only, not gru"):
        build_model(OTHER_MODELS["gru"], TIME_STEPS, FEATURES, kernel=True)


def _recurrent_layers(model) -> list:
    return [layer for layer in model.layers if "lstm" in layer.name]


@pytest.mark.parametrize(
    "backend",
    [Backend("keras", unroll=True, reason="test"), Backend("keras", unroll=False, reason="test")],
    ids=["unrolled", "rolled"],
)
def test_keras_backend_builds_keras_layers_unrolled_or_not(backend):
    params = TrainParams(model=LSTM)
    model = new_training_model(params, TIME_STEPS, FEATURES, backend)
    layers = _recurrent_layers(model)
    assert [type(layer) for layer in layers] == [keras.layers.LSTM]
    assert layers[0].unroll is backend.unroll


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return write_processed(tmp_path_factory.mktemp("processed"))


@pytest.mark.parametrize("gpu_visible", [False, True], ids=["no GPU", "fake GPU"])
def test_auto_trains_our_kernel_on_cpu_and_keras_rolled_lstm_when_a_gpu_is_visible(
    tmp_path, processed, monkeypatch, caplog, gpu_visible
):
    """Through train.run: the model it builds for `fit`, its log line and model_info.json."""
    if gpu_visible:
        real = tf.config.list_physical_devices

        def with_a_gpu(device_type=None):
            return [FAKE_GPU] if device_type == "GPU" else real(device_type)

        monkeypatch.setattr(tf.config, "list_physical_devices", with_a_gpu)
    built = []
    build = train.new_training_model

    def recording(*args):
        built.append(build(*args))
        return built[-1]

    monkeypatch.setattr(train, "new_training_model", recording)
    caplog.set_level(logging.INFO, logger="seqmnist")
    info = train_on_tiny_data(
        tmp_path, processed, epochs=1, warmup_epochs=0, batch_size=50, model=LSTM.model_dump()
    )

    (model,) = built
    layers = _recurrent_layers(model)
    if gpu_visible:
        assert [type(layer) for layer in layers] == [keras.layers.LSTM]
        assert layers[0].unroll is False
        assert info["lstm_backend"] == {"name": "keras", "unroll": False}
        assert "LSTM backend keras, rolled (1 GPU visible)" in caplog.text
    else:
        assert [type(layer) for layer in layers] == [FusedLSTM]
        assert info["lstm_backend"] == {"name": "kernel", "unroll": False}
        assert "LSTM backend kernel (no GPU visible)" in caplog.text
