"""Seconds per Hessian measurement as a multiple of one gradient on cifar10_3c3d.

The model of the paper's CIFAR-10 run (DeepOBS 3c3d, D = 895,210) on N = 100
samples of synthetic CIFAR-10 files written by curvlab's own writer (random
pixels and labels: the cost does not depend on the values), float32, eager and
``compile=True``, one and eight columns per product, beside curvlinops'
``HessianLinearOperator`` when installed. Medians of 5 (3 for eight columns).

Usage: ``python benchmarks/bench_measure_cost.py [THREADS]``
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import curvlab as cl
from curvlab.problems.cifar import write_cifar_batch


def median_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic_cifar(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (200, 3072), dtype=np.uint8)
        write_cifar_batch(folder / name, images, rng.integers(0, 10, 200).tolist())
    return root


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    root = synthetic_cifar(Path(tempfile.mkdtemp()))
    problem = cl.problems.get(
        "cifar10_3c3d", data_dir=root, num_samples=100, batch_size=100
    )
    model, loss_fn, data = problem.model, problem.loss_fn, problem.train_data
    dim = sum(p.numel() for p in model.parameters())

    def gradient():
        model.zero_grad()
        X, y = next(iter(data))
        loss_fn(model(X), y).backward()

    one, eight = torch.randn(dim, 1), torch.randn(dim, 8)
    g = median_seconds(gradient)
    print(f"D={dim} N=100 threads={torch.get_num_threads()} gradient {g * 1e3:.1f} ms")

    def report(label, op):
        t1 = median_seconds(lambda: op @ one)
        t8 = median_seconds(lambda: op @ eight, 3)
        print(
            f"{label}: one column {t1 * 1e3:.1f} ms ({t1 / g:.2f} gradients), "
            f"8 columns {t8 / 8 * 1e3:.1f} ms per column ({t8 / 8 / g:.2f})"
        )

    report("curvlab eager", cl.HessianOperator(model, loss_fn, data))
    report(
        "curvlab compile=True", cl.HessianOperator(model, loss_fn, data, compile=True)
    )
    try:
        import curvlinops
    except ImportError:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    peer = curvlinops.HessianLinearOperator(
        model, loss_fn, params, data, check_deterministic=False
    )
    report("curvlinops HessianLinearOperator", peer)


if __name__ == "__main__":
    main()
