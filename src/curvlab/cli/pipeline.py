"""``curvlab pipeline``: the sketched-overlap paper's run script as one command.

A config file (``docs/configs/*.yaml``) holds a ``train`` section (the fields
of ``curvlab train --config``) and an ``overlap`` section (``splits`` and the
options of ``curvlab overlap``). The command trains and records the run, then for
each split and recorded step measures the SEIGH sketch (on Dask with
``--scheduler``), solves it out of core and takes the overlap from it, into
the same tables as ``curvlab overlap``; each stage is resumable, so running the
same command again after any failure finishes the job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from curvlab.cli import _options as opt
from curvlab.cli._cluster import CLUSTER, Cluster
from curvlab.cli._common import option_error

_OVERLAP_KEYS = ("num_outer", "num_inner", "samples_per_class", "num_random")
_OVERLAP_KEYS += ("test_matrix", "num_probes", "seed", "dtype", "splits")


def load_pipeline(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a pipeline config: its ``train`` and ``overlap`` sections.

    Args:
        path: The YAML file.

    Returns:
        The two sections.

    Raises:
        ValueError: If the file is not such a mapping, names other sections or
            unknown overlap keys (the message names the file and the keys).
        FileNotFoundError: If the file does not exist.
    """
    if not path.is_file():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(spec, dict) or set(spec) - {"train", "overlap"}:
        raise ValueError(
            f"{path} must be a mapping with the sections 'train' and 'overlap'."
            f" Got {sorted(spec) if isinstance(spec, dict) else type(spec).__name__}."
        )
    overlap = dict(spec.get("overlap") or {})
    unknown = sorted(set(overlap) - set(_OVERLAP_KEYS))
    if unknown:
        raise ValueError(
            f"{path}: unknown overlap keys {unknown}; known: {list(_OVERLAP_KEYS)}."
        )
    return dict(spec.get("train") or {}), overlap


@opt.grouped
def command(
    config: Annotated[Path, typer.Option(help="Pipeline config (YAML).")],
    out: Annotated[Path, typer.Option(help="Run folder; running again resumes.")],
    cluster: Cluster = CLUSTER,
    machine: opt.Machine = opt.MACHINE,
) -> None:
    """Train, then measure, solve and overlap every recorded step (the paper's run).

    Each split of the config's overlap section gets its sketches in
    OUT/sketch_<split>/ and its tables in OUT/overlap_<split>/; plot them with
    `curvlab plot overlap --run OUT`.
    """
    from curvlab.cli.overlap import DEFAULT_MAX_COLS, main_distributed
    from curvlab.cli.train import main as train
    from curvlab.experiments.overlap import OverlapSettings

    try:
        options, overlap = load_pipeline(config)
    except (ValueError, FileNotFoundError) as error:
        raise typer.Exit(option_error(error)) from None
    code = train(out, options, machine=machine)
    for split in overlap.pop("splits", ["train"]) if code == 0 else ():
        settings = OverlapSettings(split=split, method="distributed", **overlap)
        where = (out, None, False, machine, settings, DEFAULT_MAX_COLS)
        code = main_distributed(*where, cluster)
        if code:
            break
    raise typer.Exit(code)
