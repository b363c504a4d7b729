"""`train` stage: fit the recurrent classifier, resumably and reproducibly, logging with DVCLive.

Training runs one `fit` call per epoch so that each epoch's shuffle order is a pure function of
(seed, epoch). After every epoch the full state (model with optimizer, early-stopping bookkeeping,
best weights, curves so far) is checkpointed under checkpoints/train/, deliberately not a DVC
output: DVC deletes a stage's outputs before running it. A killed run therefore resumes at the
next epoch and ends with the same model as an uninterrupted run.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqmnist.config import TrainParams
from seqmnist.constants import NUM_CLASSES
from seqmnist.data.dataset import load_split
from seqmnist.errors import ConfigError
from seqmnist.io import atomic_path, write_json
from seqmnist.modeling.checkpoints import (
    CHECKPOINT_BEST,
    CHECKPOINT_MODEL,
    discard_checkpoint,
    load_state,
    pin_archive,
    restore_rng_states,
    save_checkpoint,
)
from seqmnist.modeling.training import (
    Backend,
    TrainingState,
    backend_for,
    batches,
    compile_model,
    epoch_arrays,
    epoch_progress_class,
    fingerprint,
    new_training_model,
    rolled_copy,
    seed_everything,
    subset_indices,
    validate,
)
from seqmnist.paths import (
    DATA_STATS,
    KERAS_MODEL,
    MODEL_INFO,
    PROCESSED_DIR,
    TRAIN_CHECKPOINT_DIR,
    TRAIN_LIVE_DIR,
)
from seqmnist.provenance import data_checksums, git_version, git_without_commits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    """The training rows (after the quick-mode subset) and the validation split."""

    x_train: np.ndarray  # float32 [N, time_steps, features]
    y_train: np.ndarray  # int64 [N]
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def input_shape(self) -> tuple[int, int]:
        time_steps, features = self.x_train.shape[1:]
        return int(time_steps), int(features)


def _load(params: TrainParams, processed_dir: Path) -> Splits:
    x_train, y_train = load_split("train", processed_dir)
    x_val, y_val = load_split("val", processed_dir)
    validate(params, x_train.shape, {"val": x_val.shape})
    keep = subset_indices(len(x_train), params.max_train_samples, params.seed)
    return Splits(x_train[keep], y_train[keep], x_val, y_val)


def _start_or_resume(
    params: TrainParams, backend: Backend, splits: Splits, expected: str, checkpoint_dir: Path
):
    """A fresh compiled model, or the checkpointed one when its fingerprint matches."""
    import keras

    from seqmnist.modeling.averaging import AveragingAdam
    from seqmnist.modeling.fused_lstm import FusedLSTM
    from seqmnist.modeling.losses import SmoothedSparseCrossentropy

    steps_per_epoch = -(-len(splits.x_train) // params.batch_size)
    state = load_state(checkpoint_dir, expected)
    if state is not None:
        try:
            model = keras.models.load_model(
                checkpoint_dir / CHECKPOINT_MODEL,
                custom_objects={
                    "FusedLSTM": FusedLSTM,
                    "AveragingAdam": AveragingAdam,
                    "SmoothedSparseCrossentropy": SmoothedSparseCrossentropy,
                },
            )
            restore_rng_states(model, state.rng_states)
            log.info("resuming from %s at epoch %d", checkpoint_dir, state.next_epoch + 1)
            return model, state
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "%s is unreadable (%s); setting the checkpoint aside and starting over",
                checkpoint_dir / CHECKPOINT_MODEL,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
    discard_checkpoint(checkpoint_dir)
    model = new_training_model(params, *splits.input_shape, backend)
    compile_model(model, params, steps_per_epoch)
    return model, TrainingState(fingerprint=expected)


def _fit_epoch(model, params: TrainParams, arrays, val_data, bar) -> dict:
    """One epoch on its (shuffled, distorted) `arrays`, then validation; the epoch's metrics.

    val/loss is the cross-entropy against the true labels, also when training smooths them."""
    from seqmnist.modeling.averaging import ValidateAveraged
    from seqmnist.modeling.losses import TRUE_LABEL_LOSS

    x_epoch, y_epoch = arrays
    started = time.perf_counter()
    history = model.fit(
        batches(x_epoch, y_epoch, params.batch_size),
        validation_data=val_data,
        shuffle=False,
        verbose=0,
        callbacks=[ValidateAveraged(), bar],
    ).history
    metrics = {
        f"{split}/{name}": float(history[prefix + name][-1])
        for split, prefix in (("train", ""), ("val", "val_"))
        for name in ("loss", "accuracy")
    }
    if params.label_smoothing:
        metrics["val/loss"] = float(history[f"val_{TRUE_LABEL_LOSS}"][-1])
    metrics["epoch_seconds"] = round(time.perf_counter() - started, 2)
    return metrics


def _log_epoch(live, metrics: dict[str, float]) -> None:
    for name, value in metrics.items():
        live.log_metric(name, value, plot="/" in name)
    live.next_step()


def _train(model, state: TrainingState, params, splits, live, checkpoint_dir, progress) -> list:
    """Epochs until the last or early stopping, each checkpointed; returns their durations.

    Each epoch's arrays depend on (seed, epoch) alone, so the next epoch's are drawn on a second
    thread while this one trains: the distortions (~0.6 s an epoch of 55,000 images here) share
    the cores with the fit instead of waiting between epochs (epoch_seconds includes that share).
    """
    EpochProgress = epoch_progress_class()
    val_data = batches(splits.x_val, splits.y_val, params.batch_size)
    steps_per_epoch = -(-len(splits.x_train) // params.batch_size)
    show_bar = progress and sys.stderr.isatty()
    epoch_seconds: list[float] = []
    draw = functools.partial(epoch_arrays, splits.x_train, splits.y_train, params)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="epoch-arrays") as pool:
        remaining = state.next_epoch < params.epochs and not state.stopped_early
        upcoming = pool.submit(draw, state.next_epoch) if remaining else None
        while upcoming is not None and not state.stopped_early:
            epoch = state.next_epoch
            arrays = upcoming.result()
            upcoming = pool.submit(draw, epoch + 1) if epoch + 1 < params.epochs else None
            bar = EpochProgress(epoch, params.epochs, steps_per_epoch, show_bar)
            metrics = _fit_epoch(model, params, arrays, val_data, bar)
            epoch_seconds.append(metrics["epoch_seconds"])
            _end_epoch(model, state, params, epoch, metrics, live, checkpoint_dir)
    return epoch_seconds


def _end_epoch(model, state, params, epoch: int, metrics: dict, live, checkpoint_dir) -> None:
    """Early-stopping bookkeeping, curves, checkpoint and log line of a finished epoch."""
    improved = state.record(epoch, metrics, params.early_stopping_patience)
    _log_epoch(live, metrics)
    save_checkpoint(model, state, checkpoint_dir, improved)
    log.info(
        "epoch %d/%d: %s (%.1f s)%s",
        epoch + 1,
        params.epochs,
        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" in k),
        metrics["epoch_seconds"],
        " *" if improved else "",
    )


def _summarize(live, state: TrainingState, epoch_seconds: list[float], n_train: int) -> None:
    live.summary["best_epoch"] = state.best_epoch + 1
    live.summary["best_val_loss"] = state.best_val_loss
    live.summary["epochs_run"] = state.next_epoch
    if epoch_seconds:
        median = float(np.median(epoch_seconds))
        live.summary["median_epoch_seconds"] = round(median, 2)
        live.summary["train_samples_per_second"] = round(n_train / median, 1)


def _save_model(model, params: TrainParams, splits: Splits, model_path: Path) -> None:
    """The best weights in the rolled form that is exported, archive bytes pinned."""
    with atomic_path(model_path) as tmp:
        rolled_copy(model, params, *splits.input_shape).save(tmp)
        pin_archive(tmp)


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
    import keras
    from dvclive import Live

    if git_without_commits():  # DVCLive reads HEAD and fails there with a traceback
        raise ConfigError(
            f"{Path.cwd()} is a git repository without a commit: DVCLive (which logs the "
            "training curves) needs one; commit the project first, e.g. `git add -A && git "
            "commit -m 'seqmnist project'`"
        )
    splits = _load(params, processed_dir)
    backend = backend_for(params)
    log.info("LSTM backend %s", backend)
    seed_everything(params.seed)
    checkpoint_dir = Path(checkpoint_dir)
    arrays = (splits.x_train, splits.y_train, splits.x_val, splits.y_val)
    expected = fingerprint(params, backend, arrays)
    model, state = _start_or_resume(params, backend, splits, expected, checkpoint_dir)
    with Live(str(live_dir), dvcyaml=None, save_dvc_exp=False) as live:
        for metrics in state.history:  # DVC cleared dvclive/ before a resumed run: replay it
            _log_epoch(live, metrics)
        epoch_seconds = _train(model, state, params, splits, live, checkpoint_dir, progress)
        model.load_weights(checkpoint_dir / CHECKPOINT_BEST)
        _summarize(live, state, epoch_seconds, len(splits.x_train))

    info = {
        **git_version(),
        "params": params.model_dump(),
        "lstm_backend": {"name": backend.name, "unroll": backend.unroll},
        "data_sha256": data_checksums(stats_path),
        "input_shape": list(splits.input_shape),
        "num_classes": NUM_CLASSES,
        "train_samples": len(splits.x_train),
        "best_epoch": state.best_epoch + 1,
        "best_val_loss": state.best_val_loss,
        "epochs_run": state.next_epoch,
        "stopped_early": state.stopped_early,
        "keras_version": keras.__version__,
    }
    _save_model(model, params, splits, Path(model_path))
    write_json(Path(info_path), info)
    discard_checkpoint(checkpoint_dir)
    log.info(
        "best epoch %d/%d, val loss %.4f -> %s",
        state.best_epoch + 1,
        state.next_epoch,
        state.best_val_loss,
        model_path,
    )
    return info
