r"""Fill a measurement store, in this process or on a Dask cluster.

:func:`measure` splits the missing measurements into blocks of indices and runs
one task per block. A task builds nothing itself: the operator comes from
``make_operator``, called once per worker process by a Dask ``WorkerPlugin``
(again on a restarted worker, never once per task). A task skips the
measurements already stored, takes the products of the others, computes the
projections the solve needs while each column is in memory, and commits every
column atomically (:mod:`curvlab.store._format`). Tasks are therefore
idempotent: Dask may run a block twice (a worker killed before its result was
gathered, measured on ``LocalCluster``: ``retries`` does not cover worker
deaths) and the store ends the same.

Facts this follows (issue 12, measured on a 2-process ``LocalCluster``):
``client.submit`` costs 2-3 ms per task; a worker killed with ``SIGKILL`` is
restarted by its nanny and only that block's missing columns are recomputed; a
task that kills every worker it lands on ends in ``KilledWorker`` after
``distributed.scheduler.allowed-failures`` deaths, reported here as one
:class:`MeasurementError` naming the measurement indices.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from curvlab.linalg._operator import CountedOperator
from curvlab.linalg.sketch import measure as measure_columns
from curvlab.store import _format
from curvlab.store._format import ColumnError
from curvlab.store._progress import progress_bar
from curvlab.store.layout import MeasurementStore, Problem, open_cached

__all__ = ["MeasureResult", "MeasurementError", "measure"]


class MeasurementError(RuntimeError):
    """Measurement tasks failed; the message names their measurement indices."""


class MeasureResult(NamedTuple):
    """What one call of :func:`measure` did.

    Attributes:
        measured: Sketch indices this call took products for, sorted.
        probes_measured: Probe indices this call took products for, sorted.
        missing: Sketch indices still missing afterwards.
        probes_missing: Probe indices still missing afterwards.
        rejected: Bad files found before measuring (deleted and re-measured).
    """

    measured: list[int]
    probes_measured: list[int]
    missing: list[int]
    probes_missing: list[int]
    rejected: list[Problem]


# ---------------------------------------------------------------- one block
def _is_done(store: MeasurementStore, kind: str, index: int) -> bool:
    try:
        _format.check(
            store.file(kind, index), store.expected(kind, index), checksums=False
        )
    except (ColumnError, FileNotFoundError):
        return False
    return True


#: Keep the dense probes in memory per process up to this size (bytes).
PROBE_CACHE_BYTES = 1 << 29
_PROBES: dict[str, torch.Tensor] = {}


def _probe_transpose_matmul(store: MeasurementStore, Y: torch.Tensor) -> torch.Tensor:
    r""":math:`\Omega_p^\top Y`; the probes are cached per process when small.

    Drawing the ``p`` Gaussian columns costs ``p`` long random streams per
    task; below :data:`PROBE_CACHE_BYTES` (``D p`` entries of ``Y``'s dtype)
    they are drawn once per process and reused (the same probes either way).
    """
    p = store.num_probes
    if store.dim * p * Y.dtype.itemsize > PROBE_CACHE_BYTES:
        return store.probe_matrix().transpose_matmul(Y)[:p]
    key = f"{store.plan_hash}-{Y.dtype}-{Y.device}"
    if key not in _PROBES:
        _PROBES.clear()
        _PROBES[key] = store.probe_matrix().to_dense()[:, :p].to(Y)
    return _PROBES[key].mT @ Y


def _projections(store: MeasurementStore, kind: str, indices, Y: torch.Tensor):
    """Per column: the float64 projections the solve needs (module docstring)."""
    plan = store.plan
    out: list[dict[str, np.ndarray]] = [{} for _ in indices]
    if kind != "sketch":
        return out
    phi = plan.inner_sketch(Y).to(torch.float64).cpu().numpy()
    outer = [j for j, i in enumerate(indices) if i < plan.num_outer]
    psi = probe = None
    if outer:
        Yk = Y[:, outer]
        psi = plan.right.transpose_matmul(Yk).to(torch.float64).cpu().numpy()
        if store.num_probes:
            probe = _probe_transpose_matmul(store, Yk).to(torch.float64)
            probe = probe.cpu().numpy()
    for j in range(len(indices)):
        out[j]["phi"] = phi[:, j]
    for at, j in enumerate(outer):
        out[j]["psi"] = psi[:, at]
        if probe is not None:
            out[j]["probe"] = probe[:, at]
    return out


def measure_block(
    store: MeasurementStore,
    kind: str,
    indices: Iterable[int],
    get_operator: Callable[[], Any],
) -> list[int]:
    """Measure and commit the stored-not-yet measurements of one block.

    Args:
        store: The store.
        kind: ``"sketch"`` or ``"probe"``.
        indices: The block's measurement indices.
        get_operator: Returns the operator (called only if something is missing).

    Returns:
        The indices measured (those already stored are skipped).
    """
    todo = [int(i) for i in indices if not _is_done(store, kind, int(i))]
    if not todo:
        return []
    op = get_operator()
    plan = store.plan
    if kind == "sketch":
        Y = measure_columns(op, plan, todo)
    else:
        counted = CountedOperator(op, symmetric=True, what="op")
        probes = store.probe_matrix().columns(todo).to(counted.device)
        Y = counted.apply(probes, step=f"a-posteriori probes {todo[0]}..{todo[-1]}")
    aux = _projections(store, kind, todo, Y)
    columns = Y.detach().to(store.dtype).mT.contiguous().cpu().numpy()
    for j, index in enumerate(todo):
        meta = {key: store.expected(kind, index)[key] for key in ("plan_hash", "seed")}
        meta.update(kind=kind, index=index)
        _format.write(store.file(kind, index), columns[j], aux[j], meta)
    return todo


# ------------------------------------------------------------ worker plugin
try:  # distributed is a core dependency; keep the import error readable
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover
    WorkerPlugin = object  # type: ignore[assignment,misc]


class OperatorPlugin(WorkerPlugin):
    """Builds the operator once per worker process, on first use.

    Registered under a unique name by :func:`measure`; a restarted worker gets
    the plugin again and builds the operator again.

    Attributes:
        name: The plugin's name on the workers.
        make_operator: The zero-argument factory.
    """

    def __init__(self, make_operator: Callable[[], Any], name: str):
        """Keep the factory (nothing is built on the client).

        Args:
            make_operator: Picklable zero-argument callable returning the operator.
            name: Unique name of the plugin.
        """
        self.make_operator = make_operator
        self.name = name
        self._op = None
        self._lock = None

    def __getstate__(self):
        return {"make_operator": self.make_operator, "name": self.name}

    def __setstate__(self, state):
        self.__init__(state["make_operator"], state["name"])

    def setup(self, worker=None):
        """Reset the cache on a (re)started worker.

        Args:
            worker: The Dask worker.
        """
        self._op = None
        self._lock = threading.Lock()

    def teardown(self, worker=None):
        """Drop the operator.

        Args:
            worker: The Dask worker.
        """
        self._op = None

    def operator(self):
        """The operator, built on first use in this process.

        Returns:
            ``make_operator()``'s result.
        """
        if self._lock is None:
            self._lock = threading.Lock()
        with self._lock:
            if self._op is None:
                self._op = self.make_operator()
        return self._op


_OPENED: dict[tuple[str, str], MeasurementStore] = {}


def _dask_task(root: str, plan_hash: str, kind: str, indices: list[int], name: str):
    from distributed import get_worker

    store = open_cached(_OPENED, root, plan_hash, "job")
    return measure_block(store, kind, indices, get_worker().plugins[name].operator)


# ------------------------------------------------------------------ driver
def _check_indices(indices, count: int) -> list[int]:
    values = sorted({int(i) for i in indices})
    bad = [i for i in values if not 0 <= i < count]
    if bad:
        raise ValueError(f"indices must lie in [0, {count}). Got {bad[:5]}.")
    return values


def _blocks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def _gpu_resources(client) -> dict[str, int] | None:
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers):
        return {"GPU": 1}
    return None


def _describe(indices: list[int]) -> str:
    runs, start = [], None
    for a, b in zip(indices, [*indices[1:], None], strict=True):
        start = a if start is None else start
        if b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}-{a}")
            start = None
    return ", ".join(runs)


def _failure(
    failed: list[tuple[str, list[int], BaseException]], missing: dict[str, set[int]]
) -> MeasurementError | None:
    """One error naming the failed measurements still missing (``None``: none)."""
    failed = [
        (kind, [i for i in block if i in missing[kind]], error)
        for kind, block, error in failed
    ]
    failed = [f for f in failed if f[1]]
    if not failed:
        return None
    parts = []
    for kind in ("sketch", "probe"):
        idx = sorted(i for k, block, _ in failed if k == kind for i in block)
        if idx:
            what = "sketch measurements" if kind == "sketch" else "a-posteriori probes"
            parts.append(f"{what} {_describe(idx)}")
    errors = {f"{type(e).__name__}: {e}" for _, _, e in failed}
    killed = any(type(e).__name__ == "KilledWorker" for _, _, e in failed)
    hint = (
        " The tasks killed every worker that ran them (out of memory, a crash "
        "in the operator, or a device fault): run one of these indices in "
        "process (client=None) to see the error."
        if killed
        else ""
    )
    first = sorted(errors)[0]
    more = f" (and {len(errors) - 1} other errors)" if len(errors) > 1 else ""
    return MeasurementError(
        f"Measuring failed for {'; '.join(parts)}: {first}{more}.{hint} The other "
        "measurements are stored; rerun measure to retry the missing ones."
    )


def measure(
    store: MeasurementStore,
    make_operator: Callable[[], Any],
    *,
    client=None,
    indices: Iterable[int] | None = None,
    block_size: int | None = None,
    progress: bool = True,
    probes: bool | None = None,
    check: bool = True,
) -> MeasureResult:
    r"""Take the missing measurements of a store, in process or on Dask.

    Each measurement is :math:`y_i = A\psi_i` (sketch) or :math:`A\omega_j`
    (a-posteriori probe), stored with its projections and committed atomically.
    Measurements already stored are skipped, bad files (:meth:`verify
    <curvlab.store.MeasurementStore.verify>`) deleted and measured again, so
    rerunning the same call after any failure (a killed worker, driver or job)
    finishes the job and computes exactly what is missing.

    Args:
        store: The store (:func:`curvlab.store.create`).
        make_operator: Picklable zero-argument callable returning the operator
            (shape ``(D, D)``, the plan's dtype, symmetric); called at most once
            per process.
        client: A ``distributed.Client``; ``None`` runs in this process. Tasks
            ask for ``resources={"GPU": 1}`` when a worker offers GPUs.
        indices: Sketch indices in ``[0, s)`` to measure (default: all).
        block_size: Measurements per task (default: up to 16, and at least
            four tasks per worker thread when there are enough).
        progress: Show a progress bar, or a callable ``advance(n)`` told of
            every ``n`` measurements taken (the caller's own progress).
        probes: Also measure the a-posteriori probes (default: when ``indices``
            is ``None``).
        check: Verify the checksums of stored files first (reads them); with
            ``False`` only their records are checked.

    Returns:
        What was measured and what is still missing.

    Raises:
        MeasurementError: If tasks failed or killed their workers and left
            measurements missing (names those indices; the other measurements
            are kept). A task Dask gave up on whose columns were stored anyway
            (its worker died after committing them) is no error.
        ValueError: If an index is out of range.
        TypeError: If ``block_size`` is not an int.
    """
    s = store.count("sketch")
    wanted = list(range(s)) if indices is None else _check_indices(indices, s)
    with_probes = indices is None if probes is None else probes
    done, problems = store._scan(checksums=check)
    rejected = []
    for problem in problems:
        path = Path(problem.file)
        for kind in ("sketch", "probe"):
            folder = store.file(kind, 0).parent
            if path.parent == folder and path.stem.isdigit():  # noqa: SIM102
                if int(path.stem) < store.count(kind):
                    path.unlink(missing_ok=True)
                    rejected.append(problem)
    done_sketch = set(done["sketch"])
    jobs = {"sketch": [i for i in wanted if i not in done_sketch], "probe": []}
    if with_probes:
        done_probe = set(done["probe"])
        jobs["probe"] = [j for j in range(store.num_probes) if j not in done_probe]
    total = len(jobs["sketch"]) + len(jobs["probe"])
    threads = 1
    if client is not None:
        threads = max(1, sum(client.nthreads().values()))
    if block_size is None:
        block_size = max(1, min(16, math.ceil(total / (4 * threads)) if total else 1))
    elif isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size must be an int. Got {type(block_size).__name__}.")
    elif block_size < 1:
        raise ValueError(f"block_size must be at least 1. Got {block_size}.")
    blocks = [(k, b) for k in ("sketch", "probe") for b in _blocks(jobs[k], block_size)]
    measured: dict[str, list[int]] = {"sketch": [], "probe": []}
    failed: list[tuple[str, list[int], BaseException]] = []
    with progress_bar(total, "measure", progress if total > 0 else False) as advance:
        if client is None:
            plugin = OperatorPlugin(make_operator, "local")
            for kind, block in blocks:
                measured[kind] += measure_block(store, kind, block, plugin.operator)
                advance(len(block))
        elif blocks:
            _run_on_dask(
                client, store, make_operator, blocks, measured, failed, advance
            )
    status = store.status()
    missing = {"sketch": set(status.missing), "probe": set(status.probes_missing)}
    error = _failure(failed, missing) if failed else None
    if error is not None:
        raise error
    return MeasureResult(
        measured=sorted(measured["sketch"]),
        probes_measured=sorted(measured["probe"]),
        missing=status.missing,
        probes_missing=status.probes_missing,
        rejected=rejected,
    )


def _register(client, plugin, name: str, attempts: int = 3) -> None:
    """Register the plugin, again if a worker dies during the broadcast.

    The scheduler keeps the plugin for workers that join later (a restarted
    one gets it too); a worker that is killed while the plugin is sent to it
    breaks the broadcast with a ``CommClosedError`` (an ``OSError``).
    """
    for attempt in range(attempts):
        try:
            client.register_plugin(plugin, name=name)
            return
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(1.0)


def _run_on_dask(client, store, make_operator, blocks, measured, failed, advance):
    from distributed import as_completed

    token = uuid.uuid4().hex[:12]
    name = f"curvlab-store-measure-{token}"
    _register(client, OperatorPlugin(make_operator, name), name)
    try:
        resources = _gpu_resources(client)
        futures, where = [], {}
        root = str(store.path.resolve())
        for number, (kind, block) in enumerate(blocks):
            future = client.submit(
                _dask_task,
                root,
                store.plan_hash,
                kind,
                block,
                name,
                key=f"curvlab-measure-{token}-{kind}-{number}",
                pure=False,
                resources=resources,
            )
            futures.append(future)
            where[future.key] = (kind, block)
        for future in as_completed(futures):
            kind, block = where[future.key]
            if future.status == "finished":
                measured[kind] += future.result()
            else:
                failed.append((kind, block, future.exception()))
            advance(len(block))
    finally:
        client.unregister_worker_plugin(name)
