"""The web demo in real Chromium: the built page, a trained model, a server and a browser.

pytest owns every process: the page is built with npm when stale (seqmnist.serving.demo), a
model is trained on real MNIST with quick settings, `seqmnist demo`'s server serves both on
127.0.0.1 (port 0), and web/tests/driver.mjs drives Debian's Chromium through playwright-core,
answering one JSON line per call. Without node or /usr/bin/chromium the tests are skipped, unless
SEQMNIST_REQUIRE_BROWSER is set (CI sets it): then they fail.

SEQMNIST_WEB_TEST_MODEL=path/to/model.onnx skips the training, for quick runs while developing;
SEQMNIST_CHROMIUM names another Chromium binary (web/tests/browser.mjs reads it too).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from integration.web.web_driver import WEB_DIR, Browser, serving
from seqmnist.data.idx import read_images, read_labels
from seqmnist.paths import TEST_IMAGES, TEST_LABELS
from seqmnist.serving import demo
from seqmnist.serving.predict import Predictor
from support.project import PROJECT_ROOT

CHROMIUM = Path(os.environ.get("SEQMNIST_CHROMIUM", "/usr/bin/chromium"))
REQUIRE_BROWSER_ENV = "SEQMNIST_REQUIRE_BROWSER"
MODEL_ENV = "SEQMNIST_WEB_TEST_MODEL"
# Quick training, under a minute on 2 cores: every training image, 4 epochs, no weight average;
# 98.5% test accuracy (the default recipe's 20 epochs reach 99.3%).
QUICK_TRAIN = {"epochs": 4, "ema_decay": 0.0}


def _browser_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is not installed (apt-get install chromium; see web/ci-setup.sh)"
    return None


@pytest.fixture(scope="session")
def browser_tools() -> None:
    missing = _browser_missing()
    if missing is None:
        return
    if os.environ.get(REQUIRE_BROWSER_ENV):
        pytest.fail(f"{missing}, but {REQUIRE_BROWSER_ENV} is set: the browser tests must run")
    pytest.skip(f"browser tests skipped: {missing} (set {REQUIRE_BROWSER_ENV} to make this fail)")


@pytest.fixture(scope="session")
def web_dist(browser_tools: None) -> Path:
    """web/dist/, built with npm when missing or older than its sources."""
    if demo.needs_build(WEB_DIR):
        demo.build(WEB_DIR)
    return WEB_DIR / demo.DIST_DIR


@pytest.fixture(scope="session")
def mnist_test(mnist_mirror: Path) -> tuple[np.ndarray, np.ndarray]:
    """The real MNIST test set: uint8 images [10000, 28, 28] and their labels."""
    images = read_images(mnist_mirror / f"{TEST_IMAGES}.gz")
    labels = read_labels(mnist_mirror / f"{TEST_LABELS}.gz")
    return images, labels


def train_quick_model(folder: Path, mirror: Path) -> Path:
    """The real pipeline's stage functions on real MNIST, quick settings; the ONNX model."""
    from seqmnist import logs
    from seqmnist.config import load_params

    logs.import_tensorflow()
    from seqmnist.stages import download, export, preprocess, train

    params = load_params(PROJECT_ROOT / "params.yaml")
    raw, processed, stats = folder / "raw", folder / "processed", folder / "data.json"
    keras_model, info = folder / "keras" / "model.keras", folder / "keras" / "model_info.json"
    download.run(params.download, out_dir=raw, mirror=str(mirror), progress=False)
    preprocess.run(params.preprocess, raw_dir=raw, out_dir=processed, stats_path=stats)
    train.run(
        params.train.model_copy(update=QUICK_TRAIN),
        processed_dir=processed,
        model_path=keras_model,
        info_path=info,
        live_dir=folder / "dvclive",
        checkpoint_dir=folder / "checkpoints",
        stats_path=stats,
        progress=False,
    )
    export.run(
        params.export.model_copy(update={"quantize_int8": False}),
        model_path=keras_model,
        processed_dir=processed,
        out_dir=folder / "onnx",
        metrics_path=folder / "export.json",
        info_path=info,
        eval_metrics_path=folder / "no-evaluate.json",  # optional facts: the stage is skipped
    )
    return folder / "onnx" / "model.onnx"


@pytest.fixture(scope="session")
def trained_model(
    browser_tools: None, mnist_mirror: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV])
    return train_quick_model(tmp_path_factory.mktemp("quick_model"), mnist_mirror)


@pytest.fixture(scope="session")
def predictor(trained_model: Path) -> Predictor:
    return Predictor(trained_model)


@pytest.fixture(scope="session")
def page_url(web_dist: Path, trained_model: Path) -> Iterator[str]:
    with serving(web_dist, trained_model) as url:
        yield url


@pytest.fixture(scope="session")
def browser(browser_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    driver = Browser(tmp_path_factory.mktemp("browser") / "driver.log")
    try:
        yield driver
    finally:
        driver.close()


@pytest.fixture
def page(browser: Browser, page_url: str) -> Browser:
    """The browser on the demo page with the trained model loaded (reloaded if a test left)."""
    if browser.url != page_url:
        outcome = browser.open(page_url)
        assert outcome["ready"], outcome
    return browser
