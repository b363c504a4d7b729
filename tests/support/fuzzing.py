"""What the fuzz tests (tests/fuzz/) share: Hypothesis profiles, a count of inputs tried, and a
memory probe.

The profile comes from SEQMNIST_FUZZ_PROFILE: "ci" (the default, what `pytest` runs: the whole
fuzz folder in about a minute on two cores) or "long" (`make fuzz`: 20 times the inputs, no time
limit per input). Each test asks for a share of the profile's examples by its cost per input
(twice as many for the cheap IDX round trips, half for the tracemalloc-heavy ones).
"""

from __future__ import annotations

import os
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings

PROFILE_ENV = "SEQMNIST_FUZZ_PROFILE"
CI_EXAMPLES = 400
LONG_FACTOR = 20
# pytest-timeout per fuzz test (a marker: it overrides pyproject's limit for the long profile).
CI_TIMEOUT_S = 300
LONG_TIMEOUT_S = 3 * 3600

_COMMON = {
    # Inputs touch the disk on a shared machine: timing per input is noise, not a property.
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,  # failing inputs are also replayed first next time (.hypothesis/)
}
settings.register_profile("seqmnist-fuzz-ci", max_examples=CI_EXAMPLES, **_COMMON)
settings.register_profile("seqmnist-fuzz-long", max_examples=CI_EXAMPLES * LONG_FACTOR, **_COMMON)


def profile_name() -> str:
    """The profile SEQMNIST_FUZZ_PROFILE names, "ci" or "long"; anything else is a typo."""
    name = os.environ.get(PROFILE_ENV, "ci")
    if name not in ("ci", "long"):
        raise ValueError(f"{PROFILE_ENV}={name!r}; expected 'ci' or 'long'")
    return name


def timeout_s() -> int:
    """pytest-timeout for one fuzz test under the active profile."""
    return LONG_TIMEOUT_S if profile_name() == "long" else CI_TIMEOUT_S


Test = TypeVar("Test", bound=Callable[..., Any])


def fuzz_settings(share: float = 1.0) -> Callable[[Test], Test]:
    """The active profile's settings, with `share` of its examples (slow targets ask for less)."""
    parent = settings.get_profile(f"seqmnist-fuzz-{profile_name()}")
    return settings(parent=parent, max_examples=max(1, round(parent.max_examples * share)))


# Inputs tried per test (node id), shrinking included; tests/fuzz/conftest.py prints them.
inputs_tried: Counter[str] = Counter()


def note_input(count: int = 1) -> None:
    """Count inputs for the running test (pytest names it in PYTEST_CURRENT_TEST)."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "outside pytest")
    inputs_tried[current.rsplit(" (", 1)[0]] += count


@dataclass(frozen=True)
class Measured:
    """What a call returned or raised, and the peak of Python and numpy allocations during it."""

    value: Any
    error: BaseException | None
    peak_bytes: int


def measure(call: Callable[[], Any]) -> Measured:
    """Run `call` under tracemalloc (which sees Python objects and numpy arrays, not Pillow's
    own C buffers); exceptions are returned, not raised, so the caller can check their type."""
    tracemalloc.start()
    try:
        value, error = call(), None
    except Exception as exc:  # the caller asserts which types may escape
        value, error = None, exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return Measured(value, error, peak)
