"""Benchmark inverse products: CG with and without Nyström preconditioning.

Run from the repository root::

    python benchmarks/bench_inverse.py [--problems ...] [--ranks 50 100 319 auto]
        [--repeats N] [--train-steps 1000] [--threads T] [--quick] [--markdown PATH]

For each problem (default ``digits_mlp``: the model, data and 256-sample
batches of ``bench_operators.build_case``, float64, CPU) and each state (at
initialisation, and after ``--train-steps`` SGD steps with ``bench_sketch.train``:
learning rate 0.1, batch 32), the script solves

    (G + δ I) x = b,   δ = --damping (1e-3),   b ~ N(0, I) (seeded),

for the GGN ``G`` of the mean cross-entropy, to a relative residual of ``--tol``
(1e-6), with

- ``cg``: :func:`curvlab.linalg.cg`, no preconditioner;
- ``cg + nystrom(r)``: the same with :func:`curvlab.linalg.nystrom_preconditioner`
  of rank ``r`` (Gaussian sketch, seed 0); ``auto`` is the effective-dimension
  rule with its default cap ``max_rank = D // 10``. The build (``r`` GGN products
  in one block, plus the small dense solve) is timed separately;
- ``curvlinops cg (tol t)``: curvlinops' ``CGInverseLinearOperator`` of
  ``GGNLinearOperator + δ I`` (GPyTorch's ``linear_cg``, ``tolerance=t =
  --peer-tol``, ``max_iter=--max-iters``), products counted by wrapping its GGN,
  beside curvlab's plain CG at the same tolerance (``cg (tol t)``). The peer runs
  at ``--peer-tol`` (default 1e-5), not ``--tol``: on ``digits_mlp`` GPyTorch's
  CG stalls near a relative residual of 1e-5 (measured 9.7e-6 after 2,000
  iterations at ``tolerance=1e-6``, 100 s), so a comparison at 1e-6 would only
  time its budget. GPyTorch's CG takes a preconditioner closure: with
  ``--peer-rank r`` a last row hands it curvlab's Nyström preconditioner of rank
  ``r``. Off by default: on ``digits_mlp`` (r = 100) it stalled at a relative
  residual of 1.0-1.2e-5, just above 1e-5, and spent its 2,000 iterations
  (95-110 s per solve).

Reported per row: iterations (CG steps; for curvlinops the products counted),
GGN products (build + solve), the median wall time of the solve and of the build
over ``--repeats`` repeats (methods interleaved, order rotated per repeat), and
the *true* relative residual ``||b - (G + δI) x|| / ||b||``, recomputed with one
extra product outside the timing.

With ``--tic-probes m`` (default 30; 0 skips it) each state also estimates the
TIC, :func:`curvlab.linalg.tic` of the damped GGN (standing for the Hessian)
and the centered gradient covariance, Hutch++ with ``m`` probes and CG
preconditioned by Nyström of rank ``--tic-rank``, against the dense
``tr((G + δI)^{-1} C)`` for ``D <= --tic-dense-max`` (two ``to_dense`` calls).

Target (from the issue; PASS/FAIL): after training, Nyström-preconditioned CG
needs at most half the iterations of plain CG at some rank ``r <= 0.1 D``.

:func:`bench_inverse` returns the rows, so the benchmark can be merged into a
wider one; ``__main__`` prints them as markdown.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import curvlab as cl  # noqa: E402
from curvlab.linalg import cg, nystrom_preconditioner  # noqa: E402

PROBLEMS = ("digits_mlp", "digits_cnn", "mnist16_cnn")
TARGET = 0.5  # Nyström iterations / plain CG iterations after training, at most
MAX_RANK_FRACTION = 0.1  # ... at a rank of at most this fraction of D


@dataclass
class Row:
    """One solve: a problem, a state and a method.

    Attributes:
        problem: Problem name.
        state: ``"init"`` or ``"trained"``.
        dim: ``D``.
        method: ``"cg"``, ``"cg + nystrom"`` or ``"curvlinops cg"``.
        rank: Nyström rank (``None`` otherwise).
        rule: How the rank was chosen (``"given"``, ``"effective dimension"``,
            ``"max_rank"``), ``""`` otherwise.
        iterations: CG iterations (curvlinops: GGN products of the solve).
        build_matvecs: GGN products of the preconditioner.
        solve_matvecs: GGN products of the solve.
        solve_s: Median seconds of the solve.
        build_s: Median seconds of the preconditioner's build.
        residual: True relative residual of the answer.
        converged: Whether the solver says it met ``tol``.
    """

    problem: str
    state: str
    dim: int
    method: str
    rank: int | None
    rule: str
    iterations: int
    build_matvecs: int
    solve_matvecs: int
    solve_s: float
    build_s: float
    residual: float
    converged: bool


@dataclass
class TICRow:
    """One TIC estimate on the damped GGN, with its dense reference.

    Attributes:
        problem: Problem name.
        state: ``"init"`` or ``"trained ..."``.
        num_data: ``N``.
        num_probes: Hutch++ budget.
        value: The TIC estimate.
        std_error: Its standard error.
        gap: ``value / N``.
        dense: ``tr((G + δI)^{-1} C)`` from dense matrices (``None`` above
            ``--tic-dense-max``).
        ggn_matvecs: GGN products (Nyström build + all CG iterations).
        seconds: Wall time of the estimate, preconditioner included.
    """

    problem: str
    state: str
    num_data: int
    num_probes: int
    value: float
    std_error: float
    gap: float
    dense: float | None
    ggn_matvecs: int
    seconds: float


def bench_tic(case, state: str, args) -> TICRow:
    """Estimate the TIC with the GGN standing for the Hessian, and check it densely."""
    op = cl.GGNOperator(case.model, case.loss_fn, case.data, check_deterministic=False)
    cov = cl.GradientCovarianceOperator(
        case.model, case.loss_fn, case.data, check_deterministic=False
    )
    start = time.perf_counter()
    P = nystrom_preconditioner(op, args.damping, args.tic_rank, seed=0)
    est = cl.linalg.tic(
        op,
        cov,
        args.damping,
        args.tic_probes,
        tol=args.tol,
        preconditioner=P,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start
    dense = None
    if op.shape[0] <= args.tic_dense_max:
        G, C = op.to_dense(), cov.to_dense()
        eye = torch.eye(op.shape[0], dtype=G.dtype)
        dense = float(torch.linalg.solve(G + args.damping * eye, C).trace())
    print(
        f"[{case.name} {state}] TIC {est.value:.4g} ± {est.std_error:.2g}", flush=True
    )
    return TICRow(
        problem=case.name,
        state=state,
        num_data=est.num_data,
        num_probes=est.num_probes,
        value=est.value,
        std_error=est.std_error,
        gap=est.gap,
        dense=dense,
        ggn_matvecs=P.num_matvecs + est.num_matvecs,
        seconds=seconds,
    )


def tic_markdown(rows: list[TICRow], args) -> str:
    """The TIC rows as a markdown table."""
    lines = [
        "| problem | state | N | probes | TIC ± std. error | gap TIC/N | dense TIC | "
        "error / std. error | GGN products | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dense = "" if r.dense is None else f"{r.dense:.4g}"
        z = "" if r.dense is None else f"{abs(r.value - r.dense) / r.std_error:.2f}"
        lines.append(
            f"| {r.problem} | {r.state} | {r.num_data:,} | {r.num_probes} | "
            f"{r.value:.4g} ± {r.std_error:.2g} | {r.gap:.3g} | {dense} | {z} | "
            f"{r.ggn_matvecs:,} | {r.seconds:.1f} |"
        )
    note = (
        f"\nTIC = tr((G + δI)^-1 C), G the GGN standing for the Hessian, C the "
        f"centered per-sample gradient covariance (1/N), δ = {args.damping}; Hutch++ "
        f"with {args.tic_probes} Rademacher probes, CG to {args.tol} preconditioned "
        f"by Nyström of rank {args.tic_rank}.\n"
    )
    return "\n".join(lines) + "\n" + note


class _CountedPeer:
    """Count the columns curvlinops' GGN multiplies (its ``_matmat`` on lists)."""

    def __init__(self, peer):
        self.count = 0
        inner = peer._matmat

        def counted(M):
            self.count += M[0].shape[-1]
            return inner(M)

        peer._matmat = counted


def _true_residual(op, damping: float, b: Tensor, x: Tensor) -> float:
    return float((b - op @ x - damping * x).norm() / b.norm())


def _solvers(case, op, b, args, dim):
    """Name -> callable returning ``(x, iterations, solve products, converged)``."""
    solvers = {}

    def plain():
        result = cg(op, b, args.damping, tol=args.tol, max_iters=args.max_iters)
        return result.solution, result.num_iters, result.num_matvecs, result.converged

    solvers[("cg", None)] = plain
    if args.curvlinops:

        def plain_peer_tol():
            result = cg(
                op, b, args.damping, tol=args.peer_tol, max_iters=args.max_iters
            )
            return (
                result.solution,
                result.num_iters,
                result.num_matvecs,
                result.converged,
            )

        solvers[(f"cg (tol {args.peer_tol:g})", None)] = plain_peer_tol

    def preconditioned(build):
        """A solver that builds its preconditioner (timed apart), then runs CG."""

        def solve():
            start = time.perf_counter()
            P = build()
            built = time.perf_counter() - start
            result = cg(
                op,
                b,
                args.damping,
                tol=args.tol,
                max_iters=args.max_iters,
                preconditioner=P,
            )
            return (
                result.solution,
                result.num_iters,
                result.num_matvecs,
                result.converged,
                P,
                built,
            )

        return solve

    for rank in args.ranks:
        solvers[("cg + nystrom", rank)] = preconditioned(
            lambda rank=rank: nystrom_preconditioner(
                op, args.damping, "auto" if rank == "auto" else int(rank), seed=0
            )
        )
    solvers[("cg + kfac", None)] = preconditioned(
        lambda: cl.KFACOperator(case.model, case.loss_fn, case.data).inverse(
            damping=args.damping
        )
    )
    if args.curvlinops:
        import warnings

        import curvlinops
        from curvlinops.examples import IdentityLinearOperator

        params = [p for p in case.model.parameters() if p.requires_grad]
        peer = curvlinops.GGNLinearOperator(
            case.model, case.loss_fn, params, case.data, check_deterministic=False
        )
        counter = _CountedPeer(peer)
        eye = IdentityLinearOperator([p.shape for p in params], b.device, b.dtype)
        inverse = curvlinops.CGInverseLinearOperator(
            peer + eye * args.damping,
            tolerance=args.peer_tol,
            max_iter=args.max_iters,
        )

        def theirs():
            counter.count = 0
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                x = inverse @ b
            converged = not any("CG terminated" in str(w.message) for w in caught)
            return x, counter.count, counter.count, converged

        peer @ b  # warm-up
        solvers[(f"curvlinops cg (tol {args.peer_tol:g})", None)] = theirs

        def theirs_nystrom():
            start = time.perf_counter()
            P = nystrom_preconditioner(op, args.damping, args.peer_rank, seed=0)
            built = time.perf_counter() - start
            preconditioned = curvlinops.CGInverseLinearOperator(
                peer + eye * args.damping,
                tolerance=args.peer_tol,
                max_iter=args.max_iters,
                preconditioner=P.__matmul__,
            )
            counter.count = 0
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                x = preconditioned @ b
            converged = not any("CG terminated" in str(w.message) for w in caught)
            return x, counter.count, counter.count, converged, P, built

        if args.peer_rank:
            key = (f"curvlinops cg + curvlab nystrom (tol {args.peer_tol:g})", None)
            solvers[key] = theirs_nystrom
    return solvers


def bench_state(case, state: str, args) -> list[Row]:
    """Time every solver on the GGN of ``case`` in its current state."""
    op = cl.GGNOperator(case.model, case.loss_fn, case.data, check_deterministic=False)
    dim = op.shape[0]
    generator = torch.Generator().manual_seed(args.seed)
    b = torch.randn(dim, generator=generator, dtype=torch.float64)
    op @ b  # warm-up (first product, determinism check off)
    solvers = _solvers(case, op, b, args, dim)
    keys = list(solvers)
    times = {key: [] for key in keys}
    builds = {key: [] for key in keys}
    outputs = {}
    for repeat in range(args.repeats):
        shift = repeat % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            out = solvers[key]()
            elapsed = time.perf_counter() - start
            built = out[5] if len(out) > 5 else 0.0
            times[key].append(elapsed - built)
            builds[key].append(built)
            outputs[key] = out
        print(f"[{case.name} {state}] repeat {repeat + 1} done", flush=True)
    rows = []
    for key in keys:
        method, rank = key
        out = outputs[key]
        x, iterations, matvecs, converged = out[:4]
        P = out[4] if len(out) > 4 else None
        rows.append(
            Row(
                problem=case.name,
                state=state,
                dim=dim,
                method=method,
                rank=getattr(P, "rank", None),
                rule=getattr(P, "rule", ""),
                iterations=int(iterations),
                build_matvecs=getattr(P, "num_matvecs", 0),
                solve_matvecs=int(matvecs),
                solve_s=statistics.median(times[key]),
                build_s=statistics.median(builds[key]),
                residual=_true_residual(op, args.damping, b, x),
                converged=bool(converged),
            )
        )
    return rows


def bench_inverse(problem: str, args) -> tuple[list[Row], list[TICRow]]:
    """Rows for one problem, at initialisation and after training.

    Args:
        problem: A name from :data:`PROBLEMS`.
        args: The parsed options (see :func:`parse_args`).

    Returns:
        The solver rows and the TIC rows (none with ``--tic-probes 0``) of both
        states.
    """
    from bench_operators import build_case
    from bench_sketch import train

    case = build_case(problem, seed=args.seed)
    states = ["init"]
    if args.train_steps:
        states.append(f"trained ({args.train_steps} SGD steps)")
    rows, tic_rows = [], []
    for state in states:
        if state != "init":
            train(case, args.train_steps, seed=args.seed)
        rows += bench_state(case, state, args)
        if args.tic_probes:
            tic_rows.append(bench_tic(case, state, args))
    return rows, tic_rows


def verdict(rows: list[Row]) -> tuple[bool, str]:
    """PASS/FAIL of the target on the trained rows, with the deciding figures.

    A problem passes when some Nyström rank of at most 10% of ``D`` converges in
    at most half the iterations of plain CG; the text names the smallest one.
    """
    lines, passed = [], True
    for problem in dict.fromkeys(r.problem for r in rows):
        trained = [r for r in rows if r.problem == problem and r.state != "init"]
        plain = next((r for r in trained if r.method == "cg"), None)
        nys = sorted(
            (
                r
                for r in trained
                if r.method == "cg + nystrom" and r.rank <= MAX_RANK_FRACTION * r.dim
            ),
            key=lambda r: r.rank,
        )
        if plain is None or not nys:
            continue
        ratios = ", ".join(
            f"rank {r.rank} ({r.rank / r.dim:.1%} of D, {r.rule}): {r.iterations} "
            f"({r.iterations / plain.iterations:.2f})"
            for r in nys
        )
        good = [
            r for r in nys if r.converged and r.iterations <= TARGET * plain.iterations
        ]
        passed &= bool(good)
        smallest = f"smallest passing rank {good[0].rank}" if good else "no rank"
        lines.append(
            f"{problem}, trained: plain CG {plain.iterations} iterations; Nyström "
            f"{ratios}. Target <= {TARGET} x plain at rank <= "
            f"{MAX_RANK_FRACTION:.0%} of D: {smallest} -> "
            f"{'PASS' if good else 'FAIL'}"
        )
    return passed, "\n".join(lines)


def markdown(rows: list[Row], args) -> str:
    """The rows as a markdown table, with versions, command and verdict."""
    header = (
        "| problem | state | D | method | rank (rule) | iterations | GGN products "
        "build + solve | build (s) | solve (s) | total (s) | true rel. residual | "
        "converged |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        rank = "" if r.rank is None else f"{r.rank} ({r.rule})"
        lines.append(
            f"| {r.problem} | {r.state} | {r.dim:,} | {r.method} | {rank} | "
            f"{r.iterations} | {r.build_matvecs} + {r.solve_matvecs} | "
            f"{r.build_s:.2f} | {r.solve_s:.2f} | {r.build_s + r.solve_s:.2f} | "
            f"{r.residual:.1e} | "
            f"{'yes' if r.converged else 'no'} |"
        )
    passed, detail = verdict(rows)
    versions = ", ".join(
        f"{p} {importlib.metadata.version(p)}"
        for p in ("torch", "curvlinops-for-pytorch")
    )
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    note = (
        f"\n{versions}; {platform.machine()}, {torch.get_num_threads()} torch "
        f"thread(s); damping {args.damping}, tol {args.tol}, {args.repeats} "
        f"repeat(s); {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.\n"
        f"Command: `{command}`\n\n{detail}\n\n"
        f"Verdict: {'PASS' if passed else 'FAIL'}\n"
    )
    return header + "\n".join(lines) + "\n" + note


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The options.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", default=["digits_mlp"])
    parser.add_argument(
        "--ranks", nargs="+", default=["50", "100", "319", "auto"], help="or 'auto'"
    )
    parser.add_argument("--damping", type=float, default=1e-3)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--max-iters", type=int, default=2000)
    parser.add_argument(
        "--peer-tol",
        type=float,
        default=1e-5,
        help="tolerance of the curvlinops rows (and of a plain curvlab CG beside them)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-curvlinops", dest="curvlinops", action="store_false")
    parser.add_argument(
        "--peer-rank",
        type=int,
        default=0,
        help="Nyström rank for curvlinops' CG (0: no such row)",
    )
    parser.add_argument("--tic-probes", type=int, default=30, help="0 skips the TIC")
    parser.add_argument("--tic-rank", type=int, default=100)
    parser.add_argument("--tic-dense-max", type=int, default=4000)
    parser.add_argument("--quick", action="store_true", help="check that it runs")
    parser.add_argument("--markdown", help="write the results as markdown to PATH")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.train_steps = 1, min(args.train_steps, 100)
        args.ranks = ["50", "auto"]
        args.tic_probes = min(args.tic_probes, 9)
    unknown = set(args.problems) - set(PROBLEMS)
    if unknown:
        parser.error(f"unknown problems {sorted(unknown)}; choose from {PROBLEMS}")
    bad = [r for r in args.ranks if r != "auto" and not r.isdigit()]
    if bad:
        parser.error(f"--ranks takes positive ints or 'auto'. Got {bad}.")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally write) the markdown table."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, tic_rows = [], []
    for name in args.problems:
        solver_rows, more = bench_inverse(name, args)
        rows += solver_rows
        tic_rows += more
    text = markdown(rows, args)
    if tic_rows:
        text += "\n" + tic_markdown(tic_rows, args)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
