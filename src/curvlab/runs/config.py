"""The training configuration of a run: defaults, YAML files, command-line overrides.

A :class:`TrainConfig` says everything that decides the numbers a training run
produces: the problem, the optimizer and its settings, the batch size, the seed,
the dtype and which steps are recorded. Where the run executes (device, data
folder, CPU threads) is not part of it; the run folder records that per
invocation.

Values come in layers, later ones winning (:func:`resolve_config`):

1. the defaults of :class:`TrainConfig` (the learning rate by optimizer,
   :data:`DEFAULT_LR`);
2. the config stored in an existing run folder, so that running a command again
   with only ``--out RUN_DIR`` resumes it;
3. a YAML file (``--config FILE.yaml``), a flat mapping of the field names
   (``batch_size`` or ``batch-size``);
4. command-line options that were given.

Steps are written as a comma-separated list of integers and inclusive ranges
``start:stop:step``: ``"0:1000:100"`` is ``0, 100, ..., 1000``
(:func:`parse_steps`).

A run folder stores its config as ``config.yaml`` ending with the SHA-256 of
its lines (:func:`config_to_text`) and reads it back strictly
(:func:`config_from_text`): every field must be there, valid, and match the
checksum, so a damaged config is never completed with defaults. A config is
validated entirely when it is built, the optimizer's options included, so an
invalid one is never written.

Example:
    >>> config = TrainConfig(problem="digits_logreg", steps=100,
    ...                      record_steps=parse_steps("0:60:30"))
    >>> config.lr, config.record_steps
    (0.1, (0, 30, 60, 100))
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from curvlab.runs.errors import RunIntegrityError

__all__ = [
    "DEFAULT_LR",
    "DTYPES",
    "EXTENT_FIELDS",
    "MAX_STEPS_LISTED",
    "OPTIMIZERS",
    "OPTIMIZER_OPTIONS",
    "ConfigDamagedError",
    "ConfigError",
    "ConfigMismatchError",
    "TrainConfig",
    "config_differences",
    "config_from_text",
    "config_to_text",
    "load_yaml",
    "parse_steps",
    "resolve_config",
]

#: Optimizers a run can train with.
OPTIMIZERS = ("sgd", "adam", "adahesscale", "adahesscalegn", "adahessian")

#: Learning rate when none is given, by optimizer.
DEFAULT_LR = {
    "sgd": 0.1,
    "adam": 1e-3,
    "adahesscale": 1e-3,
    "adahesscalegn": 1e-3,
    "adahessian": 0.15,
}

#: Keyword arguments ``optimizer_options`` may pass to each optimizer.
OPTIMIZER_OPTIONS = {
    "sgd": ("momentum", "dampening", "weight_decay", "nesterov"),
    "adam": ("betas", "eps", "weight_decay", "amsgrad"),
    "adahesscale": ("betas", "eps", "weight_decay"),
    "adahesscalegn": ("betas", "eps", "weight_decay"),
    "adahessian": ("betas", "eps", "weight_decay", "hessian_power"),
}

#: Most steps a range of :func:`parse_steps` may list (a set of them is built).
MAX_STEPS_LISTED = 1_000_000

#: Floating dtypes a run can train in.
DTYPES = ("float32", "float64")

#: Fields that may differ between invocations on one run folder: they say how
#: far to train and what to keep, not what the training computes. The stored
#: config keeps the largest ``steps`` and the union of the ``record_steps``.
EXTENT_FIELDS = ("steps", "record_steps", "checkpoint_every")


class ConfigError(ValueError):
    """A configuration value, file or combination is invalid."""


class ConfigDamagedError(ConfigError, RunIntegrityError):
    """A run's stored config is damaged, cut short, edited or unparsable."""


class ConfigMismatchError(ConfigError):
    """A run folder holds a run made with another configuration.

    Attributes:
        differences: ``(field, stored, requested)`` for each field that differs.
    """

    def __init__(self, message: str, differences: list[tuple[str, Any, Any]]):
        super().__init__(message)
        self.differences = differences


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> object:
    """Read ints and numeric strings (YAML reads ``1e-3`` as a string) as floats."""
    if _is_int(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_int(value: object, label: str, minimum: int) -> None:
    if not _is_int(value):
        raise ConfigError(f"{label} must be an integer. Got {value!r}.")
    if value < minimum:
        raise ConfigError(f"{label} must be at least {minimum}. Got {value}.")


def _check_optional_int(value: object, label: str, minimum: int) -> None:
    if value is not None:
        _check_int(value, label, minimum)


def parse_steps(spec: str | int | Iterable[int | str]) -> tuple[int, ...]:
    """Parse a list of training steps.

    Args:
        spec: A comma-separated string of integers and inclusive ranges
            ``start:stop:step`` (``"0,10,100:1000:100"``), one integer, or an
            iterable of integers and such strings (as a YAML list gives).

    Returns:
        The sorted distinct steps.

    Raises:
        ConfigError: For an empty string, malformed items, negative steps, a
            range step below 1, an empty range (start after stop) or one of
            more than :data:`MAX_STEPS_LISTED` steps.

    Example:
        >>> parse_steps("0,5,10:30:10")
        (0, 5, 10, 20, 30)
    """
    if _is_int(spec):
        items: list[object] = [spec]
    elif isinstance(spec, str):
        items = [item.strip() for item in spec.split(",") if item.strip()]
        if not items:
            raise ConfigError(
                f"No steps given ({spec!r}). Give steps like 0,100 or 0:1000:100; "
                "leave the option out for the default."
            )
    else:
        items = list(spec)
    steps: set[int] = set()
    for item in items:
        if _is_int(item):
            steps.add(item)
            continue
        text = str(item).strip()
        try:
            parts = [int(part) for part in text.split(":")]
        except ValueError:
            raise ConfigError(
                f"Steps must be integers or ranges start:stop:step. Got {item!r}."
            ) from None
        if len(parts) == 1:
            steps.add(parts[0])
        elif len(parts) == 3:
            start, stop, every = parts
            if every < 1:
                raise ConfigError(f"The step of range {text!r} must be at least 1.")
            if start > stop:
                raise ConfigError(
                    f"The range {text!r} is empty: its start {start} lies after its "
                    f"stop {stop} (ranges are start:stop:step, stop included)."
                )
            count = len(range(start, stop + 1, every))
            if count > MAX_STEPS_LISTED:
                raise ConfigError(
                    f"The range {text!r} lists {count:,} steps; at most "
                    f"{MAX_STEPS_LISTED:,} can be listed. Use a larger step."
                )
            steps.update(range(start, stop + 1, every))
        else:
            raise ConfigError(
                f"A range of steps is start:stop:step (stop included). Got {text!r}."
            )
    if any(step < 0 for step in steps):
        raise ConfigError(f"Steps must be at least 0. Got {sorted(steps)}.")
    return tuple(sorted(steps))


@dataclass(frozen=True)
class TrainConfig:
    """What a training run computes.

    Attributes:
        problem: A name from :func:`curvlab.problems.names`.
        optimizer: One of :data:`OPTIMIZERS`: ``torch.optim.SGD`` (plain SGD
            unless ``optimizer_options`` sets a momentum), ``torch.optim.Adam``,
            :class:`curvlab.optim.AdaHesScale` / ``AdaHesScaleGN``, or
            :class:`curvlab.optim.AdaHessian`.
        lr: Learning rate, constant. ``None`` picks :data:`DEFAULT_LR`.
        steps: Number of optimizer steps.
        batch_size: Train samples per step, drawn without replacement from a
            permutation of the train split redrawn every epoch.
        record_steps: Steps at which parameters, gradient and metrics are
            recorded (before that step's update; step 0 is the initial model).
            ``steps`` is always added. ``None`` means ``(0, steps)``.
        seed: Seeds the model initialisation, the train/test split of bundled
            problems, the mini-batch order and PyTorch's global generator
            during training (dropout).
        dtype: ``"float32"`` or ``"float64"``.
        num_samples: Train on a class-balanced subset of this many train samples
            (``curvlab.problems.get(num_samples=...)``); ``None`` uses all.
        eval_batch_size: Batch size of the evaluation and gradient passes over
            whole splits; ``None`` is the problem's default (one batch for
            bundled problems).
        record_gradients: Also record the gradient of the mean train loss over
            the whole train split (not a mini-batch gradient) at each recorded
            step.
        checkpoint_every: Also save a resumable checkpoint every this many
            steps (checkpoints are always saved at the recorded steps).
        optimizer_options: Further keyword arguments of the optimizer, see
            :data:`OPTIMIZER_OPTIONS` (``momentum``, ``weight_decay``, ``betas``,
            ...).

    Raises:
        ConfigError: If a value is invalid.
    """

    problem: str
    optimizer: str = "sgd"
    lr: float | None = None
    steps: int = 1000
    batch_size: int = 128
    record_steps: tuple[int, ...] | None = None
    seed: int = 0
    dtype: str = "float32"
    num_samples: int | None = None
    eval_batch_size: int | None = None
    record_gradients: bool = True
    checkpoint_every: int | None = None
    optimizer_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from curvlab import problems

        if not isinstance(self.problem, str) or self.problem not in problems.names():
            raise ConfigError(
                f"Unknown problem {self.problem!r}. Available: "
                f"{', '.join(problems.names())}."
            )
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}. "
                f"Got {self.optimizer!r}."
            )
        lr = DEFAULT_LR[self.optimizer] if self.lr is None else _number(self.lr)
        if not isinstance(lr, float) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"lr must be a positive number. Got {self.lr!r}.")
        object.__setattr__(self, "lr", lr)
        _check_int(self.steps, "steps", 0)
        _check_int(self.batch_size, "batch_size", 1)
        _check_int(self.seed, "seed", 0)
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"dtype must be one of {', '.join(DTYPES)}. Got {self.dtype!r}."
            )
        _check_optional_int(self.num_samples, "num_samples", 1)
        _check_optional_int(self.eval_batch_size, "eval_batch_size", 1)
        _check_optional_int(self.checkpoint_every, "checkpoint_every", 1)
        if not isinstance(self.record_gradients, bool):
            raise ConfigError(
                "record_gradients must be true or false. "
                f"Got {self.record_gradients!r}."
            )
        record = (0,) if self.record_steps is None else parse_steps(self.record_steps)
        late = [step for step in record if step > self.steps]
        if late:
            raise ConfigError(
                f"record_steps must lie in [0, steps={self.steps}]. Got {late} beyond."
            )
        object.__setattr__(self, "record_steps", tuple(sorted({*record, self.steps})))
        object.__setattr__(
            self, "optimizer_options", self._checked_options(self.optimizer_options)
        )
        _check_optimizer_accepts(self.optimizer, self.optimizer_kwargs())

    def _checked_options(self, options: object) -> dict[str, Any]:
        if options is None:
            return {}
        if not isinstance(options, Mapping):
            raise ConfigError(
                f"optimizer_options must be a mapping. Got {type(options).__name__}."
            )
        allowed = OPTIMIZER_OPTIONS[self.optimizer]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(
                f"optimizer_options {unknown} do not apply to {self.optimizer}; it "
                f"takes {', '.join(allowed)}."
            )
        checked = {}
        for key, value in options.items():
            if isinstance(value, (tuple, list)):
                value = [_number(v) for v in value]
            elif key not in ("nesterov", "amsgrad"):
                value = _number(value)
            checked[key] = value
        return dict(sorted(checked.items()))

    @property
    def torch_dtype(self):
        """The dtype as a ``torch.dtype``."""
        import torch

        return getattr(torch, self.dtype)

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the optimizer: ``lr`` and ``optimizer_options``.

        Returns:
            The arguments, lists turned into tuples (``betas``).
        """
        kwargs = {
            key: tuple(value) if isinstance(value, list) else value
            for key, value in self.optimizer_options.items()
        }
        return {"lr": self.lr, **kwargs}

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain YAML/JSON values, in field order."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = {
                    k: list(v) if isinstance(v, tuple) else v for k, v in value.items()
                }
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a mapping of field names (``-`` read as ``_``).

        Args:
            values: Field values; missing fields take their defaults.

        Returns:
            The config.

        Raises:
            ConfigError: For unknown keys, a missing ``problem`` or bad values.
        """
        normalised = _normalise_keys(values, "config")
        if "problem" not in normalised or normalised["problem"] is None:
            raise ConfigError("The config needs a problem (--problem NAME).")
        if normalised.get("record_steps") is not None:
            normalised["record_steps"] = parse_steps(normalised["record_steps"])
        return cls(**normalised)

    def extended_by(self, other: TrainConfig, *, where: str = "") -> TrainConfig:
        """Return the config of a run folder after ``other`` also ran in it.

        Args:
            other: A config that agrees with this one outside
                :data:`EXTENT_FIELDS` (see :meth:`check_compatible`).
            where: The run folder, for the message.

        Returns:
            This config with the larger ``steps``, the union of the
            ``record_steps`` and ``other``'s ``checkpoint_every``.

        Raises:
            ConfigMismatchError: If the configs are not compatible.
        """
        self.check_compatible(other, where=where)
        values = self.to_dict()
        values["steps"] = max(self.steps, other.steps)
        values["record_steps"] = sorted({*self.record_steps, *other.record_steps})
        values["checkpoint_every"] = other.checkpoint_every
        return TrainConfig.from_dict(values)

    def check_compatible(self, other: TrainConfig, *, where: str = "") -> None:
        """Raise unless ``other`` computes the same training as this config.

        Only :data:`EXTENT_FIELDS` may differ.

        Args:
            other: The requested config.
            where: The run folder, for the message.

        Raises:
            ConfigMismatchError: Naming each field that differs.
        """
        differences = config_differences(
            self.to_dict(), other.to_dict(), ignore=EXTENT_FIELDS
        )
        if differences:
            listed = "; ".join(
                f"{name}: stored {old!r}, requested {new!r}"
                for name, old, new in differences
            )
            place = f" in {where}" if where else ""
            raise ConfigMismatchError(
                f"The run{place} was made with another configuration ({listed}). "
                "Use the stored values, another output folder, or --force to "
                "delete the run and start over.",
                differences,
            )


def config_differences(
    stored: Mapping[str, Any],
    requested: Mapping[str, Any],
    *,
    ignore: Iterable[str] = (),
) -> list[tuple[str, Any, Any]]:
    """List the keys whose values differ between two config mappings.

    Args:
        stored: One mapping.
        requested: The other.
        ignore: Keys not compared.

    Returns:
        ``(key, stored value, requested value)`` in sorted key order; a missing
        key reads as ``None``.
    """
    skip = set(ignore)
    keys = sorted((set(stored) | set(requested)) - skip)
    return [
        (key, stored.get(key), requested.get(key))
        for key in keys
        if stored.get(key) != requested.get(key)
    ]


def _normalise_keys(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"The {source} must be a mapping of option names to values. "
            f"Got {type(values).__name__}."
        )
    valid = [f.name for f in fields(TrainConfig)]
    out = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"Unknown option {key!r} in the {source}.{hint} Valid options: "
                f"{', '.join(valid)}."
            )
        out[name] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file: a flat mapping of :class:`TrainConfig` fields.

    Args:
        path: The file.

    Returns:
        The values, keys normalised (``batch-size`` -> ``batch_size``).

    Raises:
        FileNotFoundError: If the file does not exist.
        ConfigError: If it is not valid YAML, not a mapping, or has unknown keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(
            f"Config file {str(path)!r} is not valid YAML: {error}"
        ) from None
    if values is None:
        return {}
    return _normalise_keys(values, f"config file {str(path)!r}")


def resolve_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    file: str | Path | None = None,
    stored: TrainConfig | None = None,
) -> TrainConfig:
    """Merge stored config, YAML file and overrides into the requested config.

    Later layers win: ``stored`` (the config of an existing run folder), then
    ``file``, then ``overrides``. ``optimizer_options`` merge key by key. When
    neither the file nor the overrides give ``record_steps``, the stored ones up
    to ``steps`` are kept (so ``--steps`` alone extends or shortens a run and
    keeps its recording schedule); without a stored config that is ``[0, steps]``.
    ``lr`` is inherited only together with the optimizer it was set for.

    Args:
        overrides: Values given on the command line; ``None`` values count as
            not given.
        file: A YAML file (:func:`load_yaml`).
        stored: The config of the run folder being resumed, if any.

    Returns:
        The merged, validated config.

    Raises:
        ConfigError: For unknown keys, a missing problem or invalid values.
        FileNotFoundError: If ``file`` does not exist.

    Example:
        >>> resolve_config({"problem": "digits_mlp", "steps": 50, "lr": None}).lr
        0.1
    """
    layers = []
    if file is not None:
        layers.append(load_yaml(file))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    layers.append(_normalise_keys(given, "options"))

    values: dict[str, Any] = {}
    if stored is not None:
        values = stored.to_dict()
        del values["record_steps"]
    for layer in layers:
        for key, value in layer.items():
            if key == "optimizer_options":
                merged = dict(values.get("optimizer_options") or {})
                merged.update(value or {})
                values[key] = merged
            else:
                values[key] = value
    if stored is not None:
        if values.get("optimizer", "sgd") != stored.optimizer and not any(
            "lr" in layer for layer in layers
        ):
            values.pop("lr", None)  # the stored lr was for another optimizer
        if not any("record_steps" in layer for layer in layers):
            steps = values.get("steps", stored.steps)
            if _is_int(steps):
                values["record_steps"] = [s for s in stored.record_steps if s <= steps]
    return TrainConfig.from_dict(values)


def _check_optimizer_accepts(optimizer: str, kwargs: Mapping[str, Any]) -> None:
    """Build the optimizer on a dummy parameter: refuse options it rejects."""
    import torch

    if optimizer == "sgd":
        kind: Any = torch.optim.SGD
    elif optimizer == "adam":
        kind = torch.optim.Adam
    else:
        from curvlab.optim import AdaHesScale, AdaHesScaleGN

        kind = AdaHesScale if optimizer == "adahesscale" else AdaHesScaleGN
    try:
        kind([torch.nn.Parameter(torch.zeros(1))], **kwargs)
    except (TypeError, ValueError, IndexError) as error:
        raise ConfigError(
            f"{kind.__name__} rejects the options {dict(kwargs)}: {error}"
        ) from None


_CHECKSUM_LINE = re.compile(r"^# sha256: ([0-9a-f]{64})\s*$")
_CONFIG_HEADER = (
    "# curvlab run config. The last line is the SHA-256 of the lines above it;\n"
    "# an edited or damaged file is refused. Extend a run with curvlab train.\n"
)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def config_to_text(config: TrainConfig) -> str:
    """Return the text of a run's ``config.yaml``: YAML ending with its checksum.

    Args:
        config: The config.

    Returns:
        A header comment, the fields in order, and ``# sha256: <hex>`` of all
        lines above it.

    Example:
        >>> text = config_to_text(TrainConfig(problem="digits_logreg", steps=5))
        >>> config_from_text(text).steps
        5
    """
    body = _CONFIG_HEADER + yaml.safe_dump(config.to_dict(), sort_keys=False)
    return f"{body}# sha256: {_sha256(body)}\n"


def config_from_text(
    text: str | bytes, *, source: str = "config.yaml", require_checksum: bool = True
) -> TrainConfig:
    """Read a run's stored config strictly (see :func:`config_to_text`).

    Every field must be present (a stored config is never completed with
    defaults) and valid, and the checksum line must match.

    Args:
        text: The file's content.
        source: The file, for messages.
        require_checksum: Refuse a text without a checksum line (configs of
            run folders of format 1 have none).

    Returns:
        The config.

    Raises:
        ConfigDamagedError: Naming the file and what is wrong: unreadable bytes,
            invalid YAML (with line and column), no mapping, the missing keys, a
            bad value, or a missing or wrong checksum.
    """
    fix = (
        "A run's config is never completed with defaults: restore the file from "
        "a copy, or train again in a new folder (or with --force)."
    )
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError as error:
            raise ConfigDamagedError(
                f"{source} is damaged: byte {error.start} is not UTF-8 text. {fix}",
                path=source,
            ) from None
    lines = text.splitlines(keepends=True)
    while lines and not lines[-1].strip():
        lines.pop()
    match = _CHECKSUM_LINE.match(lines[-1]) if lines else None
    body = "".join(lines[:-1]) if match else text
    try:
        values = yaml.safe_load(body)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigDamagedError(
            f"{source} is damaged: it is not valid YAML ({where}{problem}). {fix}",
            path=source,
        ) from None
    if not isinstance(values, Mapping):
        raise ConfigDamagedError(
            f"{source} is damaged: it holds {type(values).__name__}, not a mapping "
            f"of the config's fields. {fix}",
            path=source,
        )
    values = _normalise_keys(values, source)
    missing = [f.name for f in fields(TrainConfig) if f.name not in values]
    if missing:
        raise ConfigDamagedError(
            f"{source} is damaged or cut short: it lacks the key"
            f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}. {fix}",
            path=source,
        )
    if match is None and require_checksum:
        raise ConfigDamagedError(
            f"{source} is damaged or was edited: its last line, the SHA-256 of "
            f"the lines above it, is missing. {fix}",
            path=source,
        )
    if match is not None and match.group(1) != _sha256(body):
        error = ConfigDamagedError(
            f"{source} is damaged or was edited: its content no longer matches "
            f"the SHA-256 on its last line. {fix}",
            path=source,
        )
        error.values = values  # for naming the changed keys
        raise error
    try:
        return TrainConfig.from_dict(values)
    except ConfigError as error:
        raise ConfigDamagedError(
            f"{source} holds an invalid value: {error} {fix}", path=source
        ) from None
