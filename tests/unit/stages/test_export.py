"""`export` stage: conversion, parity with Keras, op types, metadata, model card, int8 variant.

Most tests inspect the tiny model that the `tiny_export` fixture (tests/tiny_export.py) trains
and exports once per session.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from seqmnist.config import ExportParams, ModelParams
from seqmnist.errors import OutputWriteError, SeqmnistError
from seqmnist.onnx import metadata as onnx_meta
from seqmnist.stages import export
from support.faults import Crash, contents, crash_on_call, failing_swap
from support.tiny_export import (
    FAKE_COMMIT,
    FEATURES,
    INT8_ACCURACY_TOLERANCE,
    SEED,
    SPLIT_SIZES,
    TIME_STEPS,
    TINY,
    TinyExport,
)


@pytest.fixture(scope="module")
def exported(tiny_export: TinyExport) -> TinyExport:
    return tiny_export


def test_writes_model_card_int8_and_metrics(exported: TinyExport) -> None:
    names = sorted(path.name for path in exported.out_dir.iterdir())
    assert names == ["MODEL_CARD.md", "export_report.json", "model.int8.onnx", "model.onnx"]
    assert json.loads((exported.out_dir / "export_report.json").read_text()) == exported.metrics
    headline = json.loads(exported.metrics_path.read_text())
    assert headline["model_bytes"] == (exported.out_dir / "model.onnx").stat().st_size
    assert headline["max_abs_prob_diff"] == exported.metrics["max_abs_prob_diff"]
    assert len(headline) == 5, "the full report stays out of `dvc metrics`"
    assert not list(exported.out_dir.parent.glob(".onnx*")), "staging folder left behind"


def test_parity_with_keras_on_whole_test_set(exported: TinyExport) -> None:
    metrics = exported.metrics
    assert metrics["test_images"] == SPLIT_SIZES["test"]
    assert metrics["max_abs_prob_diff"] <= ExportParams().parity_atol
    assert metrics["argmax_disagreements"] == 0
    assert metrics["onnx_test_accuracy"] == metrics["keras_test_accuracy"]
    assert metrics["onnx_test_accuracy"] > 0.9, "the tiny model should learn the synthetic bars"


def test_lstm_becomes_native_lstm_op_without_loop(exported: TinyExport) -> None:
    import onnx

    ops = exported.metrics["op_types"]
    assert ops["LSTM"] == TINY.layers
    assert "Loop" not in ops
    graph = onnx.load(exported.onnx_path).graph
    assert {node.op_type for node in graph.node} >= {"LSTM", "Softmax"}


def test_graph_interface(exported: TinyExport) -> None:
    import onnx

    proto = onnx.load(exported.onnx_path)
    onnx.checker.check_model(proto, full_check=True)
    assert [opset.version for opset in proto.opset_import if opset.domain in ("", "ai.onnx")] == [
        ExportParams().opset
    ]
    (rows,) = proto.graph.input
    dims = rows.type.tensor_type.shape.dim
    assert rows.name == onnx_meta.INPUT_NAME
    assert [dims[0].dim_param, dims[1].dim_value, dims[2].dim_value] == ["batch", 28, 28]
    assert rows.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    outputs = {value.name: value for value in proto.graph.output}
    assert set(outputs) == {onnx_meta.LOGITS_NAME, onnx_meta.PROBABILITIES_NAME}
    for value in outputs.values():
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


def _metadata(onnx_path: Path) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    return onnx_meta.decode_metadata(session.get_modelmeta().custom_metadata_map)


def test_metadata_round_trip(exported: TinyExport) -> None:
    import onnxruntime as ort

    meta = _metadata(exported.onnx_path)
    version = meta[onnx_meta.META_MODEL_VERSION]
    assert set(version) >= {"git_commit", "git_dirty"}
    assert version["train_git_commit"] == FAKE_COMMIT
    assert meta[onnx_meta.META_PARAMS]["train"]["model"] == TINY.model_dump()
    assert meta[onnx_meta.META_PARAMS]["export"] == ExportParams().model_dump()
    trained_on = json.loads(exported.info_path.read_text())["data_sha256"]
    assert meta[onnx_meta.META_DATA_SHA256] == trained_on
    test_metrics = meta[onnx_meta.META_TEST_METRICS]
    assert test_metrics["evaluate"] == {"accuracy": 0.5, "loss": 1.0}
    assert test_metrics["onnx_accuracy"] == exported.metrics["onnx_test_accuracy"]
    assert meta[onnx_meta.META_INPUT_SPEC] == {
        "name": "rows",
        "shape": ["batch", 28, 28],
        "dtype": "float32",
    }
    assert meta[onnx_meta.META_PREPROCESSING]["scale"] == "pixel / 255"
    assert meta[onnx_meta.META_CLASS_LABELS] == [str(digit) for digit in range(10)]
    assert set(meta[onnx_meta.META_PRODUCER]) >= {"tensorflow", "keras", "tf2onnx", "onnx"}
    assert meta[onnx_meta.META_VERIFICATION]["argmax_disagreements"] == 0

    int8 = ort.InferenceSession(exported.int8_path, providers=["CPUExecutionProvider"])
    int8_meta = onnx_meta.decode_metadata(int8.get_modelmeta().custom_metadata_map)
    assert int8_meta[onnx_meta.META_QUANTIZATION]["weight_type"] == "QInt8"
    assert int8_meta[onnx_meta.META_INPUT_SPEC] == meta[onnx_meta.META_INPUT_SPEC]


def test_model_card_states_the_facts(exported: TinyExport) -> None:
    card = (exported.out_dir / "MODEL_CARD.md").read_text()
    metrics = exported.metrics
    for fact in (
        FAKE_COMMIT,
        "pixel / 255",
        "rows",
        "probabilities",
        f"{metrics['onnx_test_accuracy']:.4f}",
        f"{metrics['int8_test_accuracy']:.4f}",
        f"{metrics['file_sizes']['model.onnx']:,} bytes",
        "tf2onnx",
    ):
        assert fact in card, fact


def test_int8_variant_is_smaller_and_about_as_accurate(exported: TinyExport) -> None:
    metrics = exported.metrics
    sizes = metrics["file_sizes"]
    assert sizes["model.int8.onnx"] < sizes["model.onnx"]
    assert (
        abs(metrics["int8_test_accuracy"] - metrics["onnx_test_accuracy"])
        <= INT8_ACCURACY_TOLERANCE
    )


def test_data_checksums_are_those_the_model_was_trained_on(
    exported: TinyExport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export used to read ./metrics/data.json first: whatever data the working directory's file
    described (the repository's committed one, for the tiny model) went into the metadata."""
    decoy = tmp_path / "metrics" / "data.json"
    decoy.parent.mkdir()
    decoy.write_text(json.dumps({"source_sha256": {"other-data-idx3-ubyte": "00" * 32}}))
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "onnx"
    exported.run_export(ExportParams(quantize_int8=False), out_dir, tmp_path / "export.json")
    trained_on = json.loads(exported.info_path.read_text())["data_sha256"]
    assert _metadata(out_dir / "model.onnx")[onnx_meta.META_DATA_SHA256] == trained_on
    card = (out_dir / "MODEL_CARD.md").read_text()
    assert "ab" * 32 in card and "00" * 32 not in card


def test_parity_failure_names_the_gap_and_writes_nothing(
    exported: TinyExport, tmp_path: Path
) -> None:
    """Refused before the write starts; failures during the write are tested below."""
    out_dir = tmp_path / "onnx"
    out_dir.mkdir()
    (out_dir / "previous.txt").write_text("kept")
    strict = ExportParams(parity_atol=1e-12, quantize_int8=False)
    with pytest.raises(SeqmnistError, match=r"max \|p_onnx - p_keras\| = .* \(allowed 1e-12"):
        exported.run_export(strict, out_dir, tmp_path / "export.json")
    assert [path.name for path in tmp_path.iterdir()] == ["onnx"]
    assert (out_dir / "previous.txt").read_text() == "kept"


def _half_written_int8(float_path: Path, int8_path: Path, facts: dict) -> None:
    """The quantizer dying with half of model.int8.onnx on disk."""
    int8_path.write_bytes(float_path.read_bytes()[:100])
    raise Crash("quantizer killed mid-file")


@pytest.mark.parametrize("failure", ["int8 quantization", "model card", "final rename"])
def test_failure_while_writing_keeps_the_previous_onnx_folder(
    exported: TinyExport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """The staging folder already holds model.onnx (and, for the card, model.int8.onnx) when the
    write fails: models/onnx must stay the previous export, whole, with nothing left beside it."""
    out_dir = tmp_path / "onnx"
    shutil.copytree(exported.out_dir, out_dir)
    (out_dir / "previous-export.txt").write_text("the export before this one")
    before = contents(out_dir)
    metrics_path = tmp_path / "export.json"
    metrics_path.write_text('{"previous": true}')
    if failure == "int8 quantization":
        monkeypatch.setattr(export, "quantize_int8", _half_written_int8)
    elif failure == "model card":
        crash_on_call(monkeypatch, export, "model_card", after=0)
    else:
        failing_swap(monkeypatch, out_dir)
    with pytest.raises((Crash, OutputWriteError)):
        exported.run_export(ExportParams(), out_dir, metrics_path)
    assert contents(out_dir) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export.json", "onnx"]
    assert metrics_path.read_text() == '{"previous": true}'


def test_missing_keras_model_is_a_clear_error(tmp_path: Path) -> None:
    from seqmnist.stages import export

    with pytest.raises(SeqmnistError, match=r"model\.keras: Keras model not found"):
        export.run(ExportParams(), model_path=tmp_path / "model.keras", out_dir=tmp_path / "o")


@pytest.mark.parametrize("cell", ["gru", "simple_rnn"])
def test_other_cells_export_with_parity(
    cell: str, exported: TinyExport, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """GRU and SimpleRNN have no native-op requirement: their op types are reported."""
    import keras

    from seqmnist.modeling.model import build_model

    params = ModelParams(cell=cell, units=16, input_projection=16, bidirectional=False)
    keras.utils.set_random_seed(SEED)
    model_path = tmp_path / "model.keras"
    build_model(params, TIME_STEPS, FEATURES).save(model_path)
    from seqmnist.stages import export

    metrics = export.run(
        ExportParams(quantize_int8=False),
        model_path=model_path,
        processed_dir=exported.processed_dir,
        out_dir=tmp_path / "onnx",
        metrics_path=tmp_path / "export.json",
        info_path=tmp_path / "absent_model_info.json",
        eval_metrics_path=tmp_path / "absent_evaluate.json",
    )
    assert metrics["argmax_disagreements"] == 0
    assert metrics["recurrent_cells"] == [{"gru": "GRU", "simple_rnn": "SimpleRNN"}[cell]]
    assert "op types:" in caplog.text
    print(f"{cell} op types: {metrics['op_types']}")
