"""Curvature problems: models, losses and data sets by name.

>>> from curvlab import problems
>>> problem = problems.get("mnist5k_mini", num_samples=500)
>>> problem.num_params
7030
"""

from curvlab.problems.data import BatchedData, balanced_subset
from curvlab.problems.registry import Problem, get, names

__all__ = ["BatchedData", "Problem", "balanced_subset", "get", "names"]
