"""What the Prefect flow does, as plain functions; flows/pipeline.py adds retries and schedules.

DVC stays the source of truth: the stage order comes from DVC's graph, each stage runs through
`dvc repro` (so unchanged stages are skipped and dvc.lock records the lineage), and the version
of a model is read back from dvc.lock, params and metrics through DVC's API. Nothing here imports
Prefect, so all of it can be tested without a Prefect API.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from seqmnist.config import GateParams
from seqmnist.errors import ConfigError, SeqmnistError
from seqmnist.io import atomic_path, file_sha256, write_json
from seqmnist.paths import EVAL_METRICS, MODEL_CARD, ONNX_MODEL, PARAMS_FILE, PROMOTED_DIR
from seqmnist.provenance import git_version
from seqmnist.versions import HISTORY_FILE, append_run, load_history, previous_version

LOG_TAIL_LINES = 40
DEFAULT_STAGE_TIMEOUT_S = 6 * 3600.0
DEFAULT_SYNC_TIMEOUT_S = 1800.0
KILL_GRACE_S = 10.0
GATE_METRICS_FILE = EVAL_METRICS
GATE_METRIC = "accuracy"
PROMOTED_MODEL_NAME = ONNX_MODEL.name
PROMOTED_CARD_NAME = MODEL_CARD.name
PROMOTED_POINTER_NAME = "version.json"
VERSION_ID_LENGTH = 12
# dvc prints this for each stage it actually runs; its absence means DVC skipped the stage.
DVC_RUNNING_MARKER = "Running stage"
# ...and this when the stage's command fails: "failed to run: <cmd>, exited with 3".
DVC_EXIT_PATTERN = re.compile(r"failed to run: .*, exited with (-?\d+)")
# Child processes of the flow: no telemetry, no progress bars flooding the Prefect log.
QUIET_ENV = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "DVC_STUDIO_OFFLINE": "1",
    "TQDM_DISABLE": "1",
}

LineSink = Callable[[str], None]


class OrchestrationError(SeqmnistError):
    """The pipeline could not be run as asked (bad stage name, bad override, DVC problem)."""


class StageFailed(OrchestrationError):
    """A DVC stage exited non-zero or ran out of time; the message carries its log tail."""

    def __init__(self, stage: str, returncode: int | None, log_tail: str, timed_out: bool = False):
        self.stage = stage
        self.returncode = returncode
        self.log_tail = log_tail
        self.timed_out = timed_out
        outcome = "timed out" if timed_out else f"exited with code {returncode}"
        super().__init__(
            f"stage {stage!r} failed: its command {outcome}\n"
            f"--- last {LOG_TAIL_LINES} lines of its log ---\n{log_tail}"
        )

    def __reduce__(self):
        """Prefect stores failed states' exceptions; keep this one picklable."""
        return (type(self), (self.stage, self.returncode, self.log_tail, self.timed_out))


@dataclass(frozen=True)
class CommandResult:
    """How a subprocess ended, with the tail of its combined stdout/stderr."""

    returncode: int | None
    log_tail: str
    duration_s: float
    timed_out: bool
    ran_stage: bool


@dataclass(frozen=True)
class StageResult:
    """One stage as the flow saw it: skipped by DVC (unchanged) or actually run."""

    stage: str
    skipped: bool
    duration_s: float


@dataclass(frozen=True)
class GateDecision:
    """Whether a version may replace the promoted model, and why (shown as the flow's state).

    `blocked` is True only when the gate rejected the model; a run that was never meant to
    produce a promotable model (a subset of stages left others stale) is neither.
    """

    promote: bool
    reason: str
    blocked: bool = False


# --------------------------------------------------------------------------- project & graph


def find_project_root(start: Path | str | None = None) -> Path:
    """The DVC project holding `start` (default: the current folder), found the way `dvc` does."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Path(Repo.find_root(str(start) if start is not None else None)).resolve()
    except NotDvcRepoError:
        where = Path(start or ".").resolve()
        raise OrchestrationError(f"{where} is not inside a DVC project (no .dvc/ found)") from None


def _open_repo(root: Path):
    from dvc.repo import Repo

    return Repo(str(root))


def _stage_file_order(root: Path) -> list[str]:
    data = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    return list(data.get("stages", {}))


def stage_order(root: Path, targets: Sequence[str] | None = None) -> list[str]:
    """Stages in dependency order from DVC's graph; with `targets`, those plus what they need.

    Ties (e.g. `evaluate` and `export`, which both only need `train`) keep dvc.yaml's order, so
    the order is stable from run to run.
    """
    import networkx as nx

    with _open_repo(root) as repo:
        graph = repo.index.graph
        by_name = {stage.name: stage for stage in graph.nodes}
        unknown = sorted(set(targets or ()) - set(by_name))
        if unknown:
            raise OrchestrationError(
                f"unknown stage(s) {', '.join(unknown)}; dvc.yaml has: {', '.join(by_name)}"
            )
        wanted = set(by_name) if not targets else set(targets)
        for name in list(wanted):
            # DVC's edges point from a stage to the stages it depends on.
            wanted |= {dep.name for dep in nx.descendants(graph, by_name[name])}
        file_order = {name: index for index, name in enumerate(_stage_file_order(root))}
        upstream_first = nx.reverse_view(graph).subgraph(by_name[name] for name in wanted)
        ordered = nx.lexicographical_topological_sort(
            upstream_first, key=lambda stage: f"{file_order.get(stage.name, 0):06d}"
        )
        return [stage.name for stage in ordered]


# --------------------------------------------------------------------------- running commands


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for `dvc`: this interpreter's bin/ first (so stages find `seqmnist`)."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        path = f"{bin_dir}{os.pathsep}{path}"
    return {**os.environ, **QUIET_ENV, "PATH": path, **(extra or {})}


def _kill_group(process: subprocess.Popen[str]) -> None:
    """Stop the command and everything it started (dvc runs the stage as a grandchild)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(
    cmd: Sequence[str], cwd: Path, timeout_s: float, on_line: LineSink | None = None
) -> CommandResult:
    """Run `cmd`, streaming its lines to `on_line`; kill its whole process group on timeout.

    A Prefect task timeout cannot interrupt a blocking wait, so the limit lives here.
    """
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    ran_stage = False
    started = time.monotonic()
    process = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,
    )

    def pump() -> None:
        nonlocal ran_stage
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            ran_stage = ran_stage or DVC_RUNNING_MARKER in line
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
    except BaseException:
        _kill_group(process)
        raise
    reader.join(timeout=KILL_GRACE_S)
    return CommandResult(
        returncode=None if timed_out else process.returncode,
        log_tail="\n".join(tail),
        duration_s=time.monotonic() - started,
        timed_out=timed_out,
        ran_stage=ran_stage,
    )


def dvc(*args: str) -> list[str]:
    """A `dvc` command line that uses the DVC installed beside this interpreter."""
    return [sys.executable, "-m", "dvc", *args]


def repro_command(stage: str, force: bool = False) -> list[str]:
    """`dvc repro` for one stage only: the flow already runs its upstream stages first."""
    return dvc("repro", "--single-item", *(["--force"] if force else []), stage)


def stage_exit_code(log: str) -> int | None:
    """The stage command's own exit code from DVC's error line (`dvc repro` itself exits 255)."""
    found = DVC_EXIT_PATTERN.findall(log)
    return int(found[-1]) if found else None


def run_stage(
    root: Path,
    stage: str,
    *,
    force: bool = False,
    timeout_s: float = DEFAULT_STAGE_TIMEOUT_S,
    on_line: LineSink | None = None,
) -> StageResult:
    """Reproduce one stage through DVC; raise StageFailed (exit code + log tail) if it fails."""
    result = run_command(repro_command(stage, force), root, timeout_s, on_line)
    if result.timed_out or result.returncode != 0:
        returncode = stage_exit_code(result.log_tail) or result.returncode
        raise StageFailed(stage, returncode, result.log_tail, result.timed_out)
    return StageResult(stage=stage, skipped=not result.ran_stage, duration_s=result.duration_s)


def default_remote(root: Path) -> str | None:
    """The DVC remote `dvc pull`/`dvc push` would use, or None when none is configured."""
    with _open_repo(root) as repo:
        return repo.config["core"].get("remote") or None


def sync_with_remote(
    root: Path, direction: str, timeout_s: float = DEFAULT_SYNC_TIMEOUT_S
) -> CommandResult:
    """`dvc pull` (tolerating outputs the remote does not have yet) or `dvc push`."""
    if direction not in {"pull", "push"}:
        raise ValueError(f"direction must be 'pull' or 'push', not {direction!r}")
    cmd = dvc("pull", "--allow-missing") if direction == "pull" else dvc("push")
    result = run_command(cmd, root, timeout_s)
    if result.timed_out or result.returncode != 0:
        outcome = "timed out" if result.timed_out else f"exited with code {result.returncode}"
        raise OrchestrationError(f"`dvc {direction}` {outcome}\n{result.log_tail}")
    return result


# --------------------------------------------------------------------------- param overrides


def apply_param_overrides(root: Path, overrides: Sequence[str]) -> None:
    """Write `key=value` overrides into params.yaml exactly as `dvc exp run -S` does.

    The workspace keeps them (see `git diff params.yaml`), DVC sees the changed params, and
    dvc.lock records them, so the run and its version are reproducible from the files alone.
    """
    if not overrides:
        return
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise ConfigError(f"overrides must look like key=value, e.g. train.epochs=2; got {bad}")
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    try:
        apply_overrides(root / PARAMS_FILE, list(overrides))
    except InvalidArgumentError as exc:
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"invalid override in {list(overrides)}{cause}") from None


# --------------------------------------------------------------------------- versions


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys, so versions can be compared key by key."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def read_output_hashes(root: Path) -> dict[str, str]:
    """Content hashes of the cached data and model outputs, as dvc.lock records them."""
    hashes: dict[str, str] = {}
    with _open_repo(root) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                if out.use_cache and out.hash_info and out.hash_info.value:
                    hashes[str(out.def_path)] = str(out.hash_info.value)
    return dict(sorted(hashes.items()))


def read_metrics(root: Path) -> dict[str, float]:
    """Every numeric metric DVC tracks, keyed `file:dotted.key` so files never collide."""
    with _open_repo(root) as repo:
        shown = repo.metrics.show(on_error="return")
    # Without revs DVC shows only the workspace, under a single key.
    workspace = next(iter(shown.values()), {})
    files = workspace.get("data", {})
    metrics: dict[str, float] = {}
    for file_name, content in files.items():
        for key, value in flatten(content.get("data") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[f"{Path(file_name).as_posix()}:{key}"] = float(value)
    return dict(sorted(metrics.items()))


def read_params(root: Path) -> dict[str, Any]:
    """All params DVC tracks for this workspace, flattened to dotted keys."""
    import dvc.api

    return dict(sorted(flatten(dvc.api.params_show(repo=str(root))).items()))


def version_id(outputs: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """A short id that changes exactly when a data/model output or a param changes.

    Content, not commit: committing dvc.lock after a run does not make the same model a new
    version. The commit is kept in the record as provenance.
    """
    payload = json.dumps(
        {"outputs": dict(outputs), "params": dict(params)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:VERSION_ID_LENGTH]


def build_version(root: Path, now: datetime | None = None) -> dict[str, Any]:
    """The record of what the workspace holds now: code, data/model hashes, params, metrics."""
    git = git_version(root)
    outputs = read_output_hashes(root)
    params = read_params(root)
    return {
        "version": version_id(outputs, params),
        "recorded_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "git_commit": git["git_commit"],
        "git_dirty": git["git_dirty"],
        "outputs": outputs,
        "params": params,
        "metrics": read_metrics(root),
    }


def stale_stages(root: Path) -> list[str]:
    """Stages whose outputs are out of date (what `dvc status` lists), by name."""
    with _open_repo(root) as repo:
        # Keys look like `dvc.yaml:export`, relative to the current folder.
        return sorted(address.rsplit(":", 1)[-1] for address in repo.status())


# --------------------------------------------------------------------------- gate & promotion


def load_gate_params(root: Path) -> GateParams:
    """Only the `gate` section of params.yaml: the gate must not depend on the stages' params."""
    path = root / PARAMS_FILE
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        return GateParams.model_validate(raw.get("gate") or {})
    except ValueError as exc:
        raise ConfigError(f"{path}: invalid gate parameters: {exc}") from None


def gate_metric_key() -> str:
    """The metric the gate compares, in the `file:key` form `read_metrics` returns."""
    return f"{GATE_METRICS_FILE.as_posix()}:{GATE_METRIC}"


def read_promoted(root: Path) -> dict[str, Any] | None:
    """The pointer of the currently promoted model, or None before the first promotion."""
    pointer = root / PROMOTED_DIR / PROMOTED_POINTER_NAME
    try:
        return json.loads(pointer.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise OrchestrationError(f"{pointer} is not valid JSON: {exc}") from None


def gate_decision(
    metrics: Mapping[str, float], gate: GateParams, promoted: Mapping[str, Any] | None
) -> GateDecision:
    """Promote only above the absolute floor and not much worse than the promoted model."""
    key = gate_metric_key()
    accuracy = metrics.get(key)
    if accuracy is None:
        return GateDecision(False, f"not promoted: no {key} metric (did `evaluate` run?)", True)
    if accuracy < gate.min_test_accuracy:
        return GateDecision(
            False,
            f"not promoted: test accuracy {accuracy:.4f} is below "
            f"gate.min_test_accuracy {gate.min_test_accuracy:.4f}",
            True,
        )
    if promoted is not None and promoted.get("accuracy") is not None:
        floor = float(promoted["accuracy"]) - gate.max_regression
        if accuracy < floor:
            return GateDecision(
                False,
                f"not promoted: test accuracy {accuracy:.4f} regresses more than "
                f"gate.max_regression {gate.max_regression:.4f} from promoted version "
                f"{promoted.get('version')} ({float(promoted['accuracy']):.4f})",
                True,
            )
    return GateDecision(True, f"promoted: test accuracy {accuracy:.4f} passed the gate")


def _copy_atomically(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def promote(root: Path, record: Mapping[str, Any], now: datetime | None = None) -> Path:
    """Copy the exported model and card into models/promoted/, then repoint version.json.

    Each file is replaced atomically and version.json is written last, so a reader sees either
    the old or the new model, and version.json names the model whose sha256 it records.
    """
    model, card = root / ONNX_MODEL, root / MODEL_CARD
    if not model.is_file():
        raise OrchestrationError(f"cannot promote: {model} does not exist (did `export` run?)")
    target = root / PROMOTED_DIR
    target.mkdir(parents=True, exist_ok=True)
    _copy_atomically(model, target / PROMOTED_MODEL_NAME)
    if card.is_file():
        _copy_atomically(card, target / PROMOTED_CARD_NAME)
    else:
        (target / PROMOTED_CARD_NAME).unlink(missing_ok=True)
    pointer = {
        "version": record["version"],
        "accuracy": record["metrics"].get(gate_metric_key()),
        "git_commit": record.get("git_commit"),
        "recorded_at": record.get("recorded_at"),
        "promoted_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "model": PROMOTED_MODEL_NAME,
        "model_sha256": file_sha256(target / PROMOTED_MODEL_NAME),
        "source": ONNX_MODEL.as_posix(),
    }
    write_json(target / PROMOTED_POINTER_NAME, pointer)
    return target


@dataclass(frozen=True)
class RunOutcome:
    """What a successful pipeline run produced: its history entry, the gate's verdict, the diff."""

    entry: dict[str, Any]
    decision: GateDecision
    previous: dict[str, Any] | None
    history: list[dict[str, Any]]


def decide(root: Path, record: Mapping[str, Any]) -> GateDecision:
    """Gate the workspace's version; never promote outputs DVC considers out of date."""
    stale = stale_stages(root)
    if stale:
        return GateDecision(False, f"not promoted: stages not up to date: {', '.join(stale)}")
    promoted = read_promoted(root)
    if promoted is not None and promoted.get("version") == record["version"]:
        return GateDecision(True, f"promoted: version {record['version']} already is")
    return gate_decision(record["metrics"], load_gate_params(root), promoted)


def finish_run(root: Path, run_id: str | None = None) -> RunOutcome:
    """Record the version the run left in the workspace, gate it, and promote it if it passes.

    The history line is written last, so it says whether this run promoted its model.
    """
    record = build_version(root)
    decision = decide(root, record)
    promoted = read_promoted(root)
    if decision.promote and (promoted or {}).get("version") != record["version"]:
        promote(root, record)
    history_path = root / HISTORY_FILE
    before = load_history(history_path)
    entry = append_run(
        history_path,
        {**record, "promoted": decision.promote, "gate": decision.reason, "flow_run_id": run_id},
    )
    previous = previous_version(before, record["version"])
    return RunOutcome(entry, decision, dict(previous) if previous else None, [*before, entry])
