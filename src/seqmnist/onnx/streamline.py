"""Streamline the graph tf2onnx writes around a stack of LSTMs, forward or bidirectional.

tf2onnx lowers Keras' per-step projection as Reshape -> MatMul -> Reshape (+ Add), builds the
zero initial states from shape arithmetic, slices and concatenates each LSTM's output sequence
for the next, and slices the last step out of the last one's; onnxruntime's optimizer removes
none of it. For LSTMs reading a linear projection of the rows, the same function is

    rows -> Transpose (time-major) -> LSTM with the projection folded into its input weights
    (W' = W Wp^T, B' = B + W bp) [-> directions side by side -> LSTM ...] -> Y_h
    -> directions side by side -> classifier

or, for a model whose classifier reads a max or mean over the steps (train.model.readout), the
last LSTM's Y -> directions side by side -> ReduceMax/ReduceMean over the time axis -> classifier,

where "directions side by side" is a Squeeze for a forward LSTM and Transpose + Reshape for a
bidirectional one: forward then backward units, as Keras's Bidirectional concatenates them, and
Y_h of the backward direction is its output at the first time step, the one Keras returns. For
one forward LSTM: about 40% fewer FLOPs per image and 5 nodes instead of ~20 (bench/README.md
measures it). The rewrite checks itself against the converted graph on random rows and is dropped
if the two disagree; the export stage then verifies the result against Keras like any other graph.

Left as converted: "reverse" LSTMs (Keras's go_backwards alone, which build_model never makes:
the next layer reads its sequence time-flipped, a step this rewrite does not rebuild), and any
LSTM whose output something other than layout ops reads before the next LSTM, the classifier or
a pooling the classifier alone reads (e.g. Bidirectional's merge modes other than concat).
Layout ops that select other than what the rewrite assumes (say a slice of the time steps), or a
pooling over another axis than the steps, are caught by the self-check.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from seqmnist.constants import ORT_PROVIDERS

CHAIN_OPS = {"Transpose", "Reshape", "MatMul", "Add", "Cast", "Identity"}
# What tf2onnx puts between an LSTM's output and what computes with it: moves, no arithmetic.
LAYOUT_OPS = {
    "Slice",
    "Squeeze",
    "Unsqueeze",
    "Gather",
    "Transpose",
    "Concat",
    "Reshape",
    "Identity",
}
SHAPE_OP = "Shape"  # reads only a tensor's shape: sizes the next LSTM's zero initial states
CLASSIFIER_OPS = {"MatMul", "Gemm"}
POOLING_OPS = {"ReduceMax", "ReduceMean"}  # a readout over the steps, rebuilt time-major
AXES_AS_INPUT_OPSET = 18  # from opset 18 on, ReduceMax/ReduceMean take their axes as an input
DIRECTIONS = {"forward", "bidirectional"}
# The LSTM attributes the rebuilt op carries over (hidden_size, direction) or can drop (layout
# 0, the default gate functions); one with any other (clip, input_forget, other activations)
# computes something the rebuilt op would not, and is left as converted.
REBUILT_ATTRIBUTES = {"hidden_size", "direction", "layout", "activations"}
DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")  # per direction
SELF_CHECK_ROWS = 32
SELF_CHECK_ATOL = 1e-5
PREFIX = "streamlined_"
LAST_HIDDEN = PREFIX + "last_hidden"  # what the classifier reads: [batch, directions * units]
LAST_SEQUENCE = PREFIX + "last_sequence"  # what a pooling reads: [time, batch, directions * units]
POOLED = PREFIX + "pooled"  # the pooling's output the classifier reads: [batch, directions * units]
TIME_AXIS = PREFIX + "time_axis"


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


def _unsupported(lstm, weights) -> str | None:
    """Why an LSTM op cannot be rebuilt as above, if it cannot."""
    direction = _attr(lstm, "direction") or "forward"
    if direction not in DIRECTIONS or _attr(lstm, "layout") not in (None, 0):
        return f"{direction} LSTM"
    others = sorted({attribute.name for attribute in lstm.attribute} - REBUILT_ATTRIBUTES)
    if others:
        return f"LSTM with {', '.join(others)}"
    activations = [
        name.decode() if isinstance(name, bytes) else name
        for name in _attr(lstm, "activations") or ()
    ]
    per_direction = {tuple(activations[i : i + 3]) for i in range(0, len(activations), 3)}
    if activations and per_direction != {DEFAULT_ACTIVATIONS}:
        return f"LSTM with activations {activations}"
    if lstm.input[1] not in weights or lstm.input[2] not in weights:
        return "LSTM weights are not constants"
    if len(lstm.input) > 4 and lstm.input[4]:
        return "LSTM uses sequence lengths"
    return None


def _readers(lstm, graph) -> list[onnx.NodeProto]:
    """The nodes that compute with an LSTM's outputs, past the layout ops tf2onnx puts after it
    (Shape nodes only size zero initial states, which the rewrite leaves to the LSTM op)."""
    consumers = _consumers(graph)
    readers, seen = [], set()
    pending = [name for name in lstm.output if name]
    while pending:
        for node in consumers.get(pending.pop(), []):
            if id(node) in seen or node.op_type == SHAPE_OP:
                continue
            seen.add(id(node))
            if node.op_type in LAYOUT_OPS:
                pending.extend(node.output)
            else:
                readers.append(node)
    return readers


def _stack_and_head(lstms, graph) -> tuple[onnx.NodeProto, str | None] | str:
    """The classifier's MatMul/Gemm and the pooling between it and the stack (its op type, or
    None when the classifier reads the last step), if each LSTM is read by the next one only and
    the last one by that pooling or classifier only; else why not. The pooling's axes are not
    read: the rebuilt one pools over time, and the self-check compares it with the original."""
    for index, (lstm, following) in enumerate(itertools.pairwise(lstms)):
        readers = _readers(lstm, graph)
        if [node.name for node in readers] != [following.name]:
            return f"LSTM {index}'s output is read by {sorted(n.op_type for n in readers)}"
    readers = _readers(lstms[-1], graph)
    if len(readers) == 1 and readers[0].op_type in POOLING_OPS:
        pooled_by = _readers(readers[0], graph)
        if len(pooled_by) == 1 and pooled_by[0].op_type in CLASSIFIER_OPS:
            return pooled_by[0], readers[0].op_type
        return f"a {readers[0].op_type} is read by {sorted(n.op_type for n in pooled_by)}"
    if len(readers) != 1 or readers[0].op_type not in CLASSIFIER_OPS:
        return f"the last LSTM's output is read by {sorted(n.op_type for n in readers)}"
    return readers[0], None


def _named(base: str, layer: int) -> str:
    """Names of the rewrite's nodes and tensors: the first LSTM's without an index."""
    return f"{PREFIX}{base}" if layer == 0 else f"{PREFIX}{base}_{layer}"


def _side_by_side(
    source: str, directions: int, axis: int, output: str, layer: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes (and their constants) that lay the directions axis of an LSTM output side by side
    along the units, forward first: Y [time, directions, batch, units] (axis 1) ->
    [time, batch, directions * units], or Y_h [directions, batch, units] (axis 0) ->
    [batch, directions * units]."""
    if directions == 1:
        axes = f"{PREFIX}axes" if axis == 0 else f"{PREFIX}axes_{axis}"
        return (
            [helper.make_node("Squeeze", [source, axes], [output], name=_named("squeeze", layer))],
            [numpy_helper.from_array(np.array([axis], np.int64), axes)],
        )
    perm = list(range(axis + 3))
    perm[axis], perm[axis + 1] = axis + 1, axis  # [..., batch, directions, units]
    shape = f"{PREFIX}shape_{axis}"  # keep the dimensions before directions, merge the rest
    transposed = _named("directions_last", layer)
    nodes = [
        helper.make_node("Transpose", [source], [transposed], perm=perm, name=transposed),
        helper.make_node("Reshape", [transposed, shape], [output], name=_named("merge", layer)),
    ]
    return nodes, [numpy_helper.from_array(np.array([0] * (axis + 1) + [-1], np.int64), shape)]


def _folded_first_weights(lstm, weights, chain) -> tuple[np.ndarray, np.ndarray]:
    """The first LSTM's W [directions, 4H, F] and B [directions, 8H], the projection folded in."""
    projection, projection_bias = chain
    w = weights[lstm.input[1]]  # [directions, 4H, P]
    hidden = w.shape[1] // 4
    has_bias = len(lstm.input) > 3 and lstm.input[3] in weights
    b = weights[lstm.input[3]].copy() if has_bias else np.zeros((len(w), 8 * hidden), np.float32)
    if projection_bias is not None:
        for direction, w_direction in enumerate(w):
            b[direction, : 4 * hidden] += w_direction @ projection_bias
    if projection is None:
        return w, b
    return np.stack([w_direction @ projection.T for w_direction in w]), b


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
    """The largest difference between the two graphs' outputs; infinite if their shapes differ."""
    rows = np.random.default_rng(0).uniform(0, 1, (SELF_CHECK_ROWS, *shape)).astype(np.float32)
    pairs = zip(_outputs(original, rows), _outputs(rewritten, rows), strict=True)
    return max(
        float(np.abs(left - right).max()) if left.shape == right.shape else float("inf")
        for left, right in pairs
    )


def _opset(model: onnx.ModelProto) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def _pooling_over_time(
    op_type: str, opset: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """LAST_SEQUENCE [time, batch, units] -> POOLED [batch, units], the max or mean over time."""
    if opset >= AXES_AS_INPUT_OPSET:
        node = helper.make_node(
            op_type, [LAST_SEQUENCE, TIME_AXIS], [POOLED], keepdims=0, name=PREFIX + "pooling"
        )
        return [node], [numpy_helper.from_array(np.array([0], np.int64), TIME_AXIS)]
    node = helper.make_node(
        op_type, [LAST_SEQUENCE], [POOLED], axes=[0], keepdims=0, name=PREFIX + "pooling"
    )
    return [node], []


def _rebuilt_stack(
    lstms, weights, rows: str, pooled: bool
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Nodes and layout constants of the stack rewritten as above, and its output: `rows`
    [batch, time, features] -> LAST_HIDDEN [batch, directions * units], or with `pooled`
    LAST_SEQUENCE [time, batch, directions * units]; the first LSTM reads W and B."""
    nodes = [
        helper.make_node(
            "Transpose", [rows], [PREFIX + "x"], perm=[1, 0, 2], name=PREFIX + "time_major"
        )
    ]
    constants = {}  # by name: layers of one kind share their layout constants
    for layer, lstm in enumerate(lstms):
        is_last = layer == len(lstms) - 1
        last_step = is_last and not pooled
        lstm_weights = (
            [PREFIX + "W", lstm.input[2], PREFIX + "B"] if layer == 0 else lstm.input[1:4]
        )
        recurrent = weights[lstm.input[2]]  # [directions, 4 * units, units]
        attributes = {"hidden_size": recurrent.shape[-1]}
        if len(recurrent) > 1:
            attributes["direction"] = "bidirectional"  # forward is the op's default
        # Y [time, directions, batch, units] feeds the next LSTM or the pooling, Y_h
        # [directions, batch, units] the classifier.
        output, axis = (_named("Y_h", layer), 0) if last_step else (_named("Y", layer), 1)
        nodes.append(
            helper.make_node(
                "LSTM",
                [_named("x", layer), *lstm_weights],
                ["", output] if last_step else [output],
                name=_named("lstm", layer),
                **attributes,
            )
        )
        merged = _named("x", layer + 1)
        if is_last:
            merged = LAST_HIDDEN if last_step else LAST_SEQUENCE
        merge_nodes, merge_constants = _side_by_side(output, len(recurrent), axis, merged, layer)
        nodes.extend(merge_nodes)
        constants.update((tensor.name, tensor) for tensor in merge_constants)
    return nodes, list(constants.values()), merged


def streamline_lstm(model: onnx.ModelProto, time_steps: int, features: int) -> Rewrite:
    """Rewrite a graph of stacked LSTMs as described above; anything else is left as it is."""
    graph = model.graph
    lstms = [node for node in graph.node if node.op_type == "LSTM"]  # in graph (stack) order
    if not lstms:
        return Rewrite(model, False, "left as converted: no LSTM op")
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    reasons = [reason for lstm in lstms if (reason := _unsupported(lstm, weights))]
    if reasons:
        return Rewrite(model, False, f"left as converted: {reasons[0]}")
    chain = _input_chain(lstms[0], graph, weights)
    if isinstance(chain, str):
        return Rewrite(model, False, f"left as converted: {chain}")
    found = _stack_and_head(lstms, graph)
    if isinstance(found, str):
        return Rewrite(model, False, f"left as converted: {found}")
    head, pooling = found

    folded, b = _folded_first_weights(lstms[0], weights, chain)
    nodes, layout_constants, stack_output = _rebuilt_stack(
        lstms, weights, graph.input[0].name, pooled=pooling is not None
    )
    if pooling is not None:
        pooling_nodes, pooling_constants = _pooling_over_time(pooling, _opset(model))
        nodes, layout_constants = nodes + pooling_nodes, layout_constants + pooling_constants
        stack_output = POOLED
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    head = next(node for node in graph.node if node.name == head.name)
    graph.initializer.extend(
        [
            numpy_helper.from_array(folded.astype(np.float32), PREFIX + "W"),
            numpy_helper.from_array(b.astype(np.float32), PREFIX + "B"),
            *layout_constants,
        ]
    )
    graph.node.extend(nodes)
    head.input[0] = stack_output
    _prune(graph)
    _topological_sort(graph)
    try:
        onnx.checker.check_model(rewritten, full_check=True)
        difference = _agrees(model, rewritten, (time_steps, features))
    except Exception as error:  # onnx's and onnxruntime's own errors: the rewrite is wrong
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return Rewrite(model, False, f"left as converted: rewrite rejected: {reason}")
    if difference > SELF_CHECK_ATOL:
        return Rewrite(model, False, f"left as converted: rewrite differed by {difference:.1e}")
    before, after = len(model.graph.node), len(graph.node)
    first = "the LSTM" if len(lstms) == 1 else f"the first of {len(lstms)} LSTMs"
    fold_note = f"projection folded into {first}"
    if all(part is None for part in chain):
        fold_note = "no projection to fold"
    return Rewrite(
        rewritten,
        True,
        f"streamlined: {before} -> {after} nodes, {fold_note} "
        f"(max |diff| {difference:.1e} on random rows)",
    )
