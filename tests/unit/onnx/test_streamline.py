"""The streamlined LSTM graph: same function, fewer nodes, and nothing else is touched."""

import keras
import numpy as np
import pytest

from seqmnist.config import ModelParams
from seqmnist.modeling.model import build_model
from seqmnist.onnx.streamline import streamline_lstm
from seqmnist.stages.export import convert, op_type_counts

TIME_STEPS, FEATURES = 9, 7
STREAMLINED = {
    "one-lstm": ModelParams(units=10, input_projection=12, bidirectional=False),
    "no-projection": ModelParams(units=10, input_projection=None, bidirectional=False),
    "bidirectional": ModelParams(units=10, input_projection=12, bidirectional=True),
    "two-layers": ModelParams(units=6, layers=2, input_projection=5, bidirectional=False),
    "two-bidirectional-layers": ModelParams(
        units=6, layers=2, input_projection=5, bidirectional=True
    ),
    "max-readout": ModelParams(units=10, input_projection=12, readout="max", bidirectional=False),
    "bidirectional-mean-readout": ModelParams(
        units=6, layers=2, input_projection=5, bidirectional=True, readout="mean"
    ),
}
POOLING = {"last": None, "max": "ReduceMax", "mean": "ReduceMean"}


def converted(model: keras.Model):
    return convert(model, 17, TIME_STEPS, FEATURES)


def onnx_logits(proto, rows: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {session.get_inputs()[0].name: rows})[0]


def direction(lstm) -> str:
    """An ONNX LSTM op's direction attribute (forward when absent)."""
    for attribute in lstm.attribute:
        if attribute.name == "direction":
            return attribute.s.decode()
    return "forward"


def expected_op_types(params: ModelParams) -> dict[str, int]:
    """Time-major Transpose, the LSTMs, each one's directions laid side by side (Squeeze, or
    Transpose + Reshape when bidirectional), the readout's pooling over the steps if any, the
    classifier and its softmax: no plumbing."""
    side_by_side = {"Transpose": 1, "Reshape": 1} if params.bidirectional else {"Squeeze": 1}
    counts = {"Transpose": 1, "LSTM": params.layers, "MatMul": 1, "Softmax": 1}
    for op_type, count in side_by_side.items():
        counts[op_type] = counts.get(op_type, 0) + count * params.layers
    if POOLING[params.readout]:
        counts[POOLING[params.readout]] = 1
    return counts


@pytest.mark.parametrize("params", STREAMLINED.values(), ids=STREAMLINED.keys())
def test_lstm_stack_is_streamlined_and_computes_the_same(params):
    model = build_model(params, TIME_STEPS, FEATURES)
    proto = converted(model)
    rewrite = streamline_lstm(proto, TIME_STEPS, FEATURES)
    assert rewrite.applied, rewrite.note
    assert op_type_counts(rewrite.model.graph) == expected_op_types(params)
    lstms = [node for node in rewrite.model.graph.node if node.op_type == "LSTM"]
    assert {direction(lstm) for lstm in lstms} == {
        "bidirectional" if params.bidirectional else "forward"
    }
    assert len(rewrite.model.graph.node) < len(proto.graph.node)
    assert [value.name for value in rewrite.model.graph.input] == ["rows"]
    assert {value.name for value in rewrite.model.graph.output} == {"logits", "probabilities"}
    rows = np.random.default_rng(1).uniform(0, 1, (5, TIME_STEPS, FEATURES)).astype(np.float32)
    keras_logits = np.asarray(model(rows))
    np.testing.assert_allclose(onnx_logits(rewrite.model, rows), keras_logits, atol=1e-5)
    np.testing.assert_allclose(onnx_logits(proto, rows), keras_logits, atol=1e-5)


@pytest.mark.parametrize("opset", [17, 18])
def test_pooled_readout_is_rebuilt_over_time_at_each_opset(opset):
    """From opset 18 on, ReduceMax takes its axes as an input, and tf2onnx leaves the pooling
    reading a batch-major sequence."""
    model = build_model(
        ModelParams(units=10, input_projection=12, readout="max", bidirectional=False),
        TIME_STEPS,
        FEATURES,
    )
    proto = convert(model, opset, TIME_STEPS, FEATURES)
    rewrite = streamline_lstm(proto, TIME_STEPS, FEATURES)
    assert rewrite.applied, rewrite.note
    assert op_type_counts(rewrite.model.graph)["ReduceMax"] == 1
    rows = np.random.default_rng(3).uniform(0, 1, (5, TIME_STEPS, FEATURES)).astype(np.float32)
    np.testing.assert_allclose(onnx_logits(rewrite.model, rows), model(rows), atol=1e-5)


def _pooling_over_the_units() -> keras.Model:
    """channels_first pools each step over its units: [batch, time], not [batch, units]."""
    rows = keras.Input((TIME_STEPS, FEATURES), name="rows")
    sequence = keras.layers.LSTM(6, return_sequences=True)(rows)
    pooled = keras.layers.GlobalMaxPooling1D(data_format="channels_first")(sequence)
    return keras.Model(rows, keras.layers.Dense(10)(pooled))


def _lstms_with_a_dense_between() -> keras.Model:
    """Each step of the first LSTM's output goes through a ReLU layer before the second LSTM."""
    rows = keras.Input((TIME_STEPS, FEATURES), name="rows")
    hidden = keras.layers.LSTM(6, return_sequences=True)(rows)
    hidden = keras.layers.Dense(5, activation="relu")(hidden)
    logits = keras.layers.Dense(10)(keras.layers.LSTM(6)(hidden))
    return keras.Model(rows, logits)


def _bidirectional_summing_directions() -> keras.Model:
    """Bidirectional's merge_mode "sum" adds the directions rather than laying them side by side."""
    rows = keras.Input((TIME_STEPS, FEATURES), name="rows")
    hidden = keras.layers.Bidirectional(keras.layers.LSTM(6), merge_mode="sum")(rows)
    return keras.Model(rows, keras.layers.Dense(10)(hidden))


@pytest.mark.parametrize(
    "build",
    [
        lambda: build_model(
            ModelParams(cell="gru", units=6, bidirectional=False), TIME_STEPS, FEATURES
        ),
        _lstms_with_a_dense_between,
        _bidirectional_summing_directions,
        _pooling_over_the_units,
    ],
    ids=["gru", "dense-between-lstms", "bidirectional-sum", "pooling-over-units"],
)
def test_other_graphs_are_left_exactly_as_converted(build):
    proto = converted(build())
    rewrite = streamline_lstm(proto, TIME_STEPS, FEATURES)
    assert not rewrite.applied
    assert rewrite.note.startswith("left as converted")
    assert rewrite.model.SerializeToString() == proto.SerializeToString()


@pytest.mark.parametrize(
    ("attribute", "value", "says"),
    [
        ("clip", 3.0, "LSTM with clip"),
        ("input_forget", 1, "LSTM with input_forget"),
        ("activations", [b"Sigmoid", b"Relu", b"Tanh"], "LSTM with activations"),
    ],
)
def test_an_lstm_computing_otherwise_is_left_as_converted(attribute, value, says):
    """The rebuilt op carries hidden_size and direction only: an LSTM whose attributes change
    what it computes must not be rebuilt without them."""
    from onnx import helper

    proto = converted(build_model(STREAMLINED["one-lstm"], TIME_STEPS, FEATURES))
    lstm = next(node for node in proto.graph.node if node.op_type == "LSTM")
    kept = [a for a in lstm.attribute if a.name != attribute]
    del lstm.attribute[:]
    lstm.attribute.extend([*kept, helper.make_attribute(attribute, value)])
    rewrite = streamline_lstm(proto, TIME_STEPS, FEATURES)
    assert not rewrite.applied and says in rewrite.note
    assert rewrite.model.SerializeToString() == proto.SerializeToString()
