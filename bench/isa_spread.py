"""The cross-CPU spread, measured on one machine: the shipped recipe on a subset, trained with our
kernel built for this CPU's x86-64 level, for x86-64-v3, and with Keras's own LSTM. Prints each
model.keras md5, best validation loss and median epoch seconds.

    .venv/bin/python bench/isa_spread.py [--samples 12000] [--epochs 4]   # ~3 min on 2 cores

Needs data/processed/ from `dvc repro preprocess` in this checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
V3_FLAGS = ("avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "sse4_2", "popcnt", "ssse3")
# `seqmnist train` with the CPU's flags cut to x86-64-v3, so the kernel is built for that level.
TRAIN_AS_V3 = (
    "import sys\n"
    "import seqmnist.modeling.fused_lstm as fused\n"
    f"fused._cpu_flags = lambda: frozenset({V3_FLAGS!r})\n"
    "from seqmnist.cli import main\n"
    "sys.exit(main(['train', '--no-progress']))\n"
)
VARIANTS = {
    "kernel, this CPU's level": (
        [sys.executable, "-m", "seqmnist.cli", "train", "--no-progress"],
        {},
    ),
    "kernel, x86-64-v3": ([sys.executable, "-c", TRAIN_AS_V3], {}),
    "Keras LSTM": (
        [sys.executable, "-m", "seqmnist.cli", "train", "--no-progress"],
        {"lstm_backend": "keras"},
    ),
}


def train(folder: Path, cmd: list[str], overrides: dict, samples: int, epochs: int) -> dict:
    (folder / "data").mkdir(parents=True)
    shutil.copytree(PROJECT_ROOT / "data" / "processed", folder / "data" / "processed")
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["train"].update({"max_train_samples": samples, "epochs": epochs, **overrides})
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(cmd, cwd=folder, check=True, capture_output=True)
    metrics = json.loads((folder / "dvclive/train/metrics.json").read_text())
    model = (folder / "models/keras/model.keras").read_bytes()
    return {
        "md5": hashlib.md5(model).hexdigest()[:12],
        "best_val_loss": metrics["best_val_loss"],
        "median_epoch_seconds": metrics["median_epoch_seconds"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seqmnist-isa-") as scratch:
        for index, (name, (cmd, overrides)) in enumerate(VARIANTS.items()):
            result = train(Path(scratch) / str(index), cmd, overrides, args.samples, args.epochs)
            print(f"{name:26} md5 {result['md5']}  best val loss {result['best_val_loss']:.8f}  "
                  f"median epoch {result['median_epoch_seconds']:.2f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
