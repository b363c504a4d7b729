"""`train` stage: fit the recurrent classifier, resumably and reproducibly, logging with DVCLive.

Training runs one `fit` call per epoch so that each epoch's shuffle order is a pure function of
(seed, epoch). After every epoch the full state (model with optimizer, early-stopping bookkeeping,
best weights, curves so far) is checkpointed under checkpoints/train/, deliberately not a DVC
output: DVC deletes a stage's outputs before running it. A killed run therefore resumes at the
next epoch and ends with the same model as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from seqmnist.config import TrainParams
from seqmnist.dataset import NUM_CLASSES, load_split
from seqmnist.errors import ConfigError, DataError
from seqmnist.io import atomic_path, write_json
from seqmnist.paths import (
    DATA_STATS,
    KERAS_MODEL,
    MODEL_INFO,
    PROCESSED_DIR,
    TRAIN_CHECKPOINT_DIR,
    TRAIN_LIVE_DIR,
)
from seqmnist.provenance import data_checksums, git_version

CHECKPOINT_MODEL = "last.keras"
CHECKPOINT_BEST = "best.weights.h5"
CHECKPOINT_STATE = "state.json"
PINNED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date, as Keras uses
PINNED_DATE_SAVED = "1980-01-01@00:00:00"
AUGMENT_STREAM = 1  # separates the augmentation RNG stream from the shuffle's


@dataclass
class TrainingState:
    """Everything besides the weights that an interrupted run needs to continue exactly."""

    fingerprint: str
    next_epoch: int = 0
    best_val_loss: float = float("inf")
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, epoch: int, metrics: dict[str, float], patience: int) -> bool:
        """Book-keep one finished epoch; True if it is the best so far (early stopping)."""
        self.history.append(metrics)
        improved = metrics["val/loss"] < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch = metrics["val/loss"], epoch
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        self.stopped_early = self.epochs_without_improvement >= patience
        self.next_epoch = epoch + 1
        return improved


def validate(params: TrainParams, train_shape: tuple[int, ...], other_shapes: dict) -> None:
    """Reject params and data that cannot train, before any model is built."""
    n_train = min(train_shape[0], params.max_train_samples or train_shape[0])
    if params.batch_size > n_train:
        raise ConfigError(
            f"train.batch_size: {params.batch_size} is larger than the {n_train} training "
            "images; lower it or raise train.max_train_samples"
        )
    if params.warmup_epochs >= params.epochs and params.lr_schedule == "cosine":
        raise ConfigError(
            f"train.warmup_epochs: {params.warmup_epochs} must be below train.epochs "
            f"({params.epochs}) for the cosine schedule"
        )
    for name, shape in other_shapes.items():
        if shape[1:] != train_shape[1:]:
            raise DataError(
                f"{PROCESSED_DIR}/{name}_x.npy: sequences of shape {shape[1:]} do not fit a "
                f"model trained on {train_shape[1:]} (time_steps, features)"
            )


def subset_indices(n_total: int, max_samples: int | None, seed: int) -> np.ndarray:
    """A seeded subset for quick runs (all rows, in order, when no cap is set)."""
    if max_samples is None or max_samples >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:max_samples])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffle order of one epoch: a function of (seed, epoch) only, so resumes replay it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def shift_images(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each image by up to `max_shift` rows and columns (zero fill).

    A label-preserving augmentation: digits are written anywhere near the centre, so small shifts
    teach the row reader what matters and cut overfitting. Images are moved in groups of equal
    shift, one slice copy per group: 0.11 s per epoch of 55,000 images, against 0.3-2.7 s for
    one fancy-indexed gather of every pixel.
    """
    if max_shift == 0:
        return images
    n, rows, columns = images.shape
    row_shift = rng.integers(0, 2 * max_shift + 1, size=n) - max_shift
    column_shift = rng.integers(0, 2 * max_shift + 1, size=n) - max_shift
    shifted = np.zeros_like(images)
    for down in range(-max_shift, max_shift + 1):
        for right in range(-max_shift, max_shift + 1):
            chosen = np.flatnonzero((row_shift == down) & (column_shift == right))
            # shifted[r, c] = image[r + down, c + right] where that pixel exists
            r0, r1 = max(0, -down), rows - max(0, down)
            c0, c1 = max(0, -right), columns - max(0, right)
            shifted[chosen, r0:r1, c0:c1] = images[
                chosen, r0 + down : r1 + down, c0 + right : c1 + right
            ]
    return shifted


def fingerprint(params: TrainParams, data_sha: dict[str, str], train_shape: tuple) -> str:
    """Identifies what a checkpoint was trained on; a mismatch means start over."""
    payload = json.dumps(
        {"params": params.model_dump(), "data": data_sha, "shape": list(train_shape)},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _learning_rate(params: TrainParams, steps_per_epoch: int):
    import keras

    if params.lr_schedule == "constant":
        return params.learning_rate
    warmup_steps = params.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=params.learning_rate / 10 if warmup_steps else params.learning_rate,
        decay_steps=(params.epochs - params.warmup_epochs) * steps_per_epoch,
        warmup_target=params.learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
        alpha=0.01,
    )


def compile_model(model, params: TrainParams, steps_per_epoch: int) -> None:
    """Adam on logits with sparse cross-entropy, averaging the weights if `ema_decay` > 0."""
    import keras

    from seqmnist.averaging import AveragingAdam

    model.compile(
        optimizer=AveragingAdam(
            learning_rate=_learning_rate(params, steps_per_epoch),
            use_ema=params.ema_decay > 0,
            ema_momentum=params.ema_decay,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def new_training_model(params: TrainParams, time_steps: int, features: int):
    """The model `fit` trains: LSTM layers in our C++ kernel (`train.fused_lstm`), other cells
    unrolled over the time steps; both are faster on CPU (bench/README.md).

    The kernel's model starts from the weights and dropout streams Keras's own layers draw from
    the seed, so `train.fused_lstm` changes the speed and the rounding, not the experiment.
    """
    import keras

    from seqmnist.model import build_model, fusable

    keras_form = build_model(params.model, time_steps, features, NUM_CLASSES, unroll=True)
    if not (params.fused_lstm and fusable(params.model)):
        return keras_form
    fused = build_model(params.model, time_steps, features, NUM_CLASSES, fused_lstm=True)
    fused.set_weights(keras_form.get_weights())
    for layer in fused.layers:
        if isinstance(layer, keras.layers.Dropout):
            state = keras_form.get_layer(layer.name).seed_generator.state
            layer.seed_generator.state.assign(state)
    return fused


def rolled_copy(model, params: TrainParams, time_steps: int, features: int):
    """The same weights in the rolled form that is saved and exported (one ONNX LSTM op)."""
    from seqmnist.model import build_model

    rolled = build_model(params.model, time_steps, features, NUM_CLASSES)
    rolled.set_weights(model.get_weights())
    return rolled


def seed_everything(seed: int) -> None:
    """Same seed, same data, same code: same weights (deterministic TF ops on)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _load_state(checkpoint_dir: Path, expected: str) -> TrainingState | None:
    state_path = checkpoint_dir / CHECKPOINT_STATE
    if not (state_path.is_file() and (checkpoint_dir / CHECKPOINT_MODEL).is_file()):
        return None
    try:
        state = TrainingState(**json.loads(state_path.read_text()))
    except (ValueError, TypeError):
        return None
    return state if state.fingerprint == expected else None


def _save_checkpoint(model, state: TrainingState, checkpoint_dir: Path, improved: bool) -> None:
    """Weights first, state last: the state file only ever points at a complete checkpoint.

    The best weights are the ones validation scored: the average when the weights are averaged.
    """
    from seqmnist.averaging import averaged_weights

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if improved:
        with atomic_path(checkpoint_dir / CHECKPOINT_BEST) as tmp, averaged_weights(model):
            model.save_weights(tmp)
    with atomic_path(checkpoint_dir / CHECKPOINT_MODEL) as tmp:
        model.save(tmp)
    write_json(checkpoint_dir / CHECKPOINT_STATE, asdict(state))


def _renumber_shared_objects(node, numbers: dict[int, int]):
    """Replace Keras's `shared_object_id`s (Python object addresses) by 1, 2, ... in order."""
    if isinstance(node, list):
        return [_renumber_shared_objects(item, numbers) for item in node]
    if not isinstance(node, dict):
        return node
    renumbered = {key: _renumber_shared_objects(value, numbers) for key, value in node.items()}
    if "shared_object_id" in node:
        identity = node["shared_object_id"]
        renumbered["shared_object_id"] = numbers.setdefault(identity, len(numbers) + 1)
    return renumbered


def pin_archive(path: Path) -> None:
    """Rewrite a saved .keras archive so that its bytes depend on the model alone.

    Keras stamps the save time into the archive and numbers shared objects by their memory
    address, so identical weights gave a different file on every save: a rerun on the same
    commit changed the model's DVC hash and reran evaluate/export for nothing. Entry times and
    `date_saved` are pinned and shared objects renumbered in order of appearance;
    model_info.json says where a model came from.
    """
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            if info.filename == "metadata.json":
                data = json.dumps({**json.loads(data), "date_saved": PINNED_DATE_SAVED}).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared_objects(json.loads(data), {})).encode()
            pinned = zipfile.ZipInfo(info.filename, date_time=PINNED_ZIP_TIME)
            pinned.compress_type, pinned.external_attr = info.compress_type, info.external_attr
            archive.writestr(pinned, data)


def _log_epoch(live, metrics: dict[str, float]) -> None:
    for name, value in metrics.items():
        live.log_metric(name, value, plot="/" in name)
    live.next_step()


def _epoch_progress_class():
    import keras
    from tqdm.auto import tqdm

    class EpochProgress(keras.callbacks.Callback):
        """A tqdm bar per epoch with the running loss and accuracy (terminal only)."""

        def __init__(self, epoch: int, epochs: int, steps: int, enabled: bool) -> None:
            super().__init__()
            self.bar = tqdm(
                total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not enabled
            )

        def on_train_batch_end(self, batch, logs=None) -> None:
            logs = logs or {}
            self.bar.set_postfix(
                loss=f"{logs.get('loss', 0):.4f}", acc=f"{logs.get('accuracy', 0):.4f}"
            )
            self.bar.update(1)

        def on_train_end(self, logs=None) -> None:
            self.bar.close()

    return EpochProgress


PREFETCH_BATCHES = 2


def _batches(x: np.ndarray, y: np.ndarray, batch_size: int):
    """Batches of in-memory arrays, with tf.data's autotuning off.

    With autotuning on, ending an iteration waited for the autotuner's thread, which sleeps on
    a doubling timer (10 ms, 20 ms, ... 2.56 s): a `fit` call returned only at its next wake-up,
    so an epoch of 7 s often took 10.3 s (bench/README.md). Slicing arrays needs no tuning.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    return dataset.prefetch(PREFETCH_BATCHES).with_options(options)


def run(
    params: TrainParams,
    processed_dir: Path = PROCESSED_DIR,
    model_path: Path = KERAS_MODEL,
    info_path: Path = MODEL_INFO,
    live_dir: Path = TRAIN_LIVE_DIR,
    checkpoint_dir: Path = TRAIN_CHECKPOINT_DIR,
    stats_path: Path = DATA_STATS,
    progress: bool = True,
) -> dict:
    """Train, checkpointing each epoch; write the best model and what produced it."""
    x_train, y_train = load_split("train", processed_dir)
    x_val, y_val = load_split("val", processed_dir)
    validate(params, x_train.shape, {"val": x_val.shape})
    keep = subset_indices(len(x_train), params.max_train_samples, params.seed)
    x_train, y_train = x_train[keep], y_train[keep]
    time_steps, features = x_train.shape[1:]
    steps_per_epoch = -(-len(x_train) // params.batch_size)

    import keras
    from dvclive import Live

    from seqmnist.averaging import ValidateAveraged  # also registers the optimizer for resumes
    from seqmnist.fused_lstm import FusedLSTM  # registers the layer for resumes

    EpochProgress = _epoch_progress_class()

    seed_everything(params.seed)
    data_sha = data_checksums(stats_path)
    expected = fingerprint(params, data_sha, x_train.shape)
    checkpoint_dir = Path(checkpoint_dir)
    state = _load_state(checkpoint_dir, expected)
    if state is None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        state = TrainingState(fingerprint=expected)
        model = new_training_model(params, time_steps, features)
        compile_model(model, params, steps_per_epoch)
    else:
        print(f"train: resuming from {checkpoint_dir} at epoch {state.next_epoch + 1}")
        model = keras.models.load_model(
            checkpoint_dir / CHECKPOINT_MODEL, custom_objects={"FusedLSTM": FusedLSTM}
        )

    val_data = _batches(x_val, y_val, params.batch_size)
    show_bar = progress and sys.stderr.isatty()
    epoch_seconds: list[float] = []
    with Live(str(live_dir), dvcyaml=None, save_dvc_exp=False) as live:
        for metrics in state.history:  # DVC cleared dvclive/ before a resumed run: replay it
            _log_epoch(live, metrics)
        while state.next_epoch < params.epochs and not state.stopped_early:
            epoch = state.next_epoch
            order = epoch_order(len(x_train), params.seed, epoch)
            augment_rng = np.random.default_rng([params.seed, epoch, AUGMENT_STREAM])
            x_epoch = shift_images(x_train[order], params.augment_max_shift, augment_rng)
            started = time.perf_counter()
            history = model.fit(
                _batches(x_epoch, y_train[order], params.batch_size),
                validation_data=val_data,
                shuffle=False,
                verbose=0,
                callbacks=[
                    ValidateAveraged(),
                    EpochProgress(epoch, params.epochs, steps_per_epoch, show_bar),
                ],
            ).history
            epoch_seconds.append(time.perf_counter() - started)
            metrics = {
                f"{split}/{name}": float(history[prefix + name][-1])
                for split, prefix in (("train", ""), ("val", "val_"))
                for name in ("loss", "accuracy")
            }
            metrics["epoch_seconds"] = round(epoch_seconds[-1], 2)
            improved = state.record(epoch, metrics, params.early_stopping_patience)
            _log_epoch(live, metrics)
            _save_checkpoint(model, state, checkpoint_dir, improved)
            print(
                f"epoch {epoch + 1}/{params.epochs}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" in k)
                + f" ({epoch_seconds[-1]:.1f} s){' *' if improved else ''}",
                flush=True,
            )

        model.load_weights(checkpoint_dir / CHECKPOINT_BEST)
        live.summary["best_epoch"] = state.best_epoch + 1
        live.summary["best_val_loss"] = state.best_val_loss
        live.summary["epochs_run"] = state.next_epoch
        if epoch_seconds:
            median = float(np.median(epoch_seconds))
            live.summary["median_epoch_seconds"] = round(median, 2)
            live.summary["train_samples_per_second"] = round(len(x_train) / median, 1)

    info = {
        **git_version(),
        "params": params.model_dump(),
        "data_sha256": data_sha,
        "input_shape": [int(time_steps), int(features)],
        "num_classes": NUM_CLASSES,
        "train_samples": len(x_train),
        "best_epoch": state.best_epoch + 1,
        "best_val_loss": state.best_val_loss,
        "epochs_run": state.next_epoch,
        "stopped_early": state.stopped_early,
        "keras_version": keras.__version__,
    }
    model_path = Path(model_path)
    with atomic_path(model_path) as tmp:
        rolled_copy(model, params, time_steps, features).save(tmp)
        pin_archive(tmp)
    write_json(Path(info_path), info)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    print(
        f"train: best epoch {state.best_epoch + 1}/{state.next_epoch}, "
        f"val loss {state.best_val_loss:.4f} -> {model_path}"
    )
    return info
