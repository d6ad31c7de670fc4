"""Benchmark trace and diagonal estimators: curvlab, curvlinops, skerch and PyHessian.

Run from the repository root::

    python benchmarks/bench_estimators.py [--problems ...] [--budget M] [--seeds S]
        [--quick] [--markdown PATH]

Every library estimates the trace and the diagonal of the same Hessian (the
problems, models, data and batches of ``bench_operators.py``: ``digits_mlp``,
``digits_cnn`` and the 97,378-parameter ``mnist16_cnn``; ``CrossEntropyLoss``,
mean; float64 on the CPU) with the same budget of ``M`` Hessian-vector products
(one column = one product; the count is checked by wrapping every library's
operator in a counter):

============  =====================================================================
method        libraries (function)
============  =====================================================================
hutchinson    curvlab ``hutchinson_trace``/``hutchinson_diagonal``; curvlinops
              ``hutchinson_trace``/``hutchinson_diag``; skerch ``hutch``; PyHessian
              ``hessian.trace`` (trace only, ``maxIter=M``, ``tol=-inf``: exactly M
              products)
hutch++       curvlab ``hutchpp_trace``; curvlinops ``hutchpp_trace`` (trace only)
xtrace/xdiag  curvlab ``xtrace`` (default: Epperly et al.'s improved variant) and
              ``xtrace(distribution="rademacher")``, ``xdiag``; curvlinops ``xtrace``,
              ``xdiag``; skerch ``xhutchpp(x_dims=M/2, gh_meas=0)``
============  =====================================================================

All probes are Rademacher except curvlab's default XTrace (uniform on the sphere).
curvlab hands the operator blocks of 32 columns (its default), skerch is given
``meas_blocksize=32``, curvlinops multiplies all columns at once, PyHessian one
vector at a time (it has no matmat).

Reference: the dense Hessian (``to_dense``, ``D`` products) for ``D <=
--dense-max`` (default 4000: ``digits_mlp``, ``digits_cnn``). Above that
(``mnist16_cnn``): the trace from curvlab's XTrace with ``--ref-budget`` products
(default 2048; its own error estimate is printed), and the diagonal *exactly* on
``--ref-coords`` random coordinates (default 256; ``H e_k`` costs one product per
coordinate): diagonal errors are then measured on those coordinates.

Metrics, per (method, library): the relative error of the trace, ``|t - t*| / |t*|``,
and of the diagonal, ``||d - d*|| / ||d*||``, and the wall time of the whole call
(probe generation, products and linear algebra), medians over ``--seeds`` seeds
(in each seed the calls run interleaved, in an order rotated from seed to seed).
Ratios are curvlab's median over the peer's median. Target (from the issue): equal
error at equal products (error ratio at most 1.25: the medians of 5 seeds scatter
by about 20%) and faster through blocked products (time ratio below 1).

``--quick`` checks that the script runs: ``digits_mlp`` and ``digits_cnn`` on their
first batch of 256 samples, budget 24, 2 seeds, one torch thread; its numbers are not
the results. On a machine shared with other jobs, pass ``--threads 1`` (or a count
below the free cores): oversubscribed intra-op threads slow small float64 products
by up to 100x, and unevenly across libraries.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import curvlinops  # noqa: E402
import pyhessian  # noqa: E402
from skerch.algorithms import hutch as skerch_hutch  # noqa: E402
from skerch.algorithms import xhutchpp as skerch_xhutchpp  # noqa: E402
from skerch.linops import BaseLinOp  # noqa: E402

import curvlab as cl  # noqa: E402
from bench_operators import (  # noqa: E402
    PROBLEMS,
    Case,
    PyHessianHVP,
    build_case,
    machine_report,
)
from curvlab.linalg import (  # noqa: E402
    hutchinson_diagonal,
    hutchinson_trace,
    hutchpp_trace,
    xdiag,
    xtrace,
)

# PyHessian calls loss.backward(create_graph=True), which warns about a cycle.
warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")

DEFAULT_BUDGET = 96  # divisible by 2 (XTrace/XDiag), 3 (Hutch++) and 32
QUICK_BUDGET = 24
DEFAULT_SEEDS = 5
QUICK_SEEDS = 2
QUICK_PROBLEMS = ("digits_mlp", "digits_cnn")
BLOCK = 32
ERROR_TARGET = 1.25
TIME_TARGET = 1.0
TOLERANCE = 1e-10


# ------------------------------------------------------------------- operators
class Counter:
    """Counts the columns a library multiplies; duck-types curvlinops' operators."""

    def __init__(self, op, dim: int):
        self.op = op
        self.shape = (dim, dim)
        self.dtype = torch.float64
        self.device = torch.device("cpu")
        self.is_symmetric = True
        self.count = 0

    def __matmul__(self, X: Tensor) -> Tensor:
        self.count += 1 if X.ndim == 1 else X.shape[1]
        return self.op @ X

    def adjoint(self) -> Counter:
        """The operator itself (the Hessian is symmetric)."""
        return self


class SkerchHessian(BaseLinOp):
    """The curvlab Hessian seen as a skerch linear operator (symmetric)."""

    def __init__(self, counter: Counter):
        super().__init__(counter.shape)
        self.counter = counter

    def matmul(self, x: Tensor) -> Tensor:
        """``H @ x`` for ``(D, k)`` ``x``."""
        return self.counter @ x

    def rmatmul(self, x: Tensor) -> Tensor:
        """``x @ H = (H @ x^T)^T`` for ``(k, D)`` ``x``."""
        return (self.counter @ x.T).T


@dataclass
class Reference:
    """Ground truth: trace and the diagonal on ``coords``."""

    kind: str
    trace: float
    trace_error: float  # standard error of the trace reference (0 when dense)
    coords: Tensor
    diagonal: Tensor
    num_matvecs: int
    seconds: float


def reference(
    op, dim: int, dense_max: int, ref_budget: int, ref_coords: int
) -> Reference:
    start = time.perf_counter()
    if dim <= dense_max:
        H = op.to_dense(max_dim=dense_max, chunk_size=BLOCK)
        H = (H + H.T) / 2
        coords = torch.arange(dim)
        return Reference(
            "dense Hessian",
            float(H.trace()),
            0.0,
            coords,
            H.diagonal().clone(),
            dim,
            time.perf_counter() - start,
        )
    est = xtrace(op, ref_budget, seed=10**6)
    g = torch.Generator().manual_seed(12345)
    coords = torch.randperm(dim, generator=g)[:ref_coords].sort().values
    diagonal = torch.empty(len(coords), dtype=torch.float64)
    for i in range(0, len(coords), BLOCK):
        chunk = coords[i : i + BLOCK]
        E = torch.zeros(dim, len(chunk), dtype=torch.float64)
        E[chunk, torch.arange(len(chunk))] = 1.0
        diagonal[i : i + len(chunk)] = (op @ E)[chunk, torch.arange(len(chunk))]
    return Reference(
        f"trace: curvlab XTrace with {ref_budget} products; diagonal: exact on "
        f"{len(coords)} random coordinates",
        est.value,
        est.std_error or 0.0,
        coords,
        diagonal,
        est.num_matvecs + len(coords),
        time.perf_counter() - start,
    )


# ------------------------------------------------------------------ estimators
@dataclass
class Runner:
    """One (task, method, library): a call ``(seed) -> estimate``."""

    task: str  # "trace" or "diagonal"
    method: str
    library: str
    call: Callable[[int], float | Tensor]
    counter: Counter


def make_runners(case: Case, budget: int) -> list[Runner]:
    D = case.num_params
    ours = cl.HessianOperator(case.model, case.loss_fn, case.data)
    theirs = curvlinops.HessianLinearOperator(
        case.model, case.loss_fn, case.params, case.data
    )
    runners = []

    def add(task, method, library, op, fn):
        counter = Counter(op, D)
        runners.append(Runner(task, method, library, lambda s: fn(counter, s), counter))

    half = budget // 2
    # curvlab
    add(
        "trace",
        "hutchinson",
        "curvlab",
        ours,
        lambda A, s: hutchinson_trace(A, budget, seed=s).value,
    )
    add(
        "trace",
        "hutch++",
        "curvlab",
        ours,
        lambda A, s: hutchpp_trace(A, budget, seed=s).value,
    )
    add(
        "trace", "xtrace", "curvlab", ours, lambda A, s: xtrace(A, budget, seed=s).value
    )
    add(
        "trace",
        "xtrace",
        "curvlab (rademacher)",
        ours,
        lambda A, s: xtrace(A, budget, seed=s, distribution="rademacher").value,
    )
    add(
        "diagonal",
        "hutchinson",
        "curvlab",
        ours,
        lambda A, s: hutchinson_diagonal(A, budget, seed=s).value,
    )
    add(
        "diagonal",
        "xdiag",
        "curvlab",
        ours,
        lambda A, s: xdiag(A, budget, seed=s).value,
    )

    # curvlinops: global RNG
    def seeded(fn):
        def call(A, s):
            torch.manual_seed(s)
            return fn(A)

        return call

    add(
        "trace",
        "hutchinson",
        "curvlinops",
        theirs,
        seeded(lambda A: float(curvlinops.hutchinson_trace(A, budget))),
    )
    add(
        "trace",
        "hutch++",
        "curvlinops",
        theirs,
        seeded(lambda A: float(curvlinops.hutchpp_trace(A, budget))),
    )
    add(
        "trace",
        "xtrace",
        "curvlinops",
        theirs,
        seeded(lambda A: float(curvlinops.xtrace(A, budget))),
    )
    add(
        "diagonal",
        "hutchinson",
        "curvlinops",
        theirs,
        seeded(lambda A: curvlinops.hutchinson_diag(A, budget)),
    )
    add(
        "diagonal",
        "xdiag",
        "curvlinops",
        theirs,
        seeded(lambda A: curvlinops.xdiag(A, budget)),
    )

    # skerch
    def sk(fn):
        return lambda A, s: fn(SkerchHessian(A), s)

    kw = {"noise_type": "rademacher", "meas_blocksize": BLOCK}
    cpu, f64 = "cpu", torch.float64
    add(
        "trace",
        "hutchinson",
        "skerch",
        ours,
        sk(
            lambda L, s: float(
                skerch_hutch(L, cpu, f64, budget, seed=s, return_diag=False, **kw)["tr"]
            )
        ),
    )
    add(
        "trace",
        "xtrace",
        "skerch",
        ours,
        sk(
            lambda L, s: float(
                skerch_xhutchpp(
                    L, cpu, f64, x_dims=half, seed=s, return_diag=False, **kw
                )["tr"]
            )
        ),
    )
    add(
        "diagonal",
        "hutchinson",
        "skerch",
        ours,
        sk(lambda L, s: skerch_hutch(L, cpu, f64, budget, seed=s, **kw)["diag"]),
    )
    add(
        "diagonal",
        "xdiag",
        "skerch",
        ours,
        sk(
            lambda L, s: skerch_xhutchpp(L, cpu, f64, x_dims=half, seed=s, **kw)["diag"]
        ),
    )
    # PyHessian: its own trace loop over its own HVP (one vector at a time)
    hess = pyhessian.hessian(case.model, case.loss_fn, dataloader=case.data, cuda=False)
    counter = Counter(None, D)

    def pyhessian_trace(s):
        torch.manual_seed(s)
        samples = hess.trace(maxIter=budget, tol=-math.inf)
        counter.count += len(samples)
        return statistics.fmean(samples)

    runners.append(Runner("trace", "hutchinson", "pyhessian", pyhessian_trace, counter))
    return runners


def check_products(case: Case) -> float:
    """Largest relative difference of the three libraries' Hessian products."""
    ours = cl.HessianOperator(case.model, case.loss_fn, case.data)
    theirs = curvlinops.HessianLinearOperator(
        case.model, case.loss_fn, case.params, case.data
    )
    V = torch.randn(
        case.num_params,
        2,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    HV = ours @ V
    errors = [float((theirs @ V - HV).norm() / HV.norm())]
    errors.append(float((PyHessianHVP(case) @ V[:, 0] - HV[:, 0]).norm() / HV.norm()))
    return max(errors)


# ----------------------------------------------------------------------- runs
@dataclass
class Row:
    """Measurements of one (task, method, library) over the seeds."""

    task: str
    method: str
    library: str
    errors: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    products: list[int] = field(default_factory=list)

    @property
    def error(self) -> float:
        """Median relative error."""
        return statistics.median(self.errors)

    @property
    def time(self) -> float:
        """Median wall time in seconds."""
        return statistics.median(self.seconds)


def rel_error(estimate, ref: Reference, task: str) -> float:
    if task == "trace":
        return abs(float(estimate) - ref.trace) / abs(ref.trace)
    d = estimate[ref.coords]
    return float((d - ref.diagonal).norm() / ref.diagonal.norm())


def bench_problem(name: str, args) -> tuple[str, list[Row]]:
    case = build_case(name, seed=args.seed)
    if args.quick:
        case.data = case.data[:1]
    D = case.num_params
    print(f"\n## {name}: D = {D:,}, N = {case.num_samples:,}", flush=True)
    mismatch = check_products(case)
    print(f"products of the three libraries agree to {mismatch:.1e}", flush=True)
    if mismatch > TOLERANCE:
        raise SystemExit(f"{name}: the libraries multiply different matrices.")
    ref = reference(
        cl.HessianOperator(case.model, case.loss_fn, case.data),
        D,
        args.dense_max,
        args.ref_budget,
        args.ref_coords,
    )
    print(
        f"reference: {ref.kind} ({ref.num_matvecs:,} products, {ref.seconds:.1f} s); "
        f"trace {ref.trace:.6g}"
        + (f" ± {ref.trace_error:.2g}" if ref.trace_error else ""),
        flush=True,
    )
    runners = make_runners(case, args.budget)
    rows = {
        (r.task, r.method, r.library): Row(r.task, r.method, r.library) for r in runners
    }
    for seed in range(args.seeds):
        shift = seed % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            runner.counter.count = 0
            gc.collect()
            start = time.perf_counter()
            estimate = runner.call(seed)
            elapsed = time.perf_counter() - start
            row = rows[(runner.task, runner.method, runner.library)]
            row.errors.append(rel_error(estimate, ref, runner.task))
            row.seconds.append(elapsed)
            row.products.append(runner.counter.count)
        print(f"seed {seed + 1}/{args.seeds} done", flush=True)
    header = (
        f"### {name}\n\n{case.description.rstrip('.')}. "
        f"D = {D:,}, N = {case.num_samples:,} "
        f"in {len(case.data)} batch(es). Budget {args.budget} products, "
        f"{args.seeds} seeds. Reference: {ref.kind} ({ref.num_matvecs:,} products"
        + (
            f"; trace standard error {ref.trace_error / abs(ref.trace):.1e} relative"
            if ref.trace_error
            else ""
        )
        + ")."
    )
    return header, list(rows.values())


def table(rows: list[Row]) -> str:
    lines = [
        "| task | method | library | products | median rel. error | median time (s) |"
        " error ratio | time ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ours = {(r.task, r.method): r for r in rows if r.library == "curvlab"}
    for r in rows:
        products = sorted(set(r.products))
        count = "/".join(map(str, products))
        mine = ours.get((r.task, r.method))
        if r.library.startswith("curvlab") or mine is None:
            ratios = "", ""
        else:
            e = mine.error / r.error if r.error > 0 else math.inf
            t = mine.time / r.time
            ratios = (
                f"{e:.2f} {'PASS' if e <= ERROR_TARGET else 'FAIL'}",
                f"{t:.2f} {'PASS' if t < TIME_TARGET else 'FAIL'}",
            )
        lines.append(
            f"| {r.task} | {r.method} | {r.library} | {count} | {r.error:.2e} | "
            f"{r.time:.3f} | {ratios[0]} | {ratios[1]} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, default=None)
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help=f"products per estimate (default {DEFAULT_BUDGET}; "
        f"quick {QUICK_BUDGET}); a multiple of 6",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"seeds (default {DEFAULT_SEEDS}; quick {QUICK_SEEDS})",
    )
    parser.add_argument("--dense-max", type=int, default=4000)
    parser.add_argument("--ref-budget", type=int, default=2048)
    parser.add_argument("--ref-coords", type=int, default=256)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="digits problems on 256 samples, budget 24, 2 seeds",
    )
    parser.add_argument("--markdown", help="write the results as markdown to PATH")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's default; quick: 1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="model/data seed")
    args = parser.parse_args(argv)
    if args.problems is None:
        args.problems = list(QUICK_PROBLEMS if args.quick else PROBLEMS)
    if args.budget is None:
        args.budget = QUICK_BUDGET if args.quick else DEFAULT_BUDGET
    if args.seeds is None:
        args.seeds = QUICK_SEEDS if args.quick else DEFAULT_SEEDS
    if args.budget < 6 or args.budget % 6 or args.seeds < 1:
        parser.error("--budget must be a positive multiple of 6, --seeds >= 1.")
    if args.quick:
        args.threads = args.threads or 1
        args.ref_budget = min(args.ref_budget, 128)
        args.ref_coords = min(args.ref_coords, 32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_estimators.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine = machine_report()
    print(f"{machine}\nload average before: {os.getloadavg()[0]:.2f}", flush=True)
    started = time.perf_counter()
    sections = []
    for name in args.problems:
        header, rows = bench_problem(name, args)
        text = f"{header}\n\n{table(rows)}\n"
        print("\n" + text, flush=True)
        sections.append(text)
    minutes = (time.perf_counter() - started) / 60
    report = (
        f"## Trace and diagonal estimators\n\n`{command}` on {date}, {minutes:.1f} "
        f"min. {machine}. Load average at the end: {os.getloadavg()[0]:.2f}.\n\n"
        "Error ratio: curvlab's median relative error over the peer's (target <= "
        f"{ERROR_TARGET}); time ratio: curvlab's median wall time over the peer's "
        f"(target < {TIME_TARGET}); curvlab's row of the same method is the "
        "numerator (for xtrace: the default, improved variant).\n\n"
        + "\n".join(sections)
    )
    if args.markdown:
        Path(args.markdown).write_text(report)
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
