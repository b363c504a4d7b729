"""Shared test setup: telemetry off, tool state kept in the test run, MNIST mirror."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from seqmnist.environment import TELEMETRY_OFF
from support.project import BIN_DIR, SHARED_MNIST

# The session's one Prefect API (`prefect_api`) and the flow module (`pipeline`).
pytest_plugins = ["support.prefect_fixtures"]

os.environ.update(
    {
        **TELEMETRY_OFF,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # Set before any test module imports Keras, so no ~/.keras/keras.json leaks in.
        "KERAS_HOME": tempfile.mkdtemp(prefix="seqmnist-tests-keras-"),
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
    }
)


@pytest.fixture(scope="session", autouse=True)
def _isolated_tool_homes(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Prefect and DVC keep their state inside this test session's temp folder."""
    homes = tmp_path_factory.mktemp("homes")
    os.environ.setdefault("PREFECT_HOME", str(homes / "prefect"))
    os.environ["DVC_GLOBAL_CONFIG_DIR"] = str(homes / "dvc-global")
    os.environ["DVC_SITE_CACHE_DIR"] = str(homes / "dvc-site")


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory):
    """The tiny trained-and-exported model (support/tiny_export.py), built once per session."""
    from support.tiny_export import build_tiny_export

    return build_tiny_export(tmp_path_factory.mktemp("tiny_export"))


@pytest.fixture(scope="session")
def mnist_mirror() -> Path:
    """The real MNIST files, laid out as a mirror (../shared/mnist beside the checkout)."""
    mirror = Path(os.environ.get("SEQMNIST_MIRROR", SHARED_MNIST))
    if not (mirror / "SHA256SUMS").is_file():
        pytest.fail(f"no MNIST mirror at {mirror}: set SEQMNIST_MIRROR or place ../shared/mnist")
    return mirror
