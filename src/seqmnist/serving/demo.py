"""`seqmnist demo`: the web page of web/ and the chosen model, on a local HTTP server.

The page (Vite + TypeScript, onnxruntime-web) runs the model in the browser; this only builds it
with npm when its build is missing or older than its sources, then serves web/dist/ with the
model at /model.onnx, using the standard library's threading HTTP server. Nothing heavier is
imported (no DVC, no TensorFlow): it runs wherever the predictor runs, plus Node.js to build.
"""

from __future__ import annotations

import argparse
import errno
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from seqmnist.errors import ModelFileError, SeqmnistError

PROJECT_MARKER = "dvc.yaml"  # the project root is the folder holding it
WEB_DIR = "web"
DIST_DIR = "dist"
BUILT_PAGE = "index.html"
# What the build reads: a build older than any of these is rebuilt.
BUILD_INPUTS = (
    "src",
    "index.html",
    "package.json",
    "package-lock.json",
    "vite.config.ts",
    "tsconfig.json",
)
NPM_LOCKFILE = "package-lock.json"
NPM_INSTALLED_MARKER = Path("node_modules") / ".package-lock.json"  # written by every npm install
NPM_CI = ("ci", "--no-audit", "--no-fund")
NPM_BUILD = ("run", "build")
NPM_TIMEOUT_S = 900
OUTPUT_TAIL_LINES = 30
MODEL_ROUTE = "/model.onnx"
MIME_TYPES = {
    ".wasm": "application/wasm",  # WebAssembly.instantiateStreaming refuses anything else
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".onnx": "application/octet-stream",
    ".map": "application/json",
}
log = logging.getLogger(__name__)


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the cwd) that holds dvc.yaml."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / PROJECT_MARKER).is_file():
            return folder
    raise SeqmnistError(
        f"{start}: not inside the seqmnist project (no {PROJECT_MARKER} here or in any parent "
        "folder); run `seqmnist demo` from the project's folder"
    )


def _newest_change(path: Path) -> float:
    """The latest modification time of a file, or of any file under a folder (0 if absent)."""
    if path.is_dir():
        return max((_newest_change(child) for child in path.iterdir()), default=0.0)
    return path.stat().st_mtime if path.is_file() else 0.0


def needs_build(web: Path) -> bool:
    """True when web/dist/ is missing or older than anything the build reads."""
    built = web / DIST_DIR / BUILT_PAGE
    if not built.is_file():
        return True
    return max(_newest_change(web / name) for name in BUILD_INPUTS) > built.stat().st_mtime


def _needs_install(web: Path) -> bool:
    marker = web / NPM_INSTALLED_MARKER
    return not marker.is_file() or _newest_change(web / NPM_LOCKFILE) > marker.stat().st_mtime


def _npm(npm: str, args: tuple[str, ...], web: Path) -> None:
    command = f"npm {' '.join(args)}"
    print(f"seqmnist demo: {command} in {web}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(
            [npm, *args], cwd=web, capture_output=True, text=True, timeout=NPM_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise SeqmnistError(
            f"`{command}` in {web} took over {NPM_TIMEOUT_S} s; run it by hand to see why"
        ) from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-OUTPUT_TAIL_LINES:])
        raise SeqmnistError(
            f"`{command}` failed in {web} (exit code {done.returncode}); fix the error below, "
            f"or serve an existing build with --no-build:\n{tail}"
        )


def build(web: Path) -> None:
    """npm ci (when node_modules is missing or older than the lockfile), then npm run build."""
    npm = shutil.which("npm")
    if npm is None:
        raise SeqmnistError(
            f"npm not found: building the page in {web} needs Node.js 20 or newer with npm "
            "(install it, e.g. `apt-get install nodejs npm`), or build it elsewhere and pass "
            "--no-build"
        )
    if _needs_install(web):
        _npm(npm, NPM_CI, web)
    _npm(npm, NPM_BUILD, web)


class DemoHandler(SimpleHTTPRequestHandler):
    """Files of web/dist/, plus the server's model at /model.onnx; never cached."""

    extensions_map: ClassVar[dict[str, str]] = {
        **SimpleHTTPRequestHandler.extensions_map,
        **MIME_TYPES,
    }
    server: DemoServer

    def translate_path(self, path: str) -> str:
        if urlsplit(path).path == MODEL_ROUTE:
            return str(self.server.model_path)
        return super().translate_path(path)

    def guess_type(self, path: str | Path) -> str:
        if Path(path) == self.server.model_path:
            return MIME_TYPES[".onnx"]
        return super().guess_type(path)

    def end_headers(self) -> None:
        # A rebuilt page or another model must show up on reload.
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class DemoServer(ThreadingHTTPServer):
    """web/dist/ and one model on host:port; port 0 picks a free port."""

    daemon_threads = True

    def __init__(self, host: str, port: int, dist: Path, model_path: Path) -> None:
        self.model_path = Path(model_path).resolve()
        try:
            super().__init__((host, port), partial(DemoHandler, directory=str(dist)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SeqmnistError(
                    f"port {port} on {host} is already in use: stop the program using it, or "
                    "pass another --port (--port 0 picks a free one)"
                ) from None
            raise SeqmnistError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --host "
                "or --port"
            ) from None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def check_model(path: Path) -> Path:
    """The model file to serve; the page itself reports a file that is not a usable model."""
    if not path.is_file() or path.stat().st_size == 0:
        state = "empty file" if path.is_file() else "ONNX model not found"
        raise ModelFileError(
            f"{path}: {state}; run `dvc pull` or `dvc repro export`, or pass --model PATH "
            "(or --stage NAME for a registered model)"
        )
    return path


@contextmanager
def chosen_model(args: argparse.Namespace) -> Iterator[Path]:
    """--model as given, or the model registered at --stage, fetched into a temp folder."""
    if args.stage is None:
        yield check_model(Path(args.model))
        return
    from seqmnist.registry.artifacts import fetch_model

    with tempfile.TemporaryDirectory(prefix="seqmnist-demo-") as folder:
        yield check_model(fetch_model(stage=args.stage, dest=Path(folder)))


def main(args: argparse.Namespace) -> int:
    """Build if needed, serve until Ctrl-C; 0 on a clean stop."""
    web = find_project_root() / WEB_DIR
    if not args.no_build and needs_build(web):
        build(web)
    dist = web / DIST_DIR
    if not (dist / BUILT_PAGE).is_file():
        raise SeqmnistError(
            f"{dist / BUILT_PAGE}: the page is not built; run without --no-build, or run "
            f"`npm ci && npm run build` in {web}"
        )
    with chosen_model(args) as model:
        server = DemoServer(args.host, args.port, dist, model)
        print(f"seqmnist demo: serving {model} at {server.url} (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("seqmnist demo: stopped", flush=True)
        finally:
            server.server_close()
    return 0
