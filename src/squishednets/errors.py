"""Errors the command line turns into one-line messages and a non-zero exit.

Each message names the problem and the fix; the CLI prints ``error: <message>``
and exits with status 2, never a traceback.
"""

__all__ = ["SquishedError", "GenomeError", "DataError", "CheckpointError", "ConfigError", "ExportError",
           "DeadNetworkError", "StorageError"]


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


class DeadNetworkError(ExportError):
    """A network whose outputs are degenerate in PyTorch already: the export
    is faithful, the network learnt nothing."""


class StorageError(SquishedError, OSError):
    """A file or folder that could not be written because the device is full,
    over quota or read-only. Also an ``OSError``, so handlers of failed
    writes keep catching it."""

    def __init__(self, message: str, errno: int | None = None, filename: str | None = None) -> None:
        super().__init__(message)
        self.errno, self.filename = errno, filename

    def __str__(self) -> str:
        # OSError would print "[Errno 28] None: 'path'" once errno is set;
        # the CLI shows our one-line message instead.
        return str(self.args[0])
