"""The base distribution is the predictor alone: installed into a fresh virtualenv (pinned as in
requirements.lock), it classifies a PNG and a .npy file with an ONNX model, while TensorFlow,
Prefect and DVC are not importable there, and a pipeline command says which extra it needs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqmnist.serving.predict import Predictor, classify
from support.project import BIN_DIR, PROJECT_ROOT, run
from support.tiny_data import bar_images

PIPELINE_ONLY = ("tensorflow", "keras", "prefect", "dvc", "tf2onnx", "yaml", "pydantic")
PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+==[^\s\\;]+)")
INSTALL_TIMEOUT_S = 600


def _constraints(lock: Path, dest: Path) -> Path:
    """`name==version` of every package in the lock, so the base install gets the same pins."""
    pins = [m.group(1) for line in lock.read_text().splitlines() if (m := PIN.match(line))]
    dest.write_text("\n".join(pins) + "\n")
    return dest


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base-install")
    venv = root / "venv"
    run([str(BIN_DIR / "uv"), "venv", "--quiet", "--python", sys.executable, str(venv)], root)
    constraints = _constraints(PROJECT_ROOT / "requirements.lock", root / "constraints.txt")
    run(
        [
            str(BIN_DIR / "uv"), "pip", "install", "--quiet", "--python", str(venv / "bin/python"),
            "--constraint", str(constraints), str(PROJECT_ROOT),
        ],
        root,
        timeout=INSTALL_TIMEOUT_S,
    )  # fmt: skip
    return venv


@pytest.mark.slow
def test_base_install_classifies_without_the_pipeline(base_venv: Path, tiny_export, tmp_path):
    images = bar_images(np.array([1, 7]), np.random.default_rng(3))
    npy = tmp_path / "bars.npy"
    np.save(npy, images)
    png = tmp_path / "bar.png"
    Image.fromarray((images[0] * 255).astype(np.uint8)).save(png)

    done = run(
        [str(base_venv / "bin/seqmnist"), "predict", str(png), str(npy), "--json",
         "--model", str(tiny_export.onnx_path)],
        tmp_path,
    )  # fmt: skip
    got = [item["label"] for item in json.loads(done.stdout)["predictions"]]
    want = [p.label for p in classify(Predictor(tiny_export.onnx_path), [png, npy])]
    assert got == want and got[1:] == ["1", "7"]

    for module in PIPELINE_ONLY:
        probe = subprocess.run(
            [str(base_venv / "bin/python"), "-c", f"import {module}"], capture_output=True
        )
        assert probe.returncode != 0, f"{module} is importable in the base install"


@pytest.mark.slow
def test_pipeline_command_without_the_extra_names_it(base_venv: Path, tmp_path: Path):
    (tmp_path / "params.yaml").write_text("download:\n  mirrors: [x]\n")
    done = subprocess.run(
        [str(base_venv / "bin/seqmnist"), "train"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "pip install 'seqmnist[pipeline]'" in done.stderr
    assert "Traceback" not in done.stderr
