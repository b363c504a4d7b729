"""The DVC adapter against real DVC in a toy git+DVC repo; no Prefect API needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from seqmnist.errors import ConfigError, OrchestrationError
from seqmnist.orchestration import dvc, runner
from seqmnist.registry import gate, history
from support.prefect_fixtures import make_toy_project

ALL_STAGES = ["download", "preprocess", "train", "evaluate", "export"]
ACCURACY = gate.gate_metric_key()


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return make_toy_project(tmp_path / "toy")


def test_stage_order_comes_from_the_dvc_graph(toy: Path) -> None:
    assert dvc.plan(toy).order == ALL_STAGES
    assert dvc.plan(toy, ["evaluate"]).order == ["download", "preprocess", "train", "evaluate"]
    assert dvc.plan(toy, ["export", "preprocess"]).order == [
        "download",
        "preprocess",
        "train",
        "export",
    ]


def test_unknown_stage_is_named(toy: Path) -> None:
    with pytest.raises(OrchestrationError, match=r"unknown stage.*nope"):
        dvc.plan(toy, ["nope"])


def test_real_pipeline_order_matches_dvc_yaml() -> None:
    from support.project import PROJECT_ROOT

    assert dvc.plan(PROJECT_ROOT).order == ALL_STAGES


def test_overrides_are_written_like_dvc_exp_run_set(toy: Path) -> None:
    dvc.apply_param_overrides(toy, ["train.quality=0.5", "gate.max_regression=0.1"])
    params = yaml.safe_load((toy / "params.yaml").read_text())
    assert params["train"]["quality"] == 0.5 and params["gate"]["max_regression"] == 0.1
    with pytest.raises(ConfigError, match="key=value"):
        dvc.apply_param_overrides(toy, ["train.quality"])
    with pytest.raises(ConfigError, match="invalid override"):
        dvc.apply_param_overrides(toy, ["train.no_such_key=1"])


def test_no_remote_means_no_sync(toy: Path) -> None:
    assert dvc.default_remote(toy) is None


def test_version_reads_dvc_lock_params_and_metrics(toy: Path) -> None:
    for stage in ALL_STAGES:
        runner.run_stage(toy, stage)
    record = history.workspace_record(toy)
    assert set(record["outputs"]) == {"data/raw", "data/processed", "models/keras", "models/onnx"}
    assert record["params"]["train.quality"] == 0.95
    assert record["metrics"][ACCURACY] == 0.95
    assert record["git_dirty"] is False and len(record["git_commit"]) == 40
    assert dvc.stale_stages(toy) == []
    assert history.workspace_record(toy)["id"] == record["id"]


def test_plan_gives_what_dvc_status_lists(toy: Path) -> None:
    assert dvc.plan(toy, ["train"]).stale == set(dvc.stale_stages(toy)) == set(ALL_STAGES)
    runner.run_stage(toy, "download")
    assert dvc.plan(toy).stale == set(ALL_STAGES) - {"download"}


def test_an_early_plan_is_the_plan_when_nothing_changed_since(toy: Path) -> None:
    runner.run_stage(toy, "download")
    dvc.start_planning(toy, ["train"])
    early = dvc.early_plan(toy, ["train"])
    assert early == dvc.plan(toy, ["train"])
    assert early.stale == set(ALL_STAGES) - {"download"} and early.remote is None
    assert dvc.early_plan(toy, ["train"]) is None  # an answer is taken once


def test_an_early_plan_is_dropped_when_params_change_before_it_is_taken(toy: Path) -> None:
    dvc.start_planning(toy)
    dvc.apply_param_overrides(toy, ["train.quality=0.5"])
    assert dvc.early_plan(toy) is None


def test_an_early_plan_is_none_when_not_asked_for_or_when_dvc_failed(toy: Path) -> None:
    assert dvc.early_plan(toy) is None
    dvc.start_planning(toy, ["train"])
    assert dvc.early_plan(toy) is None  # asked for other targets
    (toy / "dvc.yaml").write_text("stages: [not, a, mapping")
    dvc.start_planning(toy)
    assert dvc.early_plan(toy) is None


def test_plan_names_the_project_when_dvc_cannot_read_it(toy: Path) -> None:
    (toy / "dvc.yaml").write_text("stages: [not, a, mapping")
    with pytest.raises(OrchestrationError, match=f"DVC cannot plan the run in {toy}"):
        dvc.plan(toy)
