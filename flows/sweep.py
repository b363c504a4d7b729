"""seqmnist sweeps on Prefect: one flow run per trial on the work pool, each a DVC experiment.

`seqmnist_sweep` (started by `seqmnist sweep run`) submits the `trial` deployment once per trial,
at most `max_parallel` at a time, and resubmits a trial whose run Crashed (its worker died:
flow retries do not cover Crashed runs, PrefectHQ/prefect#10211). `seqmnist_trial` runs on a
worker, in a fresh clone: it checks out the sweep's commit, pulls the data, runs
`dvc exp run -n <trial> -S ...` and pushes the experiment (`dvc exp push`). The table comes
from the pushed experiments; the best is chosen by validation loss and, with `promote_best`,
handed to the pipeline deployment, which publishes it through the quality gate.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import Artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from seqmnist import environment
from seqmnist.errors import OrchestrationError, TrialCrashed
from seqmnist.orchestration import dvc, runner, sweep
from seqmnist.registry.publish import load_publish_params

environment.apply_defaults()

TRIAL_DEPLOYMENT = "seqmnist-trial/trial"
PIPELINE_DEPLOYMENT = "seqmnist-pipeline/nightly"
RESUBMISSIONS = 2  # a trial whose run Crashed is submitted again, twice at most
EXP_PUSH_RETRIES = 3  # `dvc exp push` against the git origin and the DVC remote
EXP_PUSH_BACKOFF_S = 10.0
TRIAL_TIMEOUT_S = runner.DEFAULT_STAGE_TIMEOUT_S  # one `dvc exp run`; the process is killed


@task(name="dvc-exp-run", task_run_name="{name}", cache_policy=NO_CACHE)
def run_experiment(project_dir: str, name: str, overrides: list[str], timeout_s: float) -> float:
    return sweep.run_experiment(
        Path(project_dir), name, overrides, timeout_s, get_run_logger().info
    )


@task(
    name="dvc-exp-push",
    task_run_name="{name}",
    retries=EXP_PUSH_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=EXP_PUSH_BACKOFF_S),
    cache_policy=NO_CACHE,
)
def push_experiment(project_dir: str, git_remote: str, name: str) -> float:
    return sweep.push_experiment(Path(project_dir), git_remote, name)


@flow(name="seqmnist-trial", retries=0)
def seqmnist_trial(
    name: str, overrides: list[str], baseline: str, timeout_s: float = TRIAL_TIMEOUT_S
) -> State:
    """One trial, run once: an experiment the origin already has is not run again."""
    root = dvc.find_project_root()
    git_remote = load_publish_params(root).git_remote
    if name in sweep.pushed_experiments(root, git_remote, prefix=name):
        return Completed(message=f"{name} was already pushed")
    started = time.monotonic()
    sweep.check_out_baseline(root, git_remote, baseline)
    if dvc.default_remote(root):
        runner.sync_with_remote(root, "pull")
    prepared_s = time.monotonic() - started
    run_s = run_experiment(str(root), name, overrides, timeout_s)
    push_s = push_experiment(str(root), git_remote, name)
    worker = os.environ.get(sweep.WORKER_ENV) or socket.gethostname()
    create_table_artifact(
        key=name,
        table=[{"worker": worker, "prepare_s": prepared_s, "run_s": run_s, "push_s": push_s}],
        description=f"Where and how long trial {name} ran.",
    )
    return Completed(message=f"{name} pushed from {worker}")


def _crashed(_task, _run, state: State) -> bool:
    return isinstance(state.result(raise_on_failure=False), TrialCrashed)


@task(
    name="trial",
    task_run_name="{trial.name}",
    retries=RESUBMISSIONS,
    retry_condition_fn=_crashed,
    cache_policy=NO_CACHE,
)
def submit_trial(trial: sweep.Trial, baseline: str, deployment: str) -> dict[str, Any]:
    """Run one trial on the work pool and wait for it; a Crashed run is resubmitted."""
    run = run_deployment(
        deployment,
        parameters={"name": trial.name, "overrides": list(trial.overrides), "baseline": baseline},
        flow_run_name=trial.name,
        timeout=None,
    )
    if run.state.is_crashed():
        raise TrialCrashed(f"trial {trial.name}: flow run {run.id} crashed: {run.state.message}")
    if not run.state.is_completed():
        raise OrchestrationError(f"trial {trial.name}: {run.state.name}: {run.state.message}")
    timing = Artifact.get(trial.name)
    return json.loads(timing.data)[0] if timing else {}


@flow(name="seqmnist-sweep", retries=0)
def seqmnist_sweep(
    sweep_id: str,
    trials: list[sweep.Trial],
    project_dir: str | None = None,
    max_parallel: int = 2,
    promote_best: bool = False,
    deployment: str = TRIAL_DEPLOYMENT,
) -> State:
    """Every trial on the work pool, then one table of trials x params x metrics."""
    logger = get_run_logger()
    root = dvc.find_project_root(project_dir)
    git_remote = load_publish_params(root).git_remote
    baseline = sweep.baseline(root, git_remote)
    logger.info("sweep %s: %d trials on commit %s", sweep_id, len(trials), baseline[:7])
    with ThreadPoolTaskRunner(max_workers=max_parallel) as pool:
        arguments = {"baseline": baseline, "deployment": deployment}
        futures = {t.name: pool.submit(submit_trial, {"trial": t, **arguments}) for t in trials}
        where = {name: future.result(raise_on_failure=False) for name, future in futures.items()}
    table = sweep.table(root, git_remote, sweep_id, where)
    create_table_artifact(table=table, key=sweep_id, description=f"Sweep {sweep_id}")
    failed = [name for name, outcome in where.items() if isinstance(outcome, Exception)]
    if failed:
        return Failed(message=f"sweep {sweep_id}: trials failed: {', '.join(failed)}")
    chosen = sweep.best(table)
    summary = f"sweep {sweep_id}: best {chosen['trial']} (val_loss {chosen['val_loss']:.4f})"
    if not promote_best:
        return Completed(message=summary)
    promoted = run_deployment(PIPELINE_DEPLOYMENT, parameters={"experiment": chosen["trial"]})
    message = f"{summary}; pipeline: {promoted.state.name}: {promoted.state.message}"
    return Completed(message=message) if promoted.state.is_completed() else Failed(message=message)
