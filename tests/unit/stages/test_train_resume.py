"""An interrupted `train` run: which checkpoints a rerun resumes from, and that a rerun after a
kill at any moment ends with the bytes of an uninterrupted run."""

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from seqmnist.config import PreprocessParams
from seqmnist.modeling.checkpoints import CHECKPOINT_MODEL, CHECKPOINT_STATE, discard_checkpoint
from seqmnist.paths import KERAS_MODEL, MODEL_INFO, TRAIN_CHECKPOINT_DIR, TRAIN_IMAGES
from seqmnist.stages import preprocess, train
from support.idx_factory import tiny_mnist, write_raw_dir
from support.project import PROJECT_ROOT, run, set_params
from support.tiny_data import train_on_tiny_data

RESUMED = "resuming from"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def crash_after_epoch(monkeypatch: pytest.MonkeyPatch, epochs_done: int) -> None:
    """train.run raises right after checkpointing its `epochs_done`-th epoch."""
    save_checkpoint = train.save_checkpoint

    def save_then_crash(model, state, *args):
        save_checkpoint(model, state, *args)
        if state.next_epoch == epochs_done:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(train, "save_checkpoint", save_then_crash)


# --- which checkpoints resume -------------------------------------------------------------------

PREPROCESS_BASE = PreprocessParams(validation_size=20, seed=42)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory) -> dict[str, Path]:
    """Processed data written by the real preprocess stage: the base, and variants of it."""
    root = tmp_path_factory.mktemp("preprocessed")
    payloads = tiny_mnist(n_train=120, n_test=20, rows=6, columns=5)
    images = payloads[TRAIN_IMAGES]
    one_pixel_off = {**payloads, TRAIN_IMAGES: images[:-1] + bytes([images[-1] ^ 1])}
    variants = {
        "base": (payloads, PREPROCESS_BASE),
        "preprocess.seed": (payloads, PREPROCESS_BASE.model_copy(update={"seed": 7})),
        "preprocess.validation_size": (
            payloads,
            PREPROCESS_BASE.model_copy(update={"validation_size": 30}),
        ),
        "one raw pixel": (one_pixel_off, PREPROCESS_BASE),
    }
    folders = {}
    for name, (raw_payloads, params) in variants.items():
        folder = root / name
        preprocess.run(
            params,
            raw_dir=write_raw_dir(folder / "raw", raw_payloads),
            out_dir=folder / "processed",
            stats_path=folder / "data.json",
        )
        folders[name] = folder / "processed"
    return folders


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, preprocessed) -> Path:
    """The checkpoint folder of a 2-epoch run on the base data that crashed after epoch 1."""
    folder = tmp_path_factory.mktemp("interrupted")
    with pytest.MonkeyPatch.context() as patch:
        crash_after_epoch(patch, epochs_done=1)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_on_tiny_data(folder, preprocessed["base"], epochs=2, batch_size=10)
    return folder / "checkpoints"


# What changed since the interrupted run: (processed data, train params overridden)
CHANGES = {
    "nothing": ("base", {}),
    "train.learning_rate": ("base", {"learning_rate": 0.004}),
    "preprocess.seed": ("preprocess.seed", {}),
    "preprocess.validation_size": ("preprocess.validation_size", {}),
    "one raw pixel": ("one raw pixel", {}),
}


@pytest.mark.parametrize("change", CHANGES)
def test_only_a_checkpoint_of_the_same_params_and_data_resumes(
    tmp_path, preprocessed, interrupted, caplog, change
):
    data, train_overrides = CHANGES[change]
    shutil.copytree(interrupted, tmp_path / "checkpoints")
    caplog.set_level(logging.INFO, logger="seqmnist")
    info = train_on_tiny_data(
        tmp_path, preprocessed[data], epochs=2, batch_size=10, **train_overrides
    )
    resumed = f"{RESUMED} {tmp_path / 'checkpoints'} at epoch 2" in caplog.text
    assert resumed is (change == "nothing")
    assert info["epochs_run"] == 2
    assert not (tmp_path / "checkpoints").exists()


def test_corrupt_checkpoint_is_named_and_trained_afresh(
    tmp_path, preprocessed, interrupted, caplog
):
    """A truncated last.keras beside a matching state file: named, discarded, trained afresh."""
    reference = train_on_tiny_data(
        tmp_path / "reference", preprocessed["base"], epochs=2, batch_size=10
    )
    checkpoint_dir = shutil.copytree(interrupted, tmp_path / "run" / "checkpoints")
    (checkpoint_dir / CHECKPOINT_MODEL).write_bytes(b"PK\x03\x04 truncated")

    info = train_on_tiny_data(tmp_path / "run", preprocessed["base"], epochs=2, batch_size=10)

    assert "last.keras is unreadable" in caplog.text and "starting over" in caplog.text
    assert RESUMED not in caplog.text
    assert info["epochs_run"] == reference["epochs_run"] == 2, "trained from the start"


def test_averaged_run_resumes_to_the_same_model(tmp_path, preprocessed, monkeypatch):
    """The average lives in the checkpointed optimizer: a crash and rerun end where one run does."""
    data = preprocessed["base"]
    train_on_tiny_data(tmp_path / "reference", data, ema_decay=0.9, epochs=4, batch_size=10)
    crash_after_epoch(monkeypatch, epochs_done=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_on_tiny_data(tmp_path / "victim", data, ema_decay=0.9, epochs=4, batch_size=10)
    monkeypatch.undo()
    info = train_on_tiny_data(tmp_path / "victim", data, ema_decay=0.9, epochs=4, batch_size=10)
    assert info["epochs_run"] == 4
    assert sha256_of(tmp_path / "victim/model.keras") == sha256_of(
        tmp_path / "reference/model.keras"
    )


def test_discarding_a_checkpoint_takes_what_killed_runs_left_beside_it(tmp_path):
    checkpoint_dir = tmp_path / "checkpoints" / "train"
    checkpoint_dir.mkdir(parents=True)
    (checkpoint_dir / CHECKPOINT_STATE).write_text("{}")
    staged_by_a_killed_run = tmp_path / "checkpoints" / ".train.x1y2.tmp" / "train"
    staged_by_a_killed_run.mkdir(parents=True)
    (staged_by_a_killed_run / CHECKPOINT_MODEL).write_bytes(b"PK")
    (tmp_path / "checkpoints" / "other").mkdir()

    discard_checkpoint(checkpoint_dir)

    assert os.listdir(tmp_path / "checkpoints") == ["other"]
    discard_checkpoint(checkpoint_dir)  # nothing there: nothing to do


# --- kill -9 at any moment, on the shipped recipe -----------------------------------------------

SHIPPED_QUICK = {"train.max_train_samples": 2000, "train.epochs": 3}  # 8 batches an epoch

# `seqmnist train`, SIGKILLed by itself at the moment named by argv[1]. Each hook wraps the real
# function at a point the code reaches once per run; the process dies there, as under kill -9.
KILLED_AT = r"""
import os, signal, sys
from pathlib import Path

from seqmnist import cli, io
from seqmnist.modeling import checkpoints
from seqmnist.stages import train

moment = sys.argv[1]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if moment == "mid-epoch":  # epoch 2 after its 4th batch: checkpoint of epoch 1 on disk
    progress_class = train.epoch_progress_class

    def dying_progress_class():
        class DyingProgress(progress_class()):
            def __init__(self, epoch, *args):
                super().__init__(epoch, *args)
                self.dies = epoch == 1

            def on_train_batch_end(self, batch, logs=None):
                super().on_train_batch_end(batch, logs)
                if self.dies and batch == 3:
                    die()

        return DyingProgress

    train.epoch_progress_class = dying_progress_class
elif moment == "checkpoint staged":  # epoch 2's weights staged, its state.json not yet
    write_json = checkpoints.write_json

    def dying_write_json(target, payload):
        if Path(target).name == checkpoints.CHECKPOINT_STATE and payload["next_epoch"] == 2:
            die()
        write_json(target, payload)

    checkpoints.write_json = dying_write_json
elif moment == "checkpoint swap":  # epoch 2's exchanged into place, epoch 1's not yet removed
    exchange = io._exchange  # the first exchange of a run: epoch 1's checkpoint was a new folder

    def dying_exchange(first, second):
        exchange(first, second)
        die()

    io._exchange = dying_exchange
elif moment == "model saved":  # model.keras written, model_info.json not yet
    write_json = train.write_json

    def dying_write_json(target, payload):
        if Path(target).name == Path(train.MODEL_INFO).name:
            die()
        write_json(target, payload)

    train.write_json = dying_write_json
else:
    sys.exit(f"unknown moment {moment!r}")
sys.exit(cli.main(["train", "--no-progress"]))
"""


@pytest.fixture(scope="module")
def shipped_data(tmp_path_factory, mnist_mirror) -> Path:
    """A project folder: the shipped params.yaml, quick, and real MNIST downloaded and
    preprocessed by the stages."""
    project = tmp_path_factory.mktemp("shipped")
    shutil.copy(PROJECT_ROOT / "params.yaml", project)
    set_params(project, SHIPPED_QUICK)
    for stage in ("download", "preprocess"):
        run(["seqmnist", stage], project, SEQMNIST_MIRROR=str(mnist_mirror))
    return project


def training_folder(shipped_data: Path, folder: Path) -> Path:
    """A project folder of its own for `seqmnist train`, sharing the data."""
    folder.mkdir()
    shutil.copy(shipped_data / "params.yaml", folder)
    for shared in ("data", "metrics"):
        (folder / shared).symlink_to(shipped_data / shared)
    return folder


@pytest.fixture(scope="module")
def uninterrupted(shipped_data, tmp_path_factory) -> str:
    """sha256 of the model.keras of a run never killed."""
    folder = training_folder(shipped_data, tmp_path_factory.mktemp("uninterrupted") / "project")
    run(["seqmnist", "train", "--no-progress"], folder)
    return sha256_of(folder / KERAS_MODEL)


def checkpointed_epochs(folder: Path) -> int | None:
    """How many epochs the project's checkpoint holds (None: no checkpoint)."""
    state = folder / TRAIN_CHECKPOINT_DIR / CHECKPOINT_STATE
    return json.loads(state.read_text())["next_epoch"] if state.is_file() else None


# What a kill at each moment leaves: the epochs checkpointed, and whether model.keras is written.
# A checkpoint is always in place: seqmnist.io.atomic_dir swaps folders in one exchange.
LEFT_AFTER_KILL = {
    "mid-epoch": (1, False),
    "checkpoint staged": (1, False),
    "checkpoint swap": (2, False),
    "model saved": (3, True),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", LEFT_AFTER_KILL)
def test_rerun_after_kill_ends_with_the_uninterrupted_runs_bytes(
    tmp_path, shipped_data, uninterrupted, moment
):
    """The shipped recipe (dropout, weight average, random shifts, our kernel) on 2,000 images
    for 3 epochs: killed at `moment`, rerun, byte for byte the model of a run never killed."""
    folder = training_folder(shipped_data, tmp_path / "project")
    victim = subprocess.run(
        [sys.executable, "-c", KILLED_AT, moment],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert victim.returncode == -signal.SIGKILL, victim.stderr
    epochs_on_disk, model_on_disk = LEFT_AFTER_KILL[moment]
    assert checkpointed_epochs(folder) == epochs_on_disk
    assert (folder / KERAS_MODEL).is_file() is model_on_disk
    assert not (folder / MODEL_INFO).exists()

    rerun = run(["seqmnist", "train", "--no-progress"], folder)

    assert "LSTM backend kernel (no GPU visible)" in rerun.stderr

    assert f"{RESUMED} {TRAIN_CHECKPOINT_DIR} at epoch {epochs_on_disk + 1}" in rerun.stderr
    assert sha256_of(folder / KERAS_MODEL) == uninterrupted
    assert json.loads((folder / MODEL_INFO).read_text())["epochs_run"] == 3
    assert os.listdir(folder / TRAIN_CHECKPOINT_DIR.parent) == [], "no checkpoint or leftover"
