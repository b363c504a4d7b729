"""Every error seqmnist raises on purpose: the CLI prints these as one message, not a traceback.

Each names the file, URL, remote or field at fault and what was expected, so whoever reads it
knows what to fix.
"""

LOG_TAIL_LINES = 40
# What `seqmnist` exits with on a SeqmnistError: a bad input or environment, which running the
# same command again cannot mend (the flow does not retry such a stage).
BAD_INPUT_EXIT_CODE = 2


class SeqmnistError(Exception):
    """A bad input or environment problem, described for the person who has to fix it."""

    exit_code = BAD_INPUT_EXIT_CODE


class ConfigError(SeqmnistError):
    """params.yaml (or an override) does not describe a valid pipeline."""


class MissingExtraError(SeqmnistError):
    """A pipeline command ran where only the predictor is installed."""


class DataError(SeqmnistError):
    """A data file is missing, corrupt, or does not have the expected layout."""


class InputFileError(DataError):
    """An input file cannot be read as an image, array or IDX file the model accepts."""


class DownloadError(SeqmnistError):
    """No mirror could deliver a verified file."""

    exit_code = 1  # often a passing outage: the flow's retry may find the mirrors answering


class MirrorFailed(SeqmnistError):
    """One mirror cannot deliver a verified file; the next mirror is tried."""


class TransientFailure(MirrorFailed):
    """A failure worth retrying on the same mirror: 5xx, timeout, reset, truncated body."""


class KernelBuildError(SeqmnistError):
    """The C++ LSTM kernel could not be compiled or loaded."""


class OutputWriteError(SeqmnistError):
    """An output could not be written (disk full, permissions); the previous one is kept."""

    def __init__(self, target, why: str):
        self.target = target
        self.why = why
        super().__init__(f"cannot write {target}: {why}")

    def __reduce__(self):
        return (type(self), (self.target, self.why))


class ExportError(SeqmnistError):
    """The ONNX export cannot be trusted (wrong ops, parity with Keras broken)."""


class ModelFileError(SeqmnistError):
    """The ONNX model file is missing, truncated, not ONNX, or not shaped like a seqmnist model."""


class OrchestrationError(SeqmnistError):
    """The pipeline could not be run as asked (bad stage name, bad override, DVC problem)."""


class StageFailed(OrchestrationError):
    """A DVC stage exited non-zero or ran out of time; the message carries its log tail."""

    def __init__(self, stage: str, returncode: int | None, log_tail: str, timed_out: bool = False):
        self.stage = stage
        self.returncode = returncode
        self.log_tail = log_tail
        self.timed_out = timed_out
        outcome = "timed out" if timed_out else f"exited with code {returncode}"
        super().__init__(
            f"stage {stage!r} failed: its command {outcome}\n"
            f"--- last {LOG_TAIL_LINES} lines of its log ---\n{log_tail}"
        )

    @property
    def retryable(self) -> bool:
        """Worth running again: not when the stage itself reported a bad input."""
        return self.timed_out or self.returncode != BAD_INPUT_EXIT_CODE

    def __reduce__(self):
        """Prefect stores failed states' exceptions; keep this one picklable."""
        return (type(self), (self.stage, self.returncode, self.log_tail, self.timed_out))


class TrialCrashed(OrchestrationError):
    """A sweep trial's flow run Crashed (its worker or machine died): it is submitted again."""


class PublishError(SeqmnistError):
    """A version could not be published: DVC remote, git remote or registry tag (named)."""


class HistoryError(SeqmnistError):
    """The version history is unreadable, or a version reference matches nothing (or too much)."""
