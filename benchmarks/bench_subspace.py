"""Benchmark ``overlap_curve`` against the dense mask-matrix computation.

Run from the repository root::

    python benchmarks/bench_subspace.py [--quick] [--markdown PATH] [--device cpu]

The task of Fernandez et al. (2025): the overlap between the magnitude mask of
size ``k`` and the top-``k`` eigenspace of a ``(D, K)`` eigenbasis ``U``, for
every ``k = 1..K`` (float32; default ``D = 10^6``, ``K = 1000``).

- **fast**: :func:`curvlab.subspace.overlap_curve`, all ``k`` in one pass: one
  top-``K`` selection of ``|theta|``, a gathered ``K x K`` block, cumulative
  sums. Timed for the magnitude mask alone (with and without the ``O(D K)``
  orthonormality check), and with the best mask and 10 random masks.
- **dense**: the straightforward computation, one overlap per ``k``: the
  ``k`` largest ``|theta|`` by ``torch.topk``, the explicit ``(D, k)`` 0/1 mask
  matrix ``M``, and ``||M^T U[:, :k]||_F^2 / k``. Its cost grows as
  ``D k^2`` per ``k`` and its memory as ``D k``, so it runs on a smaller
  problem (``--dense-D``, a few ``k``) where the fast path is timed on the same
  ``ks`` for the ratio, and at the full ``D`` for a few small ``k`` only; the
  time of all ``k = 1..K`` at the full ``D`` is extrapolated with the model
  ``a + b k^2`` per ``k`` (selection and mask matrix, then the product)
  through the full-``D`` points.

``U`` is exactly orthonormal yet cheap to build at any size: a random
orthonormal ``(b, K)`` block (``b`` the smallest divisor of ``D`` at least
``2K``) repeated ``D / b`` times in a random row order with random row signs,
scaled by ``sqrt(b / D)``. The timings do not depend on its structure.

Time: median over ``--repeats`` calls (``gc`` before each; CUDA synchronised).
On a shared, busy CPU pass ``--threads 1``: with two threads and other
processes competing, every small parallel operation waits for a descheduled
sibling thread, and the chunked reductions here slowed down 10 to 100 times.
Memory: on CPU, the growth of the peak resident set size during one call
(:func:`bench_operators.peak_rss_growth_mib`: tracemalloc does not see torch's
allocations); on CUDA, ``torch.cuda.max_memory_allocated`` above the memory in
use before the call. Both include the result and the temporaries, not ``U``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import curvlab as cl  # noqa: E402
from bench_operators import _git_revision, peak_rss_growth_mib  # noqa: E402
from curvlab.subspace import overlap_curve  # noqa: E402

DEFAULT = {
    "D": 1_000_000,
    "K": 1000,
    "dense_D": 20_000,
    "dense_ks": (10, 50, 100, 200, 500, 1000),
    "big_dense_ks": (10, 100),
    "repeats": 3,
}
QUICK = {
    "D": 100_000,
    "K": 200,
    "dense_D": 5000,
    "dense_ks": (10, 50, 100, 200),
    "big_dense_ks": (10, 50),
    "repeats": 1,
}
NUM_RANDOM = 10


def structured_basis(D: int, K: int, seed: int, dtype, device) -> Tensor:
    """An exactly orthonormal ``(D, K)`` basis built in ``O(D K)`` (see above)."""
    b = next(d for d in range(2 * K, D + 1) if D % d == 0) if 2 * K <= D else D
    generator = torch.Generator().manual_seed(seed)
    block = torch.randn(b, K, generator=generator, dtype=torch.float64)
    block = (torch.linalg.qr(block).Q * math.sqrt(b / D)).to(dtype)
    rows = torch.randperm(D, generator=generator) % b
    signs = torch.randint(0, 2, (D, 1), generator=generator).to(dtype) * 2 - 1
    U = block.to(device)[rows.to(device)]
    U.mul_(signs.to(device))
    return U


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], repeats: int, device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        gc.collect()
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cpu":
        return peak_rss_growth_mib(fn)
    fn()
    synchronize(device)
    gc.collect()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return (peak - baseline) / 2**20


def dense_overlaps(theta: Tensor, U: Tensor, ks) -> list[float]:
    """One topk, one explicit mask matrix and one product per k."""
    out = []
    for k in ks:
        mask = theta.abs().topk(k).indices
        M = torch.zeros(U.shape[0], k, dtype=U.dtype, device=U.device)
        M[mask, torch.arange(k, device=U.device)] = 1.0
        out.append(float((M.T @ U[:, :k]).square().sum(dtype=torch.float64)) / k)
    return out


def measure(label, fn, repeats, device, D, K, num_ks) -> dict:
    seconds = median_time(fn, repeats, device)
    memory = peak_memory_mib(fn, device)
    row = {
        "label": label,
        "D": D,
        "K": K,
        "ks": num_ks,
        "seconds": seconds,
        "memory": memory,
    }
    print(
        f"  {label}: {seconds:.3f} s ({1e3 * seconds / num_ks:.2f} ms per k), "
        f"peak {memory:.1f} MiB",
        flush=True,
    )
    return row


def machine_line(device: torch.device) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                line.split(":", 1)[1].strip()
                for line in info
                if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (
        f"curvlab {cl.__version__} at {_git_revision()}; {os.cpu_count()} CPUs "
        f"({cpu}){gpu}; Python {platform.python_version()}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); float32 on "
        f"{device}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="D=1e5, K=200")
    parser.add_argument("--D", type=int, default=None, help="rows of U")
    parser.add_argument("--K", type=int, default=None, help="columns of U")
    parser.add_argument("--dense-D", type=int, default=None, help="D of the dense side")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", help="write the results as markdown to PATH")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULT
    for key in ("D", "K", "dense_D", "repeats"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.dense_ks = tuple(k for k in preset["dense_ks"] if k <= args.K)
    args.big_dense_ks = tuple(k for k in preset["big_dense_ks"] if k <= args.K)
    if min(args.D, args.K, args.dense_D, args.repeats) < 1 or args.dense_D < args.K:
        parser.error("--D, --K, --dense-D, --repeats must be positive, K <= dense D.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float32
    command = "python benchmarks/bench_subspace.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    machine = machine_line(device)
    print(machine, flush=True)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    D, K = args.D, args.K
    build = time.perf_counter()
    U = structured_basis(D, K, args.seed, dtype, device)
    theta = torch.randn(D, generator=generator).to(device)
    print(f"built U ({D} x {K}) in {time.perf_counter() - build:.1f} s", flush=True)
    all_ks = range(1, K + 1)
    rows = []

    print(f"fast, D={D}, k=1..{K}:")
    rows.append(
        measure(
            "fast: magnitude",
            lambda: overlap_curve(theta, U, all_ks, best=False, num_random=0),
            args.repeats,
            device,
            D,
            K,
            K,
        )
    )
    rows.append(
        measure(
            "fast: magnitude, check=False",
            lambda: overlap_curve(
                theta, U, all_ks, best=False, num_random=0, check=False
            ),
            args.repeats,
            device,
            D,
            K,
            K,
        )
    )
    rows.append(
        measure(
            f"fast: magnitude + best + {NUM_RANDOM} random",
            lambda: overlap_curve(theta, U, all_ks, num_random=NUM_RANDOM),
            args.repeats,
            device,
            D,
            K,
            K,
        )
    )

    print(f"dense, D={D}, k in {list(args.big_dense_ks)}:")
    big_dense = [
        measure(
            f"dense: k={k}",
            lambda k=k: dense_overlaps(theta, U, [k]),
            args.repeats,
            device,
            D,
            K,
            1,
        )
        for k in args.big_dense_ks
    ]
    rows += big_dense

    Dd, ks = args.dense_D, args.dense_ks
    Ud = structured_basis(Dd, K, args.seed + 1, dtype, device)
    thetad = torch.randn(Dd, generator=generator).to(device)
    fast_values = overlap_curve(thetad, Ud, ks, best=False, num_random=0).magnitude
    dense_values = torch.tensor(dense_overlaps(thetad, Ud, ks), dtype=torch.float64)
    agreement = float((fast_values - dense_values).abs().max())
    print(
        f"same problem, D={Dd}, k in {list(ks)} (max |fast - dense| {agreement:.1e}):"
    )
    fast_small = measure(
        "fast: magnitude",
        lambda: overlap_curve(thetad, Ud, ks, best=False, num_random=0),
        args.repeats,
        device,
        Dd,
        K,
        len(ks),
    )
    per_k = [
        measure(
            f"dense: k={k}",
            lambda k=k: dense_overlaps(thetad, Ud, [k]),
            args.repeats,
            device,
            Dd,
            K,
            1,
        )
        for k in ks
    ]
    dense_small = {
        "label": "dense: all these k",
        "D": Dd,
        "K": K,
        "ks": len(ks),
        "seconds": sum(r["seconds"] for r in per_k),
        "memory": max(r["memory"] for r in per_k),
    }
    rows += [fast_small, *per_k, dense_small]

    # extrapolation of the dense side to k = 1..K at the full D: per k,
    # a + b k^2 (selection and mask matrix, then the product), through the
    # smallest and largest measured full-D points
    points = [
        (k, row["seconds"]) for k, row in zip(args.big_dense_ks, big_dense, strict=True)
    ]
    if len(points) >= 2:
        (k0, t0), (k1, t1) = points[0], points[-1]
        b_fit = max(t1 - t0, 0.0) / (k1 * k1 - k0 * k0)
        a_fit = t0 - b_fit * k0 * k0
        dense_all_estimate = sum(a_fit + b_fit * k * k for k in all_ks)
    else:
        k0 = k1 = None
        dense_all_estimate = math.nan
    dense_all_memory = 4 * D * K / 2**20  # the (D, K) float32 mask matrix alone
    fast_magnitude = rows[0]

    time_ratio = dense_small["seconds"] / fast_small["seconds"]
    memory_ratio = dense_small["memory"] / max(fast_small["memory"], 1e-3)
    extrapolated_ratio = dense_all_estimate / fast_magnitude["seconds"]
    total = time.perf_counter() - started

    table = [
        "| computation | D | K | number of k | time (s) | per k (ms) "
        "| peak memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        table.append(
            f"| {row['label']} | {row['D']:,} | {row['K']} | {row['ks']} | "
            f"{row['seconds']:.3f} | {1e3 * row['seconds'] / row['ks']:.2f} | "
            f"{row['memory']:.1f} |"
        )
    ratios = [
        f"- Same problem (D = {Dd:,}, k in {list(ks)}): dense / fast time "
        f"{time_ratio:.1f}x, peak memory {memory_ratio:.1f}x; the results agree to "
        f"{agreement:.1e}.",
        f"- D = {D:,}, all k = 1..{K}: fast (magnitude) "
        f"{fast_magnitude['seconds']:.2f} s; dense estimated at "
        f"{dense_all_estimate:.3g} s ({extrapolated_ratio:.3g}x; a + b k^2 per k "
        f"through the measured k = {k0} and {k1}); its mask matrix at k = {K} "
        f"alone takes {dense_all_memory:,.0f} MiB.",
    ]
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    markdown = "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"Date: {date}. Machine: {machine}. Load average (1 min) "
            f"{os.getloadavg()[0]:.2f}. Total wall time {total:.0f} s. Median of "
            f"{args.repeats} repeat(s).",
            "",
            *table,
            "",
            *ratios,
        ]
    )
    print("\n" + "\n".join(table) + "\n\n" + "\n".join(ratios))
    print(f"total wall time {total:.0f} s")
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(markdown + "\n")
        print(f"markdown written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
