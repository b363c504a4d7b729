"""`seqmnist`: the one command line. A subcommand per DVC stage, plus `predict`, `demo`,
`versions` and `flow`.

A thin layer: it parses arguments, loads params.yaml once, and calls the same functions tests and
the Prefect flow call. Everything heavier than the standard library is imported inside the
handlers, so `seqmnist predict` works where only the base distribution (numpy, Pillow,
onnxruntime) is installed, and a pipeline command there says which extra to install.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from seqmnist import __version__, environment, logs
from seqmnist.constants import PREDICT_BATCH_SIZE
from seqmnist.errors import MissingExtraError, SeqmnistError
from seqmnist.paths import FLOW_ENTRYPOINT, ONNX_MODEL, PARAMS_FILE, SWEEP_ENTRYPOINT

MIRROR_ENV = "SEQMNIST_MIRROR"
PIPELINE_EXTRA = "pipeline"
# Top-level modules only the pipeline extra installs.
PIPELINE_MODULES = frozenset(
    {"tensorflow", "keras", "tf2onnx", "onnx", "dvc", "dvclive", "prefect", "yaml", "pydantic",
     "httpx", "tenacity", "tqdm", "matplotlib", "networkx", "gto"}
)  # fmt: skip
DEFAULT_CRON = "0 3 * * *"
DEFAULT_DEPLOYMENT = "seqmnist-scheduled"
RAW = argparse.RawDescriptionHelpFormatter
Handler = Callable[[argparse.Namespace], int | None]


# --------------------------------------------------------------------------- handlers


def _params(args: argparse.Namespace):
    from seqmnist.config import load_params

    return load_params(args.params)


def _download(args: argparse.Namespace) -> None:
    from seqmnist.stages import download

    mirror = args.mirror or os.environ.get(MIRROR_ENV) or None
    download.run(_params(args).download, mirror=mirror, progress=not args.no_progress)


def _preprocess(args: argparse.Namespace) -> None:
    from seqmnist.stages import preprocess

    preprocess.run(_params(args).preprocess)


def _train(args: argparse.Namespace) -> None:
    logs.import_tensorflow()
    from seqmnist.stages import train

    train.run(_params(args).train, progress=not args.no_progress)


def _evaluate(args: argparse.Namespace) -> None:
    logs.import_tensorflow()
    from seqmnist.stages import evaluate

    evaluate.run(_params(args).evaluate)


def _export(args: argparse.Namespace) -> None:
    logs.import_tensorflow()
    from seqmnist.stages import export

    export.run(_params(args).export)


def _predict(args: argparse.Namespace) -> None:
    from seqmnist.serving import predict

    predict.main(args)


def _demo(args: argparse.Namespace) -> int | None:
    from seqmnist.serving import demo

    return demo.main(args)


def _versions(args: argparse.Namespace) -> None:
    from seqmnist.registry import render

    render.main(args)


def _run_flow(root: Path, entrypoint: str, parameters: dict) -> int:
    """Run a flow of the project's flows/ once, as a Prefect deployment would load it."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    # Heartbeats let a server mark a run whose worker died as Crashed; deployments send them
    # (prefect.yaml). A run started here has its user watching, and the heartbeat thread holds
    # the exit for up to a second (it sleeps in 1 s steps): off, unless asked for explicitly.
    asked = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.name in os.environ
    with temporary_settings(updates={} if asked else {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        flow = load_flow_from_entrypoint(str(root / entrypoint))
        state = flow(**parameters, return_state=True)
    print(f"{state.name}: {state.message}", file=sys.stderr if state.is_failed() else sys.stdout)
    return 0 if state.is_completed() else 1


def _flow(args: argparse.Namespace) -> int:
    from seqmnist.orchestration import dvc

    root = dvc.find_project_root(args.project)
    parameters = {
        "project_dir": str(root),
        "force": args.force,
        "stages": args.stages,
        "set_params": args.set_params,
    }
    if args.stage_timeout is not None:
        parameters["stage_timeout_s"] = args.stage_timeout
    if args.action == "serve":
        from prefect.flows import load_flow_from_entrypoint

        flow = load_flow_from_entrypoint(str(root / FLOW_ENTRYPOINT))
        flow.serve(name=args.name, cron=args.cron, parameters=parameters)
        return 0
    dvc.start_planning(root, args.stages)  # on the other core while Prefect loads
    return _run_flow(root, FLOW_ENTRYPOINT, parameters)


def _fleet(args: argparse.Namespace) -> int:
    from seqmnist.orchestration import fleet
    from seqmnist.orchestration.dvc import find_project_root

    return fleet.main(find_project_root(args.project), args.dir, args.workers)


def _sweep(args: argparse.Namespace) -> int:
    from seqmnist.errors import OrchestrationError
    from seqmnist.orchestration import sweep
    from seqmnist.orchestration.dvc import find_project_root
    from seqmnist.registry.publish import load_publish_params
    from seqmnist.registry.render import render_table

    root = find_project_root(args.project)
    remote = load_publish_params(root).git_remote
    if args.action == "run":
        sweep_id = args.id or sweep.new_sweep_id()
        trials = sweep.plan(sweep_id, args.grid or [], args.trial or [], args.set_params or [])
        sweep.validate(root, trials)
        parameters = {
            "sweep_id": sweep_id,
            "trials": trials,
            "project_dir": str(root),
            "max_parallel": args.max_parallel,
            "promote_best": args.promote_best,
        }
        status = _run_flow(root, SWEEP_ENTRYPOINT, parameters)
    else:
        sweep_id, status = args.id, 0
        if not sweep_id:
            raise OrchestrationError("`seqmnist sweep show` needs --id SWEEP_ID")
    rows = sweep.table(root, remote, sweep_id)
    if not rows:
        raise OrchestrationError(f"no experiments named {sweep_id}-* on git remote {remote!r}")
    print(json.dumps(rows, indent=2) if args.json else render_table(rows))
    chosen = sweep.best(rows)
    if chosen and not args.json:
        print(f"best by {sweep.SELECTION_COLUMN}: {chosen['trial']}")
    return status


# --------------------------------------------------------------------------- parser


def _command(
    sub: argparse._SubParsersAction, name: str, handler: Handler, summary: str, details: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name, help=summary, description=f"{summary}\n\n{details}", formatter_class=RAW
    )
    parser.set_defaults(handler=handler, command=name)
    return parser


def _add_project(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project", default=None, help="DVC project folder (default: the one holding the cwd)"
    )


def _stage(
    sub: argparse._SubParsersAction, name: str, handler: Handler, summary: str, details: str
) -> argparse.ArgumentParser:
    parser = _command(sub, name, handler, summary, details)
    parser.add_argument(
        "--params",
        type=Path,
        default=PARAMS_FILE,
        help="parameters file (default: params.yaml in the current folder)",
    )
    return parser


def _add_stage_commands(sub: argparse._SubParsersAction) -> None:
    download = _stage(
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
    _stage(
        sub,
        "preprocess",
        _preprocess,
        "Validate data/raw/ and write sequence tensors to data/processed/.",
        "Images become float32 [N, rows, columns] sequences in [0, 1] (rows are time steps);\n"
        "a seeded, stratified validation split is carved from the training set; the test set\n"
        "is left untouched. Dataset statistics go to metrics/data.json.",
    )
    train = _stage(
        sub,
        "train",
        _train,
        "Train the recurrent classifier on data/processed/ into models/keras/.",
        "Architecture and schedule come from params.yaml (train). Per-epoch curves are logged\n"
        "with DVCLive under dvclive/train/; an interrupted run resumes from checkpoints/train/.",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _stage(
        sub,
        "evaluate",
        _evaluate,
        "Score models/keras/ on the test set: metrics/evaluate.json and plots/.",
        "Accuracy, loss, per-class precision/recall/F1 and macro averages; a confusion matrix\n"
        "(plots/confusion.csv) and the most confidently wrong images (plots/misclassified.png).",
    )
    _stage(
        sub,
        "export",
        _export,
        "Convert the Keras model to ONNX in models/onnx/ and verify it against Keras.",
        "Writes model.onnx (and model.int8.onnx when export.quantize_int8 is on) with version\n"
        "metadata, a MODEL_CARD.md, and metrics/export.json. Fails if onnxruntime and Keras\n"
        "disagree on any test image.",
    )


def _add_predict(sub: argparse._SubParsersAction) -> None:
    predict = _command(
        sub,
        "predict",
        _predict,
        "Classify images, .npy arrays or IDX files with the ONNX model (no TensorFlow).",
        "Uses onnxruntime only: this works where only the base distribution is installed.\n"
        "Inputs: PNG/JPEG images of any size, .npy arrays [N, rows, columns] or\n"
        "[rows, columns], and IDX image files (.gz or not).",
    )
    predict.add_argument("inputs", nargs="+", type=Path, help="files to classify")
    predict.add_argument("--model", type=Path, default=ONNX_MODEL, help="ONNX model file")
    predict.add_argument(
        "--dark-on-light",
        action="store_true",
        help="invert images first (for dark digits on a light background, e.g. scans)",
    )
    predict.add_argument(
        "--no-frame",
        action="store_true",
        help="resize whole pictures to 28x28 instead of framing their digit like MNIST "
        "(cropped to the ink, scaled into 20x20, centered by center of mass); .npy and IDX "
        "inputs are never framed",
    )
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")
    predict.add_argument(
        "--batch-size", type=int, default=PREDICT_BATCH_SIZE, help="images per ONNX call"
    )


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = _command(
        sub,
        "demo",
        _demo,
        "Serve the web demo: draw a digit, onnxruntime-web classifies it in the browser.",
        "Builds web/ when needed (npm), then serves it on 127.0.0.1 with the chosen model\n"
        "and prints the URL. Ctrl-C stops it.",
    )
    demo.add_argument(
        "--model", type=Path, default=ONNX_MODEL, help=f"ONNX model to serve (default {ONNX_MODEL})"
    )
    demo.add_argument(
        "--stage",
        default=None,
        help="serve the model registered at this stage (e.g. prod) instead of --model",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    demo.add_argument("--port", type=int, default=8080, help="port (0 = any free port)")
    demo.add_argument("--no-build", action="store_true", help="serve web/dist/ as it is")


def _add_versions(sub: argparse._SubParsersAction) -> None:
    versions = _command(
        sub,
        "versions",
        _versions,
        "List registered model versions or diff two of them.",
        "Every new version the Prefect flow publishes is a git commit and a GTO tag\n"
        "(seqmnist-rnn@v1.2.0; seqmnist-rnn#prod#N when promoted), so every clone lists the\n"
        "same versions. `versions list` shows them with their metrics and stages;\n"
        "`versions diff A B` compares two (default: the last two), e.g. `diff v1.0.0 v1.1`.",
    )
    versions.add_argument("action", choices=["list", "diff"], nargs="?", default="list")
    versions.add_argument("refs", nargs="*", help="versions (v1.2.0, or a prefix) to diff")
    _add_project(versions)
    versions.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_flow(sub: argparse._SubParsersAction) -> None:
    flow = _command(
        sub,
        "flow",
        _flow,
        "Run the pipeline under Prefect, now (`run`) or on a schedule (`serve`).",
        "Stages run in DVC's dependency order, each through `dvc repro` (unchanged stages are\n"
        "skipped) with retries and a timeout; `dvc pull`/`dvc push` when a DVC remote is\n"
        "configured; then the version is recorded, gated (params.yaml: gate) and promoted.\n"
        f"The flow itself is {FLOW_ENTRYPOINT}, the entrypoint prefect.yaml deploys.",
    )
    flow.add_argument("action", choices=["run", "serve"], help="run once now, or serve")
    _add_project(flow)
    flow.add_argument(
        "--force",
        action="store_true",
        help="rerun the selected stages (and their upstream) even if DVC finds them unchanged",
    )
    flow.add_argument(
        "--stages",
        nargs="+",
        metavar="STAGE",
        help="run only these stages plus the stages they depend on; a run that leaves other "
        "stages stale records its version but promotes nothing",
    )
    flow.add_argument(
        "--set",
        dest="set_params",
        action="append",
        metavar="KEY=VALUE",
        help="override a param, as `dvc exp run -S` does: params.yaml is updated in place "
        "(revert with `git checkout params.yaml`); repeatable",
    )
    flow.add_argument(
        "--stage-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="kill a stage that runs longer than this (default: the flow's, 6 hours)",
    )
    flow.add_argument(
        "--cron", default=DEFAULT_CRON, help=f'serve: cron schedule (default "{DEFAULT_CRON}")'
    )
    flow.add_argument("--name", default=DEFAULT_DEPLOYMENT, help="serve: deployment name")


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    sweep = _command(
        sub,
        "sweep",
        _sweep,
        "Run many trainings at once on the Prefect work pool, as DVC experiments.",
        "`sweep run` submits one run of the `trial` deployment (prefect.yaml) per trial; each\n"
        "worker clones the repository, runs `dvc exp run -n <trial> -S ...` and pushes the\n"
        "experiment (`dvc exp push`: the ref to the git origin, the data to the DVC remote).\n"
        "A trial whose worker dies is submitted again. The table (also a Prefect artifact)\n"
        "lists trials x params x metrics; the best is chosen by validation loss, never by test\n"
        "accuracy, and `--promote-best` publishes it through the quality gate. Needs\n"
        "PREFECT_API_URL (e.g. from `seqmnist fleet up`) and this commit pushed to the origin.\n\n"
        "  seqmnist sweep run --set train.epochs=5 --grid train.model.units=64,128\n"
        "  seqmnist sweep show --id sweep-20261130-230000",
    )
    sweep.add_argument("action", choices=["run", "show"], help="run a sweep, or show one")
    sweep.add_argument("--id", default=None, help="the sweep's id (run: default from the time)")
    sweep.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2",
        help="a param and its values; the trials are every combination; repeatable",
    )
    sweep.add_argument(
        "--trial",
        action="append",
        metavar='"KEY=V KEY=V"',
        help="one trial's overrides, space-separated; repeatable",
    )
    sweep.add_argument(
        "--set",
        dest="set_params",
        action="append",
        metavar="KEY=VALUE",
        help="an override every trial gets, e.g. train.epochs=5; repeatable",
    )
    sweep.add_argument(
        "--max-parallel", type=int, default=2, help="trials running at once (default 2)"
    )
    sweep.add_argument(
        "--promote-best",
        action="store_true",
        help="publish the best trial through the pipeline deployment and its quality gate",
    )
    _add_project(sweep)
    sweep.add_argument("--json", action="store_true", help="print the table as JSON")


def _add_fleet(sub: argparse._SubParsersAction) -> None:
    fleet = _command(
        sub,
        "fleet",
        _fleet,
        "Start a local fleet to try sweeps: Prefect server, S3 store and N workers.",
        "Everything on 127.0.0.1, in one folder: a PostgreSQL cluster, `prefect server start`\n"
        "on it, a loopback S3 server as the DVC remote (machine-level DVC config), a bare git\n"
        "origin (unless the project has one), the work pool and its queues, the deployments of\n"
        "prefect.yaml, and N process workers, each in a folder of its own. It prints how to\n"
        "submit a sweep, and stops everything on Ctrl-C. README: Scaling out maps each piece\n"
        "to its production form.",
    )
    fleet.add_argument("action", choices=["up"], help="start the fleet (Ctrl-C stops it)")
    fleet.add_argument("--workers", type=int, default=2, help="process workers (default 2)")
    fleet.add_argument(
        "--dir", type=Path, default=Path(".fleet"), help="the fleet's folder (default .fleet)"
    )
    _add_project(fleet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqmnist",
        description=(
            "Train a recurrent MNIST classifier that reads each image row by row, version it\n"
            "with DVC, schedule it with Prefect and ship it as ONNX. Each stage subcommand is\n"
            "what `dvc repro` runs; run it from the project root (where dvc.yaml lives)."
        ),
        formatter_class=RAW,
    )
    parser.add_argument("--version", action="version", version=f"seqmnist {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, third-party notices included"
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_stage_commands(sub)
    _add_predict(sub)
    _add_demo(sub)
    _add_versions(sub)
    _add_flow(sub)
    _add_sweep(sub)
    _add_fleet(sub)
    return parser


def _missing_extra(error: ModuleNotFoundError, command: str) -> MissingExtraError | None:
    module = (error.name or "").split(".")[0]
    if module not in PIPELINE_MODULES:
        return None
    return MissingExtraError(
        f"`seqmnist {command}` needs the {PIPELINE_EXTRA!r} extra ({module} is not installed): "
        f"pip install 'seqmnist[{PIPELINE_EXTRA}]'"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environment.apply_defaults()
    logs.setup(verbose=args.verbose)
    try:
        return args.handler(args) or 0
    except (SeqmnistError, ModuleNotFoundError) as exc:
        if isinstance(exc, ModuleNotFoundError):
            exc = _missing_extra(exc, args.command) or exc
            if isinstance(exc, ModuleNotFoundError):
                raise
        print(f"seqmnist {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the system refused something seqmnist did not wrap: say what
        print(f"seqmnist {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("seqmnist: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The `seqmnist` command: `main`, then an exit that skips the interpreter's teardown.

    Unloading the thousands of modules Prefect, DVC and TensorFlow bring takes ~0.4 s after the
    work is done (bench/README.md, "Pipeline overhead"). The exit hooks registered while the
    command ran still run first (Prefect sending its last logs and events, its temporary server
    stopping), as do threads the interpreter waits for; then logging is flushed and the process
    ends with main's exit code. A command that raised ends the usual way.
    """
    returned: list[int] = []

    def end_without_teardown() -> None:  # registered first, so the last exit hook to run
        if not returned:
            return
        logging.shutdown()
        for stream in {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__} - {None}:
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing reaches it
                stream.flush()
        with contextlib.suppress(OSError, AttributeError):  # what C libraries buffer in stdio
            ctypes.CDLL(None).fflush(None)
        os._exit(returned[0])

    atexit.register(end_without_teardown)
    returned.append(main())
    sys.exit(returned[0])


if __name__ == "__main__":
    run()
