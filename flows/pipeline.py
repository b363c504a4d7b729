"""seqmnist on Prefect: run the DVC stages in DVC's order, retry them, record and gate each version.

DVC decides what is stale and keeps the lineage (dvc.lock); Prefect decides when runs happen,
retries failed stages and shows what happened. The work itself lives in seqmnist.orchestration.

    python flows/pipeline.py run [--force] [--stages train ...] [--set train.epochs=2 ...]
    python flows/pipeline.py serve --cron "0 3 * * *"
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.tasks import exponential_backoff

from seqmnist import orchestration, versions

# Operational policy, in one place: what the decorators below and the stage subprocesses use.
STAGE_RETRIES = 2  # a stage failing 3 times in a row fails the run
STAGE_RETRY_BACKOFF_S = 30.0  # waits 30 s, then 60 s (exponential), with jitter
SYNC_RETRIES = 3  # dvc pull / dvc push against a remote
SYNC_RETRY_BACKOFF_S = 10.0
RETRY_JITTER_FACTOR = 0.2
STAGE_TIMEOUT_S = orchestration.DEFAULT_STAGE_TIMEOUT_S  # per stage; the subprocess is killed
SYNC_TIMEOUT_S = orchestration.DEFAULT_SYNC_TIMEOUT_S
DEFAULT_CRON = "0 3 * * *"
DEPLOYMENT_NAME = "seqmnist-scheduled"
VERSIONS_TABLE_KEY = "seqmnist-versions"
VERSION_DIFF_KEY = "seqmnist-version-diff"


@task(
    name="dvc-repro",
    task_run_name="{stage}",
    retries=STAGE_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=STAGE_RETRY_BACKOFF_S),
    retry_jitter_factor=RETRY_JITTER_FACTOR,
    cache_policy=NO_CACHE,
)
def repro_stage(project_dir: str, stage: str, force: bool, timeout_s: float) -> dict[str, Any]:
    """One DVC stage via `dvc repro`; DVC skips it when nothing it depends on changed."""
    logger = get_run_logger()
    result = orchestration.run_stage(
        Path(project_dir), stage, force=force, timeout_s=timeout_s, on_line=logger.info
    )
    logger.info(
        "%s %s in %.1f s",
        stage,
        "skipped (unchanged)" if result.skipped else "ran",
        result.duration_s,
    )
    return {"stage": stage, "skipped": result.skipped, "duration_s": result.duration_s}


@task(
    name="dvc-sync",
    task_run_name="dvc-{direction}",
    retries=SYNC_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=SYNC_RETRY_BACKOFF_S),
    retry_jitter_factor=RETRY_JITTER_FACTOR,
    cache_policy=NO_CACHE,
)
def dvc_sync(project_dir: str, direction: str) -> None:
    """`dvc pull` before or `dvc push` after the stages, when a DVC remote is configured."""
    orchestration.sync_with_remote(Path(project_dir), direction, SYNC_TIMEOUT_S)


@task(name="record-version", cache_policy=NO_CACHE)
def record_version(project_dir: str) -> orchestration.RunOutcome:
    """Append the version to versions/history.jsonl, gate it, promote it if it passes."""
    return orchestration.finish_run(Path(project_dir), run_id=flow_run.get_id())


def publish(outcome: orchestration.RunOutcome) -> None:
    """The history as a table under a stable key, and this version's diff as Markdown."""
    create_table_artifact(
        table=versions.table_rows(outcome.history),
        key=VERSIONS_TABLE_KEY,
        description="Every recorded seqmnist model version (versions/history.jsonl).",
    )
    diff = versions.diff_versions(outcome.previous, outcome.entry) if outcome.previous else None
    create_markdown_artifact(
        markdown=versions.render_diff_markdown(diff, outcome.entry),
        key=VERSION_DIFF_KEY,
        description="This run's version against the previously recorded one.",
    )


@flow(name="seqmnist-pipeline", retries=0)
def seqmnist_pipeline(
    project_dir: str | None = None,
    force: bool = False,
    stages: list[str] | None = None,
    set_params: list[str] | None = None,
    stage_timeout_s: float = STAGE_TIMEOUT_S,
) -> State:
    """Pull, run the stages DVC's graph orders, push, then record, gate and promote the version."""
    logger = get_run_logger()
    root = orchestration.find_project_root(project_dir)
    remote = orchestration.default_remote(root)
    if remote:
        dvc_sync(str(root), "pull")
    orchestration.apply_param_overrides(root, set_params or [])
    order = orchestration.stage_order(root, stages)
    logger.info("stages in DVC order: %s", " -> ".join(order))
    for stage in order:
        repro_stage(str(root), stage, force, stage_timeout_s)
    if remote:
        dvc_sync(str(root), "push")
    outcome = record_version(str(root))
    publish(outcome)
    entry = outcome.entry
    message = f"version {entry['version']} ({entry['status']}); {outcome.decision.reason}"
    if outcome.decision.blocked:
        return Failed(message=message, name="NotPromoted", data=entry)
    return Completed(message=message, data=entry)


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project", default=None, help="DVC project folder (default: the one holding the cwd)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="rerun the selected stages (and their upstream) even if DVC finds them unchanged",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        metavar="STAGE",
        help="run only these stages plus the stages they depend on; a run that leaves other "
        "stages stale records its version but promotes nothing",
    )
    parser.add_argument(
        "--set",
        dest="set_params",
        action="append",
        metavar="KEY=VALUE",
        help="override a param, as `dvc exp run -S` does: params.yaml is updated in place "
        "(revert with `git checkout params.yaml`); repeatable",
    )
    parser.add_argument(
        "--stage-timeout",
        type=float,
        default=STAGE_TIMEOUT_S,
        metavar="SECONDS",
        help=f"kill a stage that runs longer than this (default {STAGE_TIMEOUT_S:.0f})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python flows/pipeline.py",
        description=(
            "Run the seqmnist DVC pipeline under Prefect: stages in DVC's dependency order, each\n"
            "through `dvc repro` (unchanged stages are skipped) with retries and a timeout;\n"
            "`dvc pull`/`dvc push` when a DVC remote is configured; then the version is recorded\n"
            "in versions/history.jsonl and Prefect artifacts, and promoted to models/promoted/\n"
            "if it passes the quality gate (params.yaml: gate)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the pipeline once, now")
    _run_options(run)
    serve = sub.add_parser(
        "serve", help="serve a scheduled deployment from this process (Ctrl-C stops it)"
    )
    _run_options(serve)
    serve.add_argument(
        "--cron", default=DEFAULT_CRON, help=f'cron schedule (default "{DEFAULT_CRON}")'
    )
    serve.add_argument("--name", default=DEPLOYMENT_NAME, help="deployment name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = str(orchestration.find_project_root(args.project))
    parameters = {
        "project_dir": root,
        "force": args.force,
        "stages": args.stages,
        "set_params": args.set_params,
        "stage_timeout_s": args.stage_timeout,
    }
    if args.command == "serve":
        seqmnist_pipeline.serve(name=args.name, cron=args.cron, parameters=parameters)
        return 0
    state = seqmnist_pipeline(**parameters, return_state=True)
    print(f"{state.name}: {state.message}", file=sys.stderr if state.is_failed() else sys.stdout)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
