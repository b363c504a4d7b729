"""Failures injected in the middle of a stage's atomic write (seqmnist.io), to prove that a crash
there leaves the previous output exactly as it was and nothing beside it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from seqmnist import io


class Crash(Exception):
    """Stands for the stage dying mid-write: killed, out of memory, out of disk."""


def crash_on_call(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, after: int) -> None:
    """Make `owner.name` raise Crash on call number `after + 1`; the calls before it run."""
    real = getattr(owner, name)
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls > after:
            raise Crash(f"injected crash in {name}, call {calls}")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def failing_swap(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """Make the last step of seqmnist.io.atomic_dir fail (EIO): the exchange of the finished
    staging copy with `target`, or the rename onto it (first run, or where no exchange exists)
    after the previous `target` was set aside."""
    real_replace, real_exchange = os.replace, io._exchange

    def replace(source, destination, *args, **kwargs):
        if Path(destination) == Path(target) and Path(source).name == Path(target).name:
            raise OSError(errno.EIO, "injected failure of the final rename", str(source))
        return real_replace(source, destination, *args, **kwargs)

    def exchange(first: Path, second: Path) -> bool:
        if Path(second) == Path(target):
            raise OSError(errno.EIO, "injected failure of the final exchange", str(first))
        return real_exchange(first, second)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(io, "_exchange", exchange)


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
