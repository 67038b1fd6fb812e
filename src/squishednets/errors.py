"""Errors the command line turns into one-line messages and a non-zero exit.

Each message names the problem and the fix; the CLI prints ``error: <message>``
and exits with status 2, never a traceback.
"""

__all__ = ["SquishedError", "GenomeError", "DataError", "CheckpointError", "ConfigError", "ExportError"]


class SquishedError(Exception):
    """Base class: bad input or state that the user can fix."""


class GenomeError(SquishedError, ValueError):
    """A genome that is malformed or not understood."""


class DataError(SquishedError):
    """A data set that is missing, empty or inconsistent."""


class CheckpointError(SquishedError):
    """A checkpoint that is missing, incomplete or does not fit its genome."""


class ConfigError(SquishedError):
    """A configuration file or option that is not understood."""


class ExportError(SquishedError):
    """An export that failed its check against PyTorch."""
