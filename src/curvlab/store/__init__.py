"""Measurements beyond one machine: a crash-safe store, Dask, an out-of-core solve.

A SEIGH sketch (:func:`curvlab.linalg.sketch_plan`) is measured into a folder of
atomic files (:func:`create`, :func:`open`, :class:`MeasurementStore`), in this
process or on a Dask cluster (:func:`measure`), and solved by streaming row
blocks (:func:`solve`), with eigenvectors written to disk
(:class:`StoredEigenvectors`) and mask overlaps computed block by block
(:func:`mask_overlap`, :func:`overlap_curve`). :func:`slurm_cluster` builds a
Dask cluster on SLURM (extra ``cluster``).
"""

from curvlab.store.cholqr import CholeskyQRInfo, cholesky_qr2
from curvlab.store.cluster import slurm_cluster
from curvlab.store.layout import MeasurementStore, Problem, StoreStatus, create, open
from curvlab.store.measure import MeasurementError, MeasureResult, measure
from curvlab.store.overlap import mask_overlap, overlap_curve
from curvlab.store.solve import (
    StoredEigenvectors,
    StoredSketchedEigh,
    load_result,
    solve,
)

__all__ = [
    "CholeskyQRInfo",
    "MeasureResult",
    "MeasurementError",
    "MeasurementStore",
    "Problem",
    "StoreStatus",
    "StoredEigenvectors",
    "StoredSketchedEigh",
    "cholesky_qr2",
    "create",
    "load_result",
    "mask_overlap",
    "measure",
    "open",
    "overlap_curve",
    "slurm_cluster",
    "solve",
]
