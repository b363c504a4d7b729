"""Training throughput: our Keras training path against the same architecture in PyTorch, A/B/A/B.

Ours is what the `train` stage runs: seed_everything, new_training_model and compile_model with the
params.yaml defaults, each epoch shuffled and distorted between rounds (untimed; train.run draws
them on a second thread during the previous epoch, so its epoch times also carry their share of
the cores), then one timed `model.fit` over the tf.data pipeline train.py builds. PyTorch trains
on the same epoch arrays with the same batch size. The two alternate round by round so that a
burst of load from elsewhere hits both; the first (tracing, allocation) epoch of each is excluded.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

import torch_model
from flops import Executed, ModelFlops, executed, percent_of_peak
from seqmnist.config import TrainParams
from seqmnist.constants import NUM_CLASSES
from seqmnist.data.dataset import load_split
from seqmnist.errors import DataError
from seqmnist.modeling.training import epoch_arrays
from seqmnist.paths import PROCESSED_DIR
from timing import Figure, ratio

TIME_STEPS = 28
FEATURES = 28
OURS = {
    "kernel": "ours (train.py path: Keras + our LSTM kernel)",
    "keras": "ours (train.py path: Keras's own layers)",
}
THEIRS = "PyTorch, same architecture"


@dataclass(frozen=True)
class TrainingPlan:
    """Rounds of `samples_per_round`, shrunk (to no fewer than `min_steps` batches) when the
    untimed warm-up round (`warmup_steps` batches) says they would overrun `budget_s`."""

    samples_per_round: int
    rounds: int
    budget_s: float
    min_steps: int = 10
    warmup_steps: int = 20
    warmup_rounds: int = 1


FULL = TrainingPlan(samples_per_round=25_600, rounds=4, budget_s=200)
FULL_FLIPPED = TrainingPlan(samples_per_round=12_800, rounds=4, budget_s=150)
QUICK = TrainingPlan(samples_per_round=512, rounds=3, budget_s=30, min_steps=2, warmup_steps=1)


def _fit_budget(plan: TrainingPlan, samples: int, batch: int, seconds_per_sample: float) -> int:
    """Samples per timed round that keep all rounds within the plan's budget."""
    affordable = plan.budget_s / (plan.rounds * max(seconds_per_sample, 1e-9))
    steps = max(plan.min_steps, min(samples, int(affordable)) // batch)
    return min(samples, steps * batch)


def training_data(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The first `samples` processed training images, or random ones of the same shape."""
    try:
        x, y = load_split("train", PROCESSED_DIR)
    except DataError:
        x = np.empty((0, TIME_STEPS, FEATURES), np.float32)
        y = np.empty(0, np.int64)
    if len(x) >= samples:
        return np.ascontiguousarray(x[:samples]), y[:samples].astype(np.int64), str(PROCESSED_DIR)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (samples, TIME_STEPS, FEATURES)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, samples).astype(np.int64)
    return x, y, "random (no data/processed)"


def executed_flops(params: TrainParams) -> dict[str, Executed]:
    """FLOPs per sample each trainer runs (flops.executed). Ours folds the projection when our
    kernel trains; neither takes the rows' gradient, but PyTorch's oneDNN LSTM reading them."""
    from seqmnist.modeling.training import backend_for

    backend = backend_for(params).name
    count = functools.partial(executed, params.model, TIME_STEPS, FEATURES)
    theirs_take_rows_gradient = torch_model.data_input_gradient(params.model)
    return {
        "keras": count(OURS[backend], folded=backend == "kernel", data_input_gradient=False),
        "torch": count(THEIRS, folded=False, data_input_gradient=theirs_take_rows_gradient),
    }


class KerasTrainer:
    """Our training stage's code path, one `fit` call per epoch as train.run makes it."""

    def __init__(self, params: TrainParams, steps_per_epoch: int) -> None:
        from seqmnist.modeling.training import compile_model, new_training_model, seed_everything

        seed_everything(params.seed)
        self.params = params
        self.model = new_training_model(params, TIME_STEPS, FEATURES)
        compile_model(self.model, params, steps_per_epoch)

    def epoch(self, x: np.ndarray, y: np.ndarray) -> float:
        from seqmnist.modeling.training import batches

        start = time.perf_counter()
        self.model.fit(batches(x, y, self.params.batch_size), shuffle=False, verbose=0)
        return time.perf_counter() - start


def run(
    params: TrainParams,
    plan: TrainingPlan,
    flops: ModelFlops,
    executed_by: dict[str, Executed],
    peak_gflops: float,
) -> dict:
    """Alternate Keras and PyTorch epochs; samples/s per round, their ratio, GFLOP/s of the
    model as designed and of what each trainer executes (`executed_flops`)."""
    samples = plan.samples_per_round - plan.samples_per_round % params.batch_size
    samples = max(samples, params.batch_size)
    x, y, source = training_data(samples, params.seed)
    steps = samples // params.batch_size
    keras_trainer = KerasTrainer(params, steps)
    torch_trainer = None
    if torch_model.available():
        torch_trainer = torch_model.Trainer(
            params.model,
            FEATURES,
            params.learning_rate,
            params.seed,
            params.ema_decay,
            params.weight_decay,
            params.label_smoothing,
        )
    ours: list[float] = []
    theirs: list[float] = []
    warmup = min(samples, plan.warmup_steps * params.batch_size)
    for epoch in range(plan.warmup_rounds + plan.rounds):
        size = warmup if epoch < plan.warmup_rounds else samples
        x_epoch, y_epoch = epoch_arrays(x[:size], y[:size], params, epoch)
        keras_seconds = keras_trainer.epoch(x_epoch, y_epoch)
        torch_seconds = (
            torch_trainer.epoch(x_epoch, y_epoch, params.batch_size) if torch_trainer else None
        )
        if epoch < plan.warmup_rounds:
            per_sample = (keras_seconds + (torch_seconds or 0.0)) / warmup
            samples = _fit_budget(plan, samples, params.batch_size, per_sample)
            continue
        ours.append(samples / keras_seconds)
        if torch_seconds is not None:
            theirs.append(samples / torch_seconds)
        print(
            f"  training round {epoch - plan.warmup_rounds + 1}/{plan.rounds}: keras "
            f"{ours[-1]:,.0f} samples/s"
            + (f", torch {theirs[-1]:,.0f} samples/s" if theirs else ""),
            flush=True,
        )
    result: dict = {
        "data": source,
        "samples_per_round": samples,
        "batch_size": params.batch_size,
        "rounds": plan.rounds,
        "warmup_rounds_excluded": plan.warmup_rounds,
        "order": "A/B alternating (keras, torch) per round",
        "labels": {key: count.label for key, count in executed_by.items()},
        "keras": _entry(Figure("samples/s", tuple(ours)), flops, executed_by["keras"], peak_gflops),
    }
    if theirs:
        result["torch"] = _entry(
            Figure("samples/s", tuple(theirs)), flops, executed_by["torch"], peak_gflops
        )
        result["ratio_ours_over_torch"] = ratio(
            Figure("samples/s", tuple(ours)), Figure("samples/s", tuple(theirs))
        )
    else:
        result["torch"] = f"skipped: torch not installed ({torch_model.TORCH_INSTALL_HINT})"
    result["threads"] = _threads()
    return result


def _entry(figure: Figure, flops: ModelFlops, count: Executed, peak_gflops: float) -> dict:
    gflops = figure.scaled(flops.training / 1e9, "GFLOP/s")
    executed_gflops = figure.scaled(count.training / 1e9, "GFLOP/s")
    return {
        "samples_per_s": figure.to_json(),
        "gflops": gflops.to_json(),
        "percent_of_peak": percent_of_peak(gflops.median, peak_gflops),
        "executed_flops_per_sample": count.training,
        "executed_gflops": executed_gflops.to_json(),
        "executed_percent_of_peak": percent_of_peak(executed_gflops.median, peak_gflops),
    }


def _threads() -> dict[str, int]:
    import tensorflow as tf

    threads = {
        "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
    }
    if torch_model.available():
        import torch

        threads["torch"] = torch.get_num_threads()
    return threads
