"""The whole pipeline with quick settings in a temporary git+DVC repo, diffed across two commits."""

import json

import pytest

from support.project import QUICK_PARAMS, make_project, run, set_params

pytestmark = pytest.mark.slow


def test_quick_pipeline_then_param_change_diffs_across_commits(tmp_path, mnist_mirror):
    project = make_project(tmp_path / "proj", QUICK_PARAMS)
    env = {"SEQMNIST_MIRROR": str(mnist_mirror)}

    run(["dvc", "repro"], project, **env)
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert 0.5 < evaluation["accuracy"] <= 1.0
    assert set(evaluation) == {"accuracy", "loss", "errors", "macro_f1"}
    per_class = (project / "plots/per_class.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in per_class] == ["class", *map(str, range(10))]
    assert (project / "models/keras/model.keras").is_file()
    info = json.loads((project / "models/keras/model_info.json").read_text())
    assert info["git_commit"] and info["data_sha256"]
    assert info["params"]["model"]["units"] == QUICK_PARAMS["train.model.units"]
    assert (project / "plots/misclassified.png").read_bytes()[:4] == b"\x89PNG"
    curves = (project / "dvclive/train/plots/metrics/val/accuracy.tsv").read_text().splitlines()
    assert len(curves) == 1 + QUICK_PARAMS["train.epochs"]
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "quick model"], project)

    status = run(["dvc", "status"], project).stdout
    assert "up to date" in status

    set_params(project, {"train.model.units": 48})
    run(["dvc", "repro"], project, **env)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "wider model"], project)

    params_diff = json.loads(run(["dvc", "params", "diff", "HEAD~1", "--json"], project).stdout)
    assert params_diff["params.yaml"] == {"train.model.units": {"old": 32, "new": 48, "diff": 16}}

    metrics_diff = json.loads(run(["dvc", "metrics", "diff", "HEAD~1", "--json"], project).stdout)
    accuracy = metrics_diff["metrics/evaluate.json"]["accuracy"]
    new_evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert accuracy["old"] == evaluation["accuracy"]
    assert accuracy["new"] == new_evaluation["accuracy"]
    assert accuracy["diff"] == pytest.approx(new_evaluation["accuracy"] - evaluation["accuracy"])
    assert "metrics/data.json" not in metrics_diff, "data did not change between the commits"

    plots = run(["dvc", "plots", "show", "--json"], project).stdout
    for name in ("Loss per epoch", "Confusion matrix (test set)", "plots/misclassified.png"):
        assert name in plots
