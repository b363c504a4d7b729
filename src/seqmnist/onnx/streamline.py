"""Streamline the graph tf2onnx writes around a single forward LSTM.

tf2onnx lowers Keras' per-step projection as Reshape -> MatMul -> Reshape (+ Add), builds the
zero initial states from shape arithmetic, and slices the last step out of the full output
sequence; onnxruntime's optimizer removes none of it. For one forward LSTM reading a linear
projection of the rows, the same function is

    rows -> Transpose (time-major) -> LSTM with the projection folded into its input weights
    (W' = W Wp^T, B' = B + W bp) -> Y_h -> classifier

about 40% fewer FLOPs per image and 5 nodes instead of ~20 (bench/README.md measures it). The
rewrite checks itself against the converted graph on random rows and is dropped if the two
disagree; the export stage then verifies the result against Keras like any other graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from seqmnist.constants import ORT_PROVIDERS

CHAIN_OPS = {"Transpose", "Reshape", "MatMul", "Add", "Cast", "Identity"}
SELF_CHECK_ROWS = 32
SELF_CHECK_ATOL = 1e-5
PREFIX = "streamlined_"


@dataclass(frozen=True)
class Rewrite:
    """The graph to ship and what happened to it."""

    model: onnx.ModelProto
    applied: bool
    note: str


def _attr(node: onnx.NodeProto, name: str):
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return None


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in graph.node for name in node.output if name}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _input_chain(lstm, graph, weights) -> tuple[np.ndarray | None, np.ndarray | None] | str:
    """The projection (Wp [F, P], bp [P]) between the graph input and the LSTM, or why not."""
    producers = _producers(graph)
    source = graph.input[0].name
    projection = bias = None
    name = lstm.input[0]
    while name != source:
        node = producers.get(name)
        if node is None or node.op_type not in CHAIN_OPS:
            return f"the LSTM's input comes through {node.op_type if node else name!r}"
        if node.op_type == "MatMul":
            if projection is not None or node.input[1] not in weights:
                return "more than one MatMul, or one without constant weights, feeds the LSTM"
            projection = weights[node.input[1]]
        if node.op_type == "Add":
            constant = [weights[item] for item in node.input if item in weights]
            if bias is not None or len(constant) != 1 or constant[0].ndim != 1:
                return "an Add other than one projection bias feeds the LSTM"
            bias = constant[0]
        if node.op_type == "Cast" and _attr(node, "to") != onnx.TensorProto.FLOAT:
            return "a Cast to another type than float feeds the LSTM"
        data_inputs = [item for item in node.input if item not in weights]
        name = data_inputs[0] if node.op_type == "Add" else node.input[0]
    return projection, bias


def _classifier_input(lstm, graph) -> onnx.NodeProto | str:
    """The first MatMul/Gemm that reads the LSTM's last step, through single-consumer nodes."""
    consumers = _consumers(graph)
    pending = consumers.get(lstm.output[0], [])
    while len(pending) == 1:
        node = pending[0]
        if node.op_type in {"MatMul", "Gemm"}:
            return node
        if node.op_type not in {"Squeeze", "Unsqueeze", "Slice", "Gather", "Transpose"}:
            return f"the LSTM's output goes through {node.op_type}"
        pending = consumers.get(node.output[0], [])
    return "the LSTM's output has no single path to the classifier"


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers no graph output depends on."""
    producers = _producers(graph)
    live: set[int] = set()
    pending = [output.name for output in graph.output]
    while pending:
        node = producers.get(pending.pop())
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        pending.extend(node.input)
    kept = [node for node in graph.node if id(node) in live]
    used = {name for node in kept for name in node.input}
    kept_weights = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(kept_weights)


def _topological_sort(graph: onnx.GraphProto) -> None:
    """ONNX requires nodes in dependency order; appended nodes are moved where they belong."""
    available = {value.name for value in graph.input} | {t.name for t in graph.initializer}
    available.add("")
    remaining = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while remaining:
        ready = [node for node in remaining if all(name in available for name in node.input)]
        if not ready:
            raise ValueError("graph has a cycle or a missing input after the rewrite")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        remaining = [node for node in remaining if all(node is not done for done in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def _outputs(model: onnx.ModelProto, rows: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=list(ORT_PROVIDERS)
    )
    return session.run(None, {session.get_inputs()[0].name: rows})


def _agrees(original: onnx.ModelProto, rewritten: onnx.ModelProto, shape) -> float:
    rows = np.random.default_rng(0).uniform(0, 1, (SELF_CHECK_ROWS, *shape)).astype(np.float32)
    pairs = zip(_outputs(original, rows), _outputs(rewritten, rows), strict=True)
    return max(float(np.abs(left - right).max()) for left, right in pairs)


def streamline_lstm(model: onnx.ModelProto, time_steps: int, features: int) -> Rewrite:
    """Rewrite a single forward LSTM graph as described above; anything else is left as it is."""
    graph = model.graph
    lstms = [node for node in graph.node if node.op_type == "LSTM"]
    if len(lstms) != 1:
        return Rewrite(model, False, f"left as converted: {len(lstms)} LSTM ops (needs 1)")
    lstm = lstms[0]
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    direction = _attr(lstm, "direction") or "forward"
    if direction != "forward" or _attr(lstm, "layout") not in (None, 0):
        return Rewrite(model, False, f"left as converted: {direction} LSTM")
    if lstm.input[1] not in weights or lstm.input[2] not in weights:
        return Rewrite(model, False, "left as converted: LSTM weights are not constants")
    if len(lstm.input) > 4 and lstm.input[4]:
        return Rewrite(model, False, "left as converted: LSTM uses sequence lengths")
    chain = _input_chain(lstm, graph, weights)
    if isinstance(chain, str):
        return Rewrite(model, False, f"left as converted: {chain}")
    head = _classifier_input(lstm, graph)
    if isinstance(head, str):
        return Rewrite(model, False, f"left as converted: {head}")

    projection, projection_bias = chain
    w = weights[lstm.input[1]][0]  # [4H, P]
    hidden = w.shape[0] // 4
    has_bias = len(lstm.input) > 3 and lstm.input[3] in weights
    b = weights[lstm.input[3]].copy() if has_bias else np.zeros((1, 8 * hidden), np.float32)
    if projection_bias is not None:
        b[0, : 4 * hidden] += w @ projection_bias
    folded = w @ projection.T if projection is not None else w  # [4H, F]

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    head = next(node for node in graph.node if node.name == head.name)
    squeezed = PREFIX + "last_hidden"
    graph.initializer.extend(
        [
            numpy_helper.from_array(folded[None].astype(np.float32), PREFIX + "W"),
            numpy_helper.from_array(b.astype(np.float32), PREFIX + "B"),
            numpy_helper.from_array(np.array([0], np.int64), PREFIX + "axes"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node(
                "Transpose", [graph.input[0].name], [PREFIX + "x"], perm=[1, 0, 2],
                name=PREFIX + "time_major",
            ),
            helper.make_node(
                "LSTM",
                [PREFIX + "x", PREFIX + "W", lstm.input[2], PREFIX + "B"],
                ["", PREFIX + "Y_h"],
                hidden_size=hidden,
                name=PREFIX + "lstm",
            ),
            helper.make_node(
                "Squeeze", [PREFIX + "Y_h", PREFIX + "axes"], [squeezed], name=PREFIX + "squeeze"
            ),
        ]
    )  # fmt: skip
    head.input[0] = squeezed
    _prune(graph)
    _topological_sort(graph)
    onnx.checker.check_model(rewritten, full_check=True)
    difference = _agrees(model, rewritten, (time_steps, features))
    if difference > SELF_CHECK_ATOL:
        return Rewrite(model, False, f"left as converted: rewrite differed by {difference:.1e}")
    before, after = len(model.graph.node), len(graph.node)
    return Rewrite(
        rewritten,
        True,
        f"streamlined: {before} -> {after} nodes, projection folded into the LSTM "
        f"(max |diff| {difference:.1e} on random rows)",
    )
