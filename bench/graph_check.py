"""Look for avoidable work around the LSTM op in an ONNX graph: transposes, casts, shape math.

Reads the graph as exported and as onnxruntime leaves it after its own optimizations (saved with
SessionOptions.optimized_model_filepath), and turns what it finds into one-line findings.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from seqmnist.onnx.convert import op_type_counts

RECURRENT_OPS = {"LSTM", "GRU", "RNN"}
OVERHEAD_OPS = ("Transpose", "Cast", "Shape", "Gather", "Concat", "Expand", "ConstantOfShape",
                "Unsqueeze", "Squeeze", "Slice", "Reshape")  # fmt: skip
LSTM_OUTPUTS = ("Y", "Y_h", "Y_c")
QUIET = 3  # onnxruntime log severity: errors only (saving an optimized graph warns)
INITIAL_STATE_INPUTS = {5: "initial_h", 6: "initial_c"}
PASS_THROUGH = {"Transpose", "Reshape", "Cast", "Squeeze", "Unsqueeze", "Identity", "Add",
                "MatMul", "Gemm", "Slice", "Gather", "Softmax"}  # fmt: skip


def _index(graph):
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producers, consumers


def _attr(node, name: str):
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return None


def _describe(node) -> str:
    perm, to = _attr(node, "perm"), _attr(node, "to")
    if perm is not None:
        return f"Transpose{list(perm)}"
    if to is not None:
        import onnx

        return f"Cast(to {onnx.TensorProto.DataType.Name(to)})"
    return node.op_type


def _upstream_chain(name: str, producers: dict) -> list:
    """Data-path nodes from a tensor back towards the graph input (first input only)."""
    chain = []
    node = producers.get(name)
    while node is not None and node.op_type in PASS_THROUGH:
        chain.append(node)
        node = producers.get(node.input[0]) if node.input else None
    return list(reversed(chain))


def _downstream_chain(name: str, consumers: dict) -> list:
    chain = []
    pending = consumers.get(name, [])
    while len(pending) == 1 and pending[0].op_type in PASS_THROUGH:
        chain.append(pending[0])
        pending = consumers.get(pending[0].output[0], [])
    return chain


def _ancestors(name: str, producers: dict) -> list:
    """Every node that contributes to a tensor (initializers and graph inputs are not nodes)."""
    seen: dict[int, object] = {}
    pending = [name]
    while pending:
        node = producers.get(pending.pop())
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        pending.extend(node.input)
    return list(seen.values())


def _widths(model) -> dict[str, int]:
    """Last dimension of every tensor whose shape inference knows it."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    widths = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[-1].HasField("dim_value"):
            widths[value.name] = dims[-1].dim_value
    return widths


def _matmul_width(chain: list, weights: dict[str, list[int]]) -> int | None:
    """Output width of the last MatMul/Gemm with a weight initializer in a chain."""
    for node in reversed(chain):
        if node.op_type in {"MatMul", "Gemm"} and len(node.input) > 1:
            dims = weights.get(node.input[1])
            if dims:
                return dims[0] if _attr(node, "transB") else dims[-1]
    return None


def lstm_report(model) -> list[dict]:
    """Per recurrent node: what feeds X, what builds the initial states, which outputs are read."""
    graph = model.graph
    producers, consumers = _index(graph)
    widths = _widths(model)
    input_width = widths.get(graph.input[0].name)
    reports = []
    for node in graph.node:
        if node.op_type not in RECURRENT_OPS:
            continue
        upstream = _upstream_chain(node.input[0], producers)
        data_path = {id(n) for n in _ancestors(node.input[0], producers)}
        states = {}
        for index, label in INITIAL_STATE_INPUTS.items():
            if len(node.input) > index and node.input[index]:
                ops = [
                    n for n in _ancestors(node.input[index], producers) if id(n) not in data_path
                ]
                states[label] = dict(Counter(op.op_type for op in ops))
        read = {
            LSTM_OUTPUTS[i]: [_describe(n) for n in _downstream_chain(out, consumers)]
            for i, out in enumerate(node.output)
            if out and out in consumers
        }
        transposed_width = None
        weights = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
        for position, step in enumerate(upstream):
            if step.op_type == "Transpose":
                transposed_width = widths.get(step.input[0]) or _matmul_width(
                    upstream[:position], weights
                )
        reports.append(
            {
                "op": node.op_type,
                "layout": _attr(node, "layout") or 0,
                "x_input_path": [_describe(n) for n in upstream],
                "transposed_width": transposed_width,
                "graph_input_width": input_width,
                "initial_state_nodes": states,
                "outputs_read": read,
            }
        )
    return reports


def findings(reports: list[dict], counts: dict[str, int]) -> list[str]:
    """The avoidable overhead, in words (empty when the graph is lean)."""
    notes = []
    for report in reports:
        width, raw = report["transposed_width"], report["graph_input_width"]
        if width and raw and width > raw:
            notes.append(
                f"Transpose to time-major runs on the {width}-wide projection output; moved "
                f"before the projection MatMul it would move the {raw}-wide input rows "
                f"({width / raw:.1f}x less data). onnxruntime's CPU LSTM needs layout=0, so "
                "one transpose stays unless the projection is folded into W."
            )
        elif any(step.startswith("Transpose") for step in report["x_input_path"]):
            notes.append("Transpose to time-major before the LSTM (ORT's CPU LSTM needs layout=0)")
        for label, ops in report["initial_state_nodes"].items():
            if ops:
                notes.append(
                    f"{label} is built as explicit zeros by {sum(ops.values())} nodes "
                    f"({', '.join(ops)}): avoidable, an omitted initial state is zero."
                )
        read = report["outputs_read"]
        if "Y" in read and "Y_h" not in read:
            notes.append(
                f"the full sequence output Y is read and cut to the last step "
                f"({' -> '.join(read['Y'])}); Y_h is that step, so Y need not be written."
            )
    int_casts = counts.get("Cast", 0)
    if int_casts:
        notes.append(
            f"{int_casts} Cast node(s), with Shape/Gather/Concat shape arithmetic "
            f"({counts.get('Shape', 0)} Shape): tf2onnx's Tensordot and zeros-state lowering; "
            "a MatMul on the 3-D input needs no Reshape pair."
        )
    return notes


def inspect(path: Path, optimized_copy: Path) -> dict:
    """Op counts before and after onnxruntime's optimizations, LSTM neighbourhood, findings."""
    import onnx

    from bench_inference import make_session

    model = onnx.load(str(path))
    counts = op_type_counts(model.graph)
    reports = lstm_report(model)
    result: dict[str, object] = {
        "nodes": sum(counts.values()),
        "op_counts": counts,
        "overhead_ops": {op: counts[op] for op in OVERHEAD_OPS if op in counts},
        "recurrent": reports,
        "findings": findings(reports, counts),
    }
    try:
        make_session(path, {"log_severity_level": QUIET}, optimized_copy)
        optimized = op_type_counts(onnx.load(str(optimized_copy)).graph)
        result["after_ort_optimization"] = {
            "nodes": sum(optimized.values()),
            "overhead_ops": {op: optimized[op] for op in OVERHEAD_OPS if op in optimized},
            "op_counts": optimized,
        }
    except Exception as exc:  # the saved optimized graph is diagnostics only
        result["after_ort_optimization"] = f"not available: {exc}"
    return result
