"""One-line logging for people, with third-party noise silenced at its source.

TensorFlow writes its start-up notices (CUDA probes on CPU machines, the oneDNN notice, absl's
"All log messages before absl::InitializeLog()") straight to file descriptor 2 before Python's
logging exists, so `import_tensorflow` captures fd 2 while TensorFlow starts and replays every
line that is not one of those known notices. `--verbose` shows everything again.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
PACKAGE_LOGGER = "seqmnist"
# Libraries whose INFO chatter is not for the person running a stage.
QUIET_LOGGERS = ("tensorflow", "absl", "tf2onnx", "onnxruntime", "dvc", "h5py", "httpx", "PIL")
TF_NOTICES = re.compile(
    "|".join(
        [
            r"All log messages before absl::InitializeLog\(\)",
            r"oneDNN custom operations are on",
            r"Could not find cuda drivers",
            r"failed call to cuInit",
            r"To enable the following instructions",
            r"rebuild TensorFlow with the appropriate compiler flags",
            r"This TensorFlow binary is optimized to use available CPU instructions",
            r"Unable to register cu(DNN|FFT|BLAS) factory",
            r"TF-TRT Warning",
        ]
    )
)
_state = {"verbose": False}


class _DropKnownNoise(logging.Filter):
    """onnxruntime's quantizer warns on the root logger that the model was not "pre-processed":
    shape inference that dynamic quantization of seqmnist's model does not need."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_quantizer = "onnxruntime" in record.pathname and "quantization" in record.pathname
        return not (from_quantizer and "pre-process" in record.getMessage())


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time, so a replaced stderr is never stale."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup(verbose: bool = False) -> None:
    """Log `time LEVEL name: message` to stderr; third-party loggers only from WARNING on."""
    _state["verbose"] = verbose
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    if not verbose:
        handler.addFilter(_DropKnownNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries that log on the root logger (onnxruntime's quantizer does) speak from WARNING on.
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger(PACKAGE_LOGGER).setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


@contextmanager
def _filtered_fd2(noise: re.Pattern[str]) -> Iterator[None]:
    """Send fd 2 to a temp file for the block, then write back the lines `noise` does not match."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if not noise.search(line):
                    print(line, file=sys.stderr)


def import_tensorflow():
    """TensorFlow, imported and its devices probed with the start-up notices filtered out."""
    if "tensorflow" in sys.modules or _state["verbose"]:
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _filtered_fd2(TF_NOTICES):
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe happens here, on first use
    return tf
