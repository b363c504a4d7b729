"""Batch-1 latency per image: the demo page (onnxruntime-web, WASM, in Chromium) against Python's
onnxruntime, on the same machine, with the same model and images, in the same run.

    python bench/web_latency.py                              # models/onnx/model.onnx
    python bench/web_latency.py --model /path/model.onnx --calls 300 --runs 5

The page is built if stale and served by `seqmnist demo`'s server on 127.0.0.1; web/tests/
latency.mjs drives Debian's Chromium (/usr/bin/chromium) and times `seqmnist.classifyRows(image,
1)` in the page with performance.now(). Chromium's clock ticks in 0.1 ms steps on a page that is
not cross-origin isolated, longer than one call, so each run times a block of back-to-back calls
and reports the mean per call, in both languages. The page runs one WASM thread; Python is timed
with onnxruntime's default threads and with one thread. Each figure is the median over runs
(bench/timing.py). Images are real MNIST test digits.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from seqmnist.constants import ORT_PROVIDERS, PIXEL_MAX
from seqmnist.data.idx import read_images
from seqmnist.paths import ONNX_MODEL, TEST_IMAGES
from seqmnist.serving import demo
from timing import Figure, ratio, throughput

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LATENCY_SCRIPT = PROJECT_ROOT / "web" / "tests" / "latency.mjs"
DEFAULT_MIRROR = PROJECT_ROOT.parent / "shared" / "mnist"
IMAGES = 200
CALLS = 200
RUNS = 7
WARMUP = 500
BROWSER_TIMEOUT_S = 600


def test_images(mirror: Path, count: int) -> np.ndarray:
    """float32 [count, 28, 28] in [0, 1]: the model's input for real test digits."""
    return (read_images(mirror / f"{TEST_IMAGES}.gz")[:count] / PIXEL_MAX).astype(np.float32)


def web_latency(model: Path, images: np.ndarray, calls: int, runs: int) -> Figure:
    web = PROJECT_ROOT / demo.WEB_DIR
    if demo.needs_build(web):
        demo.build(web)
    server = demo.DemoServer("127.0.0.1", 0, web / demo.DIST_DIR, model)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with tempfile.NamedTemporaryFile(suffix=".f32") as rows:
            rows.write(images.tobytes())
            rows.flush()
            command = ["node", str(LATENCY_SCRIPT), server.url, rows.name]
            command += [str(calls), str(runs), str(WARMUP)]
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False
            )
    finally:
        server.shutdown()
        server.server_close()
    if done.returncode != 0:
        sys.exit(f"web_latency: {LATENCY_SCRIPT.name} failed:\n{done.stderr.strip()}")
    return Figure("ms", tuple(json.loads(done.stdout)["runs_ms"]))


def python_latency(model: Path, images: np.ndarray, calls: int, runs: int, threads: int) -> Figure:
    """Python onnxruntime, batch 1: mean ms per call in blocks of `calls`; 0 threads = default."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=list(ORT_PROVIDERS))
    name = session.get_inputs()[0].name
    batches = itertools.cycle([image[np.newaxis] for image in images])  # [1, 28, 28] each

    def one_call() -> None:
        session.run(None, {name: next(batches)})

    per_second = throughput(one_call, 1, calls, runs, WARMUP)
    return Figure("ms", tuple(1e3 / calls_per_second for calls_per_second in per_second.runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PROJECT_ROOT / ONNX_MODEL)
    parser.add_argument(
        "--mirror",
        type=Path,
        default=Path(os.environ.get("SEQMNIST_MIRROR", DEFAULT_MIRROR)),
        help="folder of the MNIST .gz files",
    )
    parser.add_argument("--calls", type=int, default=CALLS, help="calls timed as one block per run")
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    model = demo.check_model(args.model)
    images = test_images(args.mirror, IMAGES)
    figures = {
        "page (onnxruntime-web WASM, 1 thread)": web_latency(model, images, args.calls, args.runs),
        "python onnxruntime, default threads": python_latency(
            model, images, args.calls, args.runs, threads=0
        ),
        "python onnxruntime, 1 thread": python_latency(
            model, images, args.calls, args.runs, threads=1
        ),
    }
    print(f"batch-1 latency per image, {model}, median of {args.runs} runs x {args.calls} calls:")
    for name, figure in figures.items():
        print(f"  {name:40s} {figure.median:7.3f} ms (min {figure.min:.3f}, max {figure.max:.3f})")
    web, default_threads, one_thread = figures.values()
    print(
        f"  ratio web / python: {ratio(web, default_threads):.2f} (default threads), "
        f"{ratio(web, one_thread):.2f} (1 thread)"
    )


if __name__ == "__main__":
    main()
