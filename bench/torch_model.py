"""The default architecture written in PyTorch, as the reference for our Keras training and ONNX.

Linear projection per step -> nn.LSTM(batch_first) -> dropout -> Linear on the last step, trained
with Adam and cross-entropy, averaging the weights when ours does: the same layers, sizes, batch
and per-step work as modeling.model.build_model and modeling.training.compile_model. torch is a
bench-only dependency (`pip install -e '.[bench]'`); import this module only after checking
`available()`.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from seqmnist.config import ModelParams

ONNX_OPSET = 17
TORCH_INSTALL_HINT = "pip install torch==2.13.0 (or `make bench`, which installs the bench extra)"


def available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _torch():
    import torch

    return torch


def build(params: ModelParams, features: int, num_classes: int = 10, fused: bool = False):
    """nn.Module for the default cell (LSTM, one layer, unidirectional, with projection).

    fused=True folds the projection into the LSTM's input weights (W_ih @ P, b_ih + W_ih @ b_P):
    the same function with 2*T*4H*F instead of 2*T*(F*P + 4H*P) input FLOPs per sample.
    """
    torch = _torch()
    nn = torch.nn
    if params.cell != "lstm" or params.layers != 1 or params.bidirectional:
        raise ValueError("the PyTorch reference covers the default single-layer LSTM only")
    width = params.input_projection or features

    class SeqLSTM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.projection = nn.Linear(features, width) if params.input_projection else None
            self.lstm = nn.LSTM(width, params.units, batch_first=True)
            self.dropout = nn.Dropout(params.dropout)
            self.logits = nn.Linear(params.units, num_classes)

        def forward(self, rows):
            hidden = self.projection(rows) if self.projection is not None else rows
            sequence, _ = self.lstm(hidden)
            return self.logits(self.dropout(sequence[:, -1]))

    model = SeqLSTM()
    if not fused or model.projection is None:
        return model
    folded = nn.LSTM(features, params.units, batch_first=True)
    with torch.no_grad():
        w_ih = model.lstm.weight_ih_l0
        folded.weight_ih_l0.copy_(w_ih @ model.projection.weight)
        folded.bias_ih_l0.copy_(model.lstm.bias_ih_l0 + w_ih @ model.projection.bias)
        folded.weight_hh_l0.copy_(model.lstm.weight_hh_l0)
        folded.bias_hh_l0.copy_(model.lstm.bias_hh_l0)
    model.projection, model.lstm = None, folded
    return model


class Trainer:
    """Adam + cross-entropy on logits, one optimizer step per batch of the given epoch arrays;
    with `ema_decay` > 0 an average of the weights is updated after every step, as Keras does."""

    def __init__(
        self,
        params: ModelParams,
        features: int,
        learning_rate: float,
        seed: int,
        ema_decay: float = 0.0,
    ):
        torch = _torch()
        torch.manual_seed(seed)
        self.torch = torch
        self.model = build(params, features)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.loss = torch.nn.CrossEntropyLoss()
        self.ema_decay = ema_decay
        self.average = [p.detach().clone() for p in self.model.parameters()] if ema_decay else []

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
                    for average, weight in zip(self.average, self.model.parameters(), strict=True):
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
