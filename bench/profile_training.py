"""Where a training step spends its time: TensorFlow's profiler over a few `fit` steps of the
train stage's model, summed per op (name shortened to its type and last path component).

    python bench/profile_training.py               # 10 steps of batch train.batch_size
    python bench/profile_training.py --steps 20 --top 30

The profiler adds its own overhead (about +30% per op), so read the shares, not the absolute
times. Uses data/processed when present, random rows otherwise.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from seqmnist.config import load_params
from training import FEATURES, TIME_STEPS, training_data

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/profile_training.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--steps", type=_positive, default=10, help="profiled training steps")
    parser.add_argument("--top", type=_positive, default=25, help="ops to list")
    return parser


def op_times(trace_dir: Path) -> tuple[collections.Counter, collections.Counter]:
    """Milliseconds and call counts per op, from the XSpace the profiler wrote."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    (path,) = trace_dir.rglob("*.xplane.pb")
    space = xplane_pb2.XSpace()
    space.ParseFromString(path.read_bytes())
    millis: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                op_name, _, op_type = name.rpartition(":")
                if op_type in ("Process", "ExecutorState", ""):
                    continue
                key = f"{op_type} ({op_name.rsplit('/', 1)[-1]})"
                millis[key] += event.duration_ps / 1e9
                calls[key] += 1
    return millis, calls


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.chdir(PROJECT_ROOT)
    import tensorflow as tf

    from seqmnist.modeling.training import (
        batches,
        compile_model,
        new_training_model,
        seed_everything,
    )

    params = load_params().train
    samples = args.steps * params.batch_size
    x, y, source = training_data(samples, params.seed)
    seed_everything(params.seed)
    model = new_training_model(params, TIME_STEPS, FEATURES)
    compile_model(model, params, args.steps)
    model.fit(batches(x, y, params.batch_size), verbose=0)  # trace and warm up, unprofiled
    with tempfile.TemporaryDirectory(prefix="seqmnist-profile-") as trace_dir:
        tf.profiler.experimental.start(trace_dir)
        model.fit(batches(x, y, params.batch_size), verbose=0)
        tf.profiler.experimental.stop()
        millis, calls = op_times(Path(trace_dir))
    total = sum(millis.values())
    print(f"{args.steps} steps of batch {params.batch_size} ({source}): {total:.0f} ms of op time")
    print(f"{'ms per step':>12} {'share':>6} {'calls/step':>10}  op")
    for key, value in millis.most_common(args.top):
        print(
            f"{value / args.steps:12.2f} {100 * value / total:5.1f}% "
            f"{calls[key] / args.steps:10.0f}  {key}"
        )
    matmul = sum(value for key, value in millis.items() if "MatMul" in key.split(" ")[0])
    print(f"matrix products: {100 * matmul / total:.0f}% of op time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
