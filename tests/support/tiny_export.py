"""A tiny exported model for the export and predict tests.

One tiny LSTM model (projection 16, LSTM 16) is trained for two quick epochs on bar images
(tiny_data.bar_images), exported by the real export stage once per test session (the
`tiny_export` fixture in conftest.py) and shared by tests/test_export.py and tests/test_predict.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqmnist.config import ExportParams, ModelParams
from support.tiny_data import BAR_SIZE, write_bar_splits

TIME_STEPS = FEATURES = BAR_SIZE
SPLIT_SIZES = {"train": 3000, "val": 200, "test": 500}
TINY = ModelParams(cell="lstm", units=16, input_projection=16, bidirectional=False)
TRAIN_EPOCHS = 2
TRAIN_BATCH = 64
LEARNING_RATE = 0.01
SEED = 7
# Dynamic int8 quantization may cost a little accuracy; on this easy data set more than two
# points would mean a broken quantized graph, not rounding.
INT8_ACCURACY_TOLERANCE = 0.02
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def train_tiny(processed_dir: Path, model_path: Path, params: ModelParams = TINY) -> None:
    """Train a tiny model quickly (not via train.run: these tests are about export only)."""
    import keras

    from seqmnist.data.dataset import load_split
    from seqmnist.modeling.model import build_model

    keras.utils.set_random_seed(SEED)
    x, y = load_split("train", processed_dir)
    model = build_model(params, TIME_STEPS, FEATURES)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=TRAIN_EPOCHS, batch_size=TRAIN_BATCH, verbose=0)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(model_path)


def write_model_info(info_path: Path, params: ModelParams) -> dict[str, Any]:
    """model_info.json as the train stage writes it (keys the export reads)."""
    info = {
        "git_commit": FAKE_COMMIT,
        "git_dirty": False,
        "params": {"model": params.model_dump(), "epochs": TRAIN_EPOCHS},
        "data_sha256": {"t10k-images-idx3-ubyte.gz": "ab" * 32},
        "input_shape": [TIME_STEPS, FEATURES],
    }
    info_path.write_text(json.dumps(info))
    return info


@dataclass(frozen=True)
class TinyExport:
    root: Path
    processed_dir: Path
    model_path: Path
    out_dir: Path
    metrics_path: Path
    info_path: Path
    eval_path: Path
    metrics: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.out_dir / "model.onnx"

    @property
    def int8_path(self) -> Path:
        return self.out_dir / "model.int8.onnx"

    def run_export(self, params: ExportParams, out_dir: Path, metrics_path: Path) -> dict:
        from seqmnist.stages import export

        return export.run(
            params,
            model_path=self.model_path,
            processed_dir=self.processed_dir,
            out_dir=out_dir,
            metrics_path=metrics_path,
            info_path=self.info_path,
            eval_metrics_path=self.eval_path,
        )


def build_tiny_export(root: Path) -> TinyExport:
    """Write bar data, train the tiny model and run the real export stage on it, under `root`."""
    processed = write_bar_splits(root / "data" / "processed", SPLIT_SIZES, SEED)
    model_path = root / "models" / "keras" / "model.keras"
    train_tiny(processed, model_path)
    info_path = model_path.parent / "model_info.json"
    write_model_info(info_path, TINY)
    eval_path = root / "metrics" / "evaluate.json"
    eval_path.parent.mkdir(parents=True)
    eval_path.write_text(json.dumps({"accuracy": 0.5, "loss": 1.0}))
    partial = TinyExport(
        root, processed, model_path, root / "models" / "onnx",
        root / "metrics" / "export.json", info_path, eval_path, {},
    )  # fmt: skip
    metrics = partial.run_export(ExportParams(), partial.out_dir, partial.metrics_path)
    return TinyExport(**{**partial.__dict__, "metrics": metrics})
