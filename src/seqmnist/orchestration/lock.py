"""One flow run per workspace: a second run at the same time is refused, the first untouched.

DVC locks its repository only while one `dvc` command runs; a flow runs many in a row and then
commits and tags, so it holds a lock of its own for the whole run. The kernel releases it when
the process dies, so a killed run never leaves it behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from seqmnist.errors import OrchestrationError

LOCK_FILE = Path(".dvc/tmp/seqmnist-flow.lock")


@contextmanager
def workspace_lock(root: Path) -> Iterator[Path]:
    """Hold the workspace's flow lock, or raise naming the lock file and the process holding it."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise OrchestrationError(
                f"another seqmnist flow run is using {root} (lock {path} held by pid {holder}); "
                "wait for it to finish, or run in another clone"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
