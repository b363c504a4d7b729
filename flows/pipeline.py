"""seqmnist on Prefect: run the DVC stages in DVC's order, retry them, record and gate each version.

DVC decides what is stale and keeps the lineage (dvc.lock); Prefect decides when runs happen,
retries failed stages and shows what happened. The work itself lives in seqmnist.orchestration;
this file holds only the flow, its tasks and their policy. Run it with `seqmnist flow run`,
serve it with `seqmnist flow serve`, deploy it with prefect.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State
from prefect.tasks import exponential_backoff

from seqmnist import environment
from seqmnist.errors import SeqmnistError, StageFailed
from seqmnist.orchestration import dvc, runner, sweep
from seqmnist.orchestration.lock import workspace_lock
from seqmnist.registry import history, publish, render, versions

environment.apply_defaults()

# Operational policy, in one place: what the decorators below and the stage subprocesses use.
STAGE_RETRIES = 2  # a stage failing 3 times in a row fails the run
STAGE_RETRY_BACKOFF_S = 30.0  # waits 30 s, then 60 s (exponential), with jitter
SYNC_RETRIES = 3  # dvc pull / dvc push against a remote
SYNC_RETRY_BACKOFF_S = 10.0
RETRY_JITTER_FACTOR = 0.2
STAGE_TIMEOUT_S = runner.DEFAULT_STAGE_TIMEOUT_S  # per stage; the subprocess is killed
SYNC_TIMEOUT_S = runner.DEFAULT_SYNC_TIMEOUT_S
VERSIONS_TABLE_KEY = "seqmnist-versions"
VERSION_DIFF_KEY = "seqmnist-version-diff"


def _worth_retrying(_task, _run, state: State) -> bool:
    """A stage that failed on a bad input (params, data: exit 2) would fail the same way again."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, StageFailed) or error.retryable


@task(
    name="dvc-repro",
    task_run_name="{stage}",
    retries=STAGE_RETRIES,
    retry_condition_fn=_worth_retrying,
    retry_delay_seconds=exponential_backoff(backoff_factor=STAGE_RETRY_BACKOFF_S),
    retry_jitter_factor=RETRY_JITTER_FACTOR,
    cache_policy=NO_CACHE,
)
def repro_stage(
    project_dir: str, stage: str, force: bool, timeout_s: float, unchanged: bool = False
) -> dict[str, Any]:
    """One DVC stage via `dvc repro`; DVC skips it when nothing it depends on changed.

    `unchanged`: the flow's one `dvc status` up front found the stage and everything before it
    up to date, so no `dvc` process is started (the task still shows in the UI).
    """
    logger = get_run_logger()
    if unchanged:
        logger.info("%s skipped (unchanged, per dvc status)", stage)
        return {"stage": stage, "skipped": True, "duration_s": 0.0}
    result = runner.run_stage(
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
    runner.sync_with_remote(Path(project_dir), direction, SYNC_TIMEOUT_S)


@task(name="publish-version", cache_policy=NO_CACHE)
def publish_version(
    project_dir: str, dvc_remote: str | None, stale: list[str] | None
) -> publish.Publication:
    """Commit, push, register (git tags) and gate the version the stages left in the workspace;
    `stale`: what `dvc status` said before the stages, when no `dvc repro` started since."""
    return publish.publish(Path(project_dir), dvc_remote, stale)


def report(project_dir: str, outcome: publish.Publication) -> None:
    """Every registered version as a table under a stable key, this one's diff as Markdown
    (when the run committed or tagged something: else both would be as they were)."""
    artifact = publish.load_publish_params(Path(project_dir)).artifact
    create_table_artifact(
        table=render.table_rows(history.versions(Path(project_dir), artifact)),
        key=VERSIONS_TABLE_KEY,
        description=f"Every registered version of {artifact} (git tags {artifact}@v*).",
    )
    diff = versions.diff_versions(outcome.previous, outcome.record) if outcome.previous else None
    create_markdown_artifact(
        markdown=render.render_diff_markdown(diff, outcome.version or "run", outcome.summary),
        key=VERSION_DIFF_KEY,
        description="This run's version against the previously registered one.",
    )


def run_stages_and_publish(
    root: Path,
    force: bool,
    stages: list[str] | None,
    set_params: list[str],
    stage_timeout_s: float,
    experiment: str | None,
) -> publish.Publication:
    """The flow's body, under the workspace lock: what a killed run left is stopped first."""
    logger = get_run_logger()
    with workspace_lock(root):
        left = runner.stop_left_behind(root)
        if left:
            logger.warning("stopped what a killed run left running: %s", left)
        # `seqmnist flow run` asked DVC for the plan before Prefect loaded: it holds unless
        # something below changes the workspace first.
        early = dvc.early_plan(root, stages)
        remote = early.remote if early else dvc.default_remote(root)
        if remote:
            dvc_sync(str(root), "pull")
        if experiment:
            git_remote = publish.load_publish_params(root).git_remote
            sweep.apply_experiment(root, git_remote, experiment)
        dvc.apply_param_overrides(root, set_params)
        changed = left or remote or experiment or set_params
        plan = early if early and not changed else dvc.plan(root, stages)
        logger.info(
            "stages in DVC order: %s; stale: %s%s",
            " -> ".join(plan.order),
            sorted(plan.stale) or "none",
            " (asked while Prefect loaded)" if plan is early else "",
        )
        # Once DVC reproduces a stage (runs it, or restores it from its run cache), the stages
        # after it may be stale too, and only DVC knows what is stale from then on.
        asked_dvc = False
        for stage in plan.order:
            unchanged = not (force or asked_dvc or stage in plan.stale)
            repro_stage(str(root), stage, force, stage_timeout_s, unchanged)
            asked_dvc = asked_dvc or not unchanged
        if remote:
            dvc_sync(str(root), "push")  # the data first: no commit or tag may name missing data
        outcome = publish_version(str(root), remote, None if asked_dvc else sorted(plan.stale))
        if outcome.changed:
            report(str(root), outcome)
    return outcome


@flow(name="seqmnist-pipeline", retries=0)
def seqmnist_pipeline(
    project_dir: str | None = None,
    force: bool = False,
    stages: list[str] | None = None,
    set_params: list[str] | None = None,
    stage_timeout_s: float = STAGE_TIMEOUT_S,
    experiment: str | None = None,
) -> State:
    """Pull, run the stages in DVC's order, push the data, then commit, tag and gate the version.

    `experiment`: a trial a sweep pushed (`dvc exp push`); it is applied first, so its stages
    are up to date and it is published without training it again.
    """
    try:
        root = dvc.find_project_root(project_dir)
        outcome = run_stages_and_publish(
            root, force, stages, set_params or [], stage_timeout_s, experiment
        )
    except SeqmnistError as error:  # it names what to fix: one message, not a traceback
        get_run_logger().error("%s", error)
        return Failed(message=str(error))
    if outcome.decision.blocked:
        return Failed(message=outcome.summary, name="NotPromoted", data=outcome.record)
    return Completed(message=outcome.summary, data=outcome.record)
