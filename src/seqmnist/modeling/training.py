"""The training loop's parts: what an epoch sees, how the model is built and compiled, and the
bookkeeping an interrupted run needs to continue exactly.

Each epoch's shuffle and augmentation are pure functions of (seed, epoch), so a resumed run
replays them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from seqmnist.config import LstmBackend, ModelParams, TrainParams
from seqmnist.constants import NUM_CLASSES
from seqmnist.errors import ConfigError, DataError
from seqmnist.paths import PROCESSED_DIR

AUGMENT_STREAM = 1  # separates the augmentation RNG stream from the shuffle's
PREFETCH_BATCHES = 2


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
    # Each dropout layer's RNG state [seed, counter]: Keras's save does not keep it, and without
    # it a resumed run would draw other dropout masks than the uninterrupted run.
    rng_states: dict[str, list[int]] = field(default_factory=dict)

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
    if params.augment_off_last_epochs >= params.epochs:
        raise ConfigError(
            f"train.augment_off_last_epochs: {params.augment_off_last_epochs} must be below "
            f"train.epochs ({params.epochs}); to train without distortions, set "
            "train.augment_max_shift, augment_max_degrees, augment_max_scale and "
            "augment_elastic_pixels to 0"
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


def epoch_arrays(
    x: np.ndarray, y: np.ndarray, params: TrainParams, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's training arrays: shuffled by `epoch_order`, shifted, rotated and scaled, all
    drawn from (seed, epoch) alone, so a resumed run (and the bench) sees the same epoch. The
    last `augment_off_last_epochs` of `epochs` (counted on the schedule: a run that stops early
    may end before them) see the images undistorted, as evaluation sees them."""
    from seqmnist.modeling.augment import elastic_distort, rotate_and_scale

    order = epoch_order(len(x), params.seed, epoch)
    if epoch >= params.epochs - params.augment_off_last_epochs:
        return x[order], y[order]
    rng = np.random.default_rng([params.seed, epoch, AUGMENT_STREAM])
    x_epoch = shift_images(x[order], params.augment_max_shift, rng)
    x_epoch = rotate_and_scale(x_epoch, params.augment_max_degrees, params.augment_max_scale, rng)
    x_epoch = elastic_distort(
        x_epoch, params.augment_elastic_pixels, params.augment_elastic_grid, rng
    )
    return x_epoch, y[order]


@dataclass(frozen=True)
class Backend:
    """What trains the recurrent layers. The saved and exported model is Keras's rolled form
    whatever this says: only the speed and the float rounding of training differ."""

    name: Literal["kernel", "keras"]  # our C++ kernel (FusedLSTM) or Keras's own layers
    unroll: bool  # Keras's time loop written out step by step (CPU); rolled lets TF use cuDNN
    reason: str  # why this one, for the log

    def __str__(self) -> str:
        form = "" if self.name == "kernel" else ", unrolled" if self.unroll else ", rolled"
        return f"{self.name}{form} ({self.reason})"


def resolve_backend(requested: LstmBackend, model: ModelParams, gpus: Sequence[object]) -> Backend:
    """`train.lstm_backend` for this model on this machine (`gpus`: TensorFlow's GPU devices).

    On CPU our kernel trains LSTM layers fastest, and Keras's unrolled loop the other cells
    (bench/README.md). Our kernel has no GPU code; on a GPU Keras's rolled layers let
    TensorFlow run cuDNN's fused kernels, so `auto` takes those when TensorFlow sees a GPU.
    """
    from seqmnist.modeling.model import fusable

    visible = f"{len(gpus)} GPU visible" if gpus else "no GPU visible"
    if requested == "auto":
        choice, reason = ("keras" if gpus else "kernel"), visible
    else:
        choice, reason = requested, f"train.lstm_backend: {requested}, {visible}"
    if choice == "keras":
        return Backend("keras", unroll=not gpus, reason=reason)
    if fusable(model):
        return Backend("kernel", unroll=False, reason=reason)
    only_lstm = "our kernel trains LSTM layers only"
    return Backend("keras", unroll=True, reason=f"{reason}; {only_lstm}")


def backend_for(params: TrainParams) -> Backend:
    """The backend `train.lstm_backend` resolves to on this machine."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return resolve_backend(params.lstm_backend, params.model, gpus)


def fingerprint(params: TrainParams, backend: Backend, arrays: Sequence[np.ndarray]) -> str:
    """Identifies what a checkpoint was trained on, and how; a mismatch means start over.

    `arrays` are the training and validation arrays themselves, so whatever changes them starts
    over: other raw data, other `preprocess` params (validation size, split seed), other
    preprocessing code. The raw files' checksums alone missed all but the first. Hashing the
    55,000 training images takes about 0.1 s.
    """
    data = hashlib.sha256()
    for array in arrays:
        data.update(f"{array.dtype.str}{array.shape}".encode())
        data.update(np.ascontiguousarray(array).data)
    payload = json.dumps(
        {
            "params": params.model_dump(),
            "backend": [backend.name, backend.unroll],
            "data": data.hexdigest(),
        },
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
    """Adam on logits with sparse cross-entropy (label-smoothed if `label_smoothing` > 0),
    decoupled weight decay if `weight_decay` > 0 (AdamW), averaging the weights if
    `ema_decay` > 0."""
    from seqmnist.modeling.averaging import AveragingAdam
    from seqmnist.modeling.losses import loss_metrics, training_loss

    model.compile(
        optimizer=AveragingAdam(
            learning_rate=_learning_rate(params, steps_per_epoch),
            weight_decay=params.weight_decay or None,
            use_ema=params.ema_decay > 0,
            ema_momentum=params.ema_decay,
        ),
        loss=training_loss(params.label_smoothing),
        metrics=loss_metrics(params.label_smoothing),
    )


def new_training_model(
    params: TrainParams, time_steps: int, features: int, backend: Backend | None = None
):
    """The model `fit` trains, in the form `backend` names (default: `backend_for(params)`).

    The kernel's model starts from the weights and dropout streams Keras's own layers draw from
    the seed, so the backend changes the speed and the rounding, not the experiment.
    """
    import keras

    from seqmnist.modeling.model import build_model

    backend = backend or backend_for(params)
    keras_form = build_model(params.model, time_steps, features, NUM_CLASSES, unroll=backend.unroll)
    if backend.name == "keras":
        return keras_form
    fused = build_model(params.model, time_steps, features, NUM_CLASSES, kernel=True)
    fused.set_weights(keras_form.get_weights())
    for layer in fused.layers:
        if isinstance(layer, keras.layers.Dropout):
            state = keras_form.get_layer(layer.name).seed_generator.state
            layer.seed_generator.state.assign(state)
    return fused


def rolled_copy(model, params: TrainParams, time_steps: int, features: int):
    """The same weights in the rolled form that is saved and exported (one ONNX LSTM op)."""
    from seqmnist.modeling.model import build_model

    rolled = build_model(params.model, time_steps, features, NUM_CLASSES)
    rolled.set_weights(model.get_weights())
    return rolled


def seed_everything(seed: int) -> None:
    """Same seed, same data, same code: same weights (deterministic TF ops on)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def epoch_progress_class():
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


def batches(x: np.ndarray, y: np.ndarray, batch_size: int):
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
