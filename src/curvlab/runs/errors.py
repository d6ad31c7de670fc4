"""Errors of run folders, and one-line messages for disk and permission errors.

- :class:`RunIntegrityError`: a file of a run folder is damaged (its checksum,
  size or format is not what was recorded when it was written).
- :class:`RunLockedError`: another process writes the same stage of the folder.
- :func:`disk_error_message`: a one-line message for ``ENOSPC``, ``EDQUOT``,
  ``EACCES``, ``EPERM`` and ``EROFS`` anywhere in an exception chain, naming the
  path and the cause (``None`` for other errors), so that a command can print
  it and exit with 1 instead of a traceback.
"""

from __future__ import annotations

import errno
import re
from typing import Any

__all__ = [
    "DISK_ERRNOS",
    "RunIntegrityError",
    "RunLockedError",
    "disk_error",
    "disk_error_message",
]

#: The errors a full, read-only or foreign disk gives, and what each means.
DISK_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}

_ADVICE = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space",
    errno.EACCES: "make it writable (or use another folder)",
    errno.EPERM: "make it writable (or use another folder)",
    errno.EROFS: "use a writable file system",
}

# HDF5 reports the errno inside its message: "... errno = 28, error message = ..."
_HDF5_ERRNO = re.compile(r"errno = (\d+)")
_HDF5_FILENAME = re.compile(r"filename = '([^']*)'")
# temporary names of atomic writes: .tmp.<pid>-<host><token>.<final name>
_TEMP_NAME = re.compile(r"(^|/)\.tmp\.(?:\d+-[0-9a-f]+\.)?([^/]+)$")


class RunIntegrityError(ValueError):
    """A file of a run folder is damaged or does not match its manifest entry.

    Attributes:
        path: The file.
        stage: The stage that wrote it, when known.
        step: The step, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        path: Any = None,
        stage: str | None = None,
        step: int | None = None,
    ):
        super().__init__(message)
        self.path = path
        self.stage = stage
        self.step = step


class RunLockedError(RuntimeError):
    """Another process holds the lock of a run folder's stage.

    Attributes:
        path: The lock file.
        stage: The stage.
        holder: What the holder recorded: ``pid``, ``command``, ``started``,
            ``host`` (empty when it could not be read).
    """

    def __init__(self, message: str, *, path: Any, stage: str, holder: dict):
        super().__init__(message)
        self.path = path
        self.stage = stage
        self.holder = holder


def final_name(path: str) -> str:
    """Return the file a temporary name of an atomic write stands for.

    Args:
        path: A path, temporary (``.tmp.<pid>-<token>.<name>``) or not.

    Returns:
        The path with the temporary prefix removed.

    Example:
        >>> final_name("run/train/.tmp.41-9f.step_00000010.h5")
        'run/train/step_00000010.h5'
    """
    return _TEMP_NAME.sub(r"\1\2", str(path))


def disk_error(error: BaseException) -> OSError | None:
    """Find a disk or permission error in an exception and its causes.

    Args:
        error: Any exception.

    Returns:
        An ``OSError`` with ``errno`` in :data:`DISK_ERRNOS` (HDF5 errors that
        carry the errno only in their text are turned into one), or ``None``.
        Of several in the chain, the first that names a file, counted from the
        root cause (a failed clean-up after a full disk fails the same way).
    """
    seen = set()
    found = []
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            if current.errno in DISK_ERRNOS:
                found.append(current)
            else:
                match = _HDF5_ERRNO.search(str(current))
                if match and int(match.group(1)) in DISK_ERRNOS:
                    code = int(match.group(1))
                    name = _HDF5_FILENAME.search(str(current))
                    found.append(
                        OSError(code, DISK_ERRNOS[code], name and name.group(1))
                    )
        current = current.__cause__ or current.__context__
    named = [e for e in reversed(found) if e.filename]
    if named:
        return named[0]
    return found[-1] if found else None


def disk_error_message(error: BaseException) -> str | None:
    """Describe a disk or permission error in one line, or return ``None``.

    Args:
        error: Any exception.

    Returns:
        ``"<path>: no space left on device (ENOSPC). ..."`` with what to do,
        or ``None`` when ``error`` holds no disk or permission error.

    Example:
        >>> import errno
        >>> disk_error_message(OSError(errno.ENOSPC, "No space", "/r/a.h5"))[:49]
        '/r/a.h5: no space left on device (ENOSPC). Finish'
    """
    found = disk_error(error)
    if found is None:
        return None
    code = found.errno
    path = found.filename or found.filename2
    where = final_name(str(path)) if path else "a file of the run"
    return (
        f"{where}: {DISK_ERRNOS[code]} ({errno.errorcode[code]}). Finished steps "
        f"are kept; {_ADVICE[code]}, then run the same command again to resume."
    )
