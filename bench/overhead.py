"""Pipeline overhead: what `dvc repro` and the Prefect flow cost when every stage is up to date.

The flow is timed with a temporary Prefect server (what `seqmnist flow run` starts when no
PREFECT_API_URL is set) and against a running `prefect server start`.

A temp clone of the project's committed HEAD is reproduced once for real with quick params
(QUICK_OVERRIDES), then re-run with nothing to do. When the main workspace is
already reproduced (`dvc status` clean), its no-op `dvc repro` is timed too: that one hashes the
full-size data. The Prefect flow runs only in the temp copy, since it records a version.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seqmnist.environment import TELEMETRY_OFF
from seqmnist.orchestration import fleet
from seqmnist.orchestration.dvc import apply_param_overrides
from timing import Figure

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FLOW_SCRIPT = PROJECT_ROOT / "flows" / "pipeline.py"
QUICK_OVERRIDES = (
    "train.max_train_samples=3000",
    "train.epochs=2",
    "train.batch_size=64",
    "train.model.units=32",
    "train.model.input_projection=32",
    "gate.min_test_accuracy=0.0",
)
SHARED_MNIST = PROJECT_ROOT.parent / "shared" / "mnist"
BIN_DIR = Path(sys.executable).parent
FIRST_REPRO_TIMEOUT_S = 900
NOOP_TIMEOUT_S = 300
# Prefect's temporary server gives up after 20 s by default: too short on a busy 2-core machine.
PREFECT_STARTUP_TIMEOUT_S = 120


def _environment(home: Path) -> dict[str, str]:
    """Telemetry off, tools' state kept in the temp folder, the venv's dvc on PATH."""
    return {
        **os.environ,
        **TELEMETRY_OFF,
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(PREFECT_STARTUP_TIMEOUT_S),
        "DVC_GLOBAL_CONFIG_DIR": str(home / "dvc-global"),
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site"),
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _timed(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return seconds


def _repeat(cmd: list[str], cwd: Path, env: dict[str, str], runs: int) -> Figure:
    return Figure("s", tuple(_timed(cmd, cwd, env, NOOP_TIMEOUT_S) for _ in range(runs)))


def _main_workspace_clean(env: dict[str, str]) -> bool:
    if not (PROJECT_ROOT / "dvc.lock").is_file():
        return False
    done = subprocess.run(
        ["dvc", "status", "--quiet"], cwd=PROJECT_ROOT, env=env, capture_output=True, check=False
    )
    return done.returncode == 0


def _quick_clone(dest: Path, env: dict[str, str]) -> Path:
    """A clone of the committed project with the quick params committed on top."""
    _timed(["git", "clone", "--quiet", str(PROJECT_ROOT), str(dest)], PROJECT_ROOT, env, 120)
    apply_param_overrides(dest, list(QUICK_OVERRIDES))
    _timed(["git", "commit", "--quiet", "-am", "bench: quick params"], dest, env, 60)
    return dest


def run(runs: int) -> dict:
    """No-op `dvc repro` and Prefect flow run times (first, real repro reported apart)."""
    mirror = Path(os.environ.get("SEQMNIST_MIRROR", SHARED_MNIST))
    if not (mirror / "SHA256SUMS").is_file():
        return {"skipped": f"no MNIST mirror at {mirror} (set SEQMNIST_MIRROR)"}
    result: dict[str, object] = {"runs": runs, "project_params": list(QUICK_OVERRIDES)}
    with tempfile.TemporaryDirectory(prefix="seqmnist-bench-pipeline-") as tmp:
        home = Path(tmp)
        env = {**_environment(home), "SEQMNIST_MIRROR": str(mirror)}
        project = _quick_clone(home / "project", env)
        first = _timed(["dvc", "repro"], project, env, FIRST_REPRO_TIMEOUT_S)
        result["first_repro_s"] = first
        print(f"  first (real) dvc repro with quick params: {first:.1f} s", flush=True)
        noop = _repeat(["dvc", "repro"], project, env, runs)
        result["dvc_repro_noop"] = noop.to_json()
        print(f"  no-op dvc repro: {noop.median:.2f} s", flush=True)
        if FLOW_SCRIPT.is_file():
            flow = [str(BIN_DIR / "seqmnist"), "flow", "run", "--project", str(project)]
            result["prefect_first_run_s"] = _timed(flow, project, env, NOOP_TIMEOUT_S)
            prefect = _repeat(flow, project, env, runs)
            result["prefect_flow_noop"] = prefect.to_json()
            result["prefect_api"] = os.environ.get("PREFECT_API_URL", "ephemeral (temporary local)")
            print(f"  no-op Prefect flow run: {prefect.median:.2f} s", flush=True)
            served = _against_running_server(flow, project, env, home, runs)
            result["prefect_flow_noop_running_server"] = served.to_json()
            result["flow_minus_dvc_repro_s"] = served.median - noop.median
            print(f"  ... against a running Prefect server: {served.median:.2f} s", flush=True)
        else:
            result["prefect_flow_noop"] = f"not measured: {FLOW_SCRIPT} does not exist"
    if _main_workspace_clean(_environment_main()):
        main_noop = _repeat(["dvc", "repro"], PROJECT_ROOT, _environment_main(), runs)
        result["dvc_repro_noop_main_workspace"] = main_noop.to_json()
    else:
        result["dvc_repro_noop_main_workspace"] = "not measured: main workspace not reproduced"
    return result


def _against_running_server(
    flow: list[str], project: Path, env: dict[str, str], home: Path, runs: int
) -> Figure:
    """The no-op flow against `prefect server start` (SQLite) on 127.0.0.1, as on a machine
    with a server or a worker: no temporary server to start per run."""
    folder = home / "server"
    folder.mkdir()
    database = f"sqlite+aiosqlite:///{folder / 'prefect.db'}"
    with fleet.prefect_server(folder, database, env) as url:
        served = {**env, "PREFECT_API_URL": url}
        _timed(flow, project, served, NOOP_TIMEOUT_S)  # registers the flow on this server
        return _repeat(flow, project, served, runs)


def _environment_main() -> dict[str, str]:
    return {
        **os.environ,
        **TELEMETRY_OFF,
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
    }
