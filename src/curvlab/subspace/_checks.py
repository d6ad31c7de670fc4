"""Input checks for the subspace functions, collected in one place.

Public entry points call these once at the boundary; private helpers trust their
inputs. Each message says what was expected and what arrived.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy
import torch
from torch import Tensor

#: Dtypes the SVD-based metrics accept.
SVD_DTYPES = (torch.float32, torch.float64)


def chunk_rows(U: Tensor) -> int:
    """Rows per chunk for reductions over a tall ``(D, k)`` matrix.

    On the CPU, chunks of ``2^18`` entries (2 MiB in float64) keep each chunk's
    temporaries in cache: reducing a whole ``(10^5, 200)`` float32 matrix at once
    ran 5 to 10 times slower. On a GPU, chunks of ``2^23`` entries keep the
    number of kernel launches small while bounding the temporaries (64 MiB in
    float64).

    Args:
        U: The matrix.

    Returns:
        The number of rows per chunk, at least 1.
    """
    entries = 2**18 if U.device.type == "cpu" else 2**23
    return max(1, entries // max(1, U.shape[1]))


def default_atol(dtype: torch.dtype) -> float:
    r"""Default orthonormality tolerance: :math:`10\sqrt{\varepsilon}` of the dtype.

    That is about ``3.5e-3`` for float32 and ``1.5e-7`` for float64: loose
    enough for eigenbases from QR or ``eigh`` of millions of rows in float32,
    tight enough to reject unnormalised or non-orthogonal columns.

    Args:
        dtype: A floating dtype.

    Returns:
        The tolerance.
    """
    return 10.0 * math.sqrt(torch.finfo(dtype).eps)


def check_basis(U: Tensor, name: str, dtypes: Sequence[torch.dtype] | None = None):
    """Check that ``U`` is a real floating ``(D, k)`` tensor with ``1 <= k <= D``.

    Args:
        U: The candidate basis.
        name: Its name in messages.
        dtypes: Allowed dtypes; ``None`` allows every real floating dtype.

    Raises:
        TypeError: If ``U`` is no tensor or has a wrong dtype.
        ValueError: If ``U`` is not 2-D with ``1 <= k <= D``.
    """
    if not isinstance(U, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor. Got {type(U).__name__}.")
    if dtypes is not None and U.dtype not in dtypes:
        raise TypeError(
            f"{name} must have dtype {' or '.join(map(str, dtypes))}. Got {U.dtype}."
        )
    if not U.dtype.is_floating_point:
        raise TypeError(f"{name} must have a real floating dtype. Got {U.dtype}.")
    if U.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D tensor of shape (D, k). Got shape {tuple(U.shape)}."
        )
    D, k = U.shape
    if not 1 <= k <= D:
        raise ValueError(
            f"{name} must have shape (D, k) with 1 <= k <= D. Got {tuple(U.shape)}."
        )


def check_pair(U: Tensor, V: Tensor, *, equal_k: bool):
    """Check that two bases live in the same space, with the same dtype and device.

    Args:
        U: First basis, already checked by :func:`check_basis`.
        V: Second basis, already checked by :func:`check_basis`.
        equal_k: Whether the numbers of columns must agree.

    Raises:
        ValueError: If ``D`` (or ``k``), the dtype or the device differ.
    """
    if U.shape[0] != V.shape[0]:
        raise ValueError(
            "U and V must have the same number of rows D. Got U of shape "
            f"{tuple(U.shape)} and V of shape {tuple(V.shape)}."
        )
    if equal_k and U.shape[1] != V.shape[1]:
        raise ValueError(
            "U and V must have the same number of columns k (subspaces of equal "
            f"dimension). Got U of shape {tuple(U.shape)} and V of shape "
            f"{tuple(V.shape)}."
        )
    if U.dtype != V.dtype:
        raise ValueError(
            f"U and V must have the same dtype. Got {U.dtype} and {V.dtype}."
        )
    if U.device != V.device:
        raise ValueError(
            f"U and V must be on the same device. Got {U.device} and {V.device}."
        )


def check_orthonormal(U: Tensor, name: str, atol: float | None):
    r"""Check :math:`\max_{ij} |(U^\top U - I)_{ij}| \le` ``atol`` (dense Gram).

    Costs :math:`O(D k^2)`, as much as the metrics that call it.

    Args:
        U: A ``(D, k)`` basis.
        name: Its name in messages.
        atol: Tolerance; ``None`` for :func:`default_atol`.

    Raises:
        ValueError: If the columns are not orthonormal within ``atol``.
    """
    atol = default_atol(U.dtype) if atol is None else atol
    gram = U.mT @ U
    gram.diagonal().sub_(1.0)
    error = float(gram.abs().max())
    if not error <= atol:
        raise ValueError(
            f"{name} must have orthonormal columns: max |{name}^T {name} - I| <= "
            f"{atol:.2e} expected. Got {error:.2e}. Pass orthonormalize=True to "
            "orthonormalize it by QR."
        )


def check_orthonormal_fast(U: Tensor, name: str, atol: float | None):
    r"""Check orthonormality in :math:`O(D k)`, for eigenbases with many rows.

    Three passes over ``U``. Two tests, both against ``atol``: every squared
    column norm is within ``atol`` of 1 (exact), and
    :math:`\|U^\top U x - x\|_2 / \|x\|_2` for one fixed-seed Gaussian
    :math:`x` (randomised: it sees
    :math:`\|U^\top U - I\|_F / \sqrt{k}` on average, so it catches clearly
    non-orthogonal columns but not a tiny coupling of two columns).

    Args:
        U: A ``(D, k)`` basis.
        name: Its name in messages.
        atol: Tolerance; ``None`` for :func:`default_atol`.

    Raises:
        ValueError: If a test fails.
    """
    atol = default_atol(U.dtype) if atol is None else atol
    D, k = U.shape
    step = chunk_rows(U)
    norms = torch.zeros(k, dtype=torch.float64, device=U.device)
    for start in range(0, D, step):
        # chunk sums in U's dtype (pairwise summation), totals in float64
        norms += U[start : start + step].square().sum(0).to(torch.float64)
    error = float((norms - 1.0).abs().max())
    if not error <= atol:
        raise ValueError(
            f"{name} must have orthonormal columns: squared column norms within "
            f"{atol:.2e} of 1 expected. Got a deviation of {error:.2e}. Pass "
            "orthonormalize=True to orthonormalize it by QR."
        )
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(U.shape[1], 1, generator=generator, dtype=torch.float64)
    x = x.to(device=U.device, dtype=U.dtype)
    residual = U.mT @ (U @ x) - x
    error = float(residual.norm() / x.norm())
    if not error <= atol:
        raise ValueError(
            f"{name} must have orthonormal columns: ||{name}^T {name} x - x|| / ||x|| "
            f"<= {atol:.2e} expected for a random x. Got {error:.2e}. Pass "
            "orthonormalize=True to orthonormalize it by QR."
        )


def orthonormalize_basis(U: Tensor) -> Tensor:
    """Return an orthonormal basis of the span of ``U``'s columns (reduced QR).

    Args:
        U: A ``(D, k)`` tensor of full column rank.

    Returns:
        The ``(D, k)`` factor ``Q``.
    """
    if U.dtype in SVD_DTYPES:
        return torch.linalg.qr(U).Q
    return torch.linalg.qr(U.double()).Q.to(U.dtype)


def check_mask(mask: Tensor, D: int, name: str = "mask"):
    """Check an index mask: 1-D integer tensor of distinct indices in ``[0, D)``.

    Args:
        mask: The mask.
        D: The ambient dimension.
        name: Its name in messages.

    Raises:
        TypeError: If ``mask`` is no integer tensor.
        ValueError: If it is not 1-D, empty, out of range or has duplicates.
    """
    check_index_tensor(mask, name)
    if mask.numel() > D:
        raise ValueError(f"{name} must have at most D={D} entries. Got {mask.numel()}.")
    low, high = int(mask.min()), int(mask.max())
    if low < 0 or high >= D:
        raise ValueError(
            f"{name} must hold indices in [0, {D}). Got indices in [{low}, {high}]."
        )


def check_index_tensor(mask: Tensor, name: str = "mask"):
    """Check a 1-D, non-empty integer tensor of distinct entries.

    Args:
        mask: The mask.
        name: Its name in messages.

    Raises:
        TypeError: If ``mask`` is no integer tensor.
        ValueError: If it is not 1-D, empty, or has duplicates.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of indices. Got {type(mask).__name__}."
        )
    if (
        mask.dtype.is_floating_point
        or mask.dtype.is_complex
        or mask.dtype == (torch.bool)
    ):
        raise TypeError(
            f"{name} must be an integer tensor of indices (e.g. torch.long). Got "
            f"{mask.dtype}."
        )
    if mask.ndim != 1 or mask.numel() == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D tensor of indices. Got shape "
            f"{tuple(mask.shape)}."
        )
    sorted_mask = mask.sort().values
    if bool((sorted_mask[1:] == sorted_mask[:-1]).any()):
        raise ValueError(f"{name} must hold distinct indices. Got duplicates.")


def check_size(k: int, D: int, name: str = "k") -> int:
    """Check ``1 <= k <= D`` for an integer ``k``.

    Args:
        k: The size (anything :func:`operator.index` accepts, bools excluded).
        D: Its upper bound.
        name: Its name in messages.

    Returns:
        ``k`` as a Python int.

    Raises:
        TypeError: If ``k`` is no integer.
        ValueError: If ``k`` is out of range.
    """
    if isinstance(k, bool):
        raise TypeError(f"{name} must be an int. Got bool.")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"{name} must be an int. Got {type(k).__name__}.") from None
    if not 1 <= k <= D:
        raise ValueError(f"{name} must satisfy 1 <= {name} <= {D}. Got {k}.")
    return k


def prepare_pair(
    U: Tensor,
    V: Tensor,
    *,
    equal_k: bool,
    orthonormalize: bool = False,
    atol: float | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Validate two bases and orthonormalise or check them.

    The shared boundary of :func:`principal_angles` and the metrics of
    :mod:`curvlab.subspace.distances`.

    Args:
        U: ``(D, p)`` basis, float32 or float64.
        V: ``(D, q)`` basis, same dtype and device.
        equal_k: Whether ``p == q`` is required.
        orthonormalize: Replace each basis by the ``Q`` factor of its reduced QR
            instead of checking its orthonormality.
        atol: Orthonormality tolerance on :math:`\max |U^\top U - I|`;
            ``None`` for :math:`10 \sqrt{\varepsilon}` of the dtype.

    Returns:
        The two bases, orthonormal.

    Raises:
        TypeError: If an input is no float32/float64 tensor.
        ValueError: If a shape is wrong, ``D``/``k``/dtype/device differ, or a
            basis is not orthonormal within ``atol``.
    """
    check_basis(U, "U", SVD_DTYPES)
    check_basis(V, "V", SVD_DTYPES)
    check_pair(U, V, equal_k=equal_k)
    if orthonormalize:
        return orthonormalize_basis(U), orthonormalize_basis(V)
    check_orthonormal(U, "U", atol)
    check_orthonormal(V, "V", atol)
    return U, V


def check_values(values, label: str) -> numpy.ndarray:
    """Return 1-D values (tensor, array or sequence) as a float64 NumPy array.

    Args:
        values: The values.
        label: Their name in the error message.

    Returns:
        The values, float64, on the CPU.

    Raises:
        ValueError: If they are empty, not 1-D or not finite.
    """
    if isinstance(values, Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = numpy.asarray(values, dtype=numpy.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{label} must be a non-empty 1-D array. Got {array.shape}.")
    if not numpy.isfinite(array).all():
        raise ValueError(f"{label} must be finite.")
    return array


def check_weights(weights, size: int, label: str) -> numpy.ndarray:
    """Return the masses of ``size`` atoms as a float64 NumPy array.

    Args:
        weights: The masses (tensor, array or sequence).
        size: The number of atoms.
        label: Their name in the error message.

    Returns:
        The masses, float64, on the CPU (not normalised).

    Raises:
        ValueError: If they are not :func:`check_values`' values, have another
            length than ``size``, are negative somewhere or sum to zero.
    """
    w = check_values(weights, label)
    if w.size != size:
        raise ValueError(f"{label} must have {size} entries. Got {w.size}.")
    if (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"{label} must be non-negative with a positive sum.")
    return w
