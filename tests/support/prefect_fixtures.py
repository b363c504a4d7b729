"""Helpers for the orchestration tests: one Prefect test API per session, a toy DVC pipeline.

The toy pipeline has the real stage names and file layout but stages that take milliseconds,
so the flow's own logic (order, retries, failures, versions, gate) is tested against real DVC
and a real Prefect API without training anything.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import textwrap
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from support.project import PROJECT_ROOT, init_repo

PIPELINE_FILE = PROJECT_ROOT / "flows" / "pipeline.py"
FLOW_FILES = (PIPELINE_FILE, PROJECT_ROOT / "flows" / "sweep.py")
HARNESS_TIMEOUT_S = 60
_harness: ExitStack | None = None

TOY_STAGES = textwrap.dedent(
    """
    import json, os, pathlib, sys, time

    import yaml

    stage = sys.argv[1]
    params = yaml.safe_load(pathlib.Path("params.yaml").read_text())
    fail_file = os.environ.get("TOY_FAIL_FILE")
    if fail_file and os.environ.get("TOY_FAIL_STAGE") == stage:
        left = int(pathlib.Path(fail_file).read_text())
        if left > 0:
            pathlib.Path(fail_file).write_text(str(left - 1))
            print(f"transient error in {stage}, {left - 1} failures left")
            sys.exit(3)


    def write(path, text):
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


    quality = params["train"]["quality"]
    time.sleep(params["train"].get("sleep_s", 0))  # a slow trial, for the worker-killed test
    if stage == "download":
        write("data/raw/raw.txt", "raw digits")
    elif stage == "preprocess":
        write("data/processed/seq.txt", pathlib.Path("data/raw/raw.txt").read_text().upper())
    elif stage == "train":
        write("models/keras/model.txt", f"model quality={quality}")
        write("dvclive/train/metrics.json", json.dumps(
            {"val": {"accuracy": quality}, "best_val_loss": round(1 - quality, 6)}))
    elif stage == "evaluate":
        write("metrics/evaluate.json", json.dumps({"accuracy": quality, "loss": 1 - quality}))
    elif stage == "export":
        write("models/onnx/model.onnx", f"onnx bytes of quality={quality}")
        write("models/onnx/MODEL_CARD.md", f"# model card\\nquality {quality}\\n")
        write("metrics/export.json", json.dumps({"parity_max_abs_diff": 0.0}))
    print(f"toy stage {stage} done")
    """
)

TOY_DVC_YAML = {
    "stages": {
        "download": {"cmd": "python toy_stages.py download", "deps": ["toy_stages.py"],
                     "outs": ["data/raw"]},
        "preprocess": {"cmd": "python toy_stages.py preprocess", "deps": ["data/raw"],
                       "outs": ["data/processed"]},
        "train": {"cmd": "python toy_stages.py train", "deps": ["data/processed"],
                  "params": ["train"], "outs": ["models/keras"],
                  "metrics": [{"dvclive/train/metrics.json": {"cache": False}}]},
        "evaluate": {"cmd": "python toy_stages.py evaluate", "deps": ["models/keras"],
                     "metrics": [{"metrics/evaluate.json": {"cache": False}}]},
        "export": {"cmd": "python toy_stages.py export", "deps": ["models/keras"],
                   "outs": ["models/onnx"],
                   "metrics": [{"metrics/export.json": {"cache": False}}]},
    },
    "artifacts": {"seqmnist-rnn": {"path": "models/onnx/model.onnx", "type": "model"}},
}  # fmt: skip

TOY_PARAMS = {
    "train": {"quality": 0.95, "epochs": 1, "sleep_s": 0},
    "gate": {"min_test_accuracy": 0.9, "max_regression": 0.01},
}


def make_toy_project(dest: Path, params: dict | None = None) -> Path:
    """A git+DVC repo whose five stages mimic the real ones' outputs in milliseconds."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "toy_stages.py").write_text(TOY_STAGES)
    (dest / "dvc.yaml").write_text(yaml.safe_dump(TOY_DVC_YAML, sort_keys=False))
    (dest / "params.yaml").write_text(yaml.safe_dump(params or TOY_PARAMS, sort_keys=False))
    (dest / "flows").mkdir()
    for file in FLOW_FILES:  # what `seqmnist flow` and `seqmnist sweep` run
        shutil.copy2(file, dest / "flows" / file.name)
    shutil.copy2(PROJECT_ROOT / "prefect.yaml", dest / "prefect.yaml")  # what workers deploy
    return init_repo(dest, "toy pipeline")


def load_pipeline() -> ModuleType:
    """flows/pipeline.py as a module (flows/ is a folder of scripts, not an installed package)."""
    spec = importlib.util.spec_from_file_location("seqmnist_flows_pipeline", PIPELINE_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_prefect_harness(home: Path, config: pytest.Config) -> None:
    """Start one Prefect test API for the whole session, however many modules ask for it."""
    global _harness
    if _harness is not None:
        return
    os.environ["PREFECT_HOME"] = str(home)
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    stack = ExitStack()
    stack.enter_context(temporary_settings(updates={PREFECT_HOME: str(home)}))
    stack.enter_context(prefect_test_harness(server_startup_timeout=HARNESS_TIMEOUT_S))
    _harness = stack

    def stop() -> None:
        global _harness
        stack.close()
        _harness = None

    config.add_cleanup(stop)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> None:
    """A real (temporary, SQLite) Prefect API for flow runs in this test session."""
    start_prefect_harness(tmp_path_factory.mktemp("prefect-home"), request.config)


@pytest.fixture(scope="session")
def pipeline(prefect_api: None) -> Iterator[ModuleType]:
    """flows/pipeline.py, with retries that do not wait (the policy itself is tested apart)."""
    module = load_pipeline()
    originals = {"repro_stage": module.repro_stage, "dvc_sync": module.dvc_sync}
    for name, task in originals.items():
        setattr(module, name, task.with_options(retry_delay_seconds=0, retry_jitter_factor=None))
    yield module
    for name, task in originals.items():
        setattr(module, name, task)
