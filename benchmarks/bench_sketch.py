"""Benchmark curvlab's sketched eigendecomposition (SEIGH) against skerch's.

Run from the repository root::

    python benchmarks/bench_sketch.py [--problems ...] [--repeats N] [--quick]
        [--markdown PATH] [--budget-table]

For each problem both libraries decompose the same Hessian (curvlab's
``HessianOperator`` of the mean cross-entropy over the train batches of
:func:`bench_operators.build_case`, float64, CPU, torch's default threads), after
a short SGD run (``--train-steps``, learning rate 0.1, batch 32) so that the
spectrum has the outliers of a trained network:

- **curvlab**: :func:`curvlab.linalg.sketched_eigh` with ``k = num_outer`` and
  ``s = num_inner = 2k`` SSRFT measurements; the range sketch recycles the first
  ``k`` core products, so it takes ``s`` Hessian-vector products (HVPs).
- **skerch** 1.2: ``skerch.algorithms.seigh`` with ``noise_type="ssrft"`` and
  ``recovery_type="oversampled_{s}"``, the same ``(k, s)``, its SEIGH of the
  paper; it measures the range and the core separately, ``k + s`` HVPs.

Both multiply blocks of ``--block-size`` columns (skerch: ``meas_blocksize``).
"Equal measurements" means equal ``(k, s)``; the table also lists the HVPs each
took. ``k`` is 5% of ``D``, capped at ``--max-outer`` (default 200; ``--quick``:
2%, capped at 40).

Reported per problem: wall time of the whole decomposition (products, test
matrices, solve; median over ``--repeats``, libraries interleaved in rotating
order, timings held back while other processes compete for the CPUs, see
``bench_operators.ContentionGuard``), the largest relative error of the top-10
eigenvalue magnitudes, and the subspace overlap ``||W_10^T V_10||_F^2 / 10`` with
the reference eigenvectors (1 = same top-10 eigenspace). Reference: dense
``eigh`` of ``to_dense()`` up to ``D = --dense-max`` (default 4000), otherwise
curvlab's restarted Lanczos (``curvlab.linalg.eigsh.eigsh``) or, when that is
not available, SciPy's ARPACK on ``to_scipy()``.

Target (fixed; PASS/FAIL on the median time ratio): curvlab at least 2 times
faster than skerch at equal measurements, with a top-10 error at most 1.25 times
skerch's plus 1e-3.

``--budget-table`` instead prints the error of curvlab's SEIGH against the
measurement budget on ``digits_mlp`` at initialisation and after training (dense
reference, 3 seeds): the table of the documentation.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import curvlab as cl  # noqa: E402
from curvlab import problems  # noqa: E402
from curvlab.linalg import sketched_eigh  # noqa: E402

PROBLEMS = ("digits_mlp", "digits_cnn", "mnist16_cnn")
LIBRARIES = ("curvlab", "skerch")
TIME_TARGET = 2.0  # skerch time / curvlab time, at least
ERROR_SLACK = (1.25, 1e-3)  # curvlab error <= 1.25 x skerch error + 1e-3
TOP = 10  # eigenpairs compared with the reference
SEED = 12345


# --------------------------------------------------------------------- helpers
class CountedHVP:
    """The same Hessian for both libraries, counting product columns."""

    def __init__(self, op):
        self.op, self.shape = op, op.shape
        self.dtype, self.device = op.dtype, op.device
        self.is_symmetric, self.num_matvecs = True, 0

    def __matmul__(self, X: Tensor) -> Tensor:
        self.num_matvecs += 1 if X.ndim == 1 else X.shape[1]
        return self.op @ X


def train(case, steps: int, lr: float = 0.1, batch_size: int = 32, seed: int = 0):
    """Plain SGD on the concatenated train batches (the model is changed in place)."""
    X = torch.cat([x for x, _ in case.data])
    y = torch.cat([t for _, t in case.data])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(case.model.parameters(), lr=lr)
    case.model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch_size,), generator=generator)
        optimizer.zero_grad()
        case.loss_fn(case.model(X[idx]), y[idx]).backward()
        optimizer.step()
    case.model.eval()


def by_magnitude(values: Tensor, vectors: Tensor) -> tuple[Tensor, Tensor]:
    order = torch.argsort(values.abs(), descending=True, stable=True)
    return values[order], vectors[:, order]


def reference(op, dense_max: int, tol: float) -> tuple[Tensor, Tensor, str, float]:
    """Top-``TOP`` eigenpairs by magnitude, their source and the seconds taken."""
    start = time.perf_counter()
    dim = op.shape[0]
    if dim <= dense_max:
        dense = op.to_dense()
        values, vectors = torch.linalg.eigh((dense + dense.T) / 2)
        values, vectors = by_magnitude(values, vectors)
        return values[:TOP], vectors[:, :TOP], "dense eigh", time.perf_counter() - start
    try:
        from curvlab.linalg.eigsh import eigsh
    except ImportError:
        eigsh = None
    if eigsh is not None:
        result = eigsh(op, TOP, which="LM", tol=tol, seed=SEED)
        values, vectors = by_magnitude(result.eigenvalues, result.eigenvectors)
        source = f"curvlab eigsh (tol {tol:g})"
    else:
        import numpy
        from scipy.sparse.linalg import eigsh as scipy_eigsh

        v0 = numpy.random.default_rng(SEED).standard_normal(dim)
        vals, vecs = scipy_eigsh(op.to_scipy(), k=TOP, which="LM", tol=tol, v0=v0)
        values, vectors = by_magnitude(torch.from_numpy(vals), torch.from_numpy(vecs))
        source = f"scipy eigsh (tol {tol:g})"
    return values, vectors, source, time.perf_counter() - start


def compare(values: Tensor, vectors: Tensor, ref_values: Tensor, ref_vectors: Tensor):
    """Largest relative error of the top magnitudes, and the subspace overlap."""
    m = min(TOP, len(values), len(ref_values))
    ref = ref_values[:m].abs()
    error = float(((values[:m].abs() - ref).abs() / ref).max())
    overlap = float((vectors[:, :m].T @ ref_vectors[:, :m]).pow(2).sum() / m)
    return error, overlap


def run_curvlab(op, k: int, s: int, block: int):
    counted = CountedHVP(op)
    result = sketched_eigh(counted, k, s, seed=SEED, block_size=block)
    return result.eigenvalues, result.eigenvectors, counted.num_matvecs


def run_skerch(op, k: int, s: int, block: int):
    from skerch.algorithms import seigh

    counted = CountedHVP(op)
    values, vectors = seigh(
        counted,
        op.device,
        op.dtype,
        k,
        seed=SEED,
        noise_type="ssrft",
        recovery_type=f"oversampled_{s}",
        meas_blocksize=block,
    )
    values, vectors = by_magnitude(values, vectors)
    return values, vectors, counted.num_matvecs


RUNNERS = {"curvlab": run_curvlab, "skerch": run_skerch}


@dataclass
class Row:
    """One problem's results: sizes, HVP counts, times, errors, overlaps."""

    problem: str
    dim: int
    k: int
    s: int
    reference: str
    hvps: dict
    seconds: dict
    ratios: list
    errors: dict
    overlaps: dict
    busy: int

    @property
    def ratio(self) -> float:
        """Median over repeats of skerch's time over curvlab's."""
        return statistics.median(self.ratios)

    @property
    def passed(self) -> bool:
        """Whether the time target holds at no worse error."""
        slack, floor = ERROR_SLACK
        accurate = self.errors["curvlab"] <= slack * self.errors["skerch"] + floor
        return self.ratio >= TIME_TARGET and accurate


def bench_problem(name: str, args, guard) -> Row:
    from bench_operators import build_case

    case = build_case(name, seed=args.seed)
    train(case, args.train_steps, seed=args.seed)
    op = cl.HessianOperator(case.model, case.loss_fn, case.data)
    dim = op.shape[0]
    k = max(2, min(args.max_outer, round(args.outer_fraction * dim)))
    s = min(2 * k, dim)
    print(f"[{name}] D={dim}, k={k}, s={s}: reference ...", flush=True)
    ref_values, ref_vectors, source, ref_s = reference(op, args.dense_max, args.tol)
    print(f"[{name}] reference by {source} in {ref_s:.1f} s", flush=True)
    seconds = {lib: [] for lib in LIBRARIES}
    ratios, outputs, busy = [], {}, 0
    for repeat in range(args.repeats):
        order = LIBRARIES if repeat % 2 == 0 else LIBRARIES[::-1]
        this = {}
        for lib in order:

            def call(lib=lib):
                outputs[lib] = RUNNERS[lib](op, k, s, args.block_size)

            elapsed, canary = guard.measure(call)
            busy += guard.busy(canary)
            this[lib] = elapsed
            seconds[lib].append(elapsed)
        ratios.append(this["skerch"] / this["curvlab"])
        print(
            f"[{name}] repeat {repeat + 1}: curvlab {this['curvlab']:.2f} s, "
            f"skerch {this['skerch']:.2f} s",
            flush=True,
        )
    errors, overlaps, hvps = {}, {}, {}
    for lib, (values, vectors, count) in outputs.items():
        errors[lib], overlaps[lib] = compare(values, vectors, ref_values, ref_vectors)
        hvps[lib] = count
    return Row(
        name,
        dim,
        k,
        s,
        source,
        hvps,
        {lib: statistics.median(t) for lib, t in seconds.items()},
        ratios,
        errors,
        overlaps,
        busy,
    )


def markdown(rows: list[Row], args) -> str:
    header = (
        "| problem | D | k / s | HVPs curvlab / skerch | time curvlab (s) | "
        "time skerch (s) | skerch / curvlab | top-10 error curvlab / skerch | "
        "overlap curvlab / skerch | reference | target |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        spread = f"{min(r.ratios):.2f}-{max(r.ratios):.2f}"
        lines.append(
            f"| {r.problem} | {r.dim:,} | {r.k} / {r.s} | {r.hvps['curvlab']} / "
            f"{r.hvps['skerch']} | {r.seconds['curvlab']:.2f} | "
            f"{r.seconds['skerch']:.2f} | {r.ratio:.2f} ({spread}) | "
            f"{r.errors['curvlab']:.2e} / {r.errors['skerch']:.2e} | "
            f"{r.overlaps['curvlab']:.4f} / {r.overlaps['skerch']:.4f} | "
            f"{r.reference} | {'PASS' if r.passed else 'FAIL'} |"
        )
    versions = ", ".join(
        f"{p} {importlib.metadata.version(p)}" for p in ("torch", "skerch")
    )
    note = (
        f"\n{versions}; {platform.machine()}, {torch.get_num_threads()} threads; "
        f"{args.repeats} repeat(s), {args.train_steps} SGD steps; timings taken "
        f"while other processes competed for the CPUs: "
        f"{sum(r.busy for r in rows)}.\n"
        f"Target: skerch/curvlab time >= {TIME_TARGET} and curvlab error <= "
        f"{ERROR_SLACK[0]} x skerch's + {ERROR_SLACK[1]}.\n"
    )
    return header + "\n".join(lines) + "\n" + note


# ------------------------------------------------------------------ budget table
def budget_table(args) -> str:
    """SEIGH top-10 error against the budget on digits_mlp, at init and trained."""
    fractions = (0.01, 0.02, 0.05, 0.1, 0.2) if not args.quick else (0.02, 0.05)
    seeds = range(3 if not args.quick else 1)
    problem = problems.get("digits_mlp", dtype=torch.float64, seed=args.seed)
    lines = [
        "| state | num_outer (% of D) | num_inner | top-1 error | top-10 error | "
        "top-10 overlap |",
        "|---|---|---|---|---|---|",
    ]
    for state in ("init", "trained"):
        if state == "trained":

            class _Case:
                model, loss_fn = problem.model, problem.loss_fn
                data = list(problem.train_data)

            train(_Case, args.budget_steps, seed=args.seed)
        op = cl.HessianOperator(problem.model, problem.loss_fn, problem.train_data)
        dense = op.to_dense()
        dense = (dense + dense.T) / 2
        values, vectors = by_magnitude(*torch.linalg.eigh(dense))
        dim = dense.shape[0]
        negative = float((values < 0).double().mean())
        print(
            f"[{state}] D={dim}, top |λ| {float(values[0].abs()):.4g}, "
            f"10th {float(values[9].abs()):.4g}, negative {negative:.0%}",
            flush=True,
        )
        for fraction in fractions:
            k = round(fraction * dim)
            top1, top10, overlap = [], [], []
            for seed in seeds:
                result = sketched_eigh(dense, k, 2 * k, seed=seed)
                error, ov = compare(
                    result.eigenvalues, result.eigenvectors, values[:TOP], vectors
                )
                ref = values[0].abs()
                top1.append(float((result.eigenvalues[0].abs() - ref).abs() / ref))
                top10.append(error)
                overlap.append(ov)
            lines.append(
                f"| {state} | {k} ({fraction:.0%}) | {2 * k} | "
                f"{statistics.mean(top1):.2%} | {statistics.mean(top10):.2%} "
                f"(max {max(top10):.2%}) | {statistics.mean(overlap):.3f} |"
            )
    note = (
        f"\ndigits_mlp (D = 3,190, 1,437 train samples), Hessian of the mean "
        f"cross-entropy; trained = {args.budget_steps} SGD steps (lr 0.1, batch 32, "
        f"seed {args.seed}). Errors of |λ| sorted by magnitude against dense eigh, "
        f"mean over {len(seeds)} seed(s); SSRFT test matrices.\n"
    )
    return "\n".join(lines) + "\n" + note


# ------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small budgets, 1 repeat")
    parser.add_argument("--outer-fraction", type=float, default=0.05)
    parser.add_argument("--max-outer", type=int, default=200)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--dense-max", type=int, default=4000)
    parser.add_argument("--tol", type=float, default=1e-8, help="reference eigsh")
    parser.add_argument("--markdown", help="write the results as markdown to PATH")
    parser.add_argument("--budget-table", action="store_true")
    parser.add_argument("--budget-steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
        args.outer_fraction = 0.02
        args.max_outer = min(args.max_outer, 40)
        args.block_size = min(args.block_size, 40)
        args.train_steps = min(args.train_steps, 100)
        args.budget_steps = min(args.budget_steps, 300)
        args.tol = max(args.tol, 1e-6)
    unknown = set(args.problems) - set(PROBLEMS)
    if unknown:
        parser.error(f"unknown problems {sorted(unknown)}; choose from {PROBLEMS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.budget_table:
        text = budget_table(args)
    else:
        from bench_operators import ContentionGuard

        guard = ContentionGuard(max_wait_s=5.0 if args.quick else 30.0)
        rows = [bench_problem(name, args, guard) for name in args.problems]
        text = markdown(rows, args)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
