"""Polyak averaging: an exponential moving average (EMA) of the weights, validated and saved.

Keras optimizers keep the average themselves (`use_ema`), updated inside the compiled train step.
Two parts of Keras's support do not fit how train.run trains: `fit` copies the average into the
model at the end of every call (train.run calls `fit` once per epoch, so training would restart
from the average each epoch), and `keras.callbacks.SwapEMAWeights` swaps by adding and
subtracting, which rounds the training weights. Here the average goes into the model by exact
copies, only while validating and saving, and the training weights come back bit for bit.

The decay warms up as in TensorFlow's `tf.train.ExponentialMovingAverage(num_updates=...)`:
min(decay, (1 + step) / (10 + step)). Keras's constant decay keeps most of the initial random
weights in the average for the first thousands of steps (81% after one full epoch at 0.999), which
made short and quick runs score near chance.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import keras


@keras.saving.register_keras_serializable(package="seqmnist")
class AveragingAdam(keras.optimizers.Adam):
    """Adam whose weight average (with `use_ema=True`) warms up and stays in the optimizer, and
    whose weight decay (AdamW's, decoupled) spares biases."""

    def build(self, variables) -> None:
        # Here rather than at compile time, so that an optimizer reloaded from a checkpoint
        # (which does not save the exclusion) decays exactly what the fresh one did.
        self.exclude_from_weight_decay(var_names=["bias"])
        super().build(variables)

    def _update_model_variables_moving_average(self, trainable_variables) -> None:
        if not self.use_ema:
            return
        step = keras.ops.cast(self.iterations, "float32")
        warming_up = keras.ops.divide(step + 1.0, step + 10.0)
        decay = keras.ops.where(
            keras.ops.equal(step, 0.0), 0.0, keras.ops.minimum(self.ema_momentum, warming_up)
        )
        for variable, average in zip(
            trainable_variables, self._model_variables_moving_average, strict=True
        ):
            average.assign(decay * average + (1.0 - decay) * variable)

    def finalize_variable_values(self, var_list) -> None:
        """Leave the training weights in the model; `averaged_weights` puts the average in."""


@contextmanager
def averaged_weights(model: keras.Model) -> Iterator[None]:
    """Within the block the model holds its optimizer's weight average (no-op without one)."""
    optimizer = model.optimizer
    if not getattr(optimizer, "use_ema", False):
        yield
        return
    averages = optimizer._model_variables_moving_average
    pairs = list(zip(optimizer._trainable_variables, averages, strict=True))
    training_values = [keras.ops.convert_to_numpy(variable) for variable, _ in pairs]
    for variable, average in pairs:
        variable.assign(average)
    try:
        yield
    finally:
        for (variable, _), value in zip(pairs, training_values, strict=True):
            variable.assign(value)


class ValidateAveraged(keras.callbacks.Callback):
    """Validation inside `fit` scores the averaged weights, which are the ones that get saved."""

    def __init__(self) -> None:
        super().__init__()
        self._swap = ExitStack()

    def on_test_begin(self, logs=None) -> None:
        self._swap.enter_context(averaged_weights(self.model))

    def on_test_end(self, logs=None) -> None:
        self._swap.close()
