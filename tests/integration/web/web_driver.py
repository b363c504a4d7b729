"""web/tests/driver.mjs from Python, and `seqmnist demo`'s server in a thread."""

from __future__ import annotations

import base64
import itertools
import json
import queue
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from seqmnist.serving import demo
from support.project import PROJECT_ROOT

WEB_DIR = PROJECT_ROOT / demo.WEB_DIR
DRIVER = WEB_DIR / "tests" / "driver.mjs"
CALL_TIMEOUT_S = 120
CLOSE_TIMEOUT_S = 30
LOG_TAIL_CHARS = 4000


@contextmanager
def serving(dist: Path, model: Path) -> Iterator[str]:
    """`seqmnist demo`'s server for web/dist/ and `model` on a free port; yields its URL."""
    server = demo.DemoServer("127.0.0.1", 0, dist, model)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def floats_to_base64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, np.float32).tobytes()).decode()


def base64_to_floats(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), np.float32)


class DriverError(AssertionError):
    """The driver reported an error, or stopped answering."""


class Browser:
    """web/tests/driver.mjs: one Chromium page; `call(op, **arguments)` -> its answer."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            ["node", str(DRIVER)],
            cwd=WEB_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ids = itertools.count()
        self.url: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-LOG_TAIL_CHARS:]

    def call(self, op: str, timeout: float = CALL_TIMEOUT_S, **arguments: Any) -> Any:
        request_id = next(self._ids)
        self.process.stdin.write(json.dumps({"id": request_id, "op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise DriverError(
                f"driver: no answer to {op} in {timeout} s\n{self._log_tail()}"
            ) from None
        if line is None:
            raise DriverError(f"driver exited during {op}\n{self._log_tail()}")
        reply = json.loads(line)
        if reply["id"] != request_id or not reply["ok"]:
            raise DriverError(f"driver: {op} failed: {reply.get('error')}")
        return reply["result"]

    def open(self, url: str) -> dict[str, Any]:
        """Load the page and wait for its model; {ready, summary} or {ready: false, error}."""
        outcome = self.call("open", url=url)
        self.url = url
        return outcome

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
