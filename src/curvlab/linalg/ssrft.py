r"""Random test matrices for sketching: SSRFT, Gaussian and Rademacher.

A sketch multiplies an operator by the columns of a tall random *test matrix*
:math:`\Omega \in \mathbb{R}^{D \times k}`. Every column here is reproducible from
the seed, the matrix's role in the sketch and the column index alone, so
measurements can be taken in any order, in blocks, on different workers, and
solved later (skerch's ``measurements.py`` follows the same rule).

- **Gaussian** and **Rademacher** columns are drawn one stream per column, keyed
  by ``(seed, role, kind, j)`` (:func:`curvlab.linalg._random.generator`), on the
  CPU in float64, then moved: bit-identical on every device.
- **SSRFT** (subsampled randomised trigonometric transform; Woolfe, Liberty,
  Rokhlin & Tygert 2008; Tropp, Yurtsever, Udell & Cevher 2019, §3.2; skerch's
  ``SSRFT``) is the fat orthonormal map

  .. math::

      S = R\, F\, \Pi_2\, D_2\, F\, \Pi_1\, D_1 \in \mathbb{R}^{k \times D},

  with :math:`D_1, D_2` diagonal random signs, :math:`\Pi_1, \Pi_2` random
  permutations, :math:`F` the orthonormal DCT-II and :math:`R` the restriction to
  ``k`` distinct random coordinates. The test matrix is :math:`\Omega = S^\top`,
  whose columns are orthonormal. Applying :math:`S` or :math:`S^\top` to a vector
  costs :math:`O(D \log D)` instead of :math:`O(Dk)`, and storing it costs
  :math:`O(D)`. The signs and permutations are drawn on the CPU, so the transform
  is the same operator on every device; the DCT itself runs on the target device
  (products agree across device types up to rounding, about ``1e-16`` relative in
  float64).

The DCT is built on :mod:`torch.fft` (Makhoul 1980, "A fast cosine transform in
one and two dimensions", IEEE Trans. ASSP 28(1)): :func:`dct` is the orthonormal
DCT-II and :func:`idct` its exact inverse and transpose, the orthonormal DCT-III.

References:
    - Woolfe, Liberty, Rokhlin & Tygert (2008). A fast randomized algorithm for
      the approximation of matrices. Applied and Computational Harmonic Analysis
      25(3).
    - Tropp, Yurtsever, Udell & Cevher (2019). Streaming low-rank matrix
      approximation with an application to scientific simulation. SIAM J. Sci.
      Comput. 41(4), §3.2 (arXiv 1902.08651).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from curvlab.linalg._random import gaussian, generator, rademacher

__all__ = [
    "SSRFT",
    "TEST_MATRIX_KINDS",
    "GaussianTestMatrix",
    "RademacherTestMatrix",
    "RandomTestMatrix",
    "SSRFTTestMatrix",
    "dct",
    "idct",
    "random_test_matrix",
]

#: The kinds of test matrix that :func:`random_test_matrix` builds.
TEST_MATRIX_KINDS = ("ssrft", "gaussian", "rademacher")

# Last entry of every stream key of this module: keeps the streams of test
# matrices apart from those of any other key of the same length (SeedSequence
# pads keys with zeros, so the tag must be non-zero and last).
_TAG = 0x5E7C
_KIND_CODE = {"gaussian": 0, "rademacher": 1, "ssrft": 2}


def _stream(seed: int, role: int, kind: str, j: int) -> torch.Generator:
    """The CPU generator of item ``j`` of test matrix ``(seed, role, kind)``."""
    return generator(seed, role, _KIND_CODE[kind], j, _TAG)


# --------------------------------------------------------------------------- DCT
def _twiddle(n: int, count: int, sign: float, x: Tensor) -> Tensor:
    k = torch.arange(count, dtype=torch.float64, device=x.device)
    angle = sign * math.pi * k / (2 * n)
    dtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    return torch.polar(torch.ones_like(angle), angle).to(dtype)


def dct(x: Tensor, dim: int = 0) -> Tensor:
    r"""Orthonormal DCT-II along ``dim``, through one real FFT.

    .. math::

        X_k = c_k \sum_{n=0}^{N-1} x_n \cos\frac{\pi k (2n + 1)}{2N},\quad
        c_0 = \sqrt{1/N},\ c_{k>0} = \sqrt{2/N},

    the transform of ``scipy.fft.dct(x, type=2, norm="ortho")``. Makhoul's
    reordering :math:`v = (x_0, x_2, \dots, x_5, x_3, x_1)` gives
    :math:`\sum_n x_n \cos(\cdot) = \mathrm{Re}(e^{-i\pi k/2N} V_k)` with
    :math:`V = \mathrm{FFT}(v)`; ``rfft`` yields :math:`k \le N/2` and
    :math:`\mathrm{Re}(e^{-i\pi(N-k)/2N} V_{N-k}) = -\mathrm{Im}(e^{-i\pi k/2N}
    V_k)` the rest.

    Args:
        x: Real floating tensor.
        dim: The transformed dimension.

    Returns:
        The coefficients, same shape, dtype and device as ``x``.

    Example:
        >>> x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        >>> torch.allclose(idct(dct(x)), x)
        True
    """
    x = x.movedim(dim, 0)
    n = x.shape[0]
    v = torch.cat([x[0::2], x[1::2].flip(0)])
    half = n // 2 + 1
    w = _twiddle(n, half, -1.0, x).reshape(-1, *([1] * (x.ndim - 1)))
    wv = torch.fft.rfft(v, dim=0) * w
    c = torch.empty_like(x)
    c[:half] = wv.real
    c[half:] = -wv.imag[1 : (n - 1) // 2 + 1].flip(0)
    c[0] *= math.sqrt(1.0 / n)
    c[1:] *= math.sqrt(2.0 / n)
    return c.movedim(0, dim)


def idct(X: Tensor, dim: int = 0) -> Tensor:
    r"""Orthonormal DCT-III along ``dim``: exact inverse and transpose of :func:`dct`.

    Undoes the scaling to :math:`C_k = \sum_n x_n \cos(\cdot)`, rebuilds the
    half spectrum :math:`V_k = e^{i\pi k/2N}(C_k - i C_{N-k})` (with
    :math:`C_N = 0`), inverts it with ``irfft`` and undoes Makhoul's reordering.

    Args:
        X: Real floating tensor of DCT-II coefficients.
        dim: The transformed dimension.

    Returns:
        The signal, same shape, dtype and device as ``X``.
    """
    X = X.movedim(dim, 0)
    n = X.shape[0]
    c = X.clone()
    c[0] *= math.sqrt(float(n))
    c[1:] *= math.sqrt(n / 2.0)
    half = n // 2 + 1
    # C_{N-k} for k = 0..N/2, with C_N = 0
    mirrored = torch.cat([torch.zeros_like(c[:1]), c[1:].flip(0)])[:half]
    w = _twiddle(n, half, 1.0, X).reshape(-1, *([1] * (X.ndim - 1)))
    V = torch.complex(c[:half], -mirrored) * w
    v = torch.fft.irfft(V, n=n, dim=0)
    x = torch.empty_like(X)
    even = (n + 1) // 2
    x[0::2] = v[:even]
    x[1::2] = v[even:].flip(0)
    return x.movedim(0, dim)


# ------------------------------------------------------------------------- SSRFT
class SSRFT:
    r"""The fat orthonormal SSRFT :math:`S = R F \Pi_2 D_2 F \Pi_1 D_1` (``k x D``).

    Rows are orthonormal (:math:`S S^\top = I_k`); ``S @ X`` and ``S.T @ Y`` cost
    two DCTs per column. Its five random parts come from the streams
    ``(seed, role, "ssrft", part)``, drawn on the CPU. The kept coordinates are
    the first ``k`` entries of a random permutation of ``range(D)``, so row ``i``
    does not depend on ``k``.

    Attributes:
        dim: ``D``, the number of columns.
        num_rows: ``k``, the number of rows.
        seed: The seed.
        role: The stream that tells apart several SSRFTs of one sketch.

    Example:
        >>> S = SSRFT(8, 3, seed=0)
        >>> dense = S.to_dense(dtype=torch.float64)
        >>> torch.allclose(dense @ dense.T, torch.eye(3, dtype=torch.float64))
        True
    """

    def __init__(self, dim: int, num_rows: int, *, seed: int = 0, role: int = 0):
        """Draw the signs, permutations and kept coordinates.

        Args:
            dim: ``D >= 1``.
            num_rows: ``k`` with ``1 <= k <= D``.
            seed: Non-negative seed.
            role: Non-negative stream number.

        Raises:
            ValueError: If ``k`` is not in ``[1, D]``.
        """
        if not 1 <= num_rows <= dim:
            raise ValueError(
                f"An SSRFT keeps 1 <= k <= D rows. Got k={num_rows}, D={dim}."
            )
        self.dim, self.num_rows, self.seed, self.role = dim, num_rows, seed, role

        def part(j):
            return _stream(seed, role, "ssrft", j)

        self._signs1 = rademacher((dim,), part(0), dtype=torch.int8, device="cpu")
        self._perm1 = torch.randperm(dim, generator=part(1))
        self._signs2 = rademacher((dim,), part(2), dtype=torch.int8, device="cpu")
        self._perm2 = torch.randperm(dim, generator=part(3))
        self._rows = torch.randperm(dim, generator=part(4))[:num_rows]
        self._cache: dict = {}

    @property
    def shape(self) -> tuple[int, int]:
        """``(k, D)``."""
        return (self.num_rows, self.dim)

    def _parts(self, dtype: torch.dtype, device: torch.device):
        key = (dtype, device)
        if key not in self._cache:
            inverse1 = torch.argsort(self._perm1)
            inverse2 = torch.argsort(self._perm2)
            self._cache[key] = tuple(
                t.to(device=device, dtype=dtype if t.dtype == torch.int8 else None)
                for t in (
                    self._signs1,
                    self._perm1,
                    self._signs2,
                    self._perm2,
                    self._rows,
                    inverse1,
                    inverse2,
                )
            )
        return self._cache[key]

    def _check(self, X: Tensor, rows: int, what: str):
        if not isinstance(X, Tensor) or X.ndim not in (1, 2) or X.shape[0] != rows:
            got = tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__
            raise ValueError(
                f"{what} needs a ({rows},) or ({rows}, m) tensor. Got {got}."
            )
        if not X.dtype.is_floating_point or X.dtype.is_complex:
            raise TypeError(f"{what} needs a real floating tensor. Got {X.dtype}.")

    def __matmul__(self, X: Tensor) -> Tensor:
        """Apply :math:`S` to ``(D,)`` or ``(D, m)``, giving ``(k,)`` or ``(k, m)``.

        Args:
            X: Real floating tensor on any device.

        Returns:
            ``S @ X``, in the dtype and on the device of ``X``.

        Raises:
            ValueError: If the shape is wrong.
            TypeError: If ``X`` is not real floating.
        """
        self._check(X, self.dim, "S @ X")
        s1, p1, s2, p2, rows, _, _ = self._parts(X.dtype, X.device)
        vector = X.ndim == 1
        x = X.reshape(self.dim, -1)
        x = dct((x * s1[:, None])[p1])
        x = dct((x * s2[:, None])[p2])
        out = x[rows]
        return out[:, 0] if vector else out

    def rmatmat(self, Y: Tensor) -> Tensor:
        r"""Apply :math:`S^\top` to ``(k,)``/``(k, m)``, giving ``(D,)``/``(D, m)``.

        The exact adjoint of ``@``: inverse DCTs, inverse permutations, same signs.

        Args:
            Y: Real floating tensor on any device.

        Returns:
            ``S.T @ Y``, in the dtype and on the device of ``Y``.

        Raises:
            ValueError: If the shape is wrong.
            TypeError: If ``Y`` is not real floating.
        """
        self._check(Y, self.num_rows, "S.T @ Y")
        vector = Y.ndim == 1
        y = Y.reshape(self.num_rows, -1)
        z = torch.zeros(self.dim, y.shape[1], dtype=y.dtype, device=y.device)
        rows = self._parts(y.dtype, y.device)[4]
        z[rows] = y
        return self._adjoint_full(z)[:, 0] if vector else self._adjoint_full(z)

    def _adjoint_full(self, z: Tensor) -> Tensor:
        """``D1 Π1^T F^T D2 Π2^T F^T z`` for a ``(D, m)`` tensor (no restriction)."""
        s1, _, s2, _, _, inverse1, inverse2 = self._parts(z.dtype, z.device)
        z = idct(z)[inverse2] * s2[:, None]
        return idct(z)[inverse1] * s1[:, None]

    def rows_transposed(
        self, indices: Tensor, *, dtype: torch.dtype, device: torch.device | str
    ) -> Tensor:
        """Return rows ``indices`` of :math:`S`, transposed: ``S.T[:, indices]``.

        Each row is transformed on its own, in float64, so row ``i`` is the same
        bits whichever rows are asked for with it (batched FFTs may round
        differently from single ones).

        Args:
            indices: 1-D long tensor of row indices in ``[0, k)``.
            dtype: Dtype of the result.
            device: Device of the result (the DCTs run there).

        Returns:
            ``(D, len(indices))``.
        """
        device = torch.device(device)
        work = torch.float64
        rows = self._parts(work, device)[4][indices.to(device)]
        out = torch.empty(self.dim, len(indices), dtype=dtype, device=device)
        for j in range(len(indices)):
            z = torch.zeros(self.dim, 1, dtype=work, device=device)
            z[rows[j]] = 1
            out[:, j] = self._adjoint_full(z)[:, 0]
        return out

    def to_dense(self, *, dtype=torch.float64, device="cpu") -> Tensor:
        """Return :math:`S` as a dense ``(k, D)`` matrix (tests, small ``D``).

        Args:
            dtype: Dtype of the result.
            device: Device of the result.

        Returns:
            The matrix.
        """
        idx = torch.arange(self.num_rows)
        return self.rows_transposed(idx, dtype=dtype, device=device).T.contiguous()

    def __repr__(self) -> str:
        return (
            f"SSRFT(k={self.num_rows}, D={self.dim}, seed={self.seed}, "
            f"role={self.role})"
        )


# ---------------------------------------------------------------- test matrices
def _as_indices(indices, num_cols: int) -> Tensor:
    idx = torch.as_tensor(list(indices) if not isinstance(indices, Tensor) else indices)
    if idx.ndim != 1 or (idx.numel() and idx.dtype not in (torch.int64, torch.int32)):
        raise ValueError(
            f"indices must be a 1-D sequence of ints. Got {tuple(idx.shape)} of "
            f"{idx.dtype}."
        )
    idx = idx.to(torch.int64).cpu()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_cols):
        raise ValueError(
            f"indices must lie in [0, {num_cols}). Got min {int(idx.min())}, "
            f"max {int(idx.max())}."
        )
    return idx


class RandomTestMatrix:
    r"""A tall ``(D, k)`` random test matrix :math:`\Omega`, never stored whole.

    Subclasses produce any subset of columns (:meth:`columns`) and the product
    :math:`\Omega^\top X` (:meth:`transpose_matmul`).

    Attributes:
        kind: ``"ssrft"``, ``"gaussian"`` or ``"rademacher"``.
        dim: ``D``.
        num_cols: ``k``.
        seed: The seed.
        role: The stream number of this matrix within a sketch.
        dtype: Dtype of the columns.
        device: Device of the columns.
    """

    kind = ""

    def __init__(
        self,
        dim: int,
        num_cols: int,
        *,
        seed: int = 0,
        role: int = 0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ):
        """Describe the matrix (drawing happens on use).

        Args:
            dim: ``D >= 1``.
            num_cols: ``k >= 1``.
            seed: Non-negative seed.
            role: Non-negative stream number.
            dtype: Real floating dtype of the columns.
            device: Device of the columns.

        Raises:
            ValueError: If a size is out of range.
        """
        if dim < 1 or num_cols < 1:
            raise ValueError(
                f"A test matrix needs D >= 1 and k >= 1. Got D={dim}, k={num_cols}."
            )
        self.dim, self.num_cols, self.seed, self.role = dim, num_cols, seed, role
        self.dtype, self.device = dtype, torch.device(device)

    @property
    def shape(self) -> tuple[int, int]:
        """``(D, k)``."""
        return (self.dim, self.num_cols)

    def columns(self, indices: Iterable[int] | Tensor) -> Tensor:
        """Return the columns ``indices`` (any order, repeats allowed).

        Args:
            indices: Column indices in ``[0, k)``.

        Returns:
            ``(D, len(indices))`` on ``dtype``/``device``.

        Raises:
            ValueError: If an index is out of range.
        """
        return self._columns(_as_indices(indices, self.num_cols))

    def _columns(self, idx: Tensor) -> Tensor:
        raise NotImplementedError

    def transpose_matmul(self, X: Tensor) -> Tensor:
        r"""Return :math:`\Omega^\top X` for ``X`` of shape ``(D, m)``.

        Args:
            X: ``(D, m)`` real floating tensor.

        Returns:
            ``(k, m)``, in the dtype and on the device of ``X``.

        Raises:
            ValueError: If ``X`` has the wrong shape.
        """
        if not isinstance(X, Tensor) or X.ndim != 2 or X.shape[0] != self.dim:
            got = tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__
            raise ValueError(
                f"Omega.T @ X needs X of shape ({self.dim}, m). Got {got}."
            )
        return self._transpose_matmul(X)

    def _transpose_matmul(self, X: Tensor) -> Tensor:
        # Generate the columns in chunks of ~8 MiB and multiply.
        chunk = max(1, (1 << 20) // self.dim)
        out = torch.empty(self.num_cols, X.shape[1], dtype=X.dtype, device=X.device)
        for start in range(0, self.num_cols, chunk):
            idx = torch.arange(start, min(start + chunk, self.num_cols))
            cols = self._columns(idx).to(dtype=X.dtype, device=X.device)
            out[start : start + len(idx)] = cols.mT @ X
        return out

    def to_dense(self) -> Tensor:
        """Return all ``k`` columns as a ``(D, k)`` matrix.

        Returns:
            The matrix.
        """
        return self._columns(torch.arange(self.num_cols))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(D={self.dim}, k={self.num_cols}, "
            f"seed={self.seed}, role={self.role}, dtype={self.dtype}, "
            f"device={self.device})"
        )


class _EntrywiseTestMatrix(RandomTestMatrix):
    """Independent entries; column ``j`` drawn on the CPU from ``(seed, role, j)``."""

    #: ``draw(shape, generator, dtype=, device=)`` and the dtype it draws in.
    _draw = staticmethod(gaussian)
    _draw_dtype = torch.float64

    def _columns(self, idx: Tensor) -> Tensor:
        cols = [
            self._draw(
                (self.dim,),
                _stream(self.seed, self.role, self.kind, int(j)),
                dtype=self._draw_dtype,
                device="cpu",
            )
            for j in idx
        ]
        out = torch.stack(cols, 1) if cols else torch.empty(self.dim, 0)
        return out.to(dtype=self.dtype, device=self.device)


class GaussianTestMatrix(_EntrywiseTestMatrix):
    """Standard normal entries; column ``j`` from the stream ``(seed, role, j)``."""

    kind = "gaussian"


class RademacherTestMatrix(_EntrywiseTestMatrix):
    """Entries ``±1``; column ``j`` from the stream ``(seed, role, j)``."""

    kind = "rademacher"
    _draw = staticmethod(rademacher)
    _draw_dtype = torch.int8


class SSRFTTestMatrix(RandomTestMatrix):
    r"""Orthonormal columns :math:`\Omega = S^\top` of an :class:`SSRFT` ``S``.

    Columns are computed in float64 on ``device`` and cast to ``dtype``.
    """

    kind = "ssrft"

    def __init__(self, dim: int, num_cols: int, **kwargs):
        """Draw the SSRFT.

        Args:
            dim: ``D``.
            num_cols: ``k <= D``.
            **kwargs: ``seed``, ``role``, ``dtype``, ``device``.

        Raises:
            ValueError: If ``k`` is not in ``[1, D]``.
        """
        super().__init__(dim, num_cols, **kwargs)
        self.ssrft = SSRFT(dim, num_cols, seed=self.seed, role=self.role)

    def _columns(self, idx: Tensor) -> Tensor:
        return self.ssrft.rows_transposed(idx, dtype=self.dtype, device=self.device)

    def _transpose_matmul(self, X: Tensor) -> Tensor:
        return self.ssrft @ X


_KINDS = {
    "gaussian": GaussianTestMatrix,
    "rademacher": RademacherTestMatrix,
    "ssrft": SSRFTTestMatrix,
}


def random_test_matrix(
    kind: str,
    dim: int,
    num_cols: int,
    *,
    seed: int = 0,
    role: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> RandomTestMatrix:
    """Build a ``(D, k)`` test matrix of the given kind.

    Args:
        kind: One of :data:`TEST_MATRIX_KINDS`.
        dim: ``D``.
        num_cols: ``k`` (at most ``D`` for ``"ssrft"``).
        seed: Non-negative seed.
        role: Stream number; matrices with different roles are independent.
        dtype: Dtype of the columns.
        device: Device of the columns.

    Returns:
        The test matrix.

    Raises:
        ValueError: If ``kind`` is unknown or a size out of range.

    Example:
        >>> Omega = random_test_matrix("gaussian", 5, 3, seed=1)
        >>> torch.equal(Omega.columns([2, 0]), Omega.to_dense()[:, [2, 0]])
        True
    """
    if kind not in _KINDS:
        raise ValueError(
            f"test_matrix must be one of {TEST_MATRIX_KINDS}. Got {kind!r}."
        )
    return _KINDS[kind](dim, num_cols, seed=seed, role=role, dtype=dtype, device=device)
