"""The one exception type users see: a one-line message naming the problem and the fix.

The CLI prints ``error: <message>`` and exits non-zero, with no traceback.
"""


class RobustVAEError(Exception):
    """A user-facing error (bad input, missing file, impossible request)."""


class ConfigError(RobustVAEError):
    """A configuration value or key is invalid."""


class CheckpointError(RobustVAEError):
    """A checkpoint is missing, corrupt, or made by another architecture/format."""


class DataError(RobustVAEError):
    """A dataset is unknown or its files cannot be found."""


class TrainingError(RobustVAEError):
    """Training cannot go on (e.g. every step is skipped)."""


class Interrupted(RobustVAEError):
    """Stopped by Ctrl-C (or SIGTERM): the CLI prints ``stopped: <message>`` and exits with code 130."""


def require_positive(**counts: int | None) -> None:
    """Each given count (``batch_size=0``) must be a positive integer, else an error naming the option (--batch-size)."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise RobustVAEError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
