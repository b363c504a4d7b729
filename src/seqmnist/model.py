"""The recurrent classifier: each image is a sequence of rows, read one row per time step."""

from __future__ import annotations

import keras
from keras import layers

from seqmnist.config import ModelParams

RECURRENT_CELLS = {
    "lstm": layers.LSTM,
    "gru": layers.GRU,
    "simple_rnn": layers.SimpleRNN,
}


def build_model(
    params: ModelParams,
    time_steps: int,
    features: int,
    num_classes: int = 10,
    unroll: bool = False,
) -> keras.Model:
    """Build the classifier; it outputs logits, softmax is applied by the loss and at export.

    `unroll=True` writes the time loop out step by step instead of a while loop: same weights and
    function, faster to train on CPU (bench/README.md), but tf2onnx can only turn the rolled form
    into one ONNX LSTM op, so saved and exported models are always rolled.

    Shapes: rows [batch, time_steps, features]
      -> optional projection  [batch, time_steps, input_projection]
      -> recurrent layers     [batch, time_steps, units] ... last layer [batch, units (x2 if bi)]
      -> Dense                [batch, num_classes] logits
    """
    rows = keras.Input(shape=(time_steps, features), name="rows")
    hidden = rows
    if params.input_projection:
        hidden = layers.Dense(params.input_projection, name="row_projection")(hidden)
    cell = RECURRENT_CELLS[params.cell]
    for index in range(params.layers):
        is_last = index == params.layers - 1
        recurrent = cell(
            params.units,
            return_sequences=not is_last,
            unroll=unroll,
            name=f"{params.cell}_{index}",
        )
        if params.bidirectional:
            recurrent = layers.Bidirectional(recurrent, name=f"bi_{params.cell}_{index}")
        hidden = recurrent(hidden)
        if params.dropout > 0:
            hidden = layers.Dropout(params.dropout, name=f"dropout_{index}")(hidden)
    logits = layers.Dense(num_classes, name="logits")(hidden)
    name = f"{'bi' if params.bidirectional else ''}{params.cell}_{params.layers}x{params.units}"
    return keras.Model(rows, logits, name=name)
