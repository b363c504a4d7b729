"""Fault 2: `kill -9` of the flow (`seqmnist flow run`, its whole process group) while it
publishes a version, at every step: recording and committing it, pushing the commit, tagging it,
pushing the tag, promoting it; and while it runs a stage.

The toy pipeline (stages of milliseconds, already reproduced) publishes to a bare git origin and
an S3 DVC remote (moto on 127.0.0.1), as in tests/integration/registry/test_remote_publication.py.
A clean run, watched every few milliseconds, gives each step's window (from the event that starts
it to the one that ends it: the data push's end, the commit, the branch on the origin, the
version tag, the tag on the origin, the prod tag on the origin) and the version commit's tree.
Each injection starts the same flow in a fresh copy, kills its process group at a seeded random
moment of one window, reruns the flow to completion and checks:
  - the origin holds exactly one version commit, tagged `seqmnist-rnn@v1.0.0` and
    `seqmnist-rnn#prod#1` (no duplicated version, no second promotion), with the clean run's
    tree (identical);
  - a fresh clone of the origin at the tag gets every output with `dvc pull` (data lost = what
    it cannot get);
  - no temp file of an atomic write and no git lock file is left anywhere (work tree, origin).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import yaml

from faults import kit
from support.prefect_fixtures import make_toy_project
from support.s3 import S3Server, s3_server

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.prefect]

FLOW_TIMEOUT_S = 600
ORPHAN_BOUND_S = 120
STAGE_SLEEP_S = 40  # the toy train stage, when a signal must land in it
REAP_BOUND_S = 20  # a rerun must have stopped what a killed run left within this
# Events in the order publication makes them (publish.py), and the windows between them.
EVENTS = (
    "push_start", "push_end", "commit", "branch_pushed", "tag", "tag_pushed", "prod", "prod_pushed"
)  # fmt: skip
STEPS = {
    "data push": ("push_start", "push_end"),  # `dvc push` of the outputs to S3
    "record": ("push_end", "commit"),  # data pushed; version recorded and committed
    "push": ("commit", "branch_pushed"),  # commit made; `git push` of the branch
    "tag": ("branch_pushed", "tag"),  # branch on the origin; GTO writes the version tag
    "tag push": ("tag", "tag_pushed"),  # tag made; `git push` of the tag
    "promote": ("tag_pushed", "prod_pushed"),  # gate, the prod tag, its push
}
# The step under way once an event was seen (and the next not yet).
LANDED = {
    "push_start": "data push", "push_end": "record", "commit": "push", "branch_pushed": "tag",
    "tag": "tag push", "tag_pushed": "promote", "prod": "promote",
    "prod_pushed": "after publication",
}  # fmt: skip


@dataclass
class Case:
    root: Path
    project: Path
    origin: Path
    bucket: str
    branch: str

    @property
    def git_dir(self) -> Path:
        return self.project / ".git"


@dataclass
class Watch:
    """When each event happened, in seconds after the flow started."""

    times: dict[str, float] = field(default_factory=dict)
    killed_at: float | None = None
    injected: bool = False

    def landed(self) -> str:
        """The step the kill landed in, from the last event seen before it."""
        seen = [event for event in EVENTS if event in self.times]
        return LANDED[seen[-1]] if seen else "stages"


@pytest.fixture(scope="module")
def s3() -> S3Server:
    with s3_server() as server:
        yield server


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Path:
    """The toy project, stages reproduced and not published, with a bare origin and an S3
    remote: copied for each injection."""
    root = tmp_path_factory.mktemp("publish-template")
    origin = root / "origin.git"
    kit.run(["git", "init", "--quiet", "--bare", str(origin)], root)
    project = make_toy_project(root / "work")
    kit.dvc(project, "remote", "add", "-d", "s3", "s3://unset/dvc")
    kit.dvc(project, "remote", "modify", "s3", "endpointurl", s3.endpoint)
    kit.git(project, "commit", "--quiet", "-am", "DVC remote on S3")
    kit.git(project, "remote", "add", "origin", str(origin))
    kit.git(project, "push", "--quiet", "origin", "HEAD")
    kit.dvc(project, "repro")
    return root


def new_case(template: Path, dest: Path, s3: S3Server) -> Case:
    shutil.copytree(template, dest, symlinks=True)
    project, origin = dest / "work", dest / "origin.git"
    kit.git(project, "remote", "set-url", "origin", str(origin))
    bucket = f"case-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    kit.dvc(project, "remote", "modify", "--local", "s3", "url", f"s3://{bucket}/dvc")
    branch = kit.git(project, "branch", "--show-current")
    return Case(dest, project, origin, bucket, branch)


def watch_flow(case: Case, log: Path, env: dict, kill_step: str | None = None, delay=0.0) -> Watch:
    """Run the flow, noting each event; SIGKILL its group `delay` s into `kill_step`'s window."""
    watch = Watch()
    branch_ref = f"refs/heads/{case.branch}"
    base = {"local": kit.loose_ref(case.git_dir, branch_ref)}
    base["origin"] = kit.loose_ref(case.origin, branch_ref)
    checks = {
        "commit": lambda: kit.loose_ref(case.git_dir, branch_ref) != base["local"],
        "branch_pushed": lambda: kit.loose_ref(case.origin, branch_ref) != base["origin"],
        "tag": lambda: kit.loose_ref(case.git_dir, f"refs/tags/{kit.VERSION_TAG}") is not None,
        "tag_pushed": lambda: (
            kit.loose_ref(case.origin, f"refs/tags/{kit.VERSION_TAG}") is not None
        ),
        "prod": lambda: kit.loose_ref(case.git_dir, f"refs/tags/{kit.PROD_TAG}") is not None,
        "prod_pushed": lambda: kit.loose_ref(case.origin, f"refs/tags/{kit.PROD_TAG}") is not None,
    }
    pushing = False
    with kit.started([kit.SEQMNIST, "flow", "run"], case.project, log, env) as flow:
        while flow.alive():
            now = time.monotonic() - flow.started
            if "push_end" not in watch.times:
                children = _children(flow.pid)
                is_pushing = any("push" in cmd and "dvc" in cmd for cmd in children)
                if is_pushing and not pushing:
                    watch.times["push_start"] = now
                if pushing and not is_pushing:
                    watch.times["push_end"] = now
                pushing = pushing or is_pushing
            for event, check in checks.items():
                if event not in watch.times and check():
                    watch.times[event] = now
            if kill_step is not None:
                start_event = STEPS[kill_step][0]
                if start_event in watch.times and now >= watch.times[start_event] + delay:
                    watch.killed_at = now
                    watch.injected = flow.kill_group()
                    break
            time.sleep(kit.POLL_S)
        if kill_step is None:
            assert flow.wait(FLOW_TIMEOUT_S) == 0, flow.output()[-4000:]
    return watch


def _children(pid: int) -> list[str]:
    try:
        found = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    commands = []
    for child in found:
        try:
            commands.append(" ".join(child.cmdline()))
        except psutil.Error:
            continue
    return commands


@dataclass(frozen=True)
class Reference:
    windows: dict[str, float]
    tree: str
    outs: dict


@pytest.fixture(scope="module")
def reference(template, s3, prefect_url, tmp_path_factory) -> Reference:
    """A clean publication, watched: each step's window and the version commit's tree."""
    case = new_case(template, tmp_path_factory.mktemp("publish-clean") / "case", s3)
    env = {"PREFECT_API_URL": prefect_url}
    watch = watch_flow(case, case.root / "flow.log", env)
    missing = [event for event in EVENTS if event not in watch.times]
    assert not missing, f"the clean run showed no {missing}: {watch.times}"
    windows = {
        step: max(watch.times[end] - watch.times[start], 0.0)
        for step, (start, end) in STEPS.items()
    }
    tree = kit.git(case.origin, "rev-parse", f"{kit.VERSION_TAG}^{{tree}}")
    return Reference(windows, tree, kit.lock_outs(case.project))


@dataclass
class Verdict:
    rerun_ok: bool
    once: bool
    identical: bool
    lost: list[str]
    left: list[str]
    detail: str


def verify(case: Case, reference_tree: str | None, reference_outs: dict) -> Verdict:
    """After the rerun: one version, once, on the origin; its data fetchable; nothing partial."""
    origin_tags = sorted(kit.git(case.origin, "tag", "--list").split())
    local_tags = sorted(kit.git(case.project, "tag", "--list").split())
    expected = sorted([kit.VERSION_TAG, kit.PROD_TAG])
    base = 2  # "toy pipeline", "DVC remote on S3"
    commits = int(kit.git(case.origin, "rev-list", "--count", case.branch)) - base
    tagged = points = ""
    if kit.VERSION_TAG in origin_tags:
        tagged = kit.git(case.origin, "rev-parse", f"{kit.VERSION_TAG}^{{commit}}")
        points = kit.git(case.origin, "rev-parse", case.branch)
    prod_ok = kit.PROD_TAG in origin_tags and (
        kit.git(case.origin, "rev-parse", f"{kit.PROD_TAG}^{{commit}}") == tagged
    )
    once = origin_tags == expected == local_tags and commits == 1 and tagged == points and prod_ok
    if reference_tree is not None and tagged:
        identical = kit.git(case.origin, "rev-parse", f"{tagged}^{{tree}}") == reference_tree
    else:
        identical = kit.lock_outs(case.project) == reference_outs
    lost = fetch_lost(case) if tagged else ["no version on the origin"]
    left = kit.partial_files(case.root)
    detail = f"origin tags {origin_tags}, local tags {local_tags}, version commits {commits}"
    return Verdict(True, once, identical, lost, left, detail)


def fetch_lost(case: Case) -> list[str]:
    """What a fresh clone at the version tag cannot get with `dvc pull`."""
    clone = case.root / "clone"
    shutil.rmtree(clone, ignore_errors=True)
    kit.run(["git", "clone", "--quiet", "--branch", kit.VERSION_TAG, str(case.origin), str(clone)],
            case.root)  # fmt: skip
    kit.dvc(clone, "remote", "modify", "--local", "s3", "url", f"s3://{case.bucket}/dvc")
    kit.dvc(clone, "pull", check=False)
    cached = kit.cached_outputs(clone)
    return [
        path
        for outs in kit.lock_outs(clone).values()
        for path in outs
        if path in cached and not (clone / path).exists()
    ]


def _last_error(output: str, root: Path) -> str:
    """The error a failed flow run ended with, short enough for the table."""
    found = re.findall(r"(\w+Error): ([^\n]*)", output.replace(f"{root}/", ""))
    if not found:
        return "see its log"
    name, message = found[-1]
    return f"{name}: {message.split(', it is being')[0][:90]}"


def rerun(case: Case, env: dict, log: Path) -> tuple[int, str]:
    with kit.started([kit.SEQMNIST, "flow", "run"], case.project, log, env) as flow:
        code = flow.wait(FLOW_TIMEOUT_S)
    return code, flow.output()


@pytest.mark.parametrize("seed", kit.fault_seeds())
@pytest.mark.parametrize("step", list(STEPS))
def test_kill_flow_while_publishing(
    template, s3, reference, prefect_url, fault_log, tmp_path, step, seed
) -> None:
    case = new_case(template, tmp_path / "case", s3)
    env = {"PREFECT_API_URL": prefect_url}
    # Seed 0 kills as the step starts (where it lands most surely), the others at random.
    share = 0.0 if seed == 0 else kit.fraction(f"publish/{step}", seed, 0.0, 1.0)
    delay = share * reference.windows[step]
    watch = watch_flow(case, tmp_path / "killed.log", env, step, delay)
    orphans = kit.survivors(case.project, grace_s=5)
    kit.kill_processes(orphans)
    left_by_kill = kit.partial_files(case.root)
    code, output = rerun(case, env, tmp_path / "rerun.log")
    verdict = verify(case, reference.tree, reference.outs)
    survived = code == 0 and verdict.once and not verdict.lost and not orphans
    fault_log.record(
        f"kill -9 the flow while publishing: {watch.landed()}",
        injected=int(watch.injected),
        survived=survived,
        identical=verdict.identical,
        partial_files=len(verdict.left),
        data_lost=len(verdict.lost),
        note=("flow ended before the kill" if not watch.injected else "")
        + (f"left {verdict.left}" if verdict.left else ""),
        detail=(
            f"seed {seed}: aimed {delay * 1000:.0f} ms into {step} "
            f"({reference.windows[step] * 1000:.0f} ms in the clean run); "
            f"killed at {watch.killed_at} s; events "
            f"{ {k: round(v, 3) for k, v in watch.times.items()} }; left by the kill "
            f"{left_by_kill}; rerun exit {code}; {verdict.detail}; lost {verdict.lost}"
        ),
    )
    assert not orphans, f"processes outlived the flow: {kit.describe(orphans)}"
    assert code == 0, f"the rerun failed:\n{output[-4000:]}"
    assert verdict.once, verdict.detail
    assert verdict.identical, "the version differs from the clean run's"
    assert not verdict.lost, f"a clone cannot get {verdict.lost}"
    assert not verdict.left, f"partial files: {verdict.left}"


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_stop_flow_during_a_stage(
    template, s3, toy_reference, prefect_url, fault_log, tmp_path, how
) -> None:
    """The flow dies (`kill -9` of its process group) or is told to stop (SIGTERM to the flow
    process: what `docker stop`, systemd or a Prefect cancel send) while `dvc repro` runs a
    stage; a scheduler starts the flow again at once. What the stopped run started may not keep
    running beside the rerun (the rerun must stop it, or it must be gone already), and the
    rerun publishes the version once."""
    case = new_case(template, tmp_path / "case", s3)
    params = yaml.safe_load((case.project / "params.yaml").read_text())
    params["train"]["sleep_s"] = STAGE_SLEEP_S  # the signal lands in train; same outputs
    (case.project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"PREFECT_API_URL": prefect_url}
    command = [kit.SEQMNIST, "flow", "run"]
    with kit.started(command, case.project, tmp_path / "stopped.log", env) as flow:
        kit.wait_until(
            "toy train running",
            lambda: kit.running_cmdline(case.project, "toy_stages.py train") or not flow.alive(),
            FLOW_TIMEOUT_S,
            0.05,
        )
        injected = flow.alive()
        if how == "kill -9":
            flow.kill_group()
        else:
            os.kill(flow.pid, signal.SIGTERM)
            flow.wait(ORPHAN_BOUND_S)
    orphans = kit.survivors(case.project, grace_s=2)
    seen = kit.describe(orphans)
    with kit.started(command, case.project, tmp_path / "rerun.log", env) as again:
        rerun_started = time.monotonic()
        gone = psutil.wait_procs(orphans, timeout=ORPHAN_BOUND_S)[1] == []
        beside = time.monotonic() - rerun_started  # how long they ran beside the rerun
        kit.kill_processes(orphans)
        code = again.wait(FLOW_TIMEOUT_S)
    output = again.output()
    reaped = not orphans or (gone and beside < REAP_BOUND_S)
    notes = [f"its stage ran on beside the rerun for {beside:.0f} s"] if not reaped else []
    first_rerun = code
    if code != 0 and not reaped:
        # The rerun collided with the orphan (DVC's locks); once that ended, run once more.
        notes.append("the rerun beside it failed: " + _last_error(output, case.project))
        code, output = rerun(case, env, tmp_path / "rerun-2.log")
    verdict = verify(case, None, toy_reference)
    survived = code == 0 and first_rerun == 0 and verdict.once and not verdict.lost and reaped
    fault_log.record(
        f"{how} the flow during a stage",
        injected=int(injected),
        survived=survived,
        identical=verdict.identical,
        partial_files=len(verdict.left),
        data_lost=len(verdict.lost),
        note="; ".join(notes),
        detail=f"orphans: {seen}; reruns exit {first_rerun}, {code}; {verdict.detail}",
    )
    assert injected, f"the flow ended before train ran:\n{flow.output()[-3000:]}"
    assert gone, f"still running {ORPHAN_BOUND_S} s after the flow was stopped: {seen}"
    assert code == 0, f"the rerun failed:\n{output[-4000:]}"
    assert verdict.once and verdict.identical, verdict.detail
    assert not verdict.lost and not verdict.left
    assert reaped, f"the stopped run's stage ran on beside the rerun for {beside:.0f} s: {seen}"
