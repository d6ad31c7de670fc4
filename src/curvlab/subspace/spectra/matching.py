r"""LayerHessians' matching distance between two densities, exactly as published.

``LayerHessians/experiments/match_distros.py`` (Sankar et al. 2021) compares the
smoothed density of a layer's spectrum with the full one's: each density vector
:math:`p` goes through :func:`layerhessians_density_transform`,

.. math::

    p \leftarrow \log p, \quad
    p \leftarrow \frac{p - \min p}{\max p - \min p}, \quad
    p \leftarrow \frac{p}{\sum_i p_i},

and :func:`layerhessians_match` returns ``scipy.stats.wasserstein_distance``
between the two transformed vectors *as samples*: a distance between the sets of
density values that ignores the eigenvalue axis (the quirk its docstring
explains). For a distance between spectra use
:func:`~curvlab.subspace.spectra.distances.wasserstein_1`.

References:
    - A. R. Sankar, Y. Khasbage, R. Vigneswaran, V. N. Balasubramanian (2021). A
      deeper look at the Hessian eigenspectrum of deep neural networks and its
      applications to regularization. AAAI. arXiv:2012.03801. The matching:
      ``yashkhasbage25/HTR``, ``LayerHessians/experiments/match_distros.py``.
"""

from __future__ import annotations

import numpy

from curvlab.subspace._checks import check_values

__all__ = ["layerhessians_density_transform", "layerhessians_match"]


def layerhessians_density_transform(density) -> numpy.ndarray:
    r"""The density transform of LayerHessians' matching procedure.

    ``density_transform`` in ``LayerHessians/experiments/match_distros.py``:
    zeros are replaced by the smallest positive value, then

    .. math::

        p \leftarrow \log p, \quad
        p \leftarrow \frac{p - \min p}{\max p - \min p}, \quad
        p \leftarrow \frac{p}{\sum_i p_i}.

    Args:
        density: Non-negative density values (one vector, its grid ignored).

    Returns:
        The transformed vector, float64.

    Raises:
        ValueError: If the density is negative somewhere, has no positive value,
            or its logarithm is constant (the published code divides by zero).
    """
    p = check_values(density, "density")
    if (p < 0).any():
        raise ValueError("density must be non-negative.")
    positive = p[p > 0]
    if positive.size == 0:
        raise ValueError("density must have a positive value.")
    logp = numpy.log(numpy.where(p == 0, positive.min(), p))
    low, high = logp.min(), logp.max()
    if not high > low:
        raise ValueError(
            "The log density is constant; LayerHessians' min-max normalisation "
            "divides by zero."
        )
    scaled = (logp - low) / (high - low)
    return scaled / scaled.sum()


def layerhessians_match(full_density, layer_density) -> float:
    r"""LayerHessians' matching distance between two densities, as published.

    ``LayerHessians/experiments/match_distros.py`` (Sankar et al. 2021) applies
    :func:`layerhessians_density_transform` to the full and the layer density
    vectors (each sampled on its own 1024-point grid) and returns
    ``scipy.stats.wasserstein_distance(full_normed, layer_normed)``.

    **The quirk.** ``wasserstein_distance(u, v)`` treats its arguments as
    *samples*: it measures how the two sets of transformed density *values*
    differ, not how far probability mass moves along the eigenvalue axis. The
    grids never enter (the published code computes rescaled eigenvalue grids and
    does not use them): permuting the grid points of either density, mirroring it,
    or shifting or rescaling its eigenvalue axis leaves the distance unchanged.
    The paper's text describes a Wasserstein distance between the spectra; an
    implementation that follows the words (e.g. ``wasserstein_1`` on the
    eigenvalues, or ``density_wasserstein_1`` on a common grid, both in
    :mod:`~curvlab.subspace.spectra.distances`) gives other numbers and will not
    reproduce their plots. This function reproduces the plots; use
    :func:`~curvlab.subspace.spectra.distances.wasserstein_1` for a distance
    between spectra.

    Args:
        full_density: Density values of the full spectrum.
        layer_density: Density values of the layer spectrum (any length).

    Returns:
        The published matching distance (units: transformed density values).

    Example:
        >>> import math
        >>> d1 = [1.0, math.e, math.e**2]  # -> [0, 1/3, 2/3]
        >>> d2 = [math.e**2, math.e, 1.0]  # its mirror image: distance 0
        >>> layerhessians_match(d1, d2)
        0.0
    """
    from scipy.stats import wasserstein_distance  # SciPy's stats load in 0.5 s

    return float(
        wasserstein_distance(
            layerhessians_density_transform(full_density),
            layerhessians_density_transform(layer_density),
        )
    )
