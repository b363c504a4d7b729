"""Fault injection (`make faults`): each test injects one fault (kill -9, remote down, disk full,
bad params, a second run, the Prefect server gone) and records what came of it through
`fault_log`; at the end of the session one Markdown table sums them up per fault, with the
command and the machine, and goes to the JSON file SEQMNIST_FAULTS_REPORT names (if set).

SEQMNIST_FAULT_SEEDS (default 1) sets how many random kill moments each kill fault tries.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from faults import kit
from support.prefect_fixtures import TOY_PARAMS, make_toy_project
from support.project import make_project

REPORT_ENV = "SEQMNIST_FAULTS_REPORT"
_LOG = pytest.StashKey["FaultLog"]()


@dataclass
class Row:
    fault: str
    injected: int
    survived: bool | None
    identical: bool | None
    partial_files: int | None
    data_lost: int | None
    note: str = ""
    skipped: str | None = None
    test: str = ""
    detail: str = ""  # in the JSON report only: when the kill landed, what was left, ...


class FaultLog:
    """Rows of fault outcomes, one per injection (or skip), summed per fault at the end."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.started = time.time()
        self.load_at_start = os.getloadavg()

    def record(
        self,
        fault: str,
        injected: int = 1,
        survived: bool | None = None,
        identical: bool | None = None,
        partial_files: int | None = 0,
        data_lost: int | None = 0,
        note: str = "",
        skipped: str | None = None,
        detail: str = "",
    ) -> Row:
        row = Row(fault, injected, survived, identical, partial_files, data_lost, note, skipped)
        row.test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        row.detail = detail
        self.rows.append(row)
        return row

    def skip(self, fault: str, reason: str) -> None:
        """Record the fault as not tested, then skip the test with the same reason."""
        self.record(fault, injected=0, partial_files=None, data_lost=None, skipped=reason)
        pytest.skip(reason)

    def summary(self) -> list[dict]:
        faults: dict[str, list[Row]] = {}
        for row in self.rows:
            faults.setdefault(row.fault, []).append(row)
        table = []
        for fault, rows in faults.items():
            skipped = [row.skipped for row in rows if row.skipped]
            done = [row for row in rows if not row.skipped]
            # A kill that came too late (the command had ended) injected nothing: it counts
            # neither as survived nor as compared, only what it found on disk does.
            hit = [row for row in done if row.injected]
            compared = [row.identical for row in hit if row.identical is not None]
            notes = list(dict.fromkeys(row.note for row in done if row.note))
            table.append(
                {
                    "fault": fault,
                    "injected": sum(row.injected for row in done),
                    "survived": sum(bool(row.survived) for row in hit),
                    "identical": f"{sum(compared)}/{len(compared)}" if compared else "-",
                    "partial_files": _total(row.partial_files for row in done),
                    "data_lost": _total(row.data_lost for row in done),
                    "notes": "; ".join(notes) or ("skipped: " + skipped[0] if skipped else ""),
                }
            )
        return table


def _total(values) -> int | str:
    known = [value for value in values if value is not None]
    return sum(known) if known else "-"


def machine() -> str:
    """CPU model and count, kernel, Python: what the figures depend on."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in lscpu.splitlines())
    )
    model = fields.get("Model name") or platform.processor() or "unknown CPU"
    cpus = fields.get("CPU(s)") or str(os.cpu_count())
    return (
        f"{model}, {cpus} CPUs ({fields.get('Hypervisor vendor', 'bare metal')}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def command(config: pytest.Config) -> str:
    seeds = os.environ.get(kit.SEEDS_ENV, "1")
    python = os.path.relpath(sys.executable, Path.cwd())
    args = " ".join(shlex.quote(arg) for arg in config.invocation_params.args)
    return f"{kit.SEEDS_ENV}={seeds} {python} -m pytest {args}".strip()


def markdown(log: FaultLog, config: pytest.Config, duration_s: float) -> str:
    load = " ".join(f"{value:.2f}" for value in log.load_at_start)
    lines = [
        "| fault | injected | survived | identical to clean run | files left partial "
        "| data lost | notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in log.summary():
        lines.append(
            f"| {row['fault']} | {row['injected']} | {row['survived']} | {row['identical']} "
            f"| {row['partial_files']} | {row['data_lost']} | {row['notes']} |"
        )
    lines += [
        "",
        f"Command: `{command(config)}` ({duration_s / 60:.1f} min)",
        f"Machine: {machine()}; load average at start {load}",
    ]
    return "\n".join(lines)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: fault injection (kill -9, disk full, ...), summed up by `make faults`"
    )
    config.stash[_LOG] = FaultLog()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    log = config.stash.get(_LOG, None)
    if log is None or not log.rows:
        return
    duration_s = time.time() - log.started
    table = markdown(log, config, duration_s)
    terminalreporter.write_sep("=", "faults")
    for line in table.splitlines():
        terminalreporter.write_line(line)
    target = os.environ.get(REPORT_ENV)
    if target:
        report = {
            "command": command(config),
            "machine": machine(),
            "load_average_at_start": list(log.load_at_start),
            "duration_s": round(duration_s, 1),
            "exit_status": int(exitstatus),
            "summary": log.summary(),
            "rows": [asdict(row) for row in log.rows],
            "markdown": table,
        }
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(report, indent=2) + "\n")
        terminalreporter.write_line(f"fault report written to {target}")


@pytest.fixture(scope="session")
def fault_log(request: pytest.FixtureRequest) -> FaultLog:
    return request.config.stash[_LOG]


# --------------------------------------------------------------------------- shared projects


@pytest.fixture(scope="session")
def prefect_url(prefect_api: None) -> str:
    """The session's Prefect API, for flows run as subprocesses (`seqmnist flow run`)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the session's Prefect test API has no URL"
    return url


@pytest.fixture(scope="session")
def toy_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """dvc.lock's output hashes of a clean `dvc repro` of the toy pipeline (default params)."""
    project = make_toy_project(tmp_path_factory.mktemp("toy-reference") / "toy", TOY_PARAMS)
    kit.dvc(project, "repro", timeout=300)
    return kit.lock_outs(project)


@pytest.fixture(scope="session")
def real_reference(
    tmp_path_factory: pytest.TempPathFactory, mnist_mirror: Path
) -> Iterator[kit.RealReference]:
    """A temp copy of the project with REAL_PARAMS, reproduced once stage by stage (each timed):
    the clean run every kill is compared with."""
    os.environ["SEQMNIST_MIRROR"] = str(mnist_mirror.resolve())
    root = tmp_path_factory.mktemp("real")
    project = make_project(root / "proj", kit.REAL_PARAMS)
    durations = {}
    for stage in kit.REAL_STAGES:
        started = time.monotonic()
        kit.dvc(project, "repro", "--single-item", stage, timeout=900)
        durations[stage] = time.monotonic() - started
    assert kit.dvc_clean(project), "the clean run left stages stale"
    yield kit.RealReference(
        project=project,
        outs=kit.lock_outs(project),
        durations=durations,
        train_metrics=kit.json_without_timings(project / "dvclive/train/metrics.json"),
        pristine=kit.keep_outputs(project, root / "pristine"),
    )
