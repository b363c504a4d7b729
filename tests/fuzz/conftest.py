"""The fuzz folder's report: how many inputs each target tried and for how long, so a run can be
quoted ("inputs tried") and a profile sized."""

from __future__ import annotations

import pytest

from support.fuzzing import inputs_tried, profile_name

_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.nodeid in inputs_tried:
        _seconds[report.nodeid] = report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    if not inputs_tried:
        return
    terminalreporter.section(f"fuzzing: inputs tried (profile {profile_name()!r})")
    for nodeid, count in sorted(inputs_tried.items()):
        seconds = _seconds.get(nodeid)
        timing = f" in {seconds:.1f} s" if seconds is not None else ""
        terminalreporter.write_line(f"{count:>8} {nodeid}{timing}")
    terminalreporter.write_line(f"{sum(inputs_tried.values()):>8} in all")
