import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from seqmnist.config import ConfigError, TrainParams, parse_params
from seqmnist.constants import NUM_CLASSES
from seqmnist.data.dataset import load_split
from seqmnist.errors import DataError
from seqmnist.modeling import checkpoints, training
from seqmnist.modeling.training import epoch_order, shift_images, subset_indices
from support.tiny_data import (
    FEATURES,
    TIME_STEPS,
    TINY_TRAIN,
    train_on_tiny_data,
    write_processed,
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


def curve(live_dir: Path, split: str, metric: str) -> list[float]:
    """One DVCLive curve, a value per epoch."""
    rows = (live_dir / "plots/metrics" / split / f"{metric}.tsv").read_text().splitlines()[1:]
    return [float(row.split("\t")[1]) for row in rows]


def scores_of_saved_model(model_path: Path, processed: Path) -> tuple[float, float]:
    """Validation loss and accuracy of the saved model, computed here from its logits."""
    import keras

    x_val, y_val = load_split("val", processed)
    logits = keras.models.load_model(model_path).predict(x_val, verbose=0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y_val, logits)
    return float(loss), float(np.mean(logits.argmax(axis=1) == y_val))


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    return write_processed(tmp_path_factory.mktemp("processed"))


def test_two_runs_give_identical_weights_and_metrics(tmp_path, processed):
    first = train_on_tiny_data(tmp_path / "a", processed)
    second = train_on_tiny_data(tmp_path / "b", processed)
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

    train_on_tiny_data(tmp_path, processed, epochs=2)
    model = keras.models.load_model(tmp_path / "model.keras")
    recurrent = [layer for layer in model.layers if hasattr(layer, "unroll")]
    assert recurrent and not any(layer.unroll for layer in recurrent)


def test_training_learns_the_tiny_task(tmp_path, processed):
    info = train_on_tiny_data(tmp_path, processed, epochs=6, learning_rate=0.01)
    history = json.loads((tmp_path / "live/metrics.json").read_text())
    assert history["val"]["accuracy"] > 0.5
    val_loss = curve(tmp_path / "live", "val", "loss")
    assert info["best_epoch"] == int(np.argmin(val_loss)) + 1
    assert info["best_val_loss"] == pytest.approx(min(val_loss), rel=1e-6)


def test_early_stopping_saves_the_best_epochs_averaged_weights(tmp_path, processed):
    """A learning rate too high for long: validation loss rises after some epoch, training stops
    `patience` epochs later, and the saved model is the weight average validated at the best
    epoch (not the last weights, nor the training weights)."""
    info = train_on_tiny_data(
        tmp_path,
        processed,
        epochs=12,
        lr_schedule="constant",
        learning_rate=0.05,
        ema_decay=0.9,
        weight_decay=0.0,  # decay would hold the overfitting back
        early_stopping_patience=2,
    )
    val_loss = curve(tmp_path / "live", "val", "loss")
    val_accuracy = curve(tmp_path / "live", "val", "accuracy")
    best = info["best_epoch"]
    assert info["stopped_early"] and info["epochs_run"] == best + 2 < 12, (
        f"precondition: this recipe stops early on this CPU (val loss {val_loss})"
    )
    assert best == int(np.argmin(val_loss)) + 1
    assert abs(val_loss[-1] - val_loss[best - 1]) > 0.05, "the last epoch scores differently"

    loss, accuracy = scores_of_saved_model(tmp_path / "model.keras", processed)
    assert loss == pytest.approx(info["best_val_loss"], rel=1e-4)
    assert loss == pytest.approx(val_loss[best - 1], rel=1e-4)
    assert accuracy == val_accuracy[best - 1]


def test_label_smoothing_trains_on_soft_targets_and_validates_on_true_labels(tmp_path, processed):
    """The training loss is the smoothed one (never below the soft targets' entropy), while
    val/loss and early stopping use the true labels: the saved model's true-label loss, not its
    smoothed one. A checkpoint with the smoothed loss reloads (a resumed run)."""
    import keras

    from seqmnist.modeling.losses import SmoothedSparseCrossentropy

    smoothing = 0.1
    info = train_on_tiny_data(
        tmp_path, processed, epochs=6, learning_rate=0.01, label_smoothing=smoothing
    )
    soft_target = np.full(NUM_CLASSES, smoothing / NUM_CLASSES)
    soft_target[0] += 1 - smoothing
    entropy = float(-(soft_target * np.log(soft_target)).sum())  # 0.50 for 0.1 over 10
    assert min(curve(tmp_path / "live", "train", "loss")) > entropy
    assert max(curve(tmp_path / "live", "val", "accuracy")) > 0.5, "precondition: it learns"

    loss, _ = scores_of_saved_model(tmp_path / "model.keras", processed)
    assert loss == pytest.approx(info["best_val_loss"], rel=1e-4)
    assert min(curve(tmp_path / "live", "val", "loss")) == pytest.approx(loss, rel=1e-4)
    x_val, y_val = load_split("val", processed)
    logits = keras.models.load_model(tmp_path / "model.keras").predict(x_val, verbose=0)
    smoothed = float(SmoothedSparseCrossentropy(smoothing)(y_val, logits))
    assert abs(smoothed - loss) > 0.01, "the two losses are told apart"

    params = TrainParams.model_validate({**TINY_TRAIN, "label_smoothing": smoothing})
    model = compiled_tiny_model(params, train_size=len(x_val))
    model.optimizer.build(model.trainable_variables)  # as in a checkpoint after an epoch
    model.save(tmp_path / "checkpoint.keras")
    reloaded = keras.models.load_model(tmp_path / "checkpoint.keras")
    assert reloaded.loss.get_config()["smoothing"] == smoothing


@pytest.mark.parametrize(
    ("cell", "lstm_backend", "layer_class"),
    [("lstm", "keras", "LSTM"), ("gru", "auto", "GRU"), ("simple_rnn", "auto", "SimpleRNN")],
)
def test_keras_backend_and_other_cells_train_into_a_loadable_rolled_model(
    tmp_path, processed, cell, lstm_backend, layer_class
):
    """Keras's unrolled layers train (no GPU here); the saved model is Keras's rolled layer."""
    import keras

    info = train_on_tiny_data(
        tmp_path,
        processed,
        epochs=2,
        lstm_backend=lstm_backend,
        model={**TINY_TRAIN["model"], "cell": cell},
    )
    assert info["lstm_backend"] == {"name": "keras", "unroll": True}
    model = keras.models.load_model(tmp_path / "model.keras")
    recurrent = model.get_layer(f"{cell}_0")
    assert type(recurrent).__name__ == layer_class and recurrent.unroll is False
    loss, _ = scores_of_saved_model(tmp_path / "model.keras", processed)
    assert loss == pytest.approx(info["best_val_loss"], rel=1e-4)


def test_validation_scores_the_weight_average_and_training_weights_survive(processed):
    """With ema_decay, `fit` validates the average and leaves the training weights untouched."""
    from seqmnist.modeling.averaging import ValidateAveraged, averaged_weights

    params = TrainParams.model_validate(
        {**TINY_TRAIN, "ema_decay": 0.9, "lr_schedule": "constant", "learning_rate": 0.01}
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

    params = TrainParams.model_validate(
        {**TINY_TRAIN, "ema_decay": 0.999, "lr_schedule": "constant"}
    )
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


@pytest.mark.parametrize("lstm_backend", ["kernel", "keras"])
def test_weight_decay_is_decoupled_spares_biases_and_survives_a_checkpoint(
    tmp_path, processed, lstm_backend
):
    """One step with decay d at the scheduled learning rate r lands at the plain step minus
    r * d * w for every kernel and exactly at it for every bias, also after a save and reload
    (resume). Biases start non-zero, so that decaying one would show; no dropout, so that the
    reloaded model's step sees the same gradients."""
    import keras

    base = {
        **TINY_TRAIN,
        "model": {**TINY_TRAIN["model"], "dropout": 0.0},
        "ema_decay": 0.0,
        "weight_decay": 0.0,
        "learning_rate": 0.01,
        "lstm_backend": lstm_backend,
    }
    x, y = load_split("train", processed)
    batch = (x[: TINY_TRAIN["batch_size"]], y[: TINY_TRAIN["batch_size"]])

    def compiled(weight_decay: float):
        params = TrainParams.model_validate({**base, "weight_decay": weight_decay})
        model = compiled_tiny_model(params, len(x))
        for variable in model.trainable_variables:
            if "bias" in variable.path:
                variable.assign(variable + 0.1)
        return model

    def one_step(model) -> dict[str, np.ndarray]:
        model.train_on_batch(*batch)
        return {v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables}

    plain = compiled(0.0)
    initial = {v.path: keras.ops.convert_to_numpy(v) for v in plain.trainable_variables}
    stepped = one_step(plain)
    decayed = compiled(0.5)
    rate = float(decayed.optimizer.learning_rate)  # the schedule's first step: warm-up's start
    assert rate == pytest.approx(0.001)
    decayed.optimizer.build(decayed.trainable_variables)  # as in a checkpoint after an epoch
    decayed.save(tmp_path / "fresh.keras")
    for model in (decayed, keras.models.load_model(tmp_path / "fresh.keras")):
        got = one_step(model)
        assert sorted(got) == sorted(stepped)
        for path, value in got.items():
            shrink = 0.0 if "bias" in path else rate * 0.5 * initial[path]
            np.testing.assert_allclose(value, stepped[path] - shrink, rtol=1e-5, atol=1e-7)
        assert any("bias" in path for path in got) and any("bias" not in path for path in got)


@pytest.mark.parametrize(
    ("train_params", "field"),
    [
        ({"model": {"cell": "transformer"}}, "train.model.cell"),
        ({"model": {"units": 0}}, "train.model.units"),
        ({"model": {"layers": -1}}, "train.model.layers"),
        ({"epochs": 0}, "train.epochs"),
        ({"batch_size": 0}, "train.batch_size"),
        ({"ema_decay": 1.0}, "train.ema_decay"),
        ({"weight_decay": -0.1}, "train.weight_decay"),
        ({"label_smoothing": 1.0}, "train.label_smoothing"),
    ],
)
def test_bad_params_name_the_field(train_params, field):
    raw = {"download": {"mirrors": ["https://example.invalid/"]}, "train": train_params}
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    assert field in str(caught.value)


def test_batch_larger_than_data_is_rejected_before_training(tmp_path, processed):
    with pytest.raises(ConfigError, match=r"train\.batch_size: 5000 is larger than the 400"):
        train_on_tiny_data(tmp_path, processed, batch_size=5000)
    assert not (tmp_path / "live").exists()


def test_undistorted_last_epochs_must_leave_distorted_ones(tmp_path, processed):
    with pytest.raises(ConfigError, match=r"train\.augment_off_last_epochs: 3 must be below"):
        train_on_tiny_data(tmp_path, processed, augment_off_last_epochs=3)
    assert not (tmp_path / "live").exists()


def test_a_git_repository_without_a_commit_is_named_before_training(
    tmp_path, processed, monkeypatch
):
    """DVCLive fails with a traceback there (it reads HEAD); `git init` then `dvc repro` before
    the first commit is how a new project starts."""
    import subprocess

    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    monkeypatch.chdir(project)
    with pytest.raises(ConfigError, match=r"project is a git repository without a commit"):
        train_on_tiny_data(tmp_path, processed)
    assert not (tmp_path / "live").exists()
    assert not (tmp_path / "model.keras").exists()


def test_missing_processed_data_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"train_x.npy: processed data not found"):
        train_on_tiny_data(tmp_path, tmp_path / "nowhere")


def test_validation_data_of_another_shape_is_rejected(tmp_path, processed):
    odd = write_processed(tmp_path / "odd")
    np.save(odd / "val_x.npy", np.zeros((100, TIME_STEPS + 1, FEATURES), np.float32))
    with pytest.raises(DataError, match=r"val_x.npy: sequences of shape \(13, 10\) do not fit"):
        train_on_tiny_data(tmp_path, odd)


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert np.array_equal(epoch_order(50, 1, 3), epoch_order(50, 1, 3))
    assert not np.array_equal(epoch_order(50, 1, 3), epoch_order(50, 1, 4))
    assert sorted(epoch_order(50, 1, 3).tolist()) == list(range(50))


def test_the_last_epochs_of_the_schedule_train_on_unaugmented_images():
    x = np.random.default_rng(2).uniform(0, 1, (40, 8, 8)).astype(np.float32)
    y = np.arange(40) % 10
    params = TrainParams(epochs=5, augment_off_last_epochs=2, augment_elastic_pixels=1.0)
    for epoch in range(5):
        order = epoch_order(len(x), params.seed, epoch)
        x_epoch, y_epoch = training.epoch_arrays(x, y, params, epoch)
        np.testing.assert_array_equal(y_epoch, y[order])
        unchanged = np.array_equal(x_epoch, x[order])
        assert unchanged == (epoch >= 3), f"epoch {epoch}"


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
