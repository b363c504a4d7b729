"""`seqmnist`: one subcommand per DVC stage, plus `predict` and `versions`.

A thin layer: it parses arguments, loads params.yaml once, and calls the same stage functions that
tests and the Prefect flow call. Stage modules are imported lazily so that `seqmnist predict`
never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from seqmnist import __version__
from seqmnist.errors import SeqmnistError

MIRROR_ENV = "SEQMNIST_MIRROR"


def _params(args: argparse.Namespace):
    from seqmnist.config import load_params

    return load_params(args.params)


def _download(args: argparse.Namespace) -> None:
    from seqmnist import download

    mirror = args.mirror or os.environ.get(MIRROR_ENV) or None
    download.run(_params(args).download, mirror=mirror, progress=not args.no_progress)


def _preprocess(args: argparse.Namespace) -> None:
    from seqmnist import preprocess

    preprocess.run(_params(args).preprocess)


def _train(args: argparse.Namespace) -> None:
    from seqmnist import train

    train.run(_params(args).train, progress=not args.no_progress)


def _evaluate(args: argparse.Namespace) -> None:
    from seqmnist import evaluate

    evaluate.run(_params(args).evaluate)


def _export(args: argparse.Namespace) -> None:
    from seqmnist import export

    export.run(_params(args).export)


def _predict(args: argparse.Namespace) -> None:
    from seqmnist import predict

    predict.main(args)


def _versions(args: argparse.Namespace) -> None:
    from seqmnist import versions

    versions.main(args)


def _add_stage(
    subparsers: argparse._SubParsersAction,
    name: str,
    handler: Callable[[argparse.Namespace], None],
    summary: str,
    details: str,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=f"{summary}\n\n{details}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="parameters file (default: params.yaml in the current folder)",
    )
    parser.set_defaults(handler=handler, command=name)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqmnist",
        description=(
            "Train a recurrent MNIST classifier that reads each image row by row, version it\n"
            "with DVC, and ship it as ONNX. Each stage subcommand is what `dvc repro` runs;\n"
            "run it from the project root (where dvc.yaml and params.yaml live)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"seqmnist {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    download = _add_stage(
        sub,
        "download",
        _download,
        "Fetch the four MNIST IDX files into data/raw/ and verify their sha256.",
        "Mirrors from params.yaml (download.mirrors) are tried in order; a mirror given by\n"
        f"--mirror or ${MIRROR_ENV} (http(s) URL, file:// URL or local folder) is tried first.\n"
        "Each file's decompressed payload must match the pinned sha256, else the next mirror\n"
        "is tried. Nothing partial is left in data/raw/ if every mirror fails.",
    )
    download.add_argument(
        "--mirror", help=f"mirror tried before the configured ones (overrides ${MIRROR_ENV})"
    )
    download.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    _add_stage(
        sub,
        "preprocess",
        _preprocess,
        "Validate data/raw/ and write sequence tensors to data/processed/.",
        "Images become float32 [N, rows, columns] sequences in [0, 1] (rows are time steps);\n"
        "a seeded, stratified validation split is carved from the training set; the test set\n"
        "is left untouched. Dataset statistics go to metrics/data.json.",
    )
    train = _add_stage(
        sub,
        "train",
        _train,
        "Train the recurrent classifier on data/processed/ into models/keras/.",
        "Architecture and schedule come from params.yaml (train). Per-epoch curves are logged\n"
        "with DVCLive under dvclive/train/; an interrupted run resumes from checkpoints/train/.",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_stage(
        sub,
        "evaluate",
        _evaluate,
        "Score models/keras/ on the test set: metrics/evaluate.json and plots/.",
        "Accuracy, loss, per-class precision/recall/F1 and macro averages; a confusion matrix\n"
        "(plots/confusion.csv) and the most confidently wrong images (plots/misclassified.png).",
    )
    _add_stage(
        sub,
        "export",
        _export,
        "Convert the Keras model to ONNX in models/onnx/ and verify it against Keras.",
        "Writes model.onnx (and model.int8.onnx when export.quantize_int8 is on) with version\n"
        "metadata, a MODEL_CARD.md, and metrics/export.json. Fails if onnxruntime and Keras\n"
        "disagree on any test image.",
    )

    predict = sub.add_parser(
        "predict",
        help="Classify images, .npy arrays or IDX files with the ONNX model (no TensorFlow).",
        description=(
            "Classify digits with the exported ONNX model, using onnxruntime only.\n"
            "Inputs: PNG/JPEG images of any size (converted to grayscale and resized), .npy\n"
            "arrays [N, rows, columns] or [rows, columns], and IDX image files (.gz or not)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("inputs", nargs="+", type=Path, help="files to classify")
    predict.add_argument(
        "--model", type=Path, default=Path("models/onnx/model.onnx"), help="ONNX model file"
    )
    predict.add_argument(
        "--dark-on-light",
        action="store_true",
        help="invert images first (for dark digits on a light background, e.g. scans)",
    )
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")
    predict.add_argument("--batch-size", type=int, default=256, help="images per ONNX call")
    predict.set_defaults(handler=_predict, command="predict")

    versions = sub.add_parser(
        "versions",
        help="List recorded model versions or diff two of them.",
        description=(
            "The Prefect flow appends every new model version (git commit, data and model\n"
            "hashes, params, metrics) to versions/history.jsonl. `versions list` shows them;\n"
            "`versions diff A B` compares two (default: the last two)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    versions.add_argument("action", choices=["list", "diff"], nargs="?", default="list")
    versions.add_argument("refs", nargs="*", help="version ids (or prefixes) to diff")
    versions.add_argument("--history", type=Path, default=None, help="history file to read")
    versions.add_argument("--json", action="store_true", help="print JSON instead of a table")
    versions.set_defaults(handler=_versions, command="versions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except SeqmnistError as exc:
        print(f"seqmnist {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seqmnist: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
