"""FLOPs per sample of the recurrent classifier, counted from its layer sizes.

A multiply-add is 2 FLOPs; element-wise gate nonlinearities and biases are left out (they are
O(H) per step against O(H^2) for the matrix products). The model as designed is counted with
training = 3x forward (forward, gradient w.r.t. activations, gradient w.r.t. weights): the same
figure for every framework, so its GFLOP/s compare like samples/s do.

What a framework executes differs (`executed`; bench/README.md, "Our LSTM kernel"): our kernel
and our streamlined ONNX graph fold the input projection into the first recurrent layer's input
weights (products over F features instead of P), and the gradient of the rows, which nothing
uses, is skipped where the framework allows. Folding P @ W once per batch is left out like the
biases: 3 products of F*P*G*H per batch, 0.3% at batch 256 for the default model.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqmnist.config import ModelParams

GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}
BACKWARD_PRODUCTS = 2  # per forward product: the gradient of its input and of its weights
TRAINING_FACTOR = 1 + BACKWARD_PRODUCTS
FORMULAS = {
    "projection": "2*T*F*P",
    "recurrent": "2*T*G*(I+H)*H per layer and direction (G gates: LSTM 4, GRU 3, RNN 1)",
    "classifier": "2*H_out*C",
    "training": f"{TRAINING_FACTOR} x forward",
    "folded_forward": "forward - 2*T*F*P - 2*T*G*(P-F)*H*directions (layer 1 reads F, not P)",
}
# The forward products whose input gradient the layer reading the rows would need.
DATA_FED = {"projection": "2*T*F*P", "recurrent": "2*T*G*F*H*directions"}


@dataclass(frozen=True)
class ModelFlops:
    """Forward FLOPs per sample by part, and the totals that GFLOP/s figures are based on."""

    projection: int
    recurrent: int
    classifier: int
    folded_forward: int  # forward with the projection folded into layer 1's input weights
    shapes: dict[str, int]

    @property
    def forward(self) -> int:
        return self.projection + self.recurrent + self.classifier

    @property
    def training(self) -> int:
        return TRAINING_FACTOR * self.forward

    def to_json(self, executed: dict[str, Executed] | None = None) -> dict[str, object]:
        return {
            "formulas": FORMULAS,
            "shapes": self.shapes,
            "projection": self.projection,
            "recurrent": self.recurrent,
            "classifier": self.classifier,
            "forward_per_sample": self.forward,
            "training_per_sample": self.training,
            "folded_forward_per_sample": self.folded_forward if self.projection else None,
            "executed_training": {key: e.to_json() for key, e in (executed or {}).items()},
        }


@dataclass(frozen=True)
class Executed:
    """FLOPs per sample one trainer runs: its forward products, and two backward products for
    each (input gradient, weight gradient) less the input gradient it skips."""

    label: str
    forward: int
    skipped: int
    formula: str

    @property
    def training(self) -> int:
        return TRAINING_FACTOR * self.forward - self.skipped

    def to_json(self) -> dict[str, object]:
        return {
            "label": self.label,
            "forward_per_sample": self.forward,
            "training_per_sample": self.training,
            "formula": self.formula,
        }


def _recurrent(params: ModelParams, time_steps: int, width: int) -> tuple[int, int, int]:
    """(all recurrent layers' forward FLOPs, layer 1's input products, the last layer's output
    width) when layer 1 reads `width` features per step."""
    directions = 2 if params.bidirectional else 1
    gates, hidden = GATES[params.cell], params.units
    first_input = directions * 2 * time_steps * gates * width * hidden
    total = 0
    for _ in range(params.layers):
        total += directions * 2 * time_steps * gates * (width + hidden) * hidden
        width = directions * hidden
    return total, first_input, width


def model_flops(
    params: ModelParams, time_steps: int, features: int, num_classes: int = 10
) -> ModelFlops:
    """FLOPs of one sample through build_model(params, ...), from the layer sizes alone."""
    projection = (
        2 * time_steps * features * params.input_projection if params.input_projection else 0
    )
    recurrent, _, out_width = _recurrent(params, time_steps, params.input_projection or features)
    folded_recurrent, _, _ = _recurrent(params, time_steps, features)
    classifier = 2 * out_width * num_classes
    shapes = {
        "T": time_steps,
        "F": features,
        "P": params.input_projection or 0,
        "I": params.input_projection or features,
        "H": params.units,
        "G": GATES[params.cell],
        "layers": params.layers,
        "directions": 2 if params.bidirectional else 1,
        "C": num_classes,
    }
    return ModelFlops(projection, recurrent, classifier, folded_recurrent + classifier, shapes)


def executed(
    params: ModelParams,
    time_steps: int,
    features: int,
    label: str,
    *,
    folded: bool,
    data_input_gradient: bool,
    num_classes: int = 10,
) -> Executed:
    """What a trainer runs per sample for this design.

    folded: the projection folded into layer 1's input weights (our kernel). The layer reading
    the rows (the projection, or layer 1 when there is none or it is folded) needs no input
    gradient; data_input_gradient says whether the trainer computes it all the same.
    """
    model = model_flops(params, time_steps, features, num_classes)
    _, first_input, _ = _recurrent(params, time_steps, features)
    folded = folded and bool(params.input_projection)
    if params.input_projection and not folded:
        part, reader, data_gradient = "projection", "the projection", model.projection
    else:
        part, reader, data_gradient = "recurrent", "layer 1", first_input
    forward, base = (
        (model.folded_forward, "folded forward") if folded else (model.forward, "forward")
    )
    if data_input_gradient:
        formula = f"{TRAINING_FACTOR} x {base} ({reader} also takes the rows' gradient)"
        return Executed(label, forward, 0, formula)
    formula = f"{TRAINING_FACTOR} x {base} - {DATA_FED[part]} (no input gradient for {reader})"
    return Executed(label, forward, data_gradient, formula)


def percent_of_peak(gflops: float, peak_gflops: float) -> float | None:
    """GFLOP/s as a share of the FP32 peak (None when the peak is unknown)."""
    return 100 * gflops / peak_gflops if peak_gflops else None
