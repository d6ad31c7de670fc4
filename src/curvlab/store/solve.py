r"""The out-of-core SEIGH solve of a measurement store.

With the outer sketch :math:`Y = [y_0, \dots, y_{k-1}]` on disk and the stored
projections :math:`Z = \Phi^\top Y_{\mathrm{in}}` (``s x s``),
:math:`\Psi^\top Y` (``s x k``) and :math:`\Omega_p^\top Y` (``p x k``):

1. **QR** (:mod:`curvlab.store.cholqr`): :math:`Y = QR` by CholeskyQR2 over row
   blocks (float64 Grams; shifted first pass when ill-conditioned), in this
   process or as a Dask map-reduce; :math:`Q` is not stored.
2. **Core** (in memory): :math:`\Phi^\top Q = (\Phi^\top Y) R^{-1}`,
   :math:`\Psi^\top Q = (\Psi^\top Y) R^{-1}`,
   :math:`C = (\Phi^\top Q)^+ Z ((\Psi^\top Q)^+)^\top`,
   :math:`\tfrac12(C + C^\top) = U \Lambda U^\top`, sorted by :math:`|\lambda|`
   (as :func:`curvlab.linalg.solve`).
3. **Eigenvectors** (one more pass): :math:`W_b = Y_b (R^{-1} U)` written to disk
   row block by row block (``R^{-1}`` factor by factor, or merged with ``U``
   into one product for a float32 result of a well-conditioned sketch); in the
   same pass the a-posteriori residuals
   :math:`\|(A\omega_j)_b - W_b \Lambda W^\top \omega_j\|^2` are summed, with
   :math:`W^\top\omega_j = U^\top R^{-\top} (Y^\top \omega_j)` from the stored
   projections.

Memory: one row block (``block_rows x k`` float64, a few copies) plus
``O(s^2)``; the ``D x k`` matrices never reside in memory.

A known limit: :math:`\Phi^\top Q` from :math:`(\Phi^\top Y) R^{-1}` loses
about :math:`u\,\kappa(R)` relative accuracy, so a numerically rank-deficient
outer sketch (:math:`\kappa(Y) \gtrsim 10^{8}`, the operator's rank below
``k``) gives a less accurate core than the in-memory solve, which applies
:math:`\Phi` to :math:`Q` itself. ``result.qr.gram_condition`` reports
:math:`\kappa(Y)^2`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from curvlab.linalg.certificates import (
    DEFAULT_EPSILONS,
    APosterioriError,
    a_posteriori_bounds,
    scree_bounds,
)
from curvlab.linalg.sketch import SketchPlan, _by_magnitude, _lstsq
from curvlab.store._format import ColumnError, write_json
from curvlab.store._progress import progress_bar
from curvlab.store.cholqr import (
    CholeskyQRInfo,
    apply_r_inverse,
    r_inverse,
    streamed_r,
)
from curvlab.store.layout import MeasurementStore, open_cached

__all__ = [
    "StoredEigenvectors",
    "StoredSketchedEigh",
    "load_result",
    "outer_qr",
    "solve",
]


# -------------------------------------------------------------- eigenvectors
class StoredEigenvectors:
    """A ``(D, k)`` matrix stored as ``.npy`` files of consecutive row blocks.

    Attributes:
        folder: The folder of the block files.
        shape: ``(D, k)``.
        dtype: The torch dtype.
        block_rows: Rows per file (the last may be shorter).
    """

    def __init__(self, folder, shape: tuple[int, int], dtype, block_rows: int):
        self.folder = Path(folder)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)
        self.block_rows = int(block_rows)

    def __repr__(self) -> str:
        return f"StoredEigenvectors({str(self.folder)!r}, shape={self.shape})"

    @property
    def device(self) -> torch.device:
        """Always the CPU."""
        return torch.device("cpu")

    @property
    def num_blocks(self) -> int:
        """Number of block files."""
        return -(-self.shape[0] // self.block_rows)

    def _file(self, block: int) -> Path:
        return self.folder / f"{block:07d}.npy"

    def block(self, block: int) -> Tensor:
        """Rows of block file ``block``.

        Args:
            block: Block number in ``[0, num_blocks)``.

        Returns:
            ``(rows, k)``.
        """
        return torch.from_numpy(np.load(self._file(block)))

    def blocks(self):
        """Iterate over ``(start_row, rows)`` of every block, in order.

        Yields:
            The first row index and the ``(rows, k)`` tensor.
        """
        for b in range(self.num_blocks):
            yield b * self.block_rows, self.block(b)

    def read(self, rows) -> Tensor:
        """A slice of rows as a tensor.

        Args:
            rows: A ``slice`` (step 1), ``range`` or ``(start, stop)`` pair.

        Returns:
            ``(stop - start, k)``.

        Raises:
            ValueError: For a slice with a step other than 1.
        """
        if isinstance(rows, tuple):
            rows = slice(*rows)
        elif isinstance(rows, range):
            if rows.step != 1:
                raise ValueError("read takes contiguous rows (step 1).")
            rows = slice(rows.start, rows.stop)
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("read takes contiguous rows (step 1).")
        stop = max(stop, start)
        parts = []
        for b in range(start // self.block_rows, -(-stop // self.block_rows)):
            offset = b * self.block_rows
            data = np.load(self._file(b), mmap_mode="r")
            lo, hi = max(start - offset, 0), min(stop - offset, len(data))
            parts.append(torch.from_numpy(np.array(data[lo:hi])))
        if not parts:
            return torch.empty(0, self.shape[1], dtype=self.dtype)
        return torch.cat(parts)

    def gather(self, indices: Tensor) -> Tensor:
        """Rows ``indices`` (any order), reading block by block.

        Args:
            indices: 1-D integer tensor of row indices.

        Returns:
            ``(len(indices), k)`` in the order given.
        """
        indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        out = torch.empty(len(indices), self.shape[1], dtype=self.dtype)
        which = torch.div(indices, self.block_rows, rounding_mode="floor")
        for b in torch.unique(which).tolist():
            pick = torch.nonzero(which == b).squeeze(1)
            data = np.load(self._file(b), mmap_mode="r")
            rows = (indices[pick] - b * self.block_rows).numpy()
            out[pick] = torch.from_numpy(np.array(data[rows]))
        return out

    def to_tensor(self, *, max_bytes: int = 8 << 30) -> Tensor:
        """The whole matrix in memory.

        Args:
            max_bytes: Refuse above this size.

        Returns:
            ``(D, k)``.

        Raises:
            MemoryError: If it is larger than ``max_bytes``.
        """
        size = self.shape[0] * self.shape[1] * self.dtype.itemsize
        if size > max_bytes:
            raise MemoryError(
                f"The eigenvectors take {size / 2**30:.1f} GiB, more than "
                f"max_bytes={max_bytes / 2**30:.1f} GiB. Read them in row blocks "
                "(read, blocks) or raise max_bytes."
            )
        return torch.cat([rows for _, rows in self.blocks()])


@dataclass(frozen=True)
class StoredSketchedEigh:
    r"""A SEIGH solved out of core: :math:`A \approx W \Lambda W^\top`.

    Attributes:
        eigenvalues: ``(k,)`` in the plan's dtype, by descending magnitude.
        eigenvectors: ``(D, k)`` on disk.
        num_matvecs: Products stored (``s`` plus the probes).
        plan: The sketch plan.
        a_posteriori: Error certificate from the stored probes (``None``
            without probes).
        qr: Diagnostics of the CholeskyQR.
        path: Folder of the result.
        stages: ``name -> (start, stop)`` ``time.perf_counter`` stamps of the
            stages ``"qr"``, ``"core"`` and ``"eigenvectors"`` (which includes
            the a-posteriori sums).
    """

    eigenvalues: Tensor
    eigenvectors: StoredEigenvectors
    num_matvecs: int
    plan: SketchPlan
    a_posteriori: APosterioriError | None
    qr: CholeskyQRInfo
    path: Path
    stages: dict = field(default_factory=dict, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        """``(D, D)``."""
        return self.plan.shape


# ------------------------------------------------------------------ passes
_OPENED: dict[tuple[str, str], MeasurementStore] = {}


def _cached(root: str, plan_hash: str) -> MeasurementStore:
    return open_cached(_OPENED, root, plan_hash, "solve")


def _outer_rows(store: MeasurementStore, start: int, stop: int) -> Tensor:
    k = store.plan.num_outer
    return torch.from_numpy(store.read_rows("sketch", range(k), start, stop))


def _read_block(root, plan_hash, start, stop, *rest):
    """The I/O half of a task: rows ``start:stop`` of the outer sketch, CRC-checked.

    With more arguments (a vectors task's folder and block) also the probes'.
    """
    store = _cached(root, plan_hash)
    Y = _outer_rows(store, start, stop)
    if not rest or store.num_probes == 0:
        return Y, None
    P = store.read_rows("probe", range(store.num_probes), start, stop)
    return Y, torch.from_numpy(P)


def _gram_task(T, data, *_) -> Tensor:
    X = apply_r_inverse(data[0], T)
    return X.mT @ X


def _vectors_task(M, target, data, root, plan_hash, start, stop, folder, block):
    """Write ``W_b = Y_b R^{-1} U`` and return the block's a-posteriori sums."""
    store = _cached(root, plan_hash)
    Y, P = data
    W = apply_r_inverse(Y, M)
    _save(Path(folder) / f"{block:07d}.npy", W.to(store.plan.torch_dtype).numpy())
    if P is None:
        return torch.zeros(3, 0, dtype=torch.float64)
    P = P.to(torch.float64)
    approx = W @ target
    return torch.stack(
        [(P - approx).square().sum(0), P.square().sum(0), approx.square().sum(0)]
    )


def _task(fn, *shared_and_args, num_shared: int):
    """One Dask task: read its block, then compute on it."""
    shared, args = shared_and_args[:num_shared], shared_and_args[num_shared:]
    return fn(*shared, _read_block(*args), *args)


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _reduce(client, fn, shared: tuple, args_list, advance):
    """Sum ``fn(*shared, data, *args)`` over ``args_list``, ``data`` the block read.

    In process, the next block is read by a second thread while the current
    one is multiplied (the reads release the GIL: file I/O and CRCs). On Dask
    the ``shared`` arguments (``k x k`` matrices) are scattered to every worker
    once, and each task reads its own block.
    """
    total = None
    if client is None:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(_read_block, *args_list[0])
            for n, args in enumerate(args_list):
                data = pending.result()
                if n + 1 < len(args_list):
                    pending = pool.submit(_read_block, *args_list[n + 1])
                part = fn(*shared, data, *args)
                total = part if total is None else total + part
                advance(1)
        return total
    from distributed import as_completed

    shared = tuple(client.scatter(list(shared), broadcast=True))
    futures = [
        client.submit(_task, fn, *shared, *args, num_shared=len(shared), pure=False)
        for args in args_list
    ]
    try:
        for future in as_completed(futures):
            part = future.result()
            total = part if total is None else total + part
            advance(1)
            future.release()
    finally:
        client.cancel(futures)
    return total


def _qr(store: MeasurementStore, client, blocks, progress: bool):
    root, phash = str(store.path.resolve()), store.plan_hash
    with progress_bar(len(blocks) * 2, "solve: QR", progress) as advance:

        def gram_pass(inverses):
            args = [(root, phash, a, b) for a, b in blocks]
            return _reduce(client, _gram_task, (inverses,), args, advance)

        return streamed_r(gram_pass, store.dim)


def outer_qr(
    store: MeasurementStore, *, client=None, block_rows: int | None = None
) -> tuple[Tensor, CholeskyQRInfo]:
    """The ``R`` factor of the stored outer sketch, as :func:`solve` computes it.

    Args:
        store: A store whose first ``k`` measurements are stored.
        client: A ``distributed.Client`` or ``None``.
        block_rows: Rows per block (default: the checksum chunk).

    Returns:
        ``R`` (``(k, k)`` float64, positive diagonal) with ``Y = Q R`` and the
        diagnostics.
    """
    D = store.dim
    step = block_rows or store.chunk_rows
    blocks = [(a, min(a + step, D)) for a in range(0, D, step)]
    factors, info = _qr(store, client, blocks, False)
    R = factors[0]
    for F in factors[1:]:
        R = F @ R
    return R, info


def _eigenvector_map(T: list[Tensor], U: Tensor, info, dtype) -> list[Tensor]:
    r"""The factors of :math:`R^{-1} U`, merged into one when precision allows.

    Applied factor by factor, :math:`W_b = (Y_b T_1) \cdots (T_p U)` keeps the
    second pass's correction; one merged matrix saves a ``D k^2`` product but
    costs about :math:`u\,\kappa(Y)` of orthogonality. It is merged only when
    that is below a hundredth of the eigenvectors' own precision (a float32
    result and :math:`\kappa(Y) \lesssim 5 \cdot 10^6` without a shift; never
    for float64).
    """
    eps = torch.finfo(torch.float64).eps
    kappa = math.sqrt(info.gram_condition)
    if not info.shifted and kappa * eps <= 0.01 * torch.finfo(dtype).eps:
        merged = T[0]
        for factor in T[1:]:
            merged = merged @ factor
        return [merged @ U]
    return [*T[:-1], T[-1] @ U]


def _check_store(store: MeasurementStore):
    status = store.status()
    problems = store.verify(checksums=False)
    if problems:
        listing = "; ".join(f"{p.file} ({p.reason})" for p in problems)
        raise ValueError(
            f"The store at {store.path} fails its check: {listing}. Rerun "
            "measure to measure these files again."
        )
    if not status.complete:
        raise ValueError(
            f"The store at {store.path} is incomplete: sketch measurements "
            f"{status.missing[:10]}{'...' if len(status.missing) > 10 else ''} and "
            f"probes {status.probes_missing[:10]} are missing. Run measure first."
        )


def _projections(store: MeasurementStore):
    s, k, p = store.plan.num_inner, store.plan.num_outer, store.num_probes
    Z = torch.empty(s, s, dtype=torch.float64)
    PsiY = torch.empty(s, k, dtype=torch.float64)
    ProbeY = torch.empty(p, k, dtype=torch.float64)
    for i in range(s):
        aux = store.read_aux("sketch", i)
        Z[:, i] = torch.from_numpy(aux["phi"].copy())
        if i < k:
            PsiY[:, i] = torch.from_numpy(aux["psi"].copy())
            if p:
                ProbeY[:, i] = torch.from_numpy(aux["probe"].copy())
    return Z, PsiY, ProbeY


def _certificate(values: Tensor, sums: Tensor, p: int, seed: int) -> APosterioriError:
    samples = sums[0]
    error_sq = float(samples.mean())
    op_norm_sq = float(sums[1].mean())
    error, norm = math.sqrt(error_sq), math.sqrt(op_norm_sq)
    lower, upper = scree_bounds(values, error, norm if norm > 0 else 1.0)
    return APosterioriError(
        error_sq=error_sq,
        error=error,
        op_norm_sq=op_norm_sq,
        approx_norm_sq=float(values.square().sum()),
        relative_error=error / norm if norm > 0 else math.inf,
        samples=samples,
        bounds=tuple((float(e), *a_posteriori_bounds(p, e)) for e in DEFAULT_EPSILONS),
        scree_lower=lower,
        scree_upper=upper,
        num_probes=p,
        num_matvecs=p,
        seed=seed,
    )


def solve(
    store: MeasurementStore,
    *,
    client=None,
    out=None,
    block_rows: int | None = None,
    progress: bool = True,
) -> StoredSketchedEigh:
    r"""Solve a complete measurement store out of core (module docstring).

    Args:
        store: A complete, sound store (:func:`curvlab.store.measure`).
        client: A ``distributed.Client`` for the passes over row blocks (the
            workers must see the store's folder); ``None``: this process.
        out: Folder of the result (default ``STORE/solve``); its eigenvector
            files are replaced.
        block_rows: Rows per block (default: one checksum chunk, 65,536 rows);
            other than a multiple of the chunk, the chunks a block touches are
            read whole (for their checksums).
        progress: Show progress bars.

    Returns:
        Eigenvalues in memory, eigenvectors on disk, the a-posteriori
        certificate from the stored probes, QR diagnostics and stage times.

    Raises:
        ValueError: If the store is incomplete or a file fails its check (the
            message names the files), ``block_rows < 1``, or the outer sketch is
            not finite.

    Example:
        >>> import tempfile
        >>> from curvlab import store as st
        >>> from curvlab.linalg import sketch_plan, sketched_eigh, synthetic
        >>> A, _ = synthetic.low_rank(60, 3, seed=0)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     s = st.create(tmp, sketch_plan(A, 5), num_probes=2)
        ...     _ = st.measure(s, lambda: A, progress=False)
        ...     result = st.solve(s, progress=False)
        ...     torch.allclose(result.eigenvalues, sketched_eigh(A, 5).eigenvalues)
        True
    """
    _check_store(store)
    plan = store.plan
    D, k, p = store.dim, plan.num_outer, store.num_probes
    chunk = store.chunk_rows
    block_rows = chunk if block_rows is None else int(block_rows)
    if block_rows < 1:
        raise ValueError(f"block_rows must be positive. Got {block_rows}.")
    blocks = [(a, min(a + block_rows, D)) for a in range(0, D, block_rows)]
    root, phash = str(store.path.resolve()), store.plan_hash
    out = store.path / "solve" if out is None else Path(out)
    folder = out / "eigenvectors"
    (out / "result.json").unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    stages: dict[str, tuple[float, float]] = {}
    try:
        # 1. QR by CholeskyQR2 over row blocks
        t0 = time.perf_counter()
        factors, info = _qr(store, client, blocks, progress)
        stages["qr"] = (t0, time.perf_counter())
        # 2. the core problem, in memory
        t0 = time.perf_counter()
        Z, PsiY, ProbeY = _projections(store)
        T = r_inverse(factors)
        PhiQ = apply_r_inverse(Z[:, :k], T)
        PsiQ = apply_r_inverse(PsiY, T)
        C = _lstsq(PsiQ, _lstsq(PhiQ, Z).mT).mT
        values, U = torch.linalg.eigh((C + C.mT) / 2)
        values, U = _by_magnitude(values, U)
        # W^T omega = U^T R^{-T} Y^T omega
        M = _eigenvector_map(T, U, info, plan.torch_dtype)  # W = Y M_1 ... M_q
        target = values[:, None] * apply_r_inverse(ProbeY, M).mT
        stages["core"] = (t0, time.perf_counter())
        # 3. eigenvectors to disk, a-posteriori sums
        t0 = time.perf_counter()
        args = [(root, phash, a, b, str(folder), n) for n, (a, b) in enumerate(blocks)]
        with progress_bar(len(blocks), "solve: eigenvectors", progress) as advance:
            shared = (M, target)
            sums = _reduce(client, _vectors_task, shared, args, advance)
        stages["eigenvectors"] = (t0, time.perf_counter())
    except ColumnError as error:
        raise ValueError(
            f"The store at {store.path} fails its check: {error}. Rerun measure to "
            "measure this file again."
        ) from error
    certificate = _certificate(values, sums, p, store.probe_seed) if p else None
    vectors = StoredEigenvectors(folder, (D, k), plan.torch_dtype, block_rows)
    record = {
        "plan": plan.to_dict(),
        "plan_hash": phash,
        "eigenvalues": values.tolist(),
        "block_rows": block_rows,
        "num_matvecs": plan.num_inner + p,
        "qr": info._asdict(),
        "a_posteriori": None
        if certificate is None
        else {
            "error_sq": certificate.error_sq,
            "op_norm_sq": certificate.op_norm_sq,
            "samples": certificate.samples.tolist(),
            "seed": certificate.seed,
        },
    }
    write_json(out / "result.json", record)
    return StoredSketchedEigh(
        eigenvalues=values.to(plan.torch_dtype),
        eigenvectors=vectors,
        num_matvecs=plan.num_inner + p,
        plan=plan,
        a_posteriori=certificate,
        qr=info,
        path=out,
        stages=stages,
    )


def load_result(out) -> StoredSketchedEigh:
    """Load a result written by :func:`solve`.

    Args:
        out: Its folder (``STORE/solve`` by default).

    Returns:
        The result (``stages`` empty).

    Raises:
        FileNotFoundError: If the folder holds no finished result.
    """
    out = Path(out)
    path = out / "result.json"
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no finished solve ({path.name}).")
    record = json.loads(path.read_text())
    plan = SketchPlan.from_dict(record["plan"])
    values = torch.tensor(record["eigenvalues"], dtype=torch.float64)
    D, k = plan.shape[0], plan.num_outer
    vectors = StoredEigenvectors(
        out / "eigenvectors", (D, k), plan.torch_dtype, record["block_rows"]
    )
    certificate = None
    if record["a_posteriori"] is not None:
        a = record["a_posteriori"]
        samples = torch.tensor(a["samples"], dtype=torch.float64)
        sums = torch.stack(
            [samples, torch.full_like(samples, a["op_norm_sq"]), samples * 0]
        )
        certificate = _certificate(values, sums, len(samples), a["seed"])
    return StoredSketchedEigh(
        eigenvalues=values.to(plan.torch_dtype),
        eigenvectors=vectors,
        num_matvecs=record["num_matvecs"],
        plan=plan,
        a_posteriori=certificate,
        qr=CholeskyQRInfo(**record["qr"]),
        path=out,
    )
