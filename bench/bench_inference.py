"""onnxruntime vs Keras inference, in one run: batch-1 latency and batch-256 throughput.

    python bench/bench_inference.py                     # models/onnx/model.onnx vs models/keras
    python bench/bench_inference.py --quick             # fewer calls, for CI
    python bench/bench_inference.py --onnx X.onnx --keras X.keras

Without a trained model (either file missing) it builds the params.yaml architecture with random
weights and exports it to a temp folder: timing does not depend on the weights, so the numbers
still compare the two runtimes. Inputs are random [batch, time_steps, features] float32 rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_ONNX = Path("models/onnx/model.onnx")
DEFAULT_KERAS = Path("models/keras/model.keras")
BIG_BATCH = 256
SEED = 0


@dataclass(frozen=True)
class Plan:
    """How many timed calls per measurement (after `warmup` untimed ones)."""

    warmup: int
    onnx_single: int
    onnx_batches: int
    keras_predict_single: int
    keras_call_single: int
    keras_batches: int


FULL = Plan(
    warmup=5,
    onnx_single=1000,
    onnx_batches=50,
    keras_predict_single=50,
    keras_call_single=200,
    keras_batches=20,
)
QUICK = Plan(
    warmup=2,
    onnx_single=100,
    onnx_batches=5,
    keras_predict_single=5,
    keras_call_single=20,
    keras_batches=3,
)


def median_seconds(fn: Callable[[], object], calls: int, warmup: int) -> float:
    """Median wall time of one call: robust against the odd slow call on a shared machine."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_untrained(folder: Path) -> tuple[Path, Path]:
    """Save the configured architecture with random weights, and its ONNX export, in `folder`."""
    import keras
    import onnx

    from seqmnist.config import ModelParams, load_params
    from seqmnist.errors import SeqmnistError
    from seqmnist.export import convert
    from seqmnist.model import build_model

    try:
        model_params = load_params().train.model
    except SeqmnistError:
        model_params = ModelParams()
    keras.utils.set_random_seed(SEED)
    model = build_model(model_params, time_steps=28, features=28)
    keras_path, onnx_path = folder / "model.keras", folder / "model.onnx"
    model.save(keras_path)
    onnx.save(convert(model, opset=17, time_steps=28, features=28), onnx_path)
    return onnx_path, keras_path


def run(onnx_path: Path, keras_path: Path, plan: Plan) -> dict[str, float]:
    """Time both runtimes on the same random inputs; returns seconds and samples per second."""
    import keras
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = keras.saving.load_model(keras_path, compile=False)
    name = session.get_inputs()[0].name
    time_steps, features = (int(dim) for dim in model.input_shape[1:])
    rng = np.random.default_rng(SEED)
    big = rng.uniform(0, 1, (BIG_BATCH, time_steps, features)).astype(np.float32)
    one = big[:1]

    results = {
        "onnx_b1_s": median_seconds(
            lambda: session.run(None, {name: one}), plan.onnx_single, plan.warmup
        ),
        "onnx_b256_s": median_seconds(
            lambda: session.run(None, {name: big}), plan.onnx_batches, plan.warmup
        ),
        "keras_predict_b1_s": median_seconds(
            lambda: model.predict(one, verbose=0), plan.keras_predict_single, plan.warmup
        ),
        "keras_call_b1_s": median_seconds(
            lambda: model(one, training=False), plan.keras_call_single, plan.warmup
        ),
        "keras_predict_b256_s": median_seconds(
            lambda: model.predict(big, batch_size=BIG_BATCH, verbose=0),
            plan.keras_batches,
            plan.warmup,
        ),
    }
    results["onnx_b256_samples_per_s"] = BIG_BATCH / results["onnx_b256_s"]
    results["keras_b256_samples_per_s"] = BIG_BATCH / results["keras_predict_b256_s"]
    return results


def report(results: dict[str, float], onnx_path: Path, keras_path: Path, note: str) -> str:
    """The printed comparison: both numbers and their ratios."""
    ms = 1000.0
    onnx_b1 = results["onnx_b1_s"]
    return "\n".join(
        [
            f"models: {onnx_path} vs {keras_path}{note}",
            f"{'':28}{'onnxruntime':>14}{'keras':>14}{'ratio':>10}",
            f"{'batch 1 median latency':28}{onnx_b1 * ms:>11.3f} ms"
            f"{results['keras_predict_b1_s'] * ms:>11.2f} ms"
            f"{results['keras_predict_b1_s'] / onnx_b1:>9.0f}x   (keras predict)",
            f"{'':28}{'':>14}{results['keras_call_b1_s'] * ms:>11.2f} ms"
            f"{results['keras_call_b1_s'] / onnx_b1:>9.0f}x   (keras model(x) call)",
            f"{f'batch {BIG_BATCH} throughput':28}"
            f"{results['onnx_b256_samples_per_s']:>9,.0f} smp/s"
            f"{results['keras_b256_samples_per_s']:>9,.0f} smp/s"
            f"{results['onnx_b256_samples_per_s'] / results['keras_b256_samples_per_s']:>9.1f}x",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX, help="ONNX model")
    parser.add_argument("--keras", type=Path, default=DEFAULT_KERAS, help="Keras model")
    parser.add_argument("--quick", action="store_true", help="few calls (CI smoke run)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="seqmnist-bench-") as tmp:
        onnx_path, keras_path, note = args.onnx, args.keras, ""
        if not (onnx_path.is_file() and keras_path.is_file()):
            onnx_path, keras_path = build_untrained(Path(tmp))
            note = f"\n  ({args.onnx} or {args.keras} missing: untrained model, timing only)"
        results = run(onnx_path, keras_path, plan)
        print(report(results, onnx_path, keras_path, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
