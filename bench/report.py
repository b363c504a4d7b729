"""results.json -> the Markdown tables in bench/README.md (between the two marker lines)."""

from __future__ import annotations

import json
from pathlib import Path

BEGIN = "<!-- bench:results:begin -->"
END = "<!-- bench:results:end -->"


def _fig(entry: dict | None, digits: int = 0) -> str:
    """'median (min-max)' of a Figure's JSON."""
    if not isinstance(entry, dict):
        return "n/a"
    spec = f",.{digits}f"
    return f"{entry['median']:{spec}} ({entry['min']:{spec}}-{entry['max']:{spec}})"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _machine(result: dict) -> list[str]:
    m = result["machine"]
    v = m["versions"]
    versions = ", ".join(f"{name} {version}" for name, version in v.items())
    return [
        f"- command: `{result['command']}` ({result['mode']} mode, {result['finished']}, "
        f"{result['duration_s']:.0f} s)",
        f"- CPU: {m['cpu_model']} ({m['cpu_family_model']}), {m['cores']} cores, "
        f"{m['clock_mhz']:.0f} MHz ({m['clock_source']}), flags: {' '.join(m['flags'])}",
        f"- FP32 peak: {m['peak_formula']} = **{m['peak_gflops']:.0f} GFLOP/s**",
        f"- load average at start / end: {m['load_average']} / {result['load_average_end']}",
        f"- versions: {versions}",
    ]


def _flops(flops: dict) -> list[str]:
    rows = ["| part | formula | FLOPs per sample |", "| --- | --- | ---: |"]
    for part in ("projection", "recurrent", "classifier"):
        rows.append(f"| {part} | {flops['formulas'][part]} | {flops[part]:,} |")
    rows.append(f"| forward total | | {flops['forward_per_sample']:,} |")
    rows.append(
        f"| training | {flops['formulas']['training']} | {flops['training_per_sample']:,} |"
    )
    if flops["folded_forward_per_sample"] is not None:
        rows.append(
            f"| forward executed, projection folded (our kernel, our streamlined ONNX) | "
            f"{flops['formulas']['folded_forward']} | {flops['folded_forward_per_sample']:,} |"
        )
    for count in flops["executed_training"].values():
        rows.append(
            f"| training executed: {count['label']} | {count['formula']} | "
            f"{count['training_per_sample']:,} |"
        )
    shapes = ", ".join(f"{key}={value}" for key, value in flops["shapes"].items())
    return [*rows, "", f"Sizes: {shapes}."]


def _training(training: dict) -> list[str]:
    flipped = training.get("bidirectional")
    rows = [
        *(
            []
            if flipped is None
            else [f"Model: `train.model.bidirectional: {str(flipped).lower()}`.", ""]
        ),
        f"Batch {training['batch_size']}, {training['samples_per_round']:,} samples per round, "
        f"{training['rounds']} rounds each, {training['order']}, first round excluded; "
        f"data: {training['data']}; threads: {training['threads']}.",
        "",
        "| trainer | samples/s median (min-max) | GFLOP/s, model | % of peak, model "
        "| GFLOP/s, executed | % of peak, executed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in training["labels"].items():
        entry = training.get(key)
        if isinstance(entry, dict):
            rows.append(
                f"| {label} | {_fig(entry['samples_per_s'])} | {_fig(entry['gflops'], 1)} | "
                f"{_pct(entry['percent_of_peak'])} | {_fig(entry['executed_gflops'], 1)} | "
                f"{_pct(entry['executed_percent_of_peak'])} |"
            )
        else:
            rows.append(f"| {label} | {entry} | | | | |")
    if "ratio_ours_over_torch" in training:
        rows += ["", f"**Ratio ours / PyTorch: {training['ratio_ours_over_torch']:.2f}**"]
    return rows


def _inference(inference: dict) -> list[str]:
    rows = [
        f"Models: {inference['models']['weights']}; int8: {inference['int8']}; "
        f"torch: {inference['torch']}; {inference['runs']} runs per figure.",
        "",
        "| runtime | batch 1 latency ms | batch 256 samples/s | GFLOP/s, model (b256) "
        "| % of peak, model | % of peak, executed | b1: their latency / ours "
        "| b256: ours / theirs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ratios = inference["ratios_against_ours"]
    for label, entry in inference["runtimes"].items():
        r = ratios.get(label)
        ratio_cells = (
            f"{r['b1_latency_theirs_over_ours']:.2f} | {r['b256_throughput_ours_over_theirs']:.2f}"
            if r
            else "- | -"
        )
        rows.append(
            f"| {label} | {_fig(entry['b1_latency'], 3)} | {_fig(entry['b256_throughput'])} | "
            f"{_fig(entry['b256_gflops'], 1)} | {_pct(entry['b256_percent_of_peak'])} | "
            f"{_pct(entry['b256_executed_percent_of_peak'])} | {ratio_cells} |"
        )
    rows += [
        "",
        "onnxruntime session options on our model (one change at a time from the default):",
        "",
        "| variant | batch 1 latency ms | batch 256 samples/s | % of peak, model (b256) "
        "| % of peak, executed (b256) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, entry in inference["session_variants"].items():
        rows.append(
            f"| {label} | {_fig(entry['b1_latency'], 3)} | {_fig(entry['b256_throughput'])} | "
            f"{_pct(entry['b256_percent_of_peak'])} | "
            f"{_pct(entry['b256_executed_percent_of_peak'])} |"
        )
    best = inference["best_session_variant"]
    rows += ["", f"Best: batch 1 `{best['b1_latency']}`, batch 256 `{best['b256_throughput']}`."]

    for name, graph in inference["graphs"].items():
        after = graph["after_ort_optimization"]
        after_text = (
            f"{after['nodes']} nodes, {after['overhead_ops']}" if isinstance(after, dict) else after
        )
        rows += [
            "",
            f"ONNX graph, {name}: {graph['nodes']} nodes, {graph['overhead_ops']}; after "
            f"onnxruntime's optimizations: {after_text}.",
        ]
        rows += [f"- {note}" for note in graph["findings"]] or ["- no avoidable overhead found"]
    return rows


def _pipeline(pipeline: dict) -> list[str]:
    if "skipped" in pipeline:
        return [f"Skipped: {pipeline['skipped']}"]
    rows = [
        f"Temp git+DVC copy with the test suite's quick params; first real `dvc repro`: "
        f"{pipeline['first_repro_s']:.1f} s. {pipeline['runs']} runs per figure.",
        "",
        "| no-op run | seconds median (min-max) |",
        "| --- | ---: |",
    ]
    for label, key in (
        ("`dvc repro` (temp copy)", "dvc_repro_noop"),
        ("`dvc repro` (main workspace)", "dvc_repro_noop_main_workspace"),
        ("`seqmnist flow run`", "prefect_flow_noop"),
        ("`seqmnist flow run`, running Prefect server", "prefect_flow_noop_running_server"),
    ):
        entry = pipeline.get(key)
        rows.append(f"| {label} | {_fig(entry, 2) if isinstance(entry, dict) else entry} |")
    if "prefect_api" in pipeline:
        rows += ["", f"Prefect API of the first flow row: {pipeline['prefect_api']}."]
    if "flow_minus_dvc_repro_s" in pipeline:
        rows += [
            f"No-op flow against a running server minus no-op `dvc repro` (medians): "
            f"**{pipeline['flow_minus_dvc_repro_s']:.2f} s**."
        ]
    return rows


def _accuracy(accuracy: dict) -> list[str]:
    rows = [f"Status: {accuracy['status']}."]
    if "epochs_to_target" in accuracy:
        seconds = accuracy.get("seconds_to_target")
        rows.append(
            f"Validation accuracy >= {accuracy['target']} after epoch "
            f"{accuracy['epochs_to_target']} of {accuracy['epochs_run']}"
            + (f", about {seconds:.0f} s of training" if seconds else "")
            + (
                f"; final test accuracy {accuracy['final_test_accuracy']:.4f}"
                if accuracy.get("final_test_accuracy") is not None
                else ""
            )
            + "."
        )
    return rows


SECTIONS = (
    ("flops", "Model FLOPs", _flops),
    ("training", "Training throughput", _training),
    (
        "training_flipped",
        "Training throughput, `train.model.bidirectional` flipped from the default",
        _training,
    ),
    ("inference", "Inference", _inference),
    ("pipeline", "Pipeline overhead", _pipeline),
    ("accuracy", "Time to 99% accuracy (default params)", _accuracy),
)


def markdown(result: dict) -> str:
    lines = _machine(result)
    for key, title, render in SECTIONS:
        lines += ["", f"### {title}", ""]
        section = result["sections"].get(key)
        if section is None:
            lines.append("Not run (excluded by --only/--skip).")
        elif isinstance(section, dict) and "error" in section:
            lines.append(f"Failed: {section['error']}")
        else:
            lines += render(section)
    return "\n".join(lines) + "\n"


def write(result: dict, json_path: Path, markdown_path: Path) -> None:
    """results.json, and the table into markdown_path (between the markers if it has them)."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    text = markdown_path.read_text() if markdown_path.is_file() else ""
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        markdown_path.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")
    else:
        markdown_path.write_text(table)
