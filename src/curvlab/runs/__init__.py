"""Run folders: reproducible, resumable experiments recorded on disk.

A run folder holds one training run and everything later commands compute on
it, each file written atomically and listed in a manifest once complete, so an
interrupted command can be run again and skips what is finished.

- :class:`RunFolder`: create/open, config, metadata, manifest, atomic writes,
  and the recorded parameters, gradients and models
  (:mod:`curvlab.runs.folder`, which documents the layout).
- :class:`TrainConfig`, :func:`resolve_config`, :func:`parse_steps`: the
  training configuration from defaults, YAML and command line
  (:mod:`curvlab.runs.config`).
- :mod:`curvlab.runs.records`: the HDF5 record and checkpoint files.
- :mod:`curvlab.runs.errors`: :class:`RunIntegrityError` (a damaged file),
  :class:`RunLockedError` (another process writes the stage) and
  :func:`disk_error_message` (one line for a full or read-only disk).
- :class:`StageLock`: one writer per run folder and stage (:mod:`curvlab.runs.lock`).

Training itself is :func:`curvlab.experiments.training.train`.
"""

from curvlab.runs.config import (
    ConfigDamagedError,
    ConfigError,
    ConfigMismatchError,
    TrainConfig,
    load_yaml,
    parse_steps,
    resolve_config,
)
from curvlab.runs.errors import RunIntegrityError, RunLockedError, disk_error_message
from curvlab.runs.folder import (
    Invocation,
    MissingStepError,
    RunFolder,
    atomic_path,
    file_checksum,
    step_key,
)
from curvlab.runs.lock import StageLock
from curvlab.runs.records import Record, read_record, write_record

__all__ = [
    "ConfigDamagedError",
    "ConfigError",
    "ConfigMismatchError",
    "Invocation",
    "MissingStepError",
    "Record",
    "RunFolder",
    "RunIntegrityError",
    "RunLockedError",
    "StageLock",
    "TrainConfig",
    "atomic_path",
    "disk_error_message",
    "file_checksum",
    "load_yaml",
    "parse_steps",
    "read_record",
    "resolve_config",
    "step_key",
    "write_record",
]
