"""A self-describing run folder: config, metadata, manifest and atomic writes.

Every command that works on a run reads and writes one folder, so that any
later command needs only ``--run RUN_DIR``::

    RUN_DIR/
      config.yaml                  the TrainConfig (YAML; the run's identity)
      metadata.json                format, creation time, seeds, package
                                   versions, machine
      metrics.csv                  one row per recorded step: loss and accuracy
                                   on train and test, gradient and parameter
                                   norms, timings
      train/step_00000100.h5       parameters, full-data gradient and buffers
                                   at step 100 (:mod:`curvlab.runs.records`)
      checkpoint/step_00000100.pt  resumable training state (latest only)
      <stage>/step_00000100.<ext>  files of later stages (:meth:`path_for`)
      manifest/<stage>/step_00000100.json
                                   one entry per finished (stage, step)
      invocations/<time>_<command>_<pid>.json
                                   one file per command run: request, device,
                                   versions, machine, status, timings
      .lock.<stage>                lock file of a stage: its holder's pid

**Nothing half-written is ever taken for finished.** Every file is written to a
temporary name in its final folder (``.tmp.<pid>-<token>.<name>``, unique per
process), flushed to disk (``fsync``) and renamed onto its final name with
``os.replace``, which is atomic; then its manifest entry is written the same
way. A crash (Ctrl-C, SIGKILL, power loss) leaves at worst a temporary file,
which nothing reads and a later write of the same file deletes once its
process is gone, or a finished file without an entry, which is computed again.

**Nothing damaged is ever used.** An entry lists its files with their sizes and
SHA-256 checksums. :meth:`RunFolder.is_done` checks the sizes (cheap, for
listing steps); ``is_done(..., verify=True)``, which the stage that owns the
files uses to decide what to skip, also checks the checksums, so that stage
computes a damaged step again. The readers (:meth:`RunFolder.load_record`,
:meth:`RunFolder.read_json`, :meth:`RunFolder.read_table`) verify a listed
file before using it and raise :class:`~curvlab.runs.errors.RunIntegrityError`
naming the file, the step and what to do. ``config.yaml`` ends with the
SHA-256 of its lines and is read strictly: a damaged, cut or unparsable config
is named with the missing or bad key, never completed with defaults.

**One writer per stage.** A stage writes under an exclusive OS lock on
``.lock.<stage>`` (:mod:`curvlab.runs.lock`), taken by
:meth:`RunFolder.start_invocation` (and for ``config.yaml`` by the ``train``
stage); a second process gets :class:`~curvlab.runs.errors.RunLockedError`
naming the holder. Readers take no lock.

The manifest is a folder of small entries rather than one ``manifest.json`` so
that parallel workers of a later stage can mark their own steps done without a
read-modify-write race or a lock; :meth:`RunFolder.manifest` gathers them.

Example:
    >>> import tempfile
    >>> from curvlab.runs import RunFolder, TrainConfig
    >>> folder = tempfile.mkdtemp()
    >>> run = RunFolder.create(folder, TrainConfig(problem="digits_logreg", steps=5))
    >>> path = run.path_for("spectrum", 5, ".json")
    >>> _ = run.write_json(path, {"eigvals": [3.0, 2.0]})
    >>> run.mark_done("spectrum", 5, files=[path], info={"k": 2})
    >>> run.is_done("spectrum", 5), run.done_steps("spectrum")
    (True, [5])
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from curvlab.runs.config import (
    ConfigDamagedError,
    TrainConfig,
    config_from_text,
    config_to_text,
)
from curvlab.runs.environment import machine_info, package_versions, utc_now
from curvlab.runs.errors import RunIntegrityError, disk_error
from curvlab.runs.lock import LOCK_PREFIX, StageLock
from curvlab.runs.records import Record, read_record

__all__ = [
    "RUN_FORMAT",
    "RUN_FORMAT_VERSION",
    "TEMP_PREFIX",
    "Invocation",
    "MissingStepError",
    "RunFolder",
    "atomic_path",
    "file_checksum",
    "step_key",
    "write_bytes_atomic",
]

RUN_FORMAT = "curvlab-run"
#: 2: manifest entries carry SHA-256 checksums, config.yaml ends with its own.
RUN_FORMAT_VERSION = 2

#: Prefix of temporary files; such files are never read as results.
TEMP_PREFIX = ".tmp."

_CONFIG = "config.yaml"
_METADATA = "metadata.json"
_MANIFEST = "manifest"
_INVOCATIONS = "invocations"
_METRICS = "metrics.csv"
_STAGE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_STEP_PATTERN = re.compile(r"^step_(\d+)$")
_FILE_KEY = re.compile(r"^(step_\d{8,}|all)")
_TEMP_PID = re.compile(r"^\.tmp\.(\d+)-([0-9a-f]{6})[0-9a-f]*\.")
# this host in temporary names: a process of another host sharing the folder
# (a cluster file system) is never taken for a dead local one
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


class MissingStepError(LookupError):
    """A step that was asked for has not been recorded (or is unfinished)."""


def step_key(step: int | None) -> str:
    """Return the file stem of a step: ``step_00000100``, or ``all`` for ``None``.

    Args:
        step: A step, at least 0, or ``None`` for a result that belongs to no step.

    Returns:
        The stem.

    Raises:
        ValueError: For a negative or non-integer step.

    Example:
        >>> step_key(100), step_key(None)
        ('step_00000100', 'all')
    """
    if step is None:
        return "all"
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0 or None. Got {step!r}.")
    return f"step_{step:08d}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_checksum(path: str | Path) -> str:
    """Return the SHA-256 of a file as hex text (read in 1 MiB blocks).

    Args:
        path: The file.

    Returns:
        64 hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive but not ours
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of ``path`` left by processes that are gone."""
    suffix = "." + path.name
    try:
        children = list(path.parent.iterdir())
    except OSError:
        return
    for child in children:
        name = child.name
        if not name.startswith(TEMP_PREFIX) or not name.endswith(suffix):
            continue
        match = _TEMP_PID.match(name)
        if name == TEMP_PREFIX + path.name or (
            match
            and name == match.group(0) + path.name
            and match.group(2) == _HOST
            and not _process_alive(int(match.group(1)))
        ):
            with contextlib.suppress(OSError):
                child.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Give a temporary path to write; rename it to ``path`` when done.

    The temporary file lies in ``path``'s folder and keeps its extension
    (``.tmp.<pid>-<host><token>.<name>``), so any writer works
    (``h5py.File``, ``torch.save``, ``savefig``); the name is unique per
    process and call, so two processes writing one file never touch each
    other's temporary file. Leftovers of this host's processes that are gone
    are deleted first. On a clean exit
    the file is flushed to disk and renamed onto ``path`` atomically; on an
    exception it is deleted and ``path`` is left as it was.

    Args:
        path: The final file.

    Yields:
        The temporary path to write.

    Raises:
        FileNotFoundError: If nothing was written to the temporary path.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    token = f"{os.getpid()}-{_HOST}{secrets.token_hex(4)}"
    tmp = path.with_name(f"{TEMP_PREFIX}{token}.{path.name}")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(
                f"Nothing was written to the temporary file {str(tmp)!r}."
            )
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        found = disk_error(error)
        if found is not None and found.filename in (None, str(tmp)):
            # a failed write() names no file: name the one being written
            raise OSError(found.errno, found.strerror, str(path)) from error
        raise
    _fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`).

    Args:
        path: The file.
        data: Its content.
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, allow_nan=True) + "\n"


def _parse_cell(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


class Invocation:
    """One command run on a run folder, recorded in ``invocations/``.

    Created by :meth:`RunFolder.start_invocation`; call :meth:`update` to add
    information and :meth:`finish` at the end. A command killed with SIGKILL
    leaves ``status: "running"``.

    Attributes:
        path: The JSON file.
        data: What it holds.
    """

    def __init__(self, path: Path, data: dict[str, Any], lock: StageLock | None = None):
        self.path = path
        self.data = data
        self._lock = lock
        self._write()

    def _write(self) -> None:
        write_bytes_atomic(self.path, _json_text(self.data).encode())

    def update(self, **info: Any) -> None:
        """Add or replace fields and rewrite the file.

        Args:
            **info: JSON-serialisable values.
        """
        self.data.update(info)
        self._write()

    def finish(self, status: str = "finished", **info: Any) -> None:
        """Mark the command ended.

        Args:
            status: ``"finished"``, ``"interrupted"`` or ``"failed"``.
            **info: More fields (timings, the error).
        """
        started = datetime.fromisoformat(self.data["started"].replace("Z", "+00:00"))
        seconds = (datetime.now(timezone.utc) - started).total_seconds()
        try:
            self.update(status=status, finished=utc_now(), seconds=seconds, **info)
        finally:
            if self._lock is not None:
                self._lock.release()


class RunFolder:
    """A run folder: its config, metadata, manifest, records and atomic writes.

    Get one with :meth:`create` (a new run, or an existing one with a
    compatible config) or :meth:`open` (an existing run, for later stages).

    Relative paths given to the methods are relative to the folder; absolute
    ones must lie inside it.

    Args:
        path: The folder (use :meth:`open` or :meth:`create`).

    Attributes:
        path: The folder, absolute.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().absolute()
        self._verified: dict[str, tuple[int, int, int]] = {}

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------ opening
    @staticmethod
    def is_run_folder(path: str | Path) -> bool:
        """Return whether ``path`` holds a run (a ``config.yaml``).

        Args:
            path: A folder.

        Returns:
            ``True`` for a run folder.
        """
        return (Path(path) / _CONFIG).is_file()

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """Open an existing run folder.

        Args:
            path: The folder ``curvlab train --out`` wrote.

        Returns:
            The run folder.

        Raises:
            FileNotFoundError: If ``path`` is not a run folder.
        """
        if not cls.is_run_folder(path):
            raise FileNotFoundError(
                f"{str(path)!r} is not a curvlab run folder (no {_CONFIG}). Create "
                "one with `curvlab train --problem NAME --out RUN_DIR`."
            )
        return cls(path)

    @classmethod
    def create(
        cls,
        path: str | Path,
        config: TrainConfig,
        *,
        force: bool = False,
        metadata: Mapping[str, Any] | None = None,
        check: Callable[[TrainConfig], None] | None = None,
    ) -> RunFolder:
        """Create a run folder, or reopen one made with a compatible config.

        An existing run folder is reused when ``config`` differs from its
        stored config at most in how far to train
        (:data:`~curvlab.runs.config.EXTENT_FIELDS`); its stored config then
        becomes :meth:`TrainConfig.extended_by` of both.

        Args:
            path: The folder; created if missing. An existing folder must be
                empty or a run folder.
            config: The training config.
            force: Delete an existing run (everything in its folder) and start
                over. A folder that is not a run folder is never deleted.
            metadata: More fields for ``metadata.json`` of a new run (seeds).
            check: Called with ``config`` before a new run is written (also
                with ``force``); what it raises propagates and nothing is
                written, so no invalid config lands in the folder.

        Returns:
            The run folder.

        Raises:
            ConfigMismatchError: If the folder holds a run with another config
                and ``force`` is false.
            FileExistsError: If ``path`` is a file, or a non-empty folder that
                is not a run folder.
        """
        path = Path(path).expanduser()
        if not cls.is_run_folder(path):
            cls._check_usable(path)
        if check is not None and (force or not cls.is_run_folder(path)):
            check(config)
        path.mkdir(parents=True, exist_ok=True)
        with StageLock(path, "train"):  # the train stage owns config.yaml
            if cls.is_run_folder(path):
                run = cls(path)
                if not force:
                    run.extend_config(config)
                    return run
                run._clear()
            cls._check_usable(path)
            return cls._create(path, config, metadata)

    @classmethod
    def _check_usable(cls, path: Path) -> None:
        if not path.exists():
            return
        if not path.is_dir():
            raise FileExistsError(f"{str(path)!r} exists and is not a folder.")
        others = [p.name for p in path.iterdir() if not cls._ignorable(p)]
        if others:
            raise FileExistsError(
                f"{str(path)!r} is not empty and is not a curvlab run folder "
                f"(it holds {', '.join(sorted(others)[:5])}"
                f"{', ...' if len(others) > 5 else ''}). Choose a new or "
                "empty folder."
            )

    @classmethod
    def _create(
        cls, path: Path, config: TrainConfig, metadata: Mapping[str, Any] | None
    ) -> RunFolder:
        run = cls(path)
        info = {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "created": utc_now(),
            **dict(metadata or {}),
            "versions": package_versions(),
            "machine": machine_info(),
        }
        run.write_json(_METADATA, info)
        run.write_config(config)  # last: its presence makes this a run folder
        return run

    @staticmethod
    def _ignorable(path: Path) -> bool:
        """Leftovers of a crash while a run folder was being created, and locks."""
        if path.name.startswith((TEMP_PREFIX, LOCK_PREFIX)):
            return True
        if path.name == _METADATA:
            try:
                return json.loads(path.read_text()).get("format") == RUN_FORMAT
            except (OSError, ValueError, AttributeError):
                return False
        return False

    def _clear(self) -> None:
        for child in self.path.iterdir():
            if child.name.startswith(LOCK_PREFIX):
                continue  # held locks stay valid
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    # ------------------------------------------------------------ config
    @property
    def config(self) -> TrainConfig:
        """The training config stored in ``config.yaml``, read strictly.

        Raises:
            ConfigDamagedError: If the file is damaged, cut short, edited or
                unparsable (:func:`~curvlab.runs.config.config_from_text`); the
                message names the file and the key.
        """
        path = self.path / _CONFIG
        try:
            return config_from_text(
                path.read_bytes(),
                source=str(path),
                require_checksum=self._format_version() >= 2,
            )
        except ConfigDamagedError as error:
            values = getattr(error, "values", None)
            hint = self._checkpoint_differences(values) if values else ""
            if not hint:
                raise
            raise ConfigDamagedError(f"{error} {hint}", path=path) from None

    def _checkpoint_differences(self, values: Mapping[str, Any]) -> str:
        """Name the keys where ``values`` differ from the latest checkpoint's config."""
        from curvlab.runs.config import EXTENT_FIELDS, config_differences
        from curvlab.runs.records import load_checkpoint

        for step in reversed(self.entry_steps("checkpoint")):
            try:
                stored = load_checkpoint(self.path_for("checkpoint", step, ".pt"))
            except (OSError, RunIntegrityError):
                continue
            if not isinstance(stored.get("config"), Mapping):
                return ""
            differences = config_differences(
                stored["config"], values, ignore=EXTENT_FIELDS
            )
            listed = ", ".join(
                f"{key}: {new!r} here, {old!r} in the checkpoint"
                for key, old, new in differences
            )
            name = self.relative(self.path_for("checkpoint", step, ".pt"))
            return f"Compared with the config saved in {name}: {listed or 'no key'}."
        return ""

    def _format_version(self) -> int:
        try:
            version = json.loads((self.path / _METADATA).read_text())["format_version"]
        except (OSError, ValueError, KeyError, TypeError):
            return RUN_FORMAT_VERSION
        return version if isinstance(version, int) else RUN_FORMAT_VERSION

    def write_config(self, config: TrainConfig) -> None:
        """Store the training config (``config.yaml``, atomically, with checksum).

        It holds the ``train`` stage's lock while writing.

        Args:
            config: The config.

        Raises:
            RunLockedError: If another process trains in the folder.
        """
        text = config_to_text(config)
        with StageLock(self.path, "train"):
            self.write_text(_CONFIG, text)

    def extend_config(self, config: TrainConfig) -> TrainConfig:
        """Extend the stored config to cover ``config`` and store the result.

        Args:
            config: A config that differs from the stored one at most in how
                far to train (:data:`~curvlab.runs.config.EXTENT_FIELDS`).

        Returns:
            The stored config after the call: :meth:`TrainConfig.extended_by`
            of both (written only where it changed).

        Raises:
            ConfigMismatchError: If ``config`` differs in anything else.
        """
        stored = self.config
        if config == stored:
            return stored
        merged = stored.extended_by(config, where=str(self.path))
        if merged != stored:
            self.write_config(merged)
        return merged

    def training_data_dir(self) -> str | None:
        """Return the data folder the latest training invocation named.

        Returns:
            The ``data_dir`` of the latest ``train`` invocation that recorded
            one, or ``None`` (no training yet, or a bundled problem).
        """
        for invocation in reversed(self.invocations("train")):
            if invocation.get("data_dir"):
                return invocation["data_dir"]
        return None

    def lock(self, stage: str) -> StageLock:
        """Return the exclusive lock of a stage (take it with ``with``).

        Args:
            stage: The stage name.

        Returns:
            The lock (:class:`~curvlab.runs.lock.StageLock`), not yet taken.
        """
        _check_stage(stage)
        return StageLock(self.path, stage)

    @property
    def metadata(self) -> dict[str, Any]:
        """``metadata.json``: format, creation time, seeds, versions, machine."""
        return self.read_json(_METADATA)

    # ------------------------------------------------------------ paths and IO
    def resolve(self, relpath: str | Path) -> Path:
        """Return the absolute path of a file in the folder.

        Args:
            relpath: Relative to the folder, or absolute inside it.

        Returns:
            The absolute path.

        Raises:
            ValueError: If the path leads outside the folder.
        """
        path = Path(relpath)
        if not path.is_absolute():
            path = self.path / path
        root = self.path.resolve()
        if not path.resolve().is_relative_to(root):
            raise ValueError(
                f"{str(relpath)!r} lies outside the run folder {str(self.path)!r}."
            )
        return path

    def relative(self, path: str | Path) -> str:
        """Return ``path`` relative to the folder, with ``/`` separators.

        Args:
            path: A path inside the folder.

        Returns:
            The relative path.
        """
        resolved = self.resolve(path).resolve()
        return resolved.relative_to(self.path.resolve()).as_posix()

    def path_for(
        self, stage: str, step: int | None = None, suffix: str = ".h5"
    ) -> Path:
        """Return the conventional file of a stage at a step, creating its folder.

        Args:
            stage: The stage, e.g. ``"spectrum"`` (letters, digits, ``_.-``).
            step: The step, or ``None`` for a result that belongs to no step.
            suffix: The extension, e.g. ``".h5"``, ``".json"``, or a longer
                ending such as ``"_train.h5"``.

        Returns:
            ``RUN_DIR/<stage>/step_XXXXXXXX<suffix>`` (``all<suffix>`` for
            ``None``).

        Raises:
            ValueError: For an invalid stage name or step.
        """
        _check_stage(stage)
        folder = self.path / stage
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{step_key(step)}{suffix}"

    def atomic_path(self, relpath: str | Path) -> contextlib.AbstractContextManager:
        """Write a file of the folder atomically, see :func:`atomic_path`.

        Args:
            relpath: The final file.

        Returns:
            A context manager yielding the temporary path to write.
        """
        return atomic_path(self.resolve(relpath))

    def write_text(self, relpath: str | Path, text: str) -> Path:
        """Write a text file atomically.

        Args:
            relpath: The file.
            text: Its content.

        Returns:
            The absolute path.
        """
        path = self.resolve(relpath)
        write_bytes_atomic(path, text.encode())
        return path

    def write_json(self, relpath: str | Path, obj: Any) -> Path:
        """Write a JSON file atomically (indented; NaN allowed).

        Args:
            relpath: The file.
            obj: JSON-serialisable data.

        Returns:
            The absolute path.
        """
        return self.write_text(relpath, _json_text(obj))

    def read_json(self, relpath: str | Path) -> Any:
        """Read a JSON file of the folder, verified if the manifest lists it.

        Args:
            relpath: The file.

        Returns:
            The data.

        Raises:
            RunIntegrityError: If the file is damaged (checksum, or not JSON).
        """
        path = self.verify_file(relpath)
        try:
            return json.loads(path.read_bytes())
        except ValueError as error:
            raise RunIntegrityError(
                f"{path} is damaged: it is not valid JSON ({error}).", path=path
            ) from None

    def write_table(
        self,
        relpath: str | Path,
        rows: Iterable[Mapping[str, Any]],
        columns: Sequence[str] | None = None,
    ) -> Path:
        """Write rows as a CSV file atomically.

        Args:
            relpath: The file (``.csv``).
            rows: One mapping per row.
            columns: Column order; default: keys in order of first appearance.
                ``None`` values are written as empty cells, floats with
                ``repr`` (exact round trip).

        Returns:
            The absolute path.
        """
        rows = list(rows)
        if columns is None:
            columns = list(dict.fromkeys(key for row in rows for key in row))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_format_cell(row.get(c)) for c in columns])
        return self.write_text(relpath, buffer.getvalue())

    def read_table(self, relpath: str | Path) -> list[dict[str, Any]]:
        """Read a CSV file written by :meth:`write_table`.

        Args:
            relpath: The file.

        Returns:
            One dict per row; cells parsed as int, float, ``None`` (empty) or str.

        Raises:
            RunIntegrityError: If the manifest lists the file and it is damaged.
        """
        with self.verify_file(relpath).open(newline="") as file:
            return [
                {key: _parse_cell(value) for key, value in row.items()}
                for row in csv.DictReader(file)
            ]

    # ------------------------------------------------------------ manifest
    def _entry_path(self, stage: str, step: int | None) -> Path:
        _check_stage(stage)
        return self.path / _MANIFEST / stage / f"{step_key(step)}.json"

    def mark_done(
        self,
        stage: str,
        step: int | None = None,
        *,
        files: Iterable[str | Path] = (),
        info: Mapping[str, Any] | None = None,
    ) -> None:
        """Record that ``stage`` finished ``step``: its files are complete.

        Call it only after the files were written atomically (by
        :meth:`atomic_path`, :meth:`write_json`, ...). The entry stores each
        file's size and SHA-256, which :meth:`is_done` and the readers check.

        Args:
            stage: The stage name.
            step: The step, or ``None``.
            files: The files the stage wrote for this step.
            info: JSON-serialisable results or timings to keep with the entry.

        Raises:
            FileNotFoundError: If a listed file does not exist.
        """
        listed = []
        for file in files:
            path = self.resolve(file)
            if not path.is_file():
                raise FileNotFoundError(
                    f"Cannot mark {stage} {step_key(step)} done: {str(path)!r} "
                    "does not exist."
                )
            relative = self.relative(path)
            listed.append(
                {
                    "path": relative,
                    "bytes": path.stat().st_size,
                    "sha256": file_checksum(path),
                }
            )
            self._remember(path, relative)
        entry = {
            "stage": stage,
            "step": step,
            "files": listed,
            "info": dict(info or {}),
            "completed": utc_now(),
        }
        self.write_json(self._entry_path(stage, step), entry)

    def unmark(self, stage: str, step: int | None = None) -> None:
        """Remove the manifest entry of ``(stage, step)`` (files are kept).

        Args:
            stage: The stage name.
            step: The step, or ``None``.
        """
        self._entry_path(stage, step).unlink(missing_ok=True)

    def entry(self, stage: str, step: int | None = None) -> dict[str, Any] | None:
        """Return the manifest entry of ``(stage, step)``, or ``None``.

        Args:
            stage: The stage name.
            step: The step, or ``None``.

        Returns:
            ``{"stage", "step", "files": [{"path", "bytes", "sha256"}], "info",
            "completed"}``, or ``None`` when there is no entry. It does not
            check the files (:meth:`is_done` does).
        """
        path = self._entry_path(stage, step)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # cannot happen with atomic writes; be safe
            return None

    def is_done(
        self, stage: str, step: int | None = None, *, verify: bool = False
    ) -> bool:
        """Return whether ``(stage, step)`` is finished and its files are intact.

        Args:
            stage: The stage name.
            step: The step, or ``None``.
            verify: Also compare the files' SHA-256 with the recorded ones
                (reads them; once per file and process while the file is
                unchanged). The stage that owns the files passes ``True`` when
                it decides what to skip, so it recomputes damaged steps.

        Returns:
            ``True`` if an entry exists and every file it lists exists with the
            recorded size (and checksum).
        """
        entry = self.entry(stage, step)
        if entry is None:
            return False
        return not self._problems(entry, verify=verify)

    def damaged(self, stage: str, step: int | None = None) -> list[str]:
        """Say what is wrong with the files of a finished ``(stage, step)``.

        Args:
            stage: The stage name.
            step: The step, or ``None``.

        Returns:
            One line per missing, resized or damaged file (checksums are
            compared); empty when there is no entry or all is intact.
        """
        entry = self.entry(stage, step)
        return [] if entry is None else self._problems(entry, verify=True)

    def _problems(self, entry: Mapping[str, Any], *, verify: bool) -> list[str]:
        problems = []
        for file in entry.get("files", []):
            path = self.path / file["path"]
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                problems.append(f"{file['path']} is missing")
                continue
            if size != file["bytes"]:
                problems.append(
                    f"{file['path']} has {size} bytes instead of {file['bytes']}"
                )
            elif verify and file.get("sha256") and not self._matches(path, file):
                problems.append(
                    f"{file['path']} is damaged (its SHA-256 differs from the one "
                    "recorded when it was written)"
                )
        return problems

    def _stamp(self, path: Path) -> tuple[int, int, int]:
        info = path.stat()
        return (info.st_size, info.st_mtime_ns, info.st_ino)

    def _remember(self, path: Path, relative: str) -> None:
        self._verified[relative] = self._stamp(path)

    def _matches(self, path: Path, file: Mapping[str, Any]) -> bool:
        stamp = self._stamp(path)
        if self._verified.get(file["path"]) == stamp:
            return True
        if file_checksum(path) != file["sha256"]:
            return False
        self._verified[file["path"]] = stamp
        return True

    def _owner(self, relative: str) -> tuple[str, int | None] | None:
        """The (stage, step) whose entry may list a file, by the path convention."""
        parts = relative.split("/")
        if len(parts) != 2 or not _STAGE_PATTERN.match(parts[0]):
            return None
        match = _FILE_KEY.match(parts[1])
        if not match:
            return parts[0], None  # e.g. hesscale_quality/result.json
        key = match.group(1)
        return parts[0], None if key == "all" else int(key.removeprefix("step_"))

    def verify(self, stage: str, step: int | None = None) -> None:
        """Raise if a file of a finished ``(stage, step)`` is missing or damaged.

        Args:
            stage: The stage name.
            step: The step, or ``None``.

        Raises:
            RunIntegrityError: Naming the file, the step and what to do.
        """
        problems = self.damaged(stage, step)
        if problems:
            raise self._integrity_error(stage, step, problems)

    def verify_file(self, relpath: str | Path) -> Path:
        """Verify a file before use when a manifest entry lists it.

        The entry is the one of ``<stage>/step_XXXXXXXX*``, the layout of
        :meth:`path_for`, or the stage's entry without a step for other files
        of ``<stage>/``; files no entry lists are not checked.

        Args:
            relpath: The file.

        Returns:
            Its absolute path.

        Raises:
            RunIntegrityError: If the entry lists it and its size or SHA-256
                differs from the recorded one.
        """
        path = self.resolve(relpath)
        relative = self.relative(path)
        owner = self._owner(relative)
        if owner is None:
            return path
        entry = self.entry(*owner)
        listed = [f for f in (entry or {}).get("files", []) if f["path"] == relative]
        problems = self._problems({"files": listed}, verify=True)
        if problems:
            raise self._integrity_error(*owner, problems)
        return path

    def _integrity_error(
        self, stage: str, step: int | None, problems: list[str]
    ) -> RunIntegrityError:
        where = f"{stage} {step_key(step)}" if step is not None else stage
        if stage in ("train", "checkpoint"):
            todo = (
                f"Run `curvlab train --run {self.path}` again: it computes the "
                "step again from the latest intact checkpoint before it (or the "
                "initialisation)."
            )
        else:
            entry = self.relative(self._entry_path(stage, step))
            command = stage.split("_")[0]
            if command in ("spectrum", "overlap", "exhaustive"):
                todo = (
                    f"Run `curvlab {command} --run {self.path}` again with the "
                    "same options: it computes damaged steps again (or delete "
                    f"{entry} and run the command that wrote it)."
                )
            else:
                todo = f"Delete {entry} and run the command that wrote it again."
        return RunIntegrityError(
            f"{'; '.join(problems)} ({where} of {self.path}). {todo}",
            path=self.path / problems[0].split(" ")[0],
            stage=stage,
            step=step,
        )

    def entry_steps(self, stage: str) -> list[int]:
        """Return the steps that have a manifest entry, unchecked, sorted.

        Args:
            stage: The stage name.

        Returns:
            The steps (entries without a step are left out).
        """
        _check_stage(stage)
        folder = self.path / _MANIFEST / stage
        if not folder.is_dir():
            return []
        steps = []
        for child in folder.iterdir():
            match = _STEP_PATTERN.match(child.stem)
            if child.suffix == ".json" and match:
                steps.append(int(match.group(1)))
        return sorted(steps)

    def done_steps(self, stage: str) -> list[int]:
        """Return the steps at which ``stage`` is done (:meth:`is_done`), sorted.

        Args:
            stage: The stage name.

        Returns:
            The steps.
        """
        return [s for s in self.entry_steps(stage) if self.is_done(stage, s)]

    def manifest(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Gather all manifest entries.

        Returns:
            ``{stage: {step_key: entry}}``, finished or not (see :meth:`is_done`).
        """
        root = self.path / _MANIFEST
        out: dict[str, dict[str, dict[str, Any]]] = {}
        if not root.is_dir():
            return out
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            entries = {}
            for child in sorted(folder.glob("*.json")):
                if child.name.startswith(TEMP_PREFIX):
                    continue
                with contextlib.suppress(ValueError):  # damaged: not finished
                    entries[child.stem] = json.loads(child.read_bytes())
            out[folder.name] = entries
        return out

    # ------------------------------------------------------------ invocations
    def start_invocation(self, command: str, **info: Any) -> Invocation:
        """Record that a command starts on this folder.

        Args:
            command: The command name, e.g. ``"train"``.
            **info: JSON-serialisable fields (request, device, data_dir, ...).

        Returns:
            The invocation; call :meth:`Invocation.finish` at the end, which
            releases the lock.

        Raises:
            RunLockedError: If another process runs ``command`` on the folder:
                this takes the stage's exclusive lock (:meth:`lock`) until
                :meth:`Invocation.finish` or the end of the process.
        """
        _check_stage(command)
        lock = self.lock(command).acquire()
        try:
            now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            path = self.path / _INVOCATIONS / f"{now}_{command}_{os.getpid()}.json"
            data = {
                "command": command,
                "status": "running",
                "started": utc_now(),
                "pid": os.getpid(),
                **info,
            }
            return Invocation(path, data, lock)
        except BaseException:
            lock.release()
            raise

    def invocations(self, command: str | None = None) -> list[dict[str, Any]]:
        """Return the recorded invocations, oldest first.

        Args:
            command: Only this command's; ``None`` for all.

        Returns:
            The invocation records; files that are not valid JSON (damaged logs
            of past commands) are skipped.
        """
        folder = self.path / _INVOCATIONS
        if not folder.is_dir():
            return []
        out = []
        for child in sorted(folder.glob("*.json")):
            if child.name.startswith(TEMP_PREFIX):
                continue
            try:
                data = json.loads(child.read_bytes())
            except ValueError:  # a damaged log of a past command: not needed
                continue
            if not isinstance(data, dict):
                continue
            if command is None or data.get("command") == command:
                out.append(data)
        return out

    # ------------------------------------------------------------ training records
    def recorded_steps(self) -> list[int]:
        """Return the steps whose training record is complete, sorted."""
        return self.done_steps("train")

    def record_path(self, step: int) -> Path:
        """Return the record file of a step (it may not exist yet).

        Args:
            step: The step.

        Returns:
            ``RUN_DIR/train/step_XXXXXXXX.h5``.
        """
        return self.path_for("train", step, ".h5")

    def load_record(self, step: int, *, gradients: bool = True) -> Record:
        """Read the training record of a step.

        Args:
            step: A step from :meth:`recorded_steps`.
            gradients: Read the gradient too.

        Returns:
            The record, tensors on the CPU.

        Raises:
            MissingStepError: If the step is not recorded.
            RunIntegrityError: If the record is damaged (SHA-256, HDF5
                checksums); the message says how to record it again.
        """
        if self.entry("train", step) is None:
            entry = self._entry_path("train", step)
            if entry.is_file():  # present but not valid JSON
                raise self._integrity_error(
                    "train", step, [f"{self.relative(entry)} is damaged"]
                )
            raise MissingStepError(
                f"Step {step} is not recorded in {str(self.path)!r}. Recorded "
                f"steps: {self.recorded_steps()}."
            )
        self.verify("train", step)
        try:
            return read_record(self.record_path(step), gradients=gradients)
        except RunIntegrityError as error:
            raise self._integrity_error("train", step, [str(error)]) from None

    def load_parameters(
        self,
        step: int,
        *,
        device: str | torch.device | None = None,
        flat: bool = False,
    ) -> list[Tensor] | Tensor:
        """Return the parameters recorded at a step.

        Args:
            step: A step from :meth:`recorded_steps`.
            device: Where to put them (default: CPU).
            flat: Return one vector (parameters flattened and concatenated in
                model order) instead of a list.

        Returns:
            The parameters, in the order of ``model.parameters()``.

        Raises:
            MissingStepError: If the step is not recorded.
        """
        return _placed(self.load_record(step, gradients=False).parameters, device, flat)

    def load_gradients(
        self,
        step: int,
        *,
        device: str | torch.device | None = None,
        flat: bool = False,
    ) -> list[Tensor] | Tensor:
        """Return the gradient of the mean train loss recorded at a step.

        It is the gradient over the whole train split (not a mini-batch), with
        the model in eval mode.

        Args:
            step: A step from :meth:`recorded_steps`.
            device: Where to put it (default: CPU).
            flat: Return one vector instead of a list.

        Returns:
            The gradient, shaped like the parameters.

        Raises:
            MissingStepError: If the step is not recorded.
            ValueError: If the run did not record gradients.
        """
        record = self.load_record(step)
        if record.gradients is None:
            raise ValueError(
                f"The run in {str(self.path)!r} did not record gradients "
                "(record_gradients: false)."
            )
        return _placed(record.gradients, device, flat)

    def load_state_dict(self, step: int) -> dict[str, Tensor]:
        """Return the model's ``state_dict`` (parameters and buffers) at a step.

        Args:
            step: A step from :meth:`recorded_steps`.

        Returns:
            Tensors by name, on the CPU.

        Raises:
            MissingStepError: If the step is not recorded.
        """
        record = self.load_record(step, gradients=False)
        state = dict(zip(record.parameter_names, record.parameters, strict=True))
        state.update(record.buffers)
        return state

    def load_into(self, model: nn.Module, step: int) -> nn.Module:
        """Load the recorded parameters and buffers of a step into ``model``.

        Args:
            model: The problem's model (e.g. ``run.problem().model``).
            step: A step from :meth:`recorded_steps`.

        Returns:
            ``model``, changed in place.

        Raises:
            MissingStepError: If the step is not recorded.
        """
        model.load_state_dict(self.load_state_dict(step), strict=True)
        return model

    def load_model(
        self,
        step: int,
        *,
        device: str | torch.device = "cpu",
        data_dir: str | Path | None = None,
    ) -> nn.Module:
        """Rebuild the problem's model and load the record of a step into it.

        Builds the whole problem (:meth:`problem`); when you need the data as
        well, call :meth:`problem` once and :meth:`load_into` per step.

        Args:
            step: A step from :meth:`recorded_steps`.
            device: Device of the model.
            data_dir: Data folder of file-based problems (default: the one
                the training used).

        Returns:
            The model in eval mode.

        Raises:
            MissingStepError: If the step is not recorded.
        """
        if not self.is_done("train", step):
            self.load_record(step)  # raises MissingStepError
        model = self.problem(device=device, data_dir=data_dir).model
        return self.load_into(model, step).eval()

    def problem(
        self,
        *,
        device: str | torch.device = "cpu",
        data_dir: str | Path | None = None,
        batch_size: int | None = None,
    ):
        """Build the run's problem: fresh model, loss and the same data splits.

        Args:
            device: Device of model and data.
            data_dir: Data folder of file-based problems; default: the one the
                latest training invocation used.
            batch_size: Batch size of the splits; default: the config's
                ``eval_batch_size`` (the problem's default when unset).

        Returns:
            The :class:`~curvlab.problems.Problem`, model at its initialisation.
        """
        from curvlab import problems

        config = self.config
        if data_dir is None:
            data_dir = self.training_data_dir()
        return problems.get(
            config.problem,
            seed=config.seed,
            batch_size=config.eval_batch_size if batch_size is None else batch_size,
            num_samples=config.num_samples,
            dtype=config.torch_dtype,
            device=device,
            data_dir=data_dir,
        )

    def metrics(self) -> list[dict[str, Any]]:
        """Return the metrics of the recorded steps, one dict per step, in order.

        Returns:
            ``step``, ``train_loss``, ``train_accuracy``, ``test_loss``,
            ``test_accuracy`` (``None`` for regression), ``gradient_norm``,
            ``parameter_norm`` and timings, from the manifest.
        """
        rows = []
        for step in self.recorded_steps():
            entry = self.entry("train", step) or {}
            rows.append({"step": step, **entry.get("info", {})})
        return rows

    def write_metrics(self) -> Path:
        """Rewrite ``metrics.csv`` from the manifest.

        Returns:
            Its path.
        """
        return self.write_table(_METRICS, self.metrics())


def _check_stage(stage: str) -> None:
    if not isinstance(stage, str) or not _STAGE_PATTERN.match(stage):
        raise ValueError(
            "A stage name must start with a letter or digit and hold only letters, "
            f"digits, '_', '.' and '-'. Got {stage!r}."
        )


def _placed(
    tensors: list[Tensor], device: str | torch.device | None, flat: bool
) -> list[Tensor] | Tensor:
    if device is not None:
        tensors = [t.to(device) for t in tensors]
    if flat:
        return torch.cat([t.reshape(-1) for t in tensors])
    return tensors
