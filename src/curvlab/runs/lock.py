"""One writer per run folder and stage: an exclusive OS lock on a lock file.

A stage that writes into a run folder holds ``RUN_DIR/.lock.<stage>`` with
``fcntl.flock(LOCK_EX | LOCK_NB)`` and writes its process id, command line,
host and start time into it. The kernel releases the lock when the process
ends, also on SIGKILL or a crash, so a lock is never left behind; the file
itself stays (deleting it would let two processes lock two different files).
A second process asking for the same lock gets :class:`RunLockedError`, whose
message names the holder. Readers take no lock.

Locks are re-entrant within a process: the same process may take a stage's
lock again (nested calls), and it is released when the outermost holder
releases it. Where ``fcntl`` is missing (Windows) locking is a no-op.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with StageLock(folder, "train") as lock:
    ...     lock.holder()["pid"] == os.getpid()
    True
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from curvlab.runs.environment import utc_now
from curvlab.runs.errors import RunLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_PREFIX", "StageLock"]

#: Prefix of lock files in a run folder.
LOCK_PREFIX = ".lock."

# (lock file, pid) -> [file descriptor, depth]; the pid guards forked children
_HELD: dict[tuple[str, int], list[int]] = {}


class StageLock:
    """The exclusive lock of one stage of a run folder.

    Args:
        folder: The run folder (created if missing).
        stage: The stage, e.g. ``"train"``.

    Attributes:
        path: The lock file ``folder/.lock.<stage>``.
        stage: The stage.
    """

    def __init__(self, folder: str | Path, stage: str):
        self.path = Path(folder) / f"{LOCK_PREFIX}{stage}"
        self.stage = stage
        self._held = False

    def _key(self) -> tuple[str, int]:
        return (str(self.path.absolute()), os.getpid())

    def acquire(self) -> StageLock:
        """Take the lock, or raise if another process holds it.

        Returns:
            The lock.

        Raises:
            RunLockedError: If another process holds it; the message names
                that process.
            OSError: If the lock file cannot be created (a read-only folder).
        """
        if self._held:
            return self
        key = self._key()
        if key in _HELD:
            _HELD[key][1] += 1
            self._held = True
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise self._locked(holder) from None
            except BaseException:
                os.close(fd)
                raise
        try:
            info = {
                "pid": os.getpid(),
                "command": " ".join(_command_line()),
                "host": socket.gethostname(),
                "started": utc_now(),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)  # closing releases the lock
            raise
        _HELD[key] = [fd, 1]
        self._held = True
        return self

    def release(self) -> None:
        """Release the lock (the outermost release of this process frees it)."""
        if not self._held:
            return
        self._held = False
        key = self._key()
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[key]
            os.close(held[0])

    def holder(self) -> dict[str, Any]:
        """Return what the holder wrote into the lock file (``{}`` if unreadable).

        Returns:
            ``pid``, ``command``, ``host`` and ``started``.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return {}
        try:
            return _read_holder(fd)
        finally:
            os.close(fd)

    def _locked(self, holder: dict[str, Any]) -> RunLockedError:
        folder = self.path.parent
        if holder.get("pid"):
            who = f"process {holder['pid']}"
            if holder.get("host") and holder["host"] != socket.gethostname():
                who += f" on {holder['host']}"
            if holder.get("command"):
                who += f" ({holder['command']})"
            if holder.get("started"):
                who += f", started {holder['started']},"
        else:
            who = "another process"
        return RunLockedError(
            f"{str(folder)!r} is in use: {who} is writing its {self.stage} stage "
            f"(lock {self.path.name}). Wait until it ends or stop it; one writer "
            "per run folder and stage.",
            path=self.path,
            stage=self.stage,
            holder=holder,
        )

    def __enter__(self) -> StageLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _command_line() -> list[str]:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("__main__.py", "curvlab"):
        argv[0] = "curvlab"
    return argv
