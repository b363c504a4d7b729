"""The benchmark suite, in one run: training vs PyTorch, FLOP/s vs the CPU peak, inference,
pipeline overhead and time to 99% accuracy, written to bench/results.json and bench/README.md.

    python bench/run.py              # full run (~10 min on 2 cores): updates bench/results.json
                                     # and the table in bench/README.md
    python bench/run.py --quick      # tiny sizes (CI): bench/.cache/quick/results.{json,md}
    python bench/run.py --only inference training --output-dir /tmp/b

PyTorch parts need the bench extra (`pip install -e '.[bench]'`); without torch they are
skipped and say so. Run it on a quiet machine: other processes show up in every figure (the load
average at start and end is recorded next to them).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import accuracy
import bench_inference
import overhead
import report
import training
from flops import model_flops
from machine import machine_json
from seqmnist.config import load_params

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
FULL_OUTPUT = BENCH_DIR
QUICK_OUTPUT = BENCH_DIR / ".cache" / "quick"
SECTIONS = ("flops", "accuracy", "training", "training_flipped", "inference", "pipeline")
PIPELINE_RUNS = {"full": 5, "quick": 1}
TIME_STEPS = 28
FEATURES = 28


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (CI)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run just these sections")
    parser.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], help="leave these out")
    parser.add_argument(
        "--output-dir",
        type=Path,
        help=f"where results.json goes (default: bench/ in full mode, {QUICK_OUTPUT} in quick)",
    )
    return parser


def _flipped_training(params, quick: bool, peak: float) -> dict:
    """The same A/B/A/B comparison with the default model's `bidirectional` flipped (both
    frameworks): our kernel's other direction setting, one way or both."""
    model = params.model.model_copy(update={"bidirectional": not params.model.bidirectional})
    flipped = params.model_copy(update={"model": model})
    result = training.run(
        flipped,
        training.QUICK if quick else training.FULL_FLIPPED,
        model_flops(model, TIME_STEPS, FEATURES),
        training.executed_flops(flipped),
        peak,
    )
    return {"bidirectional": model.bidirectional, **result}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.chdir(PROJECT_ROOT)
    mode = "quick" if args.quick else "full"
    selected = [s for s in (args.only or SECTIONS) if s not in args.skip]
    started = time.perf_counter()
    machine = machine_json()
    params = load_params().train
    flops = model_flops(params.model, TIME_STEPS, FEATURES)
    executed_by = training.executed_flops(params)
    peak = float(machine["peak_gflops"])
    print(f"bench ({mode}): {', '.join(selected)} on {machine['cpu_model']}", flush=True)

    sections: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="seqmnist-bench-") as tmp:
        work: dict[str, Callable[[], object]] = {
            "flops": lambda: flops.to_json(executed_by),
            "accuracy": lambda: accuracy.run(PROJECT_ROOT, params.max_train_samples),
            "training": lambda: training.run(
                params, training.QUICK if args.quick else training.FULL, flops, executed_by, peak
            ),
            "training_flipped": lambda: _flipped_training(params, args.quick, peak),
            "inference": lambda: bench_inference.run(
                bench_inference.resolve_models(
                    bench_inference.DEFAULT_ONNX, bench_inference.DEFAULT_KERAS, Path(tmp)
                ),
                Path(tmp),
                bench_inference.QUICK if args.quick else bench_inference.FULL,
                flops,
                peak,
            ),
            "pipeline": lambda: overhead.run(PIPELINE_RUNS[mode]),
        }
        for name in selected:
            print(f"[{name}]", flush=True)
            try:
                sections[name] = work[name]()
            except Exception as exc:
                traceback.print_exc()
                sections[name] = {"error": f"{type(exc).__name__}: {exc}"}

    result = {
        "command": "python bench/run.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "mode": mode,
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - started,
        "machine": machine,
        "load_average_end": [round(value, 2) for value in os.getloadavg()],
        "sections": sections,
    }
    out_dir = args.output_dir or (QUICK_OUTPUT if args.quick else FULL_OUTPUT)
    markdown_path = out_dir / ("README.md" if out_dir == FULL_OUTPUT else "results.md")
    report.write(result, out_dir / "results.json", markdown_path)
    print(report.markdown(result))
    print(f"wrote {out_dir / 'results.json'} and {markdown_path}")
    failed = [
        name
        for name, section in sections.items()
        if isinstance(section, dict) and "error" in section
    ]
    if failed:
        print(f"bench: sections failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
