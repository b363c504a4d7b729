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
# What the classifier reads from the last recurrent layer's outputs [batch, time_steps, units]:
# its last step (None), or each unit's maximum or mean over the time steps.
READOUTS = {
    "last": None,
    "max": layers.GlobalMaxPooling1D,
    "mean": layers.GlobalAveragePooling1D,
}


def fusable(params: ModelParams) -> bool:
    """Whether our C++ kernel can train these recurrent layers (LSTM, either or both directions)."""
    return params.cell == "lstm"


def build_model(
    params: ModelParams,
    time_steps: int,
    features: int,
    num_classes: int = 10,
    unroll: bool = False,
    kernel: bool = False,
) -> keras.Model:
    """Build the classifier; it outputs logits, softmax is applied by the loss and at export.

    Two training forms, same weights and function (bench/README.md says what each buys on CPU):
    `kernel=True` runs the LSTM layers in our whole-sequence C++ kernel (FusedLSTM, for models
    `fusable` accepts), the input projection folded into the first one; one FusedLSTM holds both
    directions of a bidirectional layer, its weights in the order of Keras's Bidirectional.
    `unroll=True` writes Keras's time loop out step by step. tf2onnx turns only Keras's rolled
    LSTM into one ONNX LSTM op, so saved and exported models are always built with neither.

    Shapes: rows [batch, time_steps, features]
      -> optional projection  [batch, time_steps, input_projection]
      -> recurrent layers     [batch, time_steps, units (x2 if bi)] ...
      -> last layer's readout [batch, units (x2 if bi)]: its last step, or a max/mean over steps
      -> Dense                [batch, num_classes] logits
    """
    if kernel and not fusable(params):
        raise ValueError(f"our LSTM kernel trains LSTM layers only, not {params.cell}")
    rows = keras.Input(shape=(time_steps, features), name="rows")
    hidden = rows
    if params.input_projection and not kernel:
        hidden = layers.Dense(params.input_projection, name="row_projection")(hidden)
    cell = RECURRENT_CELLS[params.cell]
    pooling = READOUTS[params.readout]
    for index in range(params.layers):
        is_last = index == params.layers - 1
        sequences = not is_last or pooling is not None
        name = f"{params.cell}_{index}"
        if kernel:
            from seqmnist.modeling.fused_lstm import FusedLSTM

            recurrent = FusedLSTM(
                params.units,
                return_sequences=sequences,
                input_projection=params.input_projection if index == 0 else None,
                input_gradient=index > 0,  # the first layer reads the data
                bidirectional=params.bidirectional,
                name=f"bi_{name}" if params.bidirectional else name,
            )
        else:
            recurrent = cell(params.units, return_sequences=sequences, unroll=unroll, name=name)
            if params.bidirectional:
                recurrent = layers.Bidirectional(recurrent, name=f"bi_{name}")
        hidden = recurrent(hidden)
        if is_last and pooling is not None:
            # channels_last: over the time axis, whatever ~/.keras/keras.json says
            hidden = pooling(data_format="channels_last", name=f"{params.readout}_over_time")(
                hidden
            )
        if params.dropout > 0:
            hidden = layers.Dropout(params.dropout, name=f"dropout_{index}")(hidden)
    logits = layers.Dense(num_classes, name="logits")(hidden)
    name = f"{'bi' if params.bidirectional else ''}{params.cell}_{params.layers}x{params.units}"
    return keras.Model(rows, logits, name=name)
