"""The params.yaml architecture in PyTorch, as the reference for our Keras training and ONNX.

Optional Linear projection per step -> nn.LSTM / nn.GRU / nn.RNN (batch_first; layers, direction
and dropout between layers as configured) -> dropout -> Linear on the last step, trained with
Adam (AdamW's decoupled decay with `train.weight_decay`) and cross-entropy, averaging the weights
when ours does: the same layers, sizes, batch and per-step work as modeling.model.build_model and
modeling.training.compile_model. torch is a bench-only dependency (`pip install -e '.[bench]'`);
import this module only after checking `available()`.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from seqmnist.config import ModelParams

ONNX_OPSET = 17
TORCH_INSTALL_HINT = "pip install torch==2.13.0 (or `make bench`, which installs the bench extra)"
RECURRENT_MODULES = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "RNN"}
# Keras's LSTM and SimpleRNN add one bias per gate, PyTorch's two (b_ih + b_hh); Keras's GRU
# (reset_after=True, its default) has both, like PyTorch's. For the first two, b_hh stays zero
# and untrained, so the trainable parameters are Keras's.
ONE_BIAS_CELLS = frozenset({"lstm", "simple_rnn"})
# nn.LSTM on CPU runs oneDNN's RNN, whose backward (MkldnnRnnLayerBackward) returns the input
# gradient whether or not the input needs one: a data-fed LSTM's backward took no less time with
# rows that need no gradient (torch 2.13, 2 cores). Autograd skips it for Linear, GRU and RNN.
INPUT_GRADIENT_ALWAYS = frozenset({"lstm"})


def available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _torch():
    import torch

    return torch


def data_input_gradient(params: ModelParams) -> bool:
    """Whether PyTorch's backward also computes the gradient of the rows (for bench/flops.py)."""
    return not params.input_projection and params.cell in INPUT_GRADIENT_ALWAYS


def _recurrent(params: ModelParams, input_size: int):
    """nn.LSTM / GRU / RNN for all layers, with Keras's dropout between them and its biases."""
    torch = _torch()
    module = getattr(torch.nn, RECURRENT_MODULES[params.cell])(
        input_size,
        params.units,
        num_layers=params.layers,
        batch_first=True,
        bidirectional=params.bidirectional,
        dropout=params.dropout if params.layers > 1 else 0.0,  # after every layer but the last
    )
    if params.cell in ONE_BIAS_CELLS:
        for name, parameter in module.named_parameters():
            if name.startswith("bias_hh"):
                torch.nn.init.zeros_(parameter)
                parameter.requires_grad_(False)
    return module


def _readout(sequence, params: ModelParams):
    """What the classifier reads (modeling.model.READOUTS): each unit's max or mean over the
    steps, or Keras's return_sequences=False: the forward direction after the last step and,
    when bidirectional, the backward one after step 0 (its own last), concatenated in that order."""
    if params.readout == "max":
        return sequence.amax(dim=1)
    if params.readout == "mean":
        return sequence.mean(dim=1)
    if not params.bidirectional:
        return sequence[:, -1]
    units = params.units
    return _torch().cat((sequence[:, -1, :units], sequence[:, 0, units:]), dim=1)


def build(params: ModelParams, features: int, num_classes: int = 10, fused: bool = False):
    """nn.Module of the configured architecture (what modeling.model.build_model builds).

    fused=True folds the projection into the first layer's input weights (W_ih @ P,
    b_ih + W_ih @ b_P, per direction): the same function, with products over F features
    instead of P and no projection.
    """
    torch = _torch()
    nn = torch.nn
    width = params.input_projection or features
    directions = 2 if params.bidirectional else 1

    class SeqRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.projection = nn.Linear(features, width) if params.input_projection else None
            self.recurrent = _recurrent(params, width)
            self.dropout = nn.Dropout(params.dropout)
            self.logits = nn.Linear(directions * params.units, num_classes)

        def forward(self, rows):
            hidden = self.projection(rows) if self.projection is not None else rows
            sequence, _ = self.recurrent(hidden)
            return self.logits(self.dropout(_readout(sequence, params)))

    model = SeqRNN()
    if not fused or model.projection is None:
        return model
    folded = _recurrent(params, features)
    state = model.recurrent.state_dict()
    with torch.no_grad():
        for suffix in ("", "_reverse")[:directions]:
            w_ih = state[f"weight_ih_l0{suffix}"]
            state[f"weight_ih_l0{suffix}"] = w_ih @ model.projection.weight
            state[f"bias_ih_l0{suffix}"] = (
                state[f"bias_ih_l0{suffix}"] + w_ih @ model.projection.bias
            )
    folded.load_state_dict(state)
    model.projection, model.recurrent = None, folded
    return model


class Trainer:
    """Adam + cross-entropy on logits (label-smoothed if `label_smoothing` > 0), one optimizer
    step per batch of the given epoch arrays; with `weight_decay` > 0 AdamW's decoupled decay on
    all but biases, and with `ema_decay` > 0 an average of the weights updated after every step,
    as modeling.training.compile_model does."""

    def __init__(
        self,
        params: ModelParams,
        features: int,
        learning_rate: float,
        seed: int,
        ema_decay: float = 0.0,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
    ):
        torch = _torch()
        torch.manual_seed(seed)
        self.torch = torch
        self.model = build(params, features)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.weights = [p for _, p in named]
        groups = [
            {"params": [p for n, p in named if "bias" not in n], "weight_decay": weight_decay},
            {"params": [p for n, p in named if "bias" in n], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=learning_rate)
        self.loss = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.ema_decay = ema_decay
        self.average = [p.detach().clone() for p in self.weights] if ema_decay else []

    def epoch(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
        """Train one pass over (x, y) in order; returns the wall seconds it took."""
        torch = self.torch
        rows, labels = torch.from_numpy(x), torch.from_numpy(y)
        self.model.train()
        start = time.perf_counter()
        for begin in range(0, len(rows), batch_size):
            batch, target = rows[begin : begin + batch_size], labels[begin : begin + batch_size]
            self.optimizer.zero_grad(set_to_none=True)
            self.loss(self.model(batch), target).backward()
            self.optimizer.step()
            if self.average:
                with torch.no_grad():
                    for average, weight in zip(self.average, self.weights, strict=True):
                        average.lerp_(weight, 1 - self.ema_decay)
        return time.perf_counter() - start


def predictor(params: ModelParams, features: int, seed: int):
    """An eval-mode model and a call that runs it on a numpy batch without autograd."""
    torch = _torch()
    torch.manual_seed(seed)
    model = build(params, features).eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return predict


def export_onnx(
    params: ModelParams, time_steps: int, features: int, path: Path, seed: int, fused: bool = False
) -> Path:
    """PyTorch's own ONNX export (TorchScript exporter: it maps nn.LSTM to the ONNX LSTM op)."""
    import warnings

    torch = _torch()
    torch.manual_seed(seed)
    model = build(params, features, fused=fused).eval()
    example = torch.zeros(1, time_steps, features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["rows"],
            output_names=["logits"],
            dynamic_axes={"rows": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path
