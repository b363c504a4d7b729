"""User-facing errors: the CLI prints these as one clear message instead of a traceback."""


class SeqmnistError(Exception):
    """A bad input or environment problem, described for the person who has to fix it."""


class ConfigError(SeqmnistError):
    """params.yaml (or an override) does not describe a valid pipeline."""


class DataError(SeqmnistError):
    """A data file is missing, corrupt, or does not have the expected layout."""


class DownloadError(SeqmnistError):
    """No mirror could deliver a verified file."""
