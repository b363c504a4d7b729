"""Fetch the four MNIST IDX files from the first mirror that delivers them intact.

Every file's decompressed payload is checked against a pinned sha256, so any mirror (public host,
file:// URL, local folder) is as good as another and a bad one is simply skipped. Files are
staged in a temp folder beside data/raw and moved in only once all of them are verified.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlparse
from urllib.request import url2pathname

import httpx
import tenacity
from tqdm import tqdm

from seqmnist.config import DownloadParams
from seqmnist.errors import DownloadError, MirrorFailed, TransientFailure
from seqmnist.paths import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS

# sha256 of each decompressed IDX payload: identical on every mirror, whatever its gzip settings.
MNIST_SHA256: Mapping[str, str] = MappingProxyType(
    {
        TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    }
)

GZ_SUFFIX = ".gz"
PART_SUFFIX = ".part"
CHUNK_SIZE = 1 << 16
MAX_BACKOFF_S = 30.0
# Far above MNIST's largest file (47 MB): a hostile or broken mirror cannot fill the disk.
MAX_FILE_BYTES = 1 << 30
TRANSIENT_STATUS = frozenset({408, 429})
HTTP_SCHEMES = frozenset({"http", "https"})

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mirror:
    """A mirror as the user wrote it, and where its files live."""

    spec: str
    base: str
    is_http: bool

    @classmethod
    def parse(cls, spec: str) -> Mirror:
        """Accept an http(s) base URL, a file:// URL or a local folder path."""
        parsed = urlparse(spec)
        if parsed.scheme in HTTP_SCHEMES:
            return cls(spec, spec if spec.endswith("/") else spec + "/", is_http=True)
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise MirrorFailed(f"file:// URL must be absolute (file:///path), got {spec}")
            return cls(spec, url2pathname(parsed.path), is_http=False)
        if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive
            raise MirrorFailed(
                f"unsupported URL scheme {parsed.scheme!r}; "
                "expected http(s)://, file:// or a folder path"
            )
        return cls(spec, spec, is_http=False)

    def locate(self, filename: str) -> str:
        """The URL or path of one file on this mirror."""
        if self.is_http:
            return self.base + filename
        return str(Path(self.base) / filename)


def _retrying(params: DownloadParams) -> tenacity.Retrying:
    """Retry transient failures only, with exponential backoff, a few times per mirror."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(params.attempts_per_mirror),
        wait=tenacity.wait_exponential(multiplier=params.backoff_s, max=MAX_BACKOFF_S),
        retry=tenacity.retry_if_exception_type(TransientFailure),
        before_sleep=lambda state: log.warning(
            "retrying after %s (attempt %d of %d)",
            state.outcome.exception() if state.outcome else "failure",
            state.attempt_number,
            params.attempts_per_mirror,
        ),
        reraise=True,
    )


def _declared_length(response: httpx.Response, url: str) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise MirrorFailed(f"{url}: invalid Content-Length {value!r}") from None


def _fetch_http(client: httpx.Client, url: str, dest: Path, show_progress: bool) -> None:
    """Stream one URL's raw bytes to `dest`; classify every failure as transient or not."""
    try:
        with client.stream("GET", url) as response:
            status = response.status_code
            if status >= 500 or status in TRANSIENT_STATUS:
                raise TransientFailure(f"{url}: HTTP {status} {response.reason_phrase}")
            if status != httpx.codes.OK:
                raise MirrorFailed(f"{url}: HTTP {status} {response.reason_phrase}")
            declared = _declared_length(response, url)
            if declared is not None and declared > MAX_FILE_BYTES:
                raise MirrorFailed(f"{url}: Content-Length {declared} exceeds {MAX_FILE_BYTES}")
            received = 0
            with (
                open(dest, "wb") as out,
                tqdm(
                    total=declared,
                    desc=dest.name.removesuffix(PART_SUFFIX),
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    disable=not show_progress,
                ) as bar,
            ):
                for chunk in response.iter_raw(CHUNK_SIZE):
                    received += len(chunk)
                    if received > MAX_FILE_BYTES:
                        raise MirrorFailed(f"{url}: body exceeds {MAX_FILE_BYTES} bytes")
                    out.write(chunk)
                    bar.update(len(chunk))
    except httpx.TimeoutException as exc:
        limits = f"connect {client.timeout.connect} s, read {client.timeout.read} s"
        raise TransientFailure(f"{url}: timed out ({type(exc).__name__}; {limits})") from None
    except httpx.RemoteProtocolError as exc:
        raise TransientFailure(f"{url}: truncated or malformed response ({exc})") from None
    except httpx.TransportError as exc:
        raise TransientFailure(f"{url}: {type(exc).__name__}: {exc}") from None
    except httpx.HTTPError as exc:
        raise MirrorFailed(f"{url}: {type(exc).__name__}: {exc}") from None
    if declared is not None and received != declared:
        raise TransientFailure(
            f"{url}: truncated body, received {received} of {declared} bytes (Content-Length)"
        )


def _decompress_verified(source: Path, dest: Path, expected_sha256: str, origin: str) -> str:
    """Gunzip `source` into `dest`, hashing the payload; reject anything but the expected one."""
    digest = hashlib.sha256()
    size = 0
    try:
        with gzip.open(source, "rb") as src, open(dest, "wb") as out:
            while chunk := src.read(CHUNK_SIZE):
                size += len(chunk)
                if size > MAX_FILE_BYTES:
                    raise MirrorFailed(
                        f"{origin}: decompresses to more than {MAX_FILE_BYTES} bytes"
                    )
                digest.update(chunk)
                out.write(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise MirrorFailed(f"{origin}: not a valid gzip file ({exc})") from None
    except OSError as exc:
        if exc.filename != str(source):
            raise  # the payload's destination: a write error, not the mirror's
        raise MirrorFailed(f"{origin}: cannot read {source}: {exc.strerror}") from None
    actual = digest.hexdigest()
    if actual != expected_sha256:
        raise MirrorFailed(
            f"{origin}: sha256 mismatch of the decompressed payload: got {actual}, "
            f"expected {expected_sha256}"
        )
    return actual


def fetch_file(
    mirror: Mirror,
    name: str,
    expected_sha256: str,
    staging: Path,
    client: httpx.Client,
    params: DownloadParams,
    show_progress: bool = False,
) -> str:
    """Fetch `name`.gz from one mirror into `staging`/`name`, verified; return its sha256."""
    origin = mirror.locate(name + GZ_SUFFIX)
    dest = staging / name
    if not mirror.is_http:
        if not Path(origin).is_file():
            raise MirrorFailed(f"{origin}: no such file")
        return _decompress_verified(Path(origin), dest, expected_sha256, origin)
    part = staging / (name + GZ_SUFFIX + PART_SUFFIX)
    try:
        try:
            _retrying(params)(_fetch_http, client, origin, part, show_progress)
        except TransientFailure as exc:
            attempts = params.attempts_per_mirror
            tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
            raise MirrorFailed(f"{exc} (gave up after {tries})") from None
        return _decompress_verified(part, dest, expected_sha256, origin)
    finally:
        part.unlink(missing_ok=True)


def _describe_failure(pending: Sequence[str], failures: Sequence[tuple[str, str]]) -> str:
    lines = [f"could not download {', '.join(pending)}; every mirror failed:"]
    lines += [f"  - {spec}: {reason}" for spec, reason in failures]
    lines.append("Set SEQMNIST_MIRROR (or --mirror) to a reachable mirror or a local folder.")
    return "\n".join(lines)


def fetch_all(
    mirrors: Sequence[str],
    staging: Path,
    params: DownloadParams,
    expected: Mapping[str, str] = MNIST_SHA256,
    show_progress: bool = False,
) -> dict[str, str]:
    """Fill `staging` with every file in `expected`, trying mirrors in order.

    A mirror that fails once is dropped; files it already delivered stay, since each is verified.
    """
    pending = list(expected)
    checksums: dict[str, str] = {}
    failures: list[tuple[str, str]] = []
    timeout = httpx.Timeout(params.read_timeout_s, connect=params.connect_timeout_s)
    with httpx.Client(timeout=timeout, follow_redirects=True) as client:
        for spec in mirrors:
            if not pending:
                break
            try:
                mirror = Mirror.parse(spec)
                while pending:
                    name = pending[0]
                    checksums[name] = fetch_file(
                        mirror, name, expected[name], staging, client, params, show_progress
                    )
                    pending.pop(0)
                    log.info("verified %s from %s", name, spec)
            except MirrorFailed as exc:
                failures.append((spec, str(exc)))
                log.warning("mirror %s skipped: %s", spec, exc)
    if pending:
        raise DownloadError(_describe_failure(pending, failures))
    return checksums
