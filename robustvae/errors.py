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
