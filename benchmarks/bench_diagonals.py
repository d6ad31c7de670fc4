"""Benchmark curvlab's diagonal curvature estimators against BackPACK and curvlinops.

Run from the repository root::

    python benchmarks/bench_diagonals.py [--problems ...] [--repeats N]
        [--matvecs M] [--quick] [--markdown PATH] [--threads T]

For each problem all libraries work on the same model, loss (``CrossEntropyLoss``,
mean) and list of ``(X, y)`` batches (float64, CPU), built by
:func:`bench_operators.build_case`: ``digits_mlp``, ``digits_cnn`` and the
97,378-parameter ``mnist16_cnn``, in batches of 256. Each estimator computes the
diagonal of the curvature of the *mean loss over all batches*:

- curvlab (:mod:`curvlab.diagonal`): HesScale and HesScaleGN (``hesscale`` with
  ``variant="hessian"``/``"ggn"``), the exact GGN diagonal, the Monte-Carlo GGN
  diagonal with one sampled label per sample, and the exact Hessian diagonal
  (``digits_mlp`` only: it costs ``D`` Hessian-vector products, and is timed in
  the first repeat only);
- BackPACK (``backpack.extend`` on copies of the model and loss):
  ``DiagGGNExact``, ``DiagGGNMC(mc_samples=1)`` and ``DiagHessian``
  (``digits_mlp`` only), one ``backward`` per batch, the batch diagonals weighted
  by ``B_b / N``; a BackPACK backward also computes the gradient;
- curvlinops: ``hutchinson_diag`` and ``xdiag`` on ``HessianLinearOperator``
  with ``M`` matrix-vector products each (``--matvecs``).

Unit of time: one full-data gradient (:func:`bench_operators.make_gradient`).
Each figure is the median over the repeats; in each repeat the estimators run
once each, in an order rotated from repeat to repeat, under
:class:`bench_operators.ContentionGuard`, and timings that a busy machine
spoiled are retaken at the end. Ratios in parentheses are the range of the
per-repeat ratios.

Error: the relative L1 error ``sum |d - d_ref| / sum |d_ref|`` over all
parameters against the exact diagonal of the same curvature: curvlab's exact
GGN diagonal for GGN estimators; curvlab's exact Hessian diagonal for Hessian
estimators on ``digits_mlp``, and the exact GGN diagonal on the CNNs: with ReLU
and max/average pooling they are piecewise linear, so their Hessian equals
their GGN wherever they are differentiable. Before timing, curvlab's exact
diagonals are checked against BackPACK's (relative L1 error below ``1e-10``).

Targets (fixed; PASS/FAIL on the medians):

- HesScale at most 2 gradients;
- curvlab's exact GGN diagonal faster than BackPACK's ``DiagGGNExact``.
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
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from curvlinops import HessianLinearOperator, hutchinson_diag, xdiag
from torch import Tensor

from bench_operators import (
    Case,
    ContentionGuard,
    _num,
    _verdict,
    build_case,
    machine_report,
    make_gradient,
)
from curvlab.diagonal import (
    exact_ggn_diagonal,
    exact_hessian_diagonal,
    hesscale,
    mc_ggn_diagonal,
)

# BackPACK's module hooks fire on outputs when the inputs need no gradient.
warnings.filterwarnings("ignore", message="Full backward hook is firing")

PROBLEMS = ("digits_mlp", "digits_cnn", "mnist16_cnn")
EXACT_HESSIAN_PROBLEMS = ("digits_mlp",)  # D Hessian-vector products: small only
ONE_RUN = ("exact Hessian diag.",)  # timed in the first repeat only
PIECEWISE_LINEAR = ("digits_cnn", "mnist16_cnn")  # ReLU / pooling: H = GGN
TOLERANCE = 1e-10
HESSCALE_TARGET = 2.0  # gradients
GGN_EXACT_TARGET = 1.0  # curvlab / BackPACK DiagGGNExact
DEFAULT_MATVECS = 10
QUICK_MATVECS = 4


@dataclass
class Estimator:
    """One diagonal estimator on a case.

    Attributes:
        label: Name in the tables.
        library: ``"curvlab"``, ``"BackPACK"`` or ``"curvlinops"``.
        curvature: ``"hessian"`` or ``"ggn"``: which exact diagonal it estimates.
        run: Computes the diagonal, flat, float64.
    """

    label: str
    library: str
    curvature: str
    run: Callable[[], Tensor]


@dataclass
class Result:
    """Timings and errors of one problem.

    Attributes:
        case: The problem.
        times: Label (or ``"gradient"``) -> seconds of each repeat.
        errors: Label -> relative L1 error against its reference.
        references: Label -> name of the reference diagonal.
        unavailable: Label -> why it could not run.
        checks: Check label -> relative L1 error of curvlab vs BackPACK.
        contention: Guard counts for this problem.
        wall_s: Wall time of this problem.
    """

    case: Case
    times: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    checks: dict[str, float] = field(default_factory=dict)
    contention: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    estimators: list[Estimator] = field(default_factory=list)


def flat(tensors) -> Tensor:
    return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])


def relative_l1(estimate: Tensor, reference: Tensor) -> float:
    return float((estimate - reference).abs().sum() / reference.abs().sum())


# ------------------------------------------------------------------- estimators
def curvlab_estimators(case: Case, seed: int) -> list[Estimator]:
    model, loss_fn, data = case.model, case.loss_fn, case.data
    counter = iter(range(seed, seed + 2**40))
    estimators = [
        Estimator(
            "HesScale",
            "curvlab",
            "hessian",
            lambda: flat(hesscale(model, loss_fn, data, variant="hessian")),
        ),
        Estimator(
            "HesScaleGN",
            "curvlab",
            "ggn",
            lambda: flat(hesscale(model, loss_fn, data, variant="ggn")),
        ),
        Estimator(
            "exact GGN diag.",
            "curvlab",
            "ggn",
            lambda: flat(exact_ggn_diagonal(model, loss_fn, data)),
        ),
        Estimator(
            "MC GGN diag. (1 sample)",
            "curvlab",
            "ggn",
            lambda: flat(
                mc_ggn_diagonal(model, loss_fn, data, mc_samples=1, seed=next(counter))
            ),
        ),
    ]
    if case.name in EXACT_HESSIAN_PROBLEMS:
        estimators.append(
            Estimator(
                "exact Hessian diag.",
                "curvlab",
                "hessian",
                lambda: flat(exact_hessian_diagonal(model, loss_fn, data)),
            )
        )
    return estimators


def backpack_estimators(case: Case) -> tuple[list[Estimator], str | None]:
    """BackPACK's diagonals, or an empty list and why BackPACK is unavailable."""
    try:
        from backpack import backpack, extend
        from backpack.extensions import DiagGGNExact, DiagGGNMC, DiagHessian

        model = extend(copy.deepcopy(case.model))
        loss_fn = extend(copy.deepcopy(case.loss_fn))
    except Exception as error:  # torchvision mismatches and the like
        return [], f"{type(error).__name__}: {error}"
    params = [p for p in model.parameters() if p.requires_grad]
    num_samples = case.num_samples

    def make(extension: Callable[[], object], savefield: str) -> Callable[[], Tensor]:
        def run() -> Tensor:
            total = [torch.zeros_like(p) for p in params]
            for X, y in case.data:
                for p in params:
                    p.grad = None
                with backpack(extension()):
                    loss_fn(model(X), y).backward()
                for t, p in zip(total, params, strict=True):
                    t.add_(getattr(p, savefield), alpha=len(y) / num_samples)
            return flat(total)

        return run

    estimators = [
        Estimator(
            "DiagGGNExact", "BackPACK", "ggn", make(DiagGGNExact, "diag_ggn_exact")
        ),
        Estimator(
            "DiagGGNMC (1 sample)",
            "BackPACK",
            "ggn",
            make(lambda: DiagGGNMC(mc_samples=1), "diag_ggn_mc"),
        ),
    ]
    if case.name in EXACT_HESSIAN_PROBLEMS:
        estimators.append(
            Estimator("DiagHessian", "BackPACK", "hessian", make(DiagHessian, "diag_h"))
        )
    return estimators, None


def curvlinops_estimators(case: Case, matvecs: int) -> list[Estimator]:
    H = HessianLinearOperator(case.model, case.loss_fn, case.params, case.data)
    return [
        Estimator(
            f"hutchinson_diag ({matvecs} HVPs)",
            "curvlinops",
            "hessian",
            lambda: hutchinson_diag(H, matvecs).detach().to(torch.float64),
        ),
        Estimator(
            f"xdiag ({matvecs} HVPs)",
            "curvlinops",
            "hessian",
            lambda: xdiag(H, matvecs).detach().to(torch.float64),
        ),
    ]


# ----------------------------------------------------------------------- bench
def bench_problem(
    name: str, *, repeats: int, matvecs: int, seed: int, guard: ContentionGuard
) -> Result:
    start = time.perf_counter()
    before = (guard.retries, guard.waited_s)
    torch.manual_seed(seed)  # BackPACK's MC labels and curvlinops' probes
    case = build_case(name, seed)
    result = Result(case)
    print(
        f"\n== {name}: D={case.num_params:,}, N={case.num_samples:,} in "
        f"{len(case.data)} batches",
        flush=True,
    )
    estimators = curvlab_estimators(case, seed)
    bp_estimators, why = backpack_estimators(case)
    if why is not None:
        print(f"   BackPACK unavailable: {why}")
        labels = ["DiagGGNExact", "DiagGGNMC (1 sample)"]
        labels += ["DiagHessian"] if name in EXACT_HESSIAN_PROBLEMS else []
        for label in labels:
            result.unavailable[label] = why
    estimators += bp_estimators
    estimators += curvlinops_estimators(case, matvecs)
    result.estimators = estimators

    # References, errors and the agreement checks (untimed first runs).
    outputs = {}
    for estimator in estimators:
        try:
            outputs[estimator.label] = estimator.run()
        except Exception as error:  # report it and go on with the others
            result.unavailable[estimator.label] = f"{type(error).__name__}: {error}"
            print(f"   {estimator.label} failed: {result.unavailable[estimator.label]}")
    ggn = outputs["exact GGN diag."]
    hessian = outputs.get("exact Hessian diag.")
    hessian_name = "curvlab exact Hessian diag."
    if hessian is None and name in PIECEWISE_LINEAR:
        hessian, hessian_name = ggn, "curvlab exact GGN diag. (= Hessian: ReLU net)"
    for estimator in estimators:
        label = estimator.label
        if label not in outputs:
            continue
        reference = ggn if estimator.curvature == "ggn" else hessian
        if reference is None:
            continue
        result.errors[label] = relative_l1(outputs[label], reference)
        result.references[label] = (
            "curvlab exact GGN diag." if estimator.curvature == "ggn" else hessian_name
        )
    for ours, theirs in (
        ("exact GGN diag.", "DiagGGNExact"),
        ("exact Hessian diag.", "DiagHessian"),
    ):
        if ours in outputs and theirs in outputs:
            error = relative_l1(outputs[ours], outputs[theirs])
            result.checks[f"curvlab {ours} vs BackPACK {theirs}"] = error
    if "exact Hessian diag." in outputs and name in PIECEWISE_LINEAR:
        result.checks["curvlab exact Hessian diag. vs exact GGN diag. (ReLU net)"] = (
            relative_l1(outputs["exact Hessian diag."], ggn)
        )
    for label, error in result.checks.items():
        verdict = "ok" if error < TOLERANCE else "DISAGREE"
        print(f"   check {label}: rel. L1 error {error:.1e} ({verdict})")

    jobs: dict[str, Callable[[], object]] = {"gradient": make_gradient(case)}
    for estimator in estimators:
        if estimator.label in outputs:
            jobs[estimator.label] = estimator.run
    keys = list(jobs)
    times: dict[str, list[float]] = {key: [] for key in keys}
    canaries: dict[str, list[float]] = {key: [] for key in keys}
    for r in range(repeats):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            if key in ONE_RUN and r > 0:
                continue
            elapsed, canary = guard.measure(jobs[key])
            times[key].append(elapsed)
            canaries[key].append(canary)
        unit = times["gradient"][-1]
        hs = times["HesScale"][-1] / unit if "HesScale" in times else float("nan")
        print(
            f"   repeat {r + 1}/{repeats}: gradient {1e3 * unit:.1f} ms, "
            f"HesScale {hs:.2f} gradients",
            flush=True,
        )
    for key in keys:
        for i, canary in enumerate(canaries[key]):
            if guard.busy(canary):
                times[key][i], canaries[key][i] = guard.measure(jobs[key])
    busy = sum(guard.busy(c) for values in canaries.values() for c in values)
    result.times = times
    result.contention = {
        "retries": guard.retries - before[0],
        "waited_s": guard.waited_s - before[1],
        "contended": busy,
        "timings": sum(len(v) for v in times.values()),
    }
    result.wall_s = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------- report
def _in_gradients(result: Result, label: str) -> float | None:
    if label not in result.times:
        return None
    return statistics.median(result.times[label]) / statistics.median(
        result.times["gradient"]
    )


def _ratio_text(result: Result, label: str, ref: str) -> str:
    if label not in result.times or ref not in result.times:
        return "—"
    a, b = statistics.median(result.times[label]), statistics.median(result.times[ref])
    # pairs from the same repeat (a one-run estimator pairs with the first)
    paired = [
        x / y for x, y in zip(result.times[label], result.times[ref], strict=False)
    ]
    return f"{a / b:.2f} ({min(paired):.2f}–{max(paired):.2f})"


BACKPACK_PEER = {
    "exact GGN diag.": "DiagGGNExact",
    "MC GGN diag. (1 sample)": "DiagGGNMC (1 sample)",
    "exact Hessian diag.": "DiagHessian",
}


def problem_report(result: Result, repeats: int) -> tuple[str, list]:
    case = result.case
    unit = result.times["gradient"]
    header = (
        "| estimator | library | time (gradients) | vs BackPACK | rel. L1 error "
        "| reference | target | result |\n"
        "|---|---|---:|---:|---:|---|---|---|"
    )
    rows, verdicts = [], []
    labels = [e.label for e in result.estimators]
    labels += [label for label in result.unavailable if label not in labels]
    for label in labels:
        library = next(
            (e.library for e in result.estimators if e.label == label), "BackPACK"
        )
        if label in result.unavailable and label not in result.times:
            rows.append(
                f"| {label} | {library} | unavailable | — | — | — | — | "
                f"{result.unavailable[label][:80]} |"
            )
            continue
        value = _in_gradients(result, label)
        peer = BACKPACK_PEER.get(label)
        versus = _ratio_text(result, label, peer) if peer else "—"
        name = f"{label} (1 run)" if label in ONE_RUN else label
        target, verdict = "none", "—"
        if label == "HesScale":
            verdict = _verdict(value, HESSCALE_TARGET)
            target = f"≤ {HESSCALE_TARGET:.0f} gradients"
            verdicts.append(("HesScale in gradients", value, HESSCALE_TARGET, verdict))
        elif label == "exact GGN diag.":
            ratio = None
            if peer in result.times:
                ratio = statistics.median(result.times[label]) / statistics.median(
                    result.times[peer]
                )
            verdict = _verdict(ratio, GGN_EXACT_TARGET)
            target = "faster than DiagGGNExact"
            verdicts.append(
                ("exact GGN diag. vs DiagGGNExact", ratio, GGN_EXACT_TARGET, verdict)
            )
        error = result.errors.get(label)
        rows.append(
            f"| {name} | {library} | {_num(value)} | {versus} "
            f"| {'—' if error is None else f'{error:.2e}'} "
            f"| {result.references.get(label, '—')} | {target} | {verdict} |"
        )
    checks = "; ".join(f"{k}: {v:.1e}" for k, v in result.checks.items()) or "none"
    contention = result.contention
    lines = [
        f"#### {case.name}",
        "",
        f"{case.description.rstrip('.')}. D = {case.num_params:,} parameters, "
        f"N = {case.num_samples:,} samples in {len(case.data)} batches. Unit: one "
        f"full-data gradient = {1e3 * statistics.median(unit):.1f} ms (median of "
        f"{repeats}; range {1e3 * min(unit):.1f}–{1e3 * max(unit):.1f} ms). Wall "
        f"time {result.wall_s:.0f} s. Contention guard: "
        f"{int(contention['retries'])} timings retaken, "
        f"{contention['waited_s']:.0f} s waited, {int(contention['contended'])} of "
        f"{int(contention['timings'])} kept while busy.",
        "",
        header,
        *rows,
        "",
        f"Agreement checks (relative L1 error, limit {TOLERANCE:g}): {checks}.",
    ]
    return "\n".join(lines), verdicts


# ------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS)
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="repeats (default 5, quick 3)"
    )
    parser.add_argument(
        "--matvecs",
        type=int,
        default=None,
        help=f"HVPs of curvlinops' estimators, even (default {DEFAULT_MATVECS}, "
        f"quick {QUICK_MATVECS})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 repeats, fewer HVPs for curvlinops"
    )
    parser.add_argument("--markdown", help="write the results as markdown to PATH")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: leave torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.matvecs is None:
        args.matvecs = QUICK_MATVECS if args.quick else DEFAULT_MATVECS
    if args.repeats < 1 or args.matvecs < 2 or args.matvecs % 2:
        parser.error("--repeats must be positive and --matvecs even and >= 2.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_diagonals.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_before = os.getloadavg()
    machine = machine_report()
    print(f"{machine}\nload average before: {load_before[0]:.2f}", flush=True)
    started = time.perf_counter()
    guard = ContentionGuard()
    print(f"contention guard: canary {1e3 * guard.best:.2f} ms when quiet")
    sections, verdicts = [], []
    for name in args.problems:
        result = bench_problem(
            name,
            repeats=args.repeats,
            matvecs=args.matvecs,
            seed=args.seed,
            guard=guard,
        )
        section, problem_verdicts = problem_report(result, args.repeats)
        print("\n" + section, flush=True)
        sections.append(section)
        verdicts += [(name, *v) for v in problem_verdicts]
    load_after = os.getloadavg()
    total = time.perf_counter() - started
    summary = [
        "| problem | target | value | limit | result |",
        "|---|---|---:|---:|---|",
    ]
    for name, label, value, target, verdict in verdicts:
        summary.append(
            f"| {name} | {label} | {_num(value)} | {target:.2f} | {verdict} |"
        )
    passed = sum(v[-1] == "PASS" for v in verdicts)
    markdown = "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"Date: {date}. Machine: {machine}. Load average (1 min) before "
            f"{load_before[0]:.2f}, after {load_after[0]:.2f}. Total wall time "
            f"{total / 60:.1f} min. {args.repeats} repeats per figure; curvlinops' "
            f"estimators with {args.matvecs} HVPs.",
            "",
            "#### Targets",
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
