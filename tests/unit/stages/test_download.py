"""download: a real HTTP server on 127.0.0.1 with injected faults, and local-folder mirrors."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from seqmnist import cli
from seqmnist.config import DownloadParams
from seqmnist.data import mirrors
from seqmnist.errors import DownloadError, OutputWriteError
from seqmnist.paths import TRAIN_IMAGES, TRAIN_LABELS
from seqmnist.stages import download
from seqmnist.stages.download import MNIST_SHA256
from support.faults import Crash, contents, crash_on_call, failing_swap
from support.idx_factory import gzip_bytes, sha256, tiny_mnist, write_gz_mirror, write_raw_dir

ATTEMPTS = 2
READ_TIMEOUT_S = 0.3
SLOW_S = 1.5  # well past READ_TIMEOUT_S
POLL_S = 0.02  # how often the server checks for shutdown: keeps teardown fast


@dataclass(frozen=True)
class Reply:
    """One scripted response: `body` announced in Content-Length, `send` bytes of it sent."""

    status: int = 200
    body: bytes = b""
    send: int | None = None
    delay_s: float = 0.0


class FaultyServer(ThreadingHTTPServer):
    """Serves scripted replies per path; the last reply of a script repeats."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.scripts: dict[str, list[Reply]] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.server_port}/{prefix}/"

    def script(self, path: str, *replies: Reply) -> None:
        self.scripts[path] = list(replies)

    def mirror(self, prefix: str, payloads: dict[str, bytes]) -> str:
        """Serve every payload gzipped under /prefix/, as the public mirrors do."""
        for name, data in payloads.items():
            self.script(f"/{prefix}/{name}.gz", Reply(body=gzip_bytes(data)))
        return self.url(prefix)

    def next_reply(self, path: str) -> Reply | None:
        with self._lock:
            self.hits[path] += 1
            script = self.scripts.get(path)
            if not script:
                return None
            return script.pop(0) if len(script) > 1 else script[0]

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up mid-reply (the timeout tests) is expected, not an error."""


class _Handler(BaseHTTPRequestHandler):
    server: FaultyServer

    def do_GET(self) -> None:
        reply = self.server.next_reply(self.path) or Reply(status=404, body=b"not found")
        time.sleep(reply.delay_s)
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body[: reply.send])

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean."""


@pytest.fixture
def server() -> Iterator[FaultyServer]:
    httpd = FaultyServer()
    thread = threading.Thread(target=httpd.serve_forever, args=(POLL_S,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on a port nobody listens on: connection refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture
def payloads() -> dict[str, bytes]:
    return tiny_mnist(n_train=30, n_test=10)


@pytest.fixture
def expected(payloads: dict[str, bytes]) -> dict[str, str]:
    return {name: sha256(data) for name, data in payloads.items()}


def _params(*mirrors: str) -> DownloadParams:
    return DownloadParams(
        mirrors=list(mirrors) or ["http://127.0.0.1:9/unused/"],
        connect_timeout_s=1.0,
        read_timeout_s=READ_TIMEOUT_S,
        attempts_per_mirror=ATTEMPTS,
        backoff_s=0.01,
    )


def _assert_raw(out_dir: Path, payloads: dict[str, bytes]) -> None:
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(payloads)
    for name, data in payloads.items():
        assert (out_dir / name).read_bytes() == data


def _assert_nothing_written(tmp_path: Path) -> None:
    """Neither data/raw nor any temp folder beside it."""
    assert list((tmp_path / "data").iterdir()) == []


def _fail(tmp_path: Path, params: DownloadParams, expected: dict[str, str], **kw: str) -> str:
    with pytest.raises(DownloadError) as caught:
        download.run(params, tmp_path / "data/raw", progress=False, expected=expected, **kw)
    _assert_nothing_written(tmp_path)
    return str(caught.value)


def test_downloads_and_verifies_every_file(
    tmp_path: Path, server: FaultyServer, payloads: dict[str, bytes], expected: dict[str, str]
) -> None:
    url = server.mirror("mnist", payloads)
    out_dir = tmp_path / "data/raw"
    got = download.run(_params(url), out_dir, progress=True, expected=expected)
    assert got == expected
    _assert_raw(out_dir, payloads)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


def test_mirror_without_trailing_slash(
    tmp_path: Path, server: FaultyServer, payloads: dict[str, bytes], expected: dict[str, str]
) -> None:
    url = server.mirror("mnist", payloads).rstrip("/")
    download.run(_params(url), tmp_path / "raw", progress=False, expected=expected)
    _assert_raw(tmp_path / "raw", payloads)


TRANSIENT_FAULTS = {
    "server error": lambda good: Reply(status=500, body=b"oops"),
    "truncated body": lambda good: Reply(body=good.body, send=len(good.body) // 2),
}


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS)
def test_transient_fault_is_retried(
    tmp_path: Path,
    server: FaultyServer,
    payloads: dict[str, bytes],
    expected: dict[str, str],
    fault: str,
) -> None:
    url = server.mirror("mnist", payloads)
    path = f"/mnist/{TRAIN_IMAGES}.gz"
    good = server.scripts[path][0]
    server.script(path, TRANSIENT_FAULTS[fault](good), good)
    download.run(_params(url), tmp_path / "raw", progress=False, expected=expected)
    assert server.hits[path] == 2
    _assert_raw(tmp_path / "raw", payloads)


def _one_bad_file(server: FaultyServer, payloads: dict[str, bytes], reply: Reply) -> str:
    url = server.mirror("mnist", payloads)
    server.script(f"/mnist/{TRAIN_LABELS}.gz", reply)
    return url


@pytest.mark.parametrize(
    ("make_reply", "reason", "attempts"),
    [
        (lambda body: Reply(status=503, body=b"busy"), "HTTP 503 Service Unavailable", ATTEMPTS),
        (lambda body: Reply(status=404), "HTTP 404 Not Found", 1),
        (lambda body: Reply(body=body, send=len(body) - 5), "truncated", ATTEMPTS),
        (lambda body: Reply(body=body, delay_s=SLOW_S), "timed out (ReadTimeout", ATTEMPTS),
        (lambda body: Reply(body=b"<html>moved</html>"), "not a valid gzip file", 1),
        (
            lambda body: Reply(body=gzip_bytes(b"tampered")),
            "sha256 mismatch of the decompressed payload",
            1,
        ),
    ],
    ids=["5xx", "404", "truncated", "slow", "not-gzip", "wrong-checksum"],
)
def test_faulty_mirror_fails_with_its_reason(
    tmp_path: Path,
    server: FaultyServer,
    payloads: dict[str, bytes],
    expected: dict[str, str],
    make_reply,
    reason: str,
    attempts: int,
) -> None:
    body = gzip_bytes(payloads[TRAIN_LABELS])
    url = _one_bad_file(server, payloads, make_reply(body))
    message = _fail(tmp_path, _params(url), expected)
    assert f"- {url}: {url}{TRAIN_LABELS}.gz: {reason}" in message
    assert server.hits[f"/mnist/{TRAIN_LABELS}.gz"] == attempts
    if attempts > 1:
        assert f"gave up after {ATTEMPTS} attempts" in message


def test_connection_refused(tmp_path: Path, closed_port_url: str, expected: dict) -> None:
    message = _fail(tmp_path, _params(closed_port_url), expected)
    assert closed_port_url in message
    assert "Connection refused" in message
    assert f"gave up after {ATTEMPTS} attempts" in message


def test_falls_through_to_the_next_mirror(
    tmp_path: Path, server: FaultyServer, payloads: dict[str, bytes], expected: dict[str, str]
) -> None:
    bad = _one_bad_file(server, payloads, Reply(status=404))  # first file fine, second missing
    good = server.mirror("good", payloads)
    download.run(_params(bad, good), tmp_path / "raw", progress=False, expected=expected)
    _assert_raw(tmp_path / "raw", payloads)
    assert server.hits[f"/mnist/{TRAIN_IMAGES}.gz"] == 1
    assert server.hits[f"/good/{TRAIN_IMAGES}.gz"] == 0  # already verified from the first
    assert server.hits[f"/good/{TRAIN_LABELS}.gz"] == 1


def test_override_is_tried_before_the_configured_mirrors(
    tmp_path: Path, server: FaultyServer, payloads: dict[str, bytes], expected: dict[str, str]
) -> None:
    configured = server.mirror("configured", payloads)
    override = server.mirror("override", payloads)
    download.run(
        _params(configured), tmp_path / "raw", mirror=override, progress=False, expected=expected
    )
    assert sum(server.hits[p] for p in server.hits if p.startswith("/configured/")) == 0
    assert sum(server.hits[p] for p in server.hits if p.startswith("/override/")) == 4


def test_every_mirror_failing_is_one_error_naming_each(
    tmp_path: Path,
    server: FaultyServer,
    closed_port_url: str,
    payloads: dict[str, bytes],
    expected: dict[str, str],
) -> None:
    not_found = server.url("nothing-here")
    not_gzip = _one_bad_file(server, payloads, Reply(body=b"plain text"))
    missing_folder = str(tmp_path / "no-such-mirror")
    message = _fail(
        tmp_path,
        _params(not_found, not_gzip, missing_folder),
        expected,
        mirror=closed_port_url,
    )
    lines = message.splitlines()
    assert lines[0] == f"could not download {', '.join(list(expected)[1:])}; every mirror failed:"
    assert lines[1].startswith(f"  - {closed_port_url}: ")
    assert "Connection refused" in lines[1]
    assert lines[2].startswith(f"  - {not_found}: ") and "HTTP 404 Not Found" in lines[2]
    assert lines[3].startswith(f"  - {not_gzip}: ") and "not a valid gzip file" in lines[3]
    assert lines[4] == f"  - {missing_folder}: {missing_folder}/{TRAIN_LABELS}.gz: no such file"
    assert "SEQMNIST_MIRROR" in lines[5]


def test_failure_leaves_previous_raw_data_alone(
    tmp_path: Path, closed_port_url: str, expected: dict[str, str]
) -> None:
    out_dir = tmp_path / "data/raw"
    out_dir.mkdir(parents=True)
    (out_dir / TRAIN_IMAGES).write_bytes(b"previous")
    with pytest.raises(DownloadError):
        download.run(_params(closed_port_url), out_dir, progress=False, expected=expected)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["raw"]
    assert [p.name for p in out_dir.iterdir()] == [TRAIN_IMAGES]
    assert (out_dir / TRAIN_IMAGES).read_bytes() == b"previous"


@pytest.mark.parametrize("failure", ["between files", "final rename"])
def test_failure_while_writing_keeps_the_previous_raw_folder(
    tmp_path: Path,
    payloads: dict[str, bytes],
    expected: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
) -> None:
    """Two new files are verified in the staging folder when the third one's crashes (or all
    four when the final rename fails): data/raw must stay the previous four files, unmixed."""
    folder = tmp_path / "mirror"
    write_gz_mirror(folder, payloads)
    out_dir = tmp_path / "data/raw"
    write_raw_dir(out_dir, {name: b"previous " + name.encode() for name in payloads})
    before = contents(out_dir)
    if failure == "between files":
        crash_on_call(monkeypatch, mirrors, "_decompress_verified", after=2)
    else:
        failing_swap(monkeypatch, out_dir)
    with pytest.raises((Crash, OutputWriteError)):
        download.run(_params(), out_dir, mirror=str(folder), progress=False, expected=expected)
    assert contents(out_dir) == before
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["raw"]


def test_unsupported_scheme_is_a_failing_mirror(tmp_path: Path, expected: dict) -> None:
    message = _fail(tmp_path, _params("ftp://example.invalid/mnist/"), expected)
    assert "unsupported URL scheme 'ftp'" in message


def test_local_folder_of_tiny_files(
    tmp_path: Path, payloads: dict[str, bytes], expected: dict[str, str]
) -> None:
    folder = tmp_path / "mirror"
    write_gz_mirror(folder, payloads)
    download.run(_params(), tmp_path / "raw", mirror=str(folder), progress=False, expected=expected)
    _assert_raw(tmp_path / "raw", payloads)


def test_an_unreadable_local_file_falls_through_to_the_next_mirror(
    tmp_path: Path, payloads: dict[str, bytes], expected: dict[str, str]
) -> None:
    """A local mirror file that cannot be read is that mirror failing, not a write error."""
    broken, good = tmp_path / "broken", tmp_path / "good"
    write_gz_mirror(broken, payloads)
    write_gz_mirror(good, payloads)
    unreadable = broken / f"{TRAIN_LABELS}.gz"
    unreadable.unlink()
    unreadable.mkdir()  # reading it fails with IsADirectoryError, even as root
    download.run(_params(str(broken), str(good)), tmp_path / "raw", progress=False,
                 expected=expected)  # fmt: skip
    _assert_raw(tmp_path / "raw", payloads)


@pytest.mark.parametrize("as_url", [False, True], ids=["folder", "file-url"])
def test_real_mnist_from_the_shared_mirror(
    tmp_path: Path, mnist_mirror: Path, as_url: bool
) -> None:
    mirror = mnist_mirror.resolve().as_uri() if as_url else str(mnist_mirror)
    out_dir = tmp_path / "data/raw"
    got = download.run(_params(), out_dir, mirror=mirror, progress=False)
    assert got == dict(MNIST_SHA256)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(MNIST_SHA256)
    assert (out_dir / TRAIN_IMAGES).stat().st_size == 16 + 60_000 * 28 * 28
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


def test_pinned_checksums_match_the_shared_mirror(mnist_mirror: Path) -> None:
    listed = {}
    for line in (mnist_mirror / "SHA256SUMS").read_text().splitlines():
        if line and not line.startswith("#"):
            digest, name = line.split()
            listed[name] = digest
    assert {name: listed[name] for name in MNIST_SHA256} == dict(MNIST_SHA256)


def test_cli_exits_non_zero_with_one_message(
    tmp_path: Path,
    closed_port_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "params.yaml").write_text(
        f"download:\n  mirrors: ['{closed_port_url}']\n"
        "  attempts_per_mirror: 1\n  connect_timeout_s: 1\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEQMNIST_MIRROR", raising=False)
    assert cli.main(["download", "--no-progress"]) == 1  # the flow retries it: mirrors recover
    err = capsys.readouterr().err
    assert "seqmnist download: error: could not download" in err
    assert f"  - {closed_port_url}: " in err
    assert not (tmp_path / "data/raw").exists()
