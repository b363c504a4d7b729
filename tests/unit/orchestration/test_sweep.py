"""A sweep's plan (grid, trials, fixed overrides), its validation before submission, and the
choice of the best trial: by validation loss, never by test accuracy."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from seqmnist.errors import ConfigError
from seqmnist.orchestration import sweep
from support.project import PROJECT_ROOT


def test_grid_is_every_combination_in_order_with_the_fixed_overrides_first() -> None:
    trials = sweep.plan(
        "sw", grid=["train.model.units=64,128", "train.dropout=0.2,0.3"], fixed=["train.epochs=2"]
    )
    assert [t.name for t in trials] == ["sw-0", "sw-1", "sw-2", "sw-3"]
    assert trials[1].overrides == ("train.epochs=2", "train.model.units=64", "train.dropout=0.3")
    assert trials[2].overrides == ("train.epochs=2", "train.model.units=128", "train.dropout=0.2")


def test_listed_trials_follow_the_grid() -> None:
    trials = sweep.plan("sw", grid=["train.seed=1,2"], trials=["train.seed=7 train.epochs=1"])
    assert [t.overrides for t in trials] == [
        ("train.seed=1",),
        ("train.seed=2",),
        ("train.seed=7", "train.epochs=1"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"grid": ["train.units"]}, "--grid 'train.units': expected key=value"),
        ({"trials": ["train.seed"]}, "--trial 'train.seed'"),
        ({"grid": ["a=1"], "fixed": ["=3"]}, "--set '=3'"),
        ({}, "at least one --grid or --trial"),
    ],
)
def test_malformed_plans_are_refused_naming_the_flag(kwargs: dict, says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("[", r"\[")):
        sweep.plan("sw", **kwargs)


def test_sweep_ids_are_valid_experiment_names() -> None:
    assert sweep.new_sweep_id(datetime(2026, 11, 30, 23, 5, 1, tzinfo=UTC)) == (
        "sweep-20261130-230501"
    )
    with pytest.raises(ConfigError, match="lowercase letters"):
        sweep.plan("Sweep 1", grid=["train.seed=1"])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy2(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_validation_names_the_trial_with_an_unknown_key(project: Path) -> None:
    trials = sweep.plan("sw", trials=["train.seed=3", "train.model.unitz=64"])
    with pytest.raises(ConfigError, match=r"trial sw-1 \(train.model.unitz=64\).*unitz"):
        sweep.validate(project, trials)


def test_validation_applies_the_schema_to_each_trial(project: Path) -> None:
    trials = sweep.plan("sw", grid=["train.model.cell=lstm,transformer"])
    with pytest.raises(ConfigError, match=r"trial sw-1 .*train.model.cell"):
        sweep.validate(project, trials)
    sweep.validate(project, trials[:1])  # the valid one passes
    assert (project / "params.yaml").read_text() == (PROJECT_ROOT / "params.yaml").read_text()


def test_the_best_trial_has_the_lowest_validation_loss_whatever_its_test_accuracy() -> None:
    table = [
        {"trial": "sw-0", "val_loss": 0.030, "test_accuracy": 0.995},
        {"trial": "sw-1", "val_loss": 0.028, "test_accuracy": 0.990},
        {"trial": "sw-2", "val_loss": None, "test_accuracy": 0.999},  # no val loss: never chosen
    ]
    assert sweep.best(table)["trial"] == "sw-1"
    assert sweep.best([{"trial": "sw-0", "val_loss": None}]) is None
