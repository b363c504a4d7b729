"""seqmnist.orchestration against real DVC in a toy git+DVC repo; no Prefect API needed."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import yaml

from prefect_fixtures import make_toy_project
from seqmnist import orchestration as orch
from seqmnist.config import GateParams
from seqmnist.errors import ConfigError

ALL_STAGES = ["download", "preprocess", "train", "evaluate", "export"]
ACCURACY = orch.gate_metric_key()


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return make_toy_project(tmp_path / "toy")


def test_stage_order_comes_from_the_dvc_graph(toy: Path) -> None:
    assert orch.stage_order(toy) == ALL_STAGES
    assert orch.stage_order(toy, ["evaluate"]) == ["download", "preprocess", "train", "evaluate"]
    assert orch.stage_order(toy, ["export", "preprocess"]) == [
        "download",
        "preprocess",
        "train",
        "export",
    ]


def test_unknown_stage_is_named(toy: Path) -> None:
    with pytest.raises(orch.OrchestrationError, match=r"unknown stage.*nope"):
        orch.stage_order(toy, ["nope"])


def test_real_pipeline_order_matches_dvc_yaml() -> None:
    from conftest import PROJECT_ROOT

    assert orch.stage_order(PROJECT_ROOT) == ALL_STAGES


def test_run_stage_runs_then_skips_unchanged(toy: Path) -> None:
    lines: list[str] = []
    first = orch.run_stage(toy, "download", on_line=lines.append)
    second = orch.run_stage(toy, "download")
    forced = orch.run_stage(toy, "download", force=True)
    assert (first.skipped, second.skipped, forced.skipped) == (False, True, False)
    assert any("toy stage download done" in line for line in lines)
    assert "data/raw" in (toy / "dvc.lock").read_text()


def test_failed_stage_carries_exit_code_and_log_tail(
    toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_file = tmp_path / "failures"
    fail_file.write_text("5")
    monkeypatch.setenv("TOY_FAIL_FILE", str(fail_file))
    monkeypatch.setenv("TOY_FAIL_STAGE", "download")
    with pytest.raises(orch.StageFailed) as caught:
        orch.run_stage(toy, "download")
    error = caught.value
    assert (error.stage, error.returncode, error.timed_out) == ("download", 3, False)
    assert "transient error in download" in error.log_tail
    assert "stage 'download' failed" in str(error) and "exited with code 3" in str(error)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_command_past_its_timeout_is_killed(tmp_path: Path) -> None:
    result = orch.run_command([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, 1)
    assert result.timed_out and result.returncode is None and result.duration_s < 30


def test_overrides_are_written_like_dvc_exp_run_set(toy: Path) -> None:
    orch.apply_param_overrides(toy, ["train.quality=0.5", "gate.max_regression=0.1"])
    params = yaml.safe_load((toy / "params.yaml").read_text())
    assert params["train"]["quality"] == 0.5 and params["gate"]["max_regression"] == 0.1
    with pytest.raises(ConfigError, match="key=value"):
        orch.apply_param_overrides(toy, ["train.quality"])
    with pytest.raises(ConfigError, match="invalid override"):
        orch.apply_param_overrides(toy, ["train.no_such_key=1"])


def test_no_remote_means_no_sync(toy: Path) -> None:
    assert orch.default_remote(toy) is None


def test_version_reads_dvc_lock_params_and_metrics(toy: Path) -> None:
    for stage in ALL_STAGES:
        orch.run_stage(toy, stage)
    record = orch.build_version(toy)
    assert set(record["outputs"]) == {"data/raw", "data/processed", "models/keras", "models/onnx"}
    assert record["params"]["train.quality"] == 0.95
    assert record["metrics"][ACCURACY] == 0.95
    assert record["git_dirty"] is False and len(record["git_commit"]) == 40
    assert orch.stale_stages(toy) == []
    assert orch.build_version(toy)["version"] == record["version"]


def test_version_id_changes_with_each_input() -> None:
    base = orch.version_id({"models/onnx": "1"}, {"train.epochs": 1})
    assert base == orch.version_id({"models/onnx": "1"}, {"train.epochs": 1})
    assert base != orch.version_id({"models/onnx": "2"}, {"train.epochs": 1})
    assert base != orch.version_id({"models/onnx": "1"}, {"train.epochs": 2})


@pytest.mark.parametrize(
    ("accuracy", "promoted_accuracy", "promote", "reason"),
    [
        (0.995, None, True, "passed"),
        (0.98, None, False, "below gate.min_test_accuracy"),
        (0.995, 0.996, True, "passed"),
        (0.992, 0.996, False, "regresses"),
        (None, None, False, "no metrics/evaluate.json:accuracy"),
    ],
)
def test_gate(
    accuracy: float | None, promoted_accuracy: float | None, promote: bool, reason: str
) -> None:
    gate = GateParams(min_test_accuracy=0.99, max_regression=0.002)
    metrics = {} if accuracy is None else {ACCURACY: accuracy}
    promoted = (
        None if promoted_accuracy is None else {"version": "v0", "accuracy": promoted_accuracy}
    )
    decision = orch.gate_decision(metrics, gate, promoted)
    assert decision.promote is promote and decision.blocked is not promote
    assert reason in decision.reason


def test_promote_writes_model_card_and_pointer(tmp_path: Path) -> None:
    (tmp_path / "models/onnx").mkdir(parents=True)
    (tmp_path / "models/onnx/model.onnx").write_bytes(b"onnx")
    (tmp_path / "models/onnx/MODEL_CARD.md").write_text("# card")
    record = {"version": "v1", "metrics": {ACCURACY: 0.99}, "git_commit": "abc"}
    folder = orch.promote(tmp_path, record)
    assert (folder / "model.onnx").read_bytes() == b"onnx"
    assert (folder / "MODEL_CARD.md").read_text() == "# card"
    pointer = json.loads((folder / "version.json").read_text())
    assert pointer["version"] == "v1" and pointer["accuracy"] == 0.99
    assert orch.read_promoted(tmp_path) == pointer
    assert sorted(p.name for p in folder.iterdir()) == [
        "MODEL_CARD.md",
        "model.onnx",
        "version.json",
    ]


def test_promote_without_export_is_refused(tmp_path: Path) -> None:
    with pytest.raises(orch.OrchestrationError, match="did `export` run"):
        orch.promote(tmp_path, {"version": "v1", "metrics": {}})
