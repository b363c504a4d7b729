"""dvc.yaml, params.yaml and the code agree on paths, stages and params."""

import json

import yaml

from seqmnist import paths
from seqmnist.config import load_params
from seqmnist.registry.versions import flatten
from support.project import PROJECT_ROOT

MAX_METRIC_COLUMNS = 20
DVC_YAML = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]


def declared(stage: str, kind: str) -> set[str]:
    entries = STAGES[stage].get(kind, [])
    return {next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries}


def test_stages_are_the_five_in_order_each_running_its_own_subcommand():
    assert list(STAGES) == ["download", "preprocess", "train", "evaluate", "export"]
    for name, stage in STAGES.items():
        assert stage["cmd"] == f"seqmnist {name}"
        assert f"src/seqmnist/stages/{name}.py" in declared(name, "deps")
        assert stage["params"] == [name], "each stage depends on its own params group"


def test_outputs_match_the_paths_the_code_writes():
    assert declared("download", "outs") == {str(paths.RAW_DIR)}
    assert declared("preprocess", "outs") == {str(paths.PROCESSED_DIR), str(paths.DATA_STATS)}
    assert declared("train", "outs") == {str(paths.KERAS_DIR)}
    assert declared("train", "metrics") == {str(paths.TRAIN_LIVE_DIR / "metrics.json")}
    assert declared("evaluate", "metrics") == {str(paths.EVAL_METRICS)}
    assert declared("evaluate", "plots") == {
        str(paths.CONFUSION_CSV),
        str(paths.MISCLASSIFIED_PNG),
        str(paths.PER_CLASS_CSV),
    }
    assert declared("export", "outs") == {str(paths.ONNX_DIR)}
    assert declared("export", "metrics") == {str(paths.EXPORT_METRICS)}
    assert DVC_YAML["artifacts"]["seqmnist-rnn"]["path"] == str(paths.ONNX_MODEL)


def test_metric_columns_fit_on_one_screen():
    """`dvc exp show` and `dvc metrics diff` show a handful of numbers, not 129 columns."""
    from seqmnist.registry.history import declared_files

    _, metric_files, _ = declared_files(DVC_YAML)
    columns = []
    for name in metric_files:
        content = json.loads((PROJECT_ROOT / name).read_text())
        columns += [f"{name}:{key}" for key in flatten(content)]
    assert 8 <= len(columns) <= MAX_METRIC_COLUMNS, columns
    assert "metrics/evaluate.json:accuracy" in columns
    assert "metrics/export.json:max_abs_prob_diff" in columns


def test_metrics_are_git_tracked_so_they_diff_across_commits():
    for stage in STAGES.values():
        for entry in stage.get("metrics", []) + stage.get("plots", []):
            assert next(iter(entry.values()))["cache"] is False


def test_checkpoints_are_not_a_dvc_output_and_are_git_ignored():
    everything = yaml.safe_dump(DVC_YAML)
    assert str(paths.TRAIN_CHECKPOINT_DIR) not in everything.replace("checkpoints/train/", "")
    assert "/checkpoints/" in (PROJECT_ROOT / ".gitignore").read_text()


def test_params_yaml_is_valid_and_every_group_is_used():
    params = load_params(PROJECT_ROOT / "params.yaml")
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert set(raw) == set(type(params).model_fields)
    assert params.train.model.cell == "lstm"
    assert params.train.model.input_projection == 128
