import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from seqmnist.config import ConfigError, TrainParams, parse_params
from seqmnist.data.dataset import load_split
from seqmnist.errors import DataError
from seqmnist.modeling import checkpoints, training
from seqmnist.modeling.checkpoints import CHECKPOINT_STATE
from seqmnist.modeling.training import epoch_order, shift_images, subset_indices
from seqmnist.stages import train
from seqmnist.stages.train import run
from support.tiny_data import FEATURES, TIME_STEPS, write_processed

TINY = {
    "epochs": 3,
    "batch_size": 32,
    "augment_max_shift": 0,  # the tiny task encodes the label in a row's position
    "warmup_epochs": 1,
    "early_stopping_patience": 5,
    "model": {"units": 12, "input_projection": 8},
}


def train_into(folder: Path, processed: Path, **overrides) -> dict:
    params = TrainParams.model_validate({**TINY, **overrides})
    return run(
        params,
        processed_dir=processed,
        model_path=folder / "model.keras",
        info_path=folder / "model_info.json",
        live_dir=folder / "live",
        checkpoint_dir=folder / "checkpoints",
        stats_path=folder / "missing-stats.json",
        progress=False,
    )


def weights_of(path: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(path).get_weights()


def assert_same_weights(left_model: Path, right_model: Path) -> None:
    for left, right in zip(weights_of(left_model), weights_of(right_model), strict=True):
        np.testing.assert_array_equal(left, right)


def values_of(variables) -> list[np.ndarray]:
    import keras

    return [keras.ops.convert_to_numpy(variable) for variable in variables]


def compiled_tiny_model(params: TrainParams, train_size: int):
    """The training model train.run builds and compiles, outside train.run."""
    training.seed_everything(params.seed)
    model = training.new_training_model(params, TIME_STEPS, FEATURES)
    training.compile_model(model, params, steps_per_epoch=train_size // params.batch_size)
    return model


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    return write_processed(tmp_path_factory.mktemp("processed"))


def test_two_runs_give_identical_weights_and_metrics(tmp_path, processed):
    first = train_into(tmp_path / "a", processed)
    second = train_into(tmp_path / "b", processed)
    assert_same_weights(tmp_path / "a/model.keras", tmp_path / "b/model.keras")
    assert first["best_val_loss"] == second["best_val_loss"]
    assert (tmp_path / "a/model.keras").read_bytes() == (tmp_path / "b/model.keras").read_bytes()
    with zipfile.ZipFile(tmp_path / "a/model.keras") as archive:
        assert {info.date_time for info in archive.infolist()} == {checkpoints.PINNED_ZIP_TIME}
        assert (
            json.loads(archive.read("metadata.json"))["date_saved"] == checkpoints.PINNED_DATE_SAVED
        )
    assert first["input_shape"] == [TIME_STEPS, FEATURES]
    metrics = json.loads((tmp_path / "a/live/metrics.json").read_text())
    assert metrics["step"] == 2 and "val" in metrics and "train" in metrics
    assert (tmp_path / "a/live/plots/metrics/val/accuracy.tsv").is_file()
    assert not (tmp_path / "a/checkpoints").exists(), "checkpoints are cleared after success"


def test_saved_model_is_rolled_for_export(tmp_path, processed):
    import keras

    train_into(tmp_path, processed, epochs=2)
    model = keras.models.load_model(tmp_path / "model.keras")
    recurrent = [layer for layer in model.layers if hasattr(layer, "unroll")]
    assert recurrent and not any(layer.unroll for layer in recurrent)


def test_training_learns_the_tiny_task(tmp_path, processed):
    info = train_into(tmp_path, processed, epochs=6, learning_rate=0.01)
    history = json.loads((tmp_path / "live/metrics.json").read_text())
    assert history["val"]["accuracy"] > 0.5
    assert info["best_epoch"] >= 1


RESUMABLE_SCRIPT = """
import sys, time
from pathlib import Path
from seqmnist import logs
from seqmnist.stages import train
from seqmnist.config import TrainParams

logs.setup()
folder, processed, pause = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
save_checkpoint = train.save_checkpoint

def save_then_pause(*args, **kwargs):  # a slow disk: gives the test time to kill mid-training
    save_checkpoint(*args, **kwargs)
    time.sleep(pause)

train.save_checkpoint = save_then_pause
params = TrainParams.model_validate({**%(tiny)r, "epochs": 6})
train.run(params, processed_dir=processed, model_path=folder / "model.keras",
          info_path=folder / "info.json", live_dir=folder / "live",
          checkpoint_dir=folder / "checkpoints", stats_path=folder / "none.json",
          progress=False)
"""


def _train_in_subprocess(folder: Path, processed: Path, slow: bool) -> subprocess.Popen:
    script = RESUMABLE_SCRIPT % {"tiny": TINY}
    return subprocess.Popen(
        [sys.executable, "-c", script, str(folder), str(processed), "2.0" if slow else "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_killed_training_resumes_and_matches_uninterrupted_run(tmp_path, processed):
    """kill -9 in the middle of training; the rerun resumes and ends with the same model."""
    reference = _train_in_subprocess(tmp_path / "reference", processed, slow=False)
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    victim_dir = tmp_path / "victim"
    victim = _train_in_subprocess(victim_dir, processed, slow=True)
    state_file = victim_dir / "checkpoints" / CHECKPOINT_STATE
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if state_file.is_file() and json.loads(state_file.read_text())["next_epoch"] >= 2:
            break
        assert victim.poll() is None, "training finished before it could be interrupted"
        time.sleep(0.2)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    interrupted_at = json.loads(state_file.read_text())["next_epoch"]
    assert 2 <= interrupted_at < 6
    assert not (victim_dir / "model.keras").exists()

    resumed = _train_in_subprocess(victim_dir, processed, slow=False)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert f"resuming from {victim_dir / 'checkpoints'} at epoch {interrupted_at + 1}" in output
    assert "epoch 1/6" not in output
    assert_same_weights(tmp_path / "reference/model.keras", victim_dir / "model.keras")
    curves = (victim_dir / "live/plots/metrics/val/loss.tsv").read_text().splitlines()
    assert len(curves) == 1 + 6, "the resumed run's curves cover every epoch"


def test_validation_scores_the_weight_average_and_training_weights_survive(processed):
    """With ema_decay, `fit` validates the average and leaves the training weights untouched."""
    from seqmnist.modeling.averaging import ValidateAveraged, averaged_weights

    params = TrainParams.model_validate(
        {**TINY, "ema_decay": 0.9, "lr_schedule": "constant", "learning_rate": 0.01}
    )
    x, y = load_split("train", processed)
    x_val, y_val = load_split("val", processed)
    model = compiled_tiny_model(params, len(x))
    logs = model.fit(
        x,
        y,
        batch_size=32,
        epochs=2,
        validation_data=(x_val, y_val),
        verbose=0,
        callbacks=[ValidateAveraged()],
    ).history
    trained = values_of(model.trainable_variables)
    average = values_of(model.optimizer._model_variables_moving_average)
    assert not all(np.array_equal(a, b) for a, b in zip(trained, average, strict=True)), (
        "fit kept the average out"
    )

    with averaged_weights(model):
        assert all(
            np.array_equal(w, a)
            for w, a in zip(values_of(model.trainable_variables), average, strict=True)
        )
        averaged_loss = model.evaluate(x_val, y_val, verbose=0)[0]
    assert logs["val_loss"][-1] == pytest.approx(averaged_loss, rel=1e-6)
    assert model.evaluate(x_val, y_val, verbose=0)[0] != averaged_loss, "training weights are back"
    for now, before in zip(values_of(model.trainable_variables), trained, strict=True):
        np.testing.assert_array_equal(now, before)


def test_weight_average_warms_up_its_decay(processed):
    """average_t = d_t * average_(t-1) + (1 - d_t) * w_t, d_t = min(decay, (1 + t) / (10 + t)),
    d_0 = 0: after a short run the average follows the training weights, not the random init."""
    import keras

    params = TrainParams.model_validate({**TINY, "ema_decay": 0.999, "lr_schedule": "constant"})
    x, y = load_split("train", processed)
    model = compiled_tiny_model(params, len(x))
    after_each_step: list[list[np.ndarray]] = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: after_each_step.append(
            values_of(model.trainable_variables)
        )
    )
    model.fit(x, y, batch_size=params.batch_size, verbose=0, callbacks=[record])

    expected = after_each_step[0]
    for step, weights in enumerate(after_each_step[1:], start=1):
        decay = min(0.999, (1 + step) / (10 + step))
        expected = [decay * a + (1 - decay) * w for a, w in zip(expected, weights, strict=True)]
    averages = values_of(model.optimizer._model_variables_moving_average)
    for got, want in zip(averages, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_averaged_run_resumes_to_the_same_model(tmp_path, processed, monkeypatch):
    """The average lives in the checkpointed optimizer: a crash and rerun end where one run does."""
    train_into(tmp_path / "reference", processed, ema_decay=0.9, epochs=4)
    save_checkpoint = train.save_checkpoint

    def crash_after_second_epoch(model, state, *args):
        save_checkpoint(model, state, *args)
        if state.next_epoch == 2:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(train, "save_checkpoint", crash_after_second_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_into(tmp_path / "victim", processed, ema_decay=0.9, epochs=4)
    monkeypatch.undo()
    info = train_into(tmp_path / "victim", processed, ema_decay=0.9, epochs=4)
    assert info["epochs_run"] == 4
    assert_same_weights(tmp_path / "reference/model.keras", tmp_path / "victim/model.keras")


def test_corrupt_checkpoint_is_named_and_set_aside(tmp_path, processed, caplog):
    """A truncated last.keras beside a matching state file: named, set aside, trained afresh."""
    reference = train_into(tmp_path / "reference", processed, epochs=1, warmup_epochs=0)
    params = TrainParams.model_validate({**TINY, "epochs": 1, "warmup_epochs": 0})
    expected = training.fingerprint(params, {}, load_split("train", processed)[0].shape)
    checkpoint_dir = tmp_path / "run" / "checkpoints"
    checkpoint_dir.mkdir(parents=True)
    (checkpoint_dir / CHECKPOINT_STATE).write_text(
        json.dumps({"fingerprint": expected, "next_epoch": 1})
    )
    (checkpoint_dir / checkpoints.CHECKPOINT_MODEL).write_bytes(b"PK\x03\x04 truncated")

    info = train_into(tmp_path / "run", processed, epochs=1, warmup_epochs=0)

    assert info["best_val_loss"] == reference["best_val_loss"], "trained from the start"
    assert "last.keras is unreadable" in caplog.text and "starting over" in caplog.text


def test_stale_checkpoint_from_other_params_is_discarded(tmp_path, processed):
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / CHECKPOINT_STATE).write_text(
        json.dumps({"fingerprint": "something-else", "next_epoch": 2})
    )
    (folder / "checkpoints" / "last.keras").write_bytes(b"not a model")
    info = train_into(folder, processed, epochs=1, warmup_epochs=0)
    assert info["epochs_run"] == 1


@pytest.mark.parametrize(
    ("train_params", "field"),
    [
        ({"model": {"cell": "transformer"}}, "train.model.cell"),
        ({"model": {"units": 0}}, "train.model.units"),
        ({"model": {"layers": -1}}, "train.model.layers"),
        ({"epochs": 0}, "train.epochs"),
        ({"batch_size": 0}, "train.batch_size"),
        ({"ema_decay": 1.0}, "train.ema_decay"),
    ],
)
def test_bad_params_name_the_field(train_params, field):
    raw = {"download": {"mirrors": ["https://example.invalid/"]}, "train": train_params}
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    assert field in str(caught.value)


def test_batch_larger_than_data_is_rejected_before_training(tmp_path, processed):
    with pytest.raises(ConfigError, match=r"train\.batch_size: 5000 is larger than the 400"):
        train_into(tmp_path, processed, batch_size=5000)
    assert not (tmp_path / "live").exists()


def test_missing_processed_data_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"train_x.npy: processed data not found"):
        train_into(tmp_path, tmp_path / "nowhere")


def test_validation_data_of_another_shape_is_rejected(tmp_path, processed):
    odd = write_processed(tmp_path / "odd")
    np.save(odd / "val_x.npy", np.zeros((100, TIME_STEPS + 1, FEATURES), np.float32))
    with pytest.raises(DataError, match=r"val_x.npy: sequences of shape \(13, 10\) do not fit"):
        train_into(tmp_path, odd)


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert np.array_equal(epoch_order(50, 1, 3), epoch_order(50, 1, 3))
    assert not np.array_equal(epoch_order(50, 1, 3), epoch_order(50, 1, 4))
    assert sorted(epoch_order(50, 1, 3).tolist()) == list(range(50))


def test_subset_is_seeded_and_capped():
    assert subset_indices(10, None, 0).tolist() == list(range(10))
    picked = subset_indices(100, 7, 0)
    assert len(picked) == 7 and picked.tolist() == subset_indices(100, 7, 0).tolist()


def test_shift_images_moves_content_within_bounds_and_zero_fills():
    image = np.zeros((1, 6, 5), np.float32)
    image[0, 2, 3] = 1.0
    shifted = shift_images(np.repeat(image, 200, axis=0), 2, np.random.default_rng(0))
    assert shifted.shape == (200, 6, 5) and shifted.dtype == np.float32
    rows, columns = np.nonzero(shifted.sum(axis=0))
    assert set(rows) == {0, 1, 2, 3, 4} and set(columns) == {1, 2, 3, 4}
    kept = shifted.reshape(200, -1).sum(axis=1)
    assert set(kept.tolist()) == {0.0, 1.0}, "the pixel lands once, or falls off the right edge"
    again = shift_images(np.repeat(image, 200, axis=0), 2, np.random.default_rng(0))
    np.testing.assert_array_equal(shifted, again)
    assert shift_images(image, 0, np.random.default_rng(0)) is image


def test_batches_cover_the_arrays_in_order_without_autotuning():
    """tf.data's autotuner made ending an epoch wait up to seconds for its timer thread."""
    x = np.arange(10 * 2 * 3, dtype=np.float32).reshape(10, 2, 3)
    y = np.arange(10)
    dataset = training.batches(x, y, 4)
    assert dataset.options().autotune.enabled is False
    batches = list(dataset.as_numpy_iterator())
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([rows for rows, _ in batches]), x)
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in batches]), y)


def test_shift_images_equals_a_window_of_the_zero_padded_image():
    """The definition, image by image: window (row_start, column_start) of the padded image."""
    images = np.random.default_rng(1).uniform(0, 1, (300, 7, 6)).astype(np.float32)
    shifted = shift_images(images, 3, np.random.default_rng(5))
    draws = np.random.default_rng(5)
    row_start = draws.integers(0, 7, size=300)
    column_start = draws.integers(0, 7, size=300)
    for index, image in enumerate(images):
        padded = np.pad(image, 3)
        r, c = row_start[index], column_start[index]
        np.testing.assert_array_equal(shifted[index], padded[r : r + 7, c : c + 6])
