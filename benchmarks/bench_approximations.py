"""Benchmark curvlab's Kronecker-factored approximations against curvlinops.

Run from the repository root::

    python benchmarks/bench_approximations.py [--problems ...] [--dtypes ...]
        [--repeats N] [--quick] [--threads T] [--markdown PATH]

For each problem and dtype both libraries build the same approximation of the
same model, loss (``CrossEntropyLoss``, mean) and data (the same list of
``(X, y)`` batches, CPU), without determinism checks and with ``N`` given:

- the KFAC factors (type-2, expand, weights and biases separate):
  ``cl.KFACOperator`` against ``curvlinops.KFACLinearOperator`` followed by
  ``compute_kronecker_factors()``;
- the EKFAC factors and corrected scales: ``cl.EKFACOperator`` against
  ``EKFACLinearOperator`` with ``compute_kronecker_factors()`` and
  ``compute_eigenvalue_correction()``;
- KFAC and EKFAC products on ``k = 1`` and ``k = 32`` columns;
- exactly damped inverse products (damping 1e-3): ``op.inverse(1e-3)`` against
  ``KFACInverseLinearOperator(op, damping=1e-3, use_exact_damping=True)``, built
  once (the eigendecompositions are not timed), then applied.

Unit of time for the factors: one full-data gradient (loss and backward over all
batches, as in ``bench_operators.py``), timed in the same repeats. Products are
reported in milliseconds (each timing runs the product ``PRODUCT_CALLS`` times).
Every figure is the median over the repeats; in each repeat the measurements run
once each, interleaved across libraries, in an order rotated from repeat to
repeat, under ``bench_operators.ContentionGuard``. Before timing, the products
of both libraries are compared; KFAC must agree to 1e-10 (float64) or 1e-4
(float32) relative error, otherwise the script stops. EKFAC errors are printed
for information: with repeated factor eigenvalues (the zero pixels of the digits
give exact zero eigenvalues) the eigenbasis is not unique and any choice is a
valid EKFAC.

Target (fixed): KFAC factor computation no slower than curvlinops' (median ratio
at most 1.0) on every problem and dtype.

Sections are functions ``section(case, guard, repeats) -> SectionResult``
registered in ``SECTIONS``. ``python benchmarks/bench_approximations.py cg
[options]`` runs the CG section instead (:mod:`bench_inverse`: CG to a relative
residual of 1e-6 on the damped GGN with no, Nyström and KFAC preconditioning,
beside curvlinops' CG, at initialization and after training, and TIC against
its dense value).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from curvlinops import EKFACLinearOperator, KFACLinearOperator
from curvlinops.inverse import KFACInverseLinearOperator

import curvlab as cl
from bench_operators import (
    ContentionGuard,
    build_case,
    machine_report,
    make_gradient,
)

PROBLEMS = ("digits_mlp", "digits_cnn", "mnist16_cnn")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
LIBRARIES = ("curvlab", "curvlinops")
DAMPING = 1e-3
KS = (1, 32)
PRODUCT_CALLS = 5
FACTOR_TARGET = 1.0
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


@dataclass
class Problem:
    """A benchmark case in one dtype (see ``bench_operators.Case``)."""

    name: str
    dtype: torch.dtype
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    data: list
    num_samples: int

    @property
    def params(self) -> list:
        """Trainable parameters, in ``model.parameters()`` order."""
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def num_params(self) -> int:
        """Number ``D`` of trainable parameters."""
        return sum(p.numel() for p in self.params)


def make_problem(name: str, dtype: torch.dtype, seed: int = 0) -> Problem:
    case = build_case(name, seed)
    model = copy.deepcopy(case.model).to(dtype).eval()
    data = [(X.to(dtype), y) for X, y in case.data]
    return Problem(name, dtype, model, case.loss_fn, data, case.num_samples)


@dataclass
class SectionResult:
    """Timings of one section: key -> per-repeat seconds, plus notes."""

    times: dict[tuple, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    verdicts: list[tuple[str, float, float, str]] = field(default_factory=list)


def _interleaved(
    tasks: dict[tuple, Callable[[], object]], guard: ContentionGuard, repeats: int
) -> dict[tuple, list[float]]:
    """Time every task once per repeat, in an order rotated between repeats."""
    keys = list(tasks)
    times: dict[tuple, list[float]] = {k: [] for k in keys}
    for r in range(repeats):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            elapsed, _ = guard.measure(tasks[key])
            times[key].append(elapsed)
    return times


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _repeat(fn: Callable[[], object], calls: int) -> Callable[[], None]:
    def run():
        for _ in range(calls):
            fn()

    return run


# ---------------------------------------------------------------- the section
def build_kfac(problem: Problem, library: str, ekfac: bool = False):
    """Build (and compute) one library's KFAC or EKFAC on the problem."""
    if library == "curvlab":
        cls = cl.EKFACOperator if ekfac else cl.KFACOperator
        return cls(
            problem.model,
            problem.loss_fn,
            problem.data,
            check_deterministic=False,
            num_data=problem.num_samples,
        )
    cls = EKFACLinearOperator if ekfac else KFACLinearOperator
    op = cls(
        problem.model,
        problem.loss_fn,
        problem.params,
        problem.data,
        fisher_type="type-2",
        check_deterministic=False,
        num_data=problem.num_samples,
        num_per_example_loss_terms=1,
    )
    op.compute_kronecker_factors()
    if ekfac:
        op.compute_eigenvalue_correction()
    return op


def build_inverse(op, library: str):
    if library == "curvlab":
        return op.inverse(DAMPING)
    return KFACInverseLinearOperator(op, damping=DAMPING, use_exact_damping=True)


def kronecker_section(
    problem: Problem, guard: ContentionGuard, repeats: int
) -> SectionResult:
    """KFAC/EKFAC factors, products and exactly damped inverse products."""
    result = SectionResult()
    dtype = problem.dtype
    generator = torch.Generator().manual_seed(0)
    V = {
        k: torch.randn(problem.num_params, k, generator=generator, dtype=dtype)
        for k in KS
    }
    ops, inverses = {}, {}
    for library in LIBRARIES:
        for kind in ("kfac", "ekfac"):
            ops[kind, library] = build_kfac(problem, library, ekfac=kind == "ekfac")
            inverses[kind, library] = build_inverse(ops[kind, library], library)
            inverses[kind, library] @ V[1]  # build the eigendecompositions
    for kind in ("kfac", "ekfac"):
        for what, table in (("product", ops), ("inverse", inverses)):
            ours = table[kind, "curvlab"] @ V[KS[-1]]
            theirs = table[kind, "curvlinops"] @ V[KS[-1]]
            error = _rel(ours, theirs)
            result.notes.append(f"{kind} {what}: relative difference {error:.1e}")
            if kind == "kfac" and error > TOLERANCE[dtype]:
                raise SystemExit(
                    f"{problem.name} {dtype}: KFAC {what}s differ by {error:.2e}; "
                    "the libraries do not build the same matrix."
                )

    tasks: dict[tuple, Callable[[], object]] = {("gradient",): make_gradient(problem)}
    for library in LIBRARIES:
        for kind in ("kfac", "ekfac"):
            tasks[kind + " factors", library] = lambda library=library, kind=kind: (
                build_kfac(problem, library, ekfac=kind == "ekfac")
            )
            for k in KS:
                for what, table in (("product", ops), ("inverse", inverses)):
                    op = table[kind, library]
                    tasks[f"{kind} {what} k={k}", library] = _repeat(
                        lambda op=op, k=k: op @ V[k], PRODUCT_CALLS
                    )
    result.times = _interleaved(tasks, guard, repeats)
    gradient = statistics.median(result.times["gradient",])

    labels = sorted({key[0] for key in result.times if len(key) == 2})
    order = ["kfac factors", "ekfac factors"] + [
        label for label in labels if "factors" not in label
    ]
    for label in order:
        ours = statistics.median(result.times[label, "curvlab"])
        theirs = statistics.median(result.times[label, "curvlinops"])
        per_repeat = [
            a / b
            for a, b in zip(
                result.times[label, "curvlab"],
                result.times[label, "curvlinops"],
                strict=True,
            )
        ]
        if "factors" in label:
            cells = [f"{ours / gradient:.1f}", f"{theirs / gradient:.1f}"]
        else:
            cells = [
                f"{1e3 * ours / PRODUCT_CALLS:.2f} ms",
                f"{1e3 * theirs / PRODUCT_CALLS:.2f} ms",
            ]
        ratio = f"{ours / theirs:.2f} ({min(per_repeat):.2f}-{max(per_repeat):.2f})"
        result.rows.append([label, *cells, ratio])
        if label == "kfac factors":
            verdict = "PASS" if ours / theirs <= FACTOR_TARGET else "FAIL"
            result.verdicts.append(
                (
                    "KFAC factors, curvlab / curvlinops",
                    ours / theirs,
                    FACTOR_TARGET,
                    verdict,
                )
            )
    result.notes.insert(0, f"one full-data gradient: {1e3 * gradient:.1f} ms")
    return result


SECTIONS: dict[str, Callable[[Problem, ContentionGuard, int], SectionResult]] = {
    "kronecker": kronecker_section,
}


# ----------------------------------------------------------------------- report
def section_markdown(problem: Problem, name: str, result: SectionResult) -> str:
    dtype = str(problem.dtype).replace("torch.", "")
    lines = [
        f"#### {problem.name}, {dtype} (D = {problem.num_params:,}, "
        f"N = {problem.num_samples}): {name}",
        "",
        "| measurement (factors: in gradients; products: time per product) "
        "| curvlab | curvlinops | curvlab / curvlinops (range over repeats) |",
        "|---|---:|---:|---|",
        *[f"| {' | '.join(row)} |" for row in result.rows],
        "",
        *[f"- {note}" for note in result.notes],
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS)
    )
    parser.add_argument(
        "--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES)
    )
    parser.add_argument(
        "--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS)
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="repeats (default 5, quick 3)"
    )
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--markdown", help="write the results as markdown to PATH")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1:
        parser.error("--repeats must be positive.")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["cg"]:  # the CG section: none, Nyström and KFAC preconditioning
        import bench_inverse

        return bench_inverse.main(argv[1:])
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_approximations.py " + shlex.join(argv)
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_before = os.getloadavg()
    machine = machine_report().replace("; float64 on CPU", "; CPU")
    print(f"{machine}\nload average before: {load_before[0]:.2f}", flush=True)
    started = time.perf_counter()
    guard = ContentionGuard()
    sections, verdicts = [], []
    for name in args.problems:
        for dtype_name in args.dtypes:
            problem = make_problem(name, DTYPES[dtype_name], args.seed)
            for section in args.sections:
                result = SECTIONS[section](problem, guard, args.repeats)
                text = section_markdown(problem, section, result)
                print("\n" + text, flush=True)
                sections.append(text)
                verdicts += [(name, dtype_name, *v) for v in result.verdicts]
    load_after = os.getloadavg()
    total = time.perf_counter() - started
    summary = [
        "| problem | dtype | target | curvlab / reference | limit | result |",
        "|---|---|---|---:|---:|---|",
        *[
            f"| {p} | {d} | {label} | {value:.2f} | {limit:.2f} | {verdict} |"
            for p, d, label, value, limit, verdict in verdicts
        ],
    ]
    passed = sum(v[-1] == "PASS" for v in verdicts)
    markdown = "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"Date: {date}. Machine: {machine}. Load average (1 min) before "
            f"{load_before[0]:.2f}, after {load_after[0]:.2f}. Total wall time "
            f"{total / 60:.1f} min. {args.repeats} repeats per figure. "
            f"Contention guard: {guard.retries} timings retaken, "
            f"{guard.waited_s:.0f} s waited for quiet.",
            "",
            *summary,
            "",
            f"{passed} of {len(verdicts)} targets pass.",
            "",
            *[s + "\n" for s in sections],
        ]
    )
    print("\n" + "\n".join(summary) + f"\n\n{passed} of {len(verdicts)} targets pass.")
    print(f"total wall time {total / 60:.1f} min")
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(markdown.rstrip() + "\n")
        print(f"markdown written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
