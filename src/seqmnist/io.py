"""Atomic file writes: a reader never sees a half-written file, a crash leaves no partial output."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from seqmnist.errors import OutputWriteError

FILE_MODE = 0o666
RENAME_EXCHANGE = 2  # renameat2(2) flag, linux/fs.h: swap two paths in one step
AT_FDCWD = -100
HASH_CHUNK = 1 << 20
_UMASK = os.umask(0)
os.umask(_UMASK)
# Temps are named `.<target name>.<writer pid>.<random>.tmp...`: a write killed mid-way leaves
# its temp, and the next write of the same target removes those whose writer is gone.
TEMP_OWNER = r"\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}\.tmp"
PREVIOUS = "previous"  # where atomic_dir keeps the old folder between its two renames


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def process_alive(pid: int) -> bool:
    """Whether `pid` runs. A killed writer stays a zombie until its parent, or init once the
    parent is gone too, reaps it (seconds, here): a zombie writes nothing more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:
        return True  # no process id we can ask about: count it as running
    except PermissionError:
        pass  # someone else's process
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no /proc to ask: the signal said it exists
    return state != "Z"


def sweep_orphaned_temps(target: Path) -> list[Path]:
    """Remove the temps that killed writes of `target` left beside it; return what went.

    A writer counts as gone when no process of this machine and pid namespace has its pid:
    keep writers of one output on one machine (DVC's and the flow's locks do). A folder write
    killed between atomic_dir's two renames (file systems without an exchange) left the old
    folder only in its temp: it is put back first. What cannot be removed (another user's) is
    left; the write itself goes on.
    """
    owned = re.compile(re.escape(f".{target.name}") + TEMP_OWNER)
    removed = []
    with os.scandir(target.parent) as entries:
        orphans = [
            Path(entry.path)
            for entry in entries
            if (found := owned.match(entry.name)) and not process_alive(int(found["pid"]))
        ]
    for path in orphans:
        try:
            if path.is_dir() and not path.is_symlink():
                previous = path / PREVIOUS
                if previous.is_dir() and not target.exists():
                    os.replace(previous, target)
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError:
            continue
        removed.append(path)
    return removed


def _concerns(error: OSError, target: Path) -> bool:
    """Whether `error` is about writing `target`: it names no file (a write's ENOSPC, EIO) or
    names the target or one of its temps. Network errors and inputs that cannot be read are
    not: their own handlers name them."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return False
    names = [os.fsdecode(name) for name in (error.filename, error.filename2) if name is not None]
    return not names or any(name == str(target) or _is_temp_of(name, target) for name in names)


@contextmanager
def _naming_the_target(target: Path) -> Iterator[None]:
    """An OSError while an output is written (disk full, permissions) becomes one message that
    names the output (not a temp inside it); the caller's temp cleanup has already run."""
    existed = target.exists()
    try:
        yield
    except OutputWriteError as inner:
        cause = inner.__cause__
        if not (isinstance(cause, OSError) and _is_temp_of(inner.target, target)):
            raise
        # A write into this one's staging folder (atomic_dir): name this output, not a temp.
        raise _write_error(target, cause, existed) from cause
    except OSError as error:
        if not _concerns(error, target):
            raise
        raise _write_error(target, error, existed) from error


def _is_temp_of(path: Path | str, target: Path) -> bool:
    return str(path).startswith(str(target.parent / f".{target.name}."))


def _write_error(target: Path, error: OSError, existed: bool) -> OutputWriteError:
    full = error.errno in {errno.ENOSPC, errno.EDQUOT}
    hint = f"; free space on the file system holding {target.parent}" if full else ""
    kept = f"; the previous {target.name} is kept" if existed and target.exists() else ""
    return OutputWriteError(target, f"{error.strerror or error}{hint}{kept}")


def _prepare(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphaned_temps(target)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename it onto `target` only if the block succeeds.

    The temp name keeps the target's suffixes (".keras", ".weights.h5"): some writers check them.
    """
    target = Path(target)
    with _naming_the_target(target):
        _prepare(target)
        suffix = ".tmp" + "".join(target.suffixes)
        fd, tmp_name = tempfile.mkstemp(
            prefix=_temp_prefix(target), suffix=suffix, dir=target.parent
        )
        os.fchmod(fd, FILE_MODE & ~_UMASK)  # mkstemp makes files private; outputs are for sharing
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one step (Linux's renameat2); False where the system or the
    file system cannot, so the caller falls back to two renames."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    paths = (os.fsencode(first), os.fsencode(second))
    if renameat2(AT_FDCWD, paths[0], AT_FDCWD, paths[1], RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}:
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty folder beside `target`; it replaces `target` only if the block succeeds.

    Readers see the old folder or the new one, never a mix; a failure leaves the old one as it was.
    Replacing an existing folder is one exchange where Linux allows it, so a kill at any moment
    leaves one of the two in place (two renames leave a moment with neither).
    """
    target = Path(target)
    with _naming_the_target(target):
        _prepare(target)
        holder = Path(
            tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
        )
        try:
            staging = holder / target.name
            staging.mkdir()  # usual permissions, unlike the owner-only holder
            yield staging
            if target.exists() and _exchange(staging, target):
                return  # `staging` now holds the old folder, removed with the holder
            previous = holder / PREVIOUS
            had_previous = target.exists()
            if had_previous:
                os.replace(target, previous)
            try:
                os.replace(staging, target)
            except OSError:
                if had_previous:  # else nothing to put back, and the error is the rename's
                    os.replace(previous, target)
                raise
        finally:
            shutil.rmtree(holder, ignore_errors=True)


@contextmanager
def atomic_open(target: Path) -> Iterator[BinaryIO]:
    """Open a temp file beside `target` for binary writing; rename it into place on success."""
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_json(target: Path, payload: Any) -> None:
    """Write `payload` as indented, key-sorted JSON, atomically."""
    data = (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()
    with atomic_open(target) as handle:
        handle.write(data)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
