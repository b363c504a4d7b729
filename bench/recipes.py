"""Recipe candidates for accuracy: the full pipeline on the full data with a few params changed,
chosen by validation loss alone (test accuracy is reported, never used to choose).

A clone of the project's committed HEAD runs the candidates one at a time, with the clone's src/
first on PYTHONPATH (edits made in the workspace meanwhile do not leak in) and the workspace's DVC
cache (download and preprocess run once). Each run is `dvc repro` after the overrides are
written to params.yaml, timed from train to export; results accumulate in bench/recipes.json
(one entry per candidate, seed and CPU model and family; a rerun on the same CPU replaces it) and
print as bench/README.md's table. Run it on a quiet machine, one run at a time:

    .venv/bin/python bench/recipes.py --only rotate10-scale10 --seeds 42 43 44   # ~4-8 min a run
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_json
from overhead import PROJECT_ROOT, SHARED_MNIST
from seqmnist.orchestration.dvc import apply_param_overrides

RESULTS = Path(__file__).with_name("recipes.json")
BIN_DIR = Path(sys.executable).parent
DEFAULT_SEED = 42
REPRO_TIMEOUT_S = 3600
# The recipe this round started from (the default until 2026-12-01); every candidate is written
# on top of it, so reruns measure what bench/recipes.json holds whatever params.yaml says now.
BEFORE = (
    "train.learning_rate=0.002",
    "train.weight_decay=0",
    "train.augment_max_degrees=0",
    "train.augment_max_scale=0",
    "train.epochs=20",
    "train.early_stopping_patience=6",
)
ROTATE10_SCALE10 = ("train.augment_max_degrees=10", "train.augment_max_scale=0.1")
ROTATE10_SCALE10_26EP = (
    *ROTATE10_SCALE10,
    "train.epochs=26",
    "train.early_stopping_patience=8",
)
# The default from the fourth round to the sixth.
LR3_WD1 = (*ROTATE10_SCALE10_26EP, "train.learning_rate=0.003", "train.weight_decay=0.1")
BIDIRECTIONAL96 = (*LR3_WD1, "train.model.bidirectional=true", "train.model.units=96")
BIDIRECTIONAL96_20EP = (*BIDIRECTIONAL96, "train.epochs=20")
NO_PROJECTION = ("train.model.input_projection=null",)
BIDIRECTIONAL_16EP = ("train.model.bidirectional=true", "train.epochs=16")
# Candidate name -> its params on top of BEFORE (later overrides win).
CANDIDATES: dict[str, tuple[str, ...]] = {
    "default": (),
    "rotate10-scale10": ROTATE10_SCALE10,
    "rotate15-scale15": ("train.augment_max_degrees=15", "train.augment_max_scale=0.15"),
    "rotate10-scale10-26ep": ROTATE10_SCALE10_26EP,
    "rotate10-scale10-30ep": (*ROTATE10_SCALE10_26EP, "train.epochs=30"),
    "rotate10-scale10-26ep-dropout0.2": (*ROTATE10_SCALE10_26EP, "train.model.dropout=0.2"),
    "rotate10-scale10-26ep-lr0.003": (*ROTATE10_SCALE10_26EP, "train.learning_rate=0.003"),
    "rotate10-scale10-26ep-max-readout": (*ROTATE10_SCALE10_26EP, "train.model.readout=max"),
    "rotate10-scale10-26ep-mean-readout": (*ROTATE10_SCALE10_26EP, "train.model.readout=mean"),
    "rotate10-scale10-26ep-elastic1.5": (
        *ROTATE10_SCALE10_26EP,
        "train.augment_elastic_pixels=1.5",
    ),
    "rotate10-scale10-22ep-lr0.003": (
        *ROTATE10_SCALE10_26EP,
        "train.learning_rate=0.003",
        "train.epochs=22",
    ),
    "rotate10-scale10-26ep-lr0.003-elastic1.5": (
        *ROTATE10_SCALE10_26EP,
        "train.learning_rate=0.003",
        "train.augment_elastic_pixels=1.5",
    ),
    "rotate10-scale10-26ep-wd0.05": (*ROTATE10_SCALE10_26EP, "train.weight_decay=0.05"),
    "rotate10-scale10-26ep-wd0.1": (*ROTATE10_SCALE10_26EP, "train.weight_decay=0.1"),
    "rotate10-scale10-26ep-wd0.3": (*ROTATE10_SCALE10_26EP, "train.weight_decay=0.3"),
    "rotate10-scale10-26ep-lr0.003-wd0.1": LR3_WD1,
    # Fifth round: on top of the default since the fourth (lr 0.003 + weight decay 0.1).
    "bidirectional80-lr0.003-wd0.1": (
        *LR3_WD1,
        "train.model.bidirectional=true",
        "train.model.units=80",
    ),
    "bidirectional96-lr0.003-wd0.1": BIDIRECTIONAL96,
    "bidirectional96-lr0.003-wd0.1-20ep": BIDIRECTIONAL96_20EP,
    "bidirectional96-20ep-rotate15-scale15": (
        *BIDIRECTIONAL96_20EP,
        "train.augment_max_degrees=15",
        "train.augment_max_scale=0.15",
    ),
    "bidirectional96-20ep-dropout0.4": (*BIDIRECTIONAL96_20EP, "train.model.dropout=0.4"),
    "bidirectional96-20ep-wd0.2": (*BIDIRECTIONAL96_20EP, "train.weight_decay=0.2"),
    "lr0.003-wd0.1-ema0.9995": (*LR3_WD1, "train.ema_decay=0.9995"),
    "lr0.003-wd0.1-clean3": (*LR3_WD1, "train.augment_off_last_epochs=3"),
    "lr0.003-wd0.1-clean6": (*LR3_WD1, "train.augment_off_last_epochs=6"),
    # Sixth round (2026-12-01, AMD EPYC), on top of LR3_WD1 (the default until this round).
    "lr0.003-wd0.1-30ep": (*LR3_WD1, "train.epochs=30"),
    "lr0.003-wd0.1-smooth0.1": (*LR3_WD1, "train.label_smoothing=0.1"),
    "lr0.003-wd0.1-smooth0.02": (*LR3_WD1, "train.label_smoothing=0.02"),
    # The default since the sixth round.
    "lr0.003-wd0.1-rotate15-scale15": (
        *LR3_WD1,
        "train.augment_max_degrees=15",
        "train.augment_max_scale=0.15",
    ),
    "lr0.003-wd0.1-dropout0.4": (*LR3_WD1, "train.model.dropout=0.4"),
    "lr0.003-wd0.1-dropout0.5": (*LR3_WD1, "train.model.dropout=0.5"),
    # The projection's 28 -> 128 per step spent on units instead: 4 x 160 x (28 + 160) gate
    # weights against 4 x 128 x (128 + 128) + 28 x 128, 0.9x the multiply-adds per step (but
    # 1.56x in the recurrent product, the part that runs step by step).
    "lr0.003-wd0.1-units160-no-projection": (*LR3_WD1, *NO_PROJECTION, "train.model.units=160"),
    "lr0.003-wd0.1-units144-no-projection": (*LR3_WD1, *NO_PROJECTION, "train.model.units=144"),
    "lr0.003-wd0.1-no-projection": (*LR3_WD1, *NO_PROJECTION),
    "2layers-14ep": ("train.model.layers=2", "train.epochs=14"),
    "bidirectional-16ep": BIDIRECTIONAL_16EP,
    "bidirectional-rotate10-scale10-16ep": (*BIDIRECTIONAL_16EP, *ROTATE10_SCALE10),
}
VAL_CURVES = Path("dvclive/train/plots/metrics/val")


def _curve(clone: Path, metric: str) -> list[float]:
    with (clone / VAL_CURVES / f"{metric}.tsv").open() as handle:
        return [float(row[metric]) for row in csv.DictReader(handle, delimiter="\t")]


def _environment(clone: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(clone / "src"),
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        "SEQMNIST_MIRROR": os.environ.get("SEQMNIST_MIRROR", str(SHARED_MNIST)),
    }


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=REPRO_TIMEOUT_S
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return time.perf_counter() - started


def _clone(scratch: Path) -> Path:
    clone = scratch / "project"
    env = _environment(clone)
    _run(["git", "clone", "--quiet", str(PROJECT_ROOT), str(clone)], scratch, env)
    _run(["dvc", "cache", "dir", "--local", str(PROJECT_ROOT / ".dvc" / "cache")], clone, env)
    return clone


def _outcome(clone: Path) -> dict[str, object]:
    live = json.loads((clone / "dvclive/train/metrics.json").read_text())
    val_accuracy = _curve(clone, "accuracy")
    evaluate = json.loads((clone / "metrics/evaluate.json").read_text())
    return {
        "best_val_loss": live["best_val_loss"],
        "val_accuracy_at_best": val_accuracy[live["best_epoch"] - 1],
        "test_accuracy": evaluate["accuracy"],
        "best_epoch": live["best_epoch"],
        "epochs_run": live["epochs_run"],
        "median_epoch_s": live["median_epoch_seconds"],
        "val_loss_per_epoch": [round(loss, 5) for loss in _curve(clone, "loss")],
    }


def run_candidate(clone: Path, name: str, seed: int) -> dict[str, object]:
    """`dvc repro` with the candidate's params; the params file is restored afterwards."""
    env = _environment(clone)
    overrides = [*BEFORE, *CANDIDATES[name], f"train.seed={seed}"]
    apply_param_overrides(clone, overrides)
    try:
        # Never restored from DVC's run cache: every run trains, so its minutes are real.
        seconds = _run(["dvc", "repro", "--no-run-cache"], clone, env)
    finally:
        _run(["git", "checkout", "params.yaml"], clone, env)
    return {"candidate": name, "seed": seed, "overrides": overrides,
            "train_to_export_s": round(seconds, 1), **_outcome(clone)}  # fmt: skip


def _cpu(entry: dict) -> str:
    machine = entry["machine"]
    return f"{machine['cpu_model']}, {machine['cpu_family_model']}"


def _key(entry: dict) -> tuple[str, int, str]:
    """One entry per candidate, seed and CPU: trained bytes differ between CPUs, so a run on
    another machine is another measurement, not a replacement."""
    return entry["candidate"], entry["seed"], _cpu(entry)


def table(entries: list[dict]) -> str:
    """bench/README.md's rows: per candidate and CPU, the median over its seeds (and each)."""
    lines = [
        "| candidate | CPU | seeds | best val loss | val acc (best epoch) | test acc "
        "| epochs (best) | train -> export minutes |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for name in CANDIDATES:  # in the candidates' order, each CPU in the order first measured
        for entry in entries:
            if entry["candidate"] == name:
                groups.setdefault((name, _cpu(entry)), []).append(entry)
    for (name, cpu), runs in groups.items():

        def median(key: str, runs=runs) -> float:
            return statistics.median(float(entry[key]) for entry in runs)

        tests = ", ".join(f"{entry['test_accuracy']:.4f}" for entry in runs)
        lines.append(
            f"| {name} (`{' '.join(CANDIDATES[name]) or 'params.yaml'}`) | {cpu} "
            f"| {', '.join(str(entry['seed']) for entry in runs)} "
            f"| {median('best_val_loss'):.4f} | {median('val_accuracy_at_best'):.4f} "
            f"| {median('test_accuracy'):.4f} ({tests}) "
            f"| {median('epochs_run'):.0f} ({median('best_epoch'):.0f}) "
            f"| {median('train_to_export_s') / 60:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[DEFAULT_SEED])
    parser.add_argument("--table", action="store_true", help="print the table of saved results")
    args = parser.parse_args()
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"entries": []}
    if not args.table:
        with tempfile.TemporaryDirectory(prefix="seqmnist-bench-recipes-") as tmp:
            clone = _clone(Path(tmp))
            _run(["dvc", "repro", "preprocess"], clone, _environment(clone))
            for name in args.only:
                for seed in args.seeds:
                    print(f"{name} seed {seed} ...", flush=True)
                    entry = {**run_candidate(clone, name, seed), "machine": machine_json()}
                    print(f"  {json.dumps({k: v for k, v in entry.items() if k != 'machine'})}")
                    saved["entries"] = [
                        old for old in saved["entries"] if _key(old) != _key(entry)
                    ] + [entry]  # fmt: skip
                    RESULTS.write_text(json.dumps(saved, indent=2) + "\n")
    print(table(saved["entries"]))


if __name__ == "__main__":
    main()
