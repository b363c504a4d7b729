"""FLOPs per sample of the recurrent classifier, counted from its layer sizes.

A multiply-add is 2 FLOPs; element-wise gate nonlinearities and biases are left out (they are
O(H) per step against O(H^2) for the matrix products). Training is counted as 3x the forward
pass (forward, gradient w.r.t. activations, gradient w.r.t. weights).
"""

from __future__ import annotations

from dataclasses import dataclass

from seqmnist.config import ModelParams

GATES = {"lstm": 4, "gru": 3, "simple_rnn": 1}
TRAINING_FACTOR = 3
FORMULAS = {
    "projection": "2*T*F*P",
    "recurrent": "2*T*G*(I+H)*H per layer and direction (G gates: LSTM 4, GRU 3, RNN 1)",
    "classifier": "2*H_out*C",
    "training": f"{TRAINING_FACTOR} x forward",
}


@dataclass(frozen=True)
class ModelFlops:
    """Forward FLOPs per sample by part, and the totals that GFLOP/s figures are based on."""

    projection: int
    recurrent: int
    classifier: int
    shapes: dict[str, int]

    @property
    def forward(self) -> int:
        return self.projection + self.recurrent + self.classifier

    @property
    def training(self) -> int:
        return TRAINING_FACTOR * self.forward

    def to_json(self) -> dict[str, object]:
        return {
            "formulas": FORMULAS,
            "shapes": self.shapes,
            "projection": self.projection,
            "recurrent": self.recurrent,
            "classifier": self.classifier,
            "forward_per_sample": self.forward,
            "training_per_sample": self.training,
        }


def model_flops(
    params: ModelParams, time_steps: int, features: int, num_classes: int = 10
) -> ModelFlops:
    """FLOPs of one sample through build_model(params, ...), from the layer sizes alone."""
    directions = 2 if params.bidirectional else 1
    projection = (
        2 * time_steps * features * params.input_projection if params.input_projection else 0
    )
    gates = GATES[params.cell]
    hidden = params.units
    recurrent = 0
    width = params.input_projection or features
    for _ in range(params.layers):
        recurrent += directions * 2 * time_steps * gates * (width + hidden) * hidden
        width = directions * hidden
    classifier = 2 * width * num_classes
    shapes = {
        "T": time_steps,
        "F": features,
        "P": params.input_projection or 0,
        "I": params.input_projection or features,
        "H": hidden,
        "G": gates,
        "layers": params.layers,
        "directions": directions,
        "C": num_classes,
    }
    return ModelFlops(projection, recurrent, classifier, shapes)


def gflops_per_second(samples_per_second: float, flops_per_sample: int) -> float:
    return samples_per_second * flops_per_sample / 1e9
