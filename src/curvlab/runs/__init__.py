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

Training itself is :func:`curvlab.experiments.training.train`.
"""

from curvlab.runs.config import (
    ConfigError,
    ConfigMismatchError,
    TrainConfig,
    load_yaml,
    parse_steps,
    resolve_config,
)
from curvlab.runs.folder import (
    Invocation,
    MissingStepError,
    RunFolder,
    atomic_path,
    step_key,
)
from curvlab.runs.records import Record, read_record, write_record

__all__ = [
    "ConfigError",
    "ConfigMismatchError",
    "Invocation",
    "MissingStepError",
    "Record",
    "RunFolder",
    "TrainConfig",
    "atomic_path",
    "load_yaml",
    "parse_steps",
    "read_record",
    "resolve_config",
    "step_key",
    "write_record",
]
