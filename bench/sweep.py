"""Sweep throughput on a local fleet (seqmnist.orchestration.fleet): trials per hour with 1 and
with 2 workers on this machine, what each trial spends besides training (clone, pull, push,
Prefect bookkeeping), and a projection for N workers on N machines from those measurements.

A temp clone of the project's committed HEAD gets its own bare origin and the fleet's S3 store;
download and preprocess run once there and are pushed, so every trial pulls them and trains,
evaluates and exports (QUICK_OVERRIDES, one seed per trial). Run it on a quiet machine:

    .venv/bin/python bench/sweep.py [--trials 4] [--workers 1 2]   # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from machine import machine_json
from overhead import PROJECT_ROOT, QUICK_OVERRIDES, SHARED_MNIST
from seqmnist.orchestration import fleet

RESULTS = Path(__file__).with_name("sweep.json")
SWEEP_TIMEOUT_S = 3600


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")


def _project(scratch: Path) -> Path:
    """A clone of HEAD without an origin: the fleet gives it a bare one of its own."""
    scratch.mkdir(parents=True, exist_ok=True)
    clone = scratch / "project"
    _run(["git", "clone", "--quiet", str(PROJECT_ROOT), str(clone)], scratch, dict(os.environ))
    _run(["git", "remote", "remove", "origin"], clone, dict(os.environ))
    return clone


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _trial_timings(api_url: str, sweep_id: str) -> list[dict]:
    """Per trial: seconds from the worker's pickup (Pending) to the end, and the trial's own
    breakdown (prepare = checkout + dvc pull, run = dvc exp run, push = dvc exp push)."""
    runs = httpx.post(
        f"{api_url}/flow_runs/filter", json={"flows": {"name": {"any_": ["seqmnist-trial"]}}}
    ).json()
    out = []
    for run in runs:
        if not run["name"].startswith(f"{sweep_id}-") or run["state_type"] != "COMPLETED":
            continue
        states = httpx.get(f"{api_url}/flow_run_states/", params={"flow_run_id": run["id"]}).json()
        pending = min(_seconds(s["timestamp"]) for s in states if s["type"] == "PENDING")
        artifact = httpx.post(
            f"{api_url}/artifacts/latest/filter",
            json={"artifacts": {"key": {"any_": [run["name"]]}}},
        ).json()[0]
        timing = json.loads(artifact["data"])[0]
        total = _seconds(run["end_time"]) - pending
        out.append({"trial": run["name"], "pickup_to_end_s": total, **timing,
                    "overhead_s": total - timing["run_s"]})  # fmt: skip
    return out


def measure(workers: int, trials: int, scratch: Path) -> dict:
    project = _project(scratch / f"w{workers}")
    with fleet.running(project, scratch / f"w{workers}" / "fleet", workers=workers) as running:
        env = running.env
        # The trials' common upstream, once: reproduced, pushed to S3, its dvc.lock committed.
        _run([sys.executable, "-m", "dvc", "repro", "preprocess"], project, env)
        _run([sys.executable, "-m", "dvc", "push"], project, env)
        _run(["git", "commit", "--quiet", "--allow-empty", "-am", "bench: upstream"], project, env)
        _run(["git", "push", "--quiet", "origin", "HEAD"], project, env)
        sweep_id = f"bench-{workers}w"
        fixed = [arg for item in QUICK_OVERRIDES for arg in ("--set", item)]
        seeds = ",".join(str(seed) for seed in range(1, trials + 1))
        started = time.perf_counter()
        cmd = [str(Path(sys.executable).parent / "seqmnist"), "sweep", "run", "--id", sweep_id,
               "--max-parallel", str(trials), *fixed, "--grid", f"train.seed={seeds}"]  # fmt: skip
        done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True,
                              timeout=SWEEP_TIMEOUT_S)  # fmt: skip
        wall = time.perf_counter() - started
        if done.returncode:
            raise RuntimeError(f"sweep failed:\n{done.stdout}{done.stderr}")
        timings = _trial_timings(running.api_url, sweep_id)
    return {
        "workers": workers,
        "trials": trials,
        "wall_s": wall,
        "trials_per_hour": trials * 3600 / wall,
        "per_trial": timings,
        "median_run_s": statistics.median(t["run_s"] for t in timings),
        "median_overhead_s": statistics.median(t["overhead_s"] for t in timings),
        "median_prepare_s": statistics.median(t["prepare_s"] for t in timings),
        "median_push_s": statistics.median(t["push_s"] for t in timings),
    }


def projection(one_worker: dict, machines: tuple[int, ...] = (1, 2, 4, 8, 16)) -> dict[int, float]:
    """Trials per hour on N machines with one worker each: each machine runs trials back to back
    at the one-worker rate (trainings do not share cores); the shared parts (Prefect API, git
    origin, S3) handle a few requests per trial, far below their limits at these N."""
    per_machine = 3600 / (one_worker["median_run_s"] + one_worker["median_overhead_s"])
    return {n: n * per_machine for n in machines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=4, help="trials per sweep (default 4)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="fleet sizes")
    args = parser.parse_args(argv)
    os.environ.setdefault("SEQMNIST_MIRROR", str(SHARED_MNIST))
    with tempfile.TemporaryDirectory(prefix="seqmnist-bench-sweep-") as scratch:
        results = [measure(n, args.trials, Path(scratch)) for n in args.workers]
    summary = {
        "machine": machine_json(),
        "command": "python bench/sweep.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick_overrides": list(QUICK_OVERRIDES),
        "fleets": results,
        "projection_trials_per_hour": projection(results[0]),
    }
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    for item in results:
        print(
            f"{item['workers']} worker(s): {item['trials_per_hour']:.1f} trials/h "
            f"({item['trials']} trials in {item['wall_s']:.0f} s); per trial: run "
            f"{item['median_run_s']:.1f} s, overhead {item['median_overhead_s']:.1f} s (prepare "
            f"{item['median_prepare_s']:.1f} s, push {item['median_push_s']:.1f} s)"
        )
    base = results[0]["trials_per_hour"]
    for fleet_result in results[1:]:
        print(
            f"{fleet_result['workers']} workers / 1: {fleet_result['trials_per_hour'] / base:.2f}x"
        )
    print(
        "projection, N machines x 1 worker:",
        {n: round(v, 1) for n, v in summary["projection_trials_per_hour"].items()},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
