"""The streamlined LSTM graph: same function, fewer nodes, and nothing else is touched."""

import numpy as np
import pytest

from seqmnist.config import ModelParams
from seqmnist.modeling.model import build_model
from seqmnist.onnx.streamline import streamline_lstm
from seqmnist.stages.export import convert, op_type_counts

TIME_STEPS, FEATURES = 9, 7
PLUMBING = {"Reshape", "Cast", "Shape", "Slice", "Expand", "Concat", "Gather", "Unsqueeze"}


def converted(params: ModelParams):
    model = build_model(params, TIME_STEPS, FEATURES)
    return model, convert(model, 17, TIME_STEPS, FEATURES)


def onnx_logits(proto, rows: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {session.get_inputs()[0].name: rows})[0]


@pytest.mark.parametrize("projection", [12, None])
def test_single_lstm_is_streamlined_and_computes_the_same(projection):
    model, proto = converted(ModelParams(units=10, input_projection=projection))
    rewrite = streamline_lstm(proto, TIME_STEPS, FEATURES)
    assert rewrite.applied, rewrite.note
    counts = op_type_counts(rewrite.model.graph)
    assert counts["LSTM"] == 1 and "Loop" not in counts
    assert not PLUMBING & set(counts), counts
    assert len(rewrite.model.graph.node) < len(proto.graph.node)
    assert [value.name for value in rewrite.model.graph.input] == ["rows"]
    assert {value.name for value in rewrite.model.graph.output} == {"logits", "probabilities"}
    rows = np.random.default_rng(1).uniform(0, 1, (5, TIME_STEPS, FEATURES)).astype(np.float32)
    keras_logits = np.asarray(model(rows))
    np.testing.assert_allclose(onnx_logits(rewrite.model, rows), keras_logits, atol=1e-5)


@pytest.mark.parametrize(
    "params",
    [
        ModelParams(units=6, layers=2, input_projection=None),
        ModelParams(units=6, bidirectional=True, input_projection=None),
        ModelParams(cell="gru", units=6, input_projection=None),
    ],
    ids=["two-layers", "bidirectional", "gru"],
)
def test_other_graphs_are_left_exactly_as_converted(params):
    _, proto = converted(params)
    rewrite = streamline_lstm(proto, TIME_STEPS, FEATURES)
    assert not rewrite.applied
    assert rewrite.note.startswith("left as converted")
    assert rewrite.model.SerializeToString() == proto.SerializeToString()
