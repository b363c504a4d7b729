"""Repeated measurements summarised as median/min/max: one number per run, >= 3 runs per figure.

A figure from a single run is noise on a shared machine; the median of several runs, with the
spread shown, says how far the number can be trusted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

MIN_RUNS = 3


@dataclass(frozen=True)
class Figure:
    """One measured quantity: the per-run values and their median, min and max."""

    unit: str
    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def max(self) -> float:
        return max(self.runs)

    def scaled(self, factor: float, unit: str) -> Figure:
        """The same runs in another unit (e.g. seconds -> ms, samples/s -> GFLOP/s)."""
        return Figure(unit, tuple(value * factor for value in self.runs))

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "median": self.median, "min": self.min, "max": self.max}


def seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    """Median wall time of `calls` back-to-back calls: robust against the odd preempted call."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def latency(fn: Callable[[], object], calls: int, runs: int, warmup: int) -> Figure:
    """Per-call latency in ms: each run is the median over `calls` calls."""
    for _ in range(warmup):
        fn()
    return Figure("ms", tuple(seconds_per_call(fn, calls) * 1e3 for _ in range(runs)))


def throughput(
    fn: Callable[[], object], samples_per_call: int, calls: int, runs: int, warmup: int
) -> Figure:
    """Samples per second: each run times `calls` consecutive calls as one block."""
    for _ in range(warmup):
        fn()
    values = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        values.append(samples_per_call * calls / (time.perf_counter() - start))
    return Figure("samples/s", tuple(values))


def ratio(numerator: Figure, denominator: Figure) -> float:
    """Ratio of medians (a ratio of per-run values would pair runs that were not paired)."""
    return numerator.median / denominator.median
