"""What the run folder's integrity checks cost on a large record (issue 11).

Writes a train record of ``D`` float32 parameters plus their gradient (ResNet18
has D = 11.7 M: a 94 MB file) and times, as medians over repeats:

- ``write_record`` with HDF5's Fletcher-32 filter (what curvlab does) and a plain
  h5py write without it;
- ``mark_done`` (SHA-256 of the file) and ``is_done(verify=True)`` on a fresh
  ``RunFolder`` (SHA-256 again, the file in the page cache);
- ``read_record`` (Fletcher-32 checked) against a plain h5py read, and
  ``load_record`` (SHA-256 + read) against ``read_record``.

It also times one Hessian-vector product of a model with ``D`` parameters on a
batch of 128 inputs, as a yardstick of the work a stage does per record.

Usage::

    python benchmarks/bench_run_integrity.py [--dim 11700000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import torch

from curvlab.runs import RunFolder, TrainConfig
from curvlab.runs.folder import file_checksum
from curvlab.runs.records import read_record, write_record


def _median(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        call()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    """Run the measurements and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=11_700_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    width = int(args.dim**0.5)
    params = {"weight": torch.randn(width, width), "bias": torch.randn(width)}
    grads = [torch.randn_like(p) for p in params.values()]
    with tempfile.TemporaryDirectory(prefix="bench-integrity-") as name:
        _measure(Path(name), params, grads, width, args.repeats)


def _measure(folder: Path, params, grads, width: int, n: int) -> None:
    run = RunFolder.create(folder / "run", TrainConfig(problem="digits_logreg"))
    path = run.record_path(0)

    def write_checked():
        with run.atomic_path(path) as tmp:
            write_record(tmp, step=0, parameters=params, gradients=grads)

    def write_plain():
        with h5py.File(folder / "plain.h5", "w") as file:
            for name, tensor in params.items():
                file.create_dataset(f"parameters/{name}", data=tensor.numpy())
            for name, tensor in zip(params, grads, strict=True):
                file.create_dataset(f"gradients/{name}", data=tensor.numpy())

    def read_plain():
        with h5py.File(folder / "plain.h5", "r") as file:
            for group in ("parameters", "gradients"):
                for name in params:
                    file[group][name][()]

    rows = [
        ("write_record (Fletcher-32, in memory, one write)", write_checked),
        ("plain h5py write, no checksums, no fsync", write_plain),
    ]
    rows = [(name, _median(call, n)) for name, call in rows]
    run.mark_done("train", 0, files=[path])
    more = [
        ("SHA-256 of the file (mark_done, is_done(verify=True))", file_checksum),
        ("read_record (Fletcher-32 checked)", read_record),
        ("load_record on a fresh RunFolder (SHA-256 + read)", None),
    ]
    for name, call in more:
        if call is None:
            rows.append((name, _median(lambda: RunFolder(run.path).load_record(0), n)))
        else:
            rows.append((name, _median(lambda call=call: call(path), n)))
    rows.append(("plain h5py read, no checksums", _median(read_plain, n)))

    model = torch.nn.Linear(width, width)
    X, y = torch.randn(128, width), torch.randn(128, width)
    v = [torch.randn_like(p) for p in model.parameters()]

    def hvp():
        loss = torch.nn.functional.mse_loss(model(X), y)
        g = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
        torch.autograd.grad(g, list(model.parameters()), grad_outputs=v)

    rows.append(("one Hessian-vector product, batch 128 (yardstick)", _median(hvp, n)))
    size = path.stat().st_size / 1e6
    print(
        f"D = {width * width + width:,}, record {size:.1f} MB, torch threads "
        f"{torch.get_num_threads()}, medians of {n}"
    )
    print("\n| operation | seconds | MB/s |\n|---|---:|---:|")
    for name, seconds in rows:
        rate = "" if "yardstick" in name else f"{size / seconds:.0f}"
        print(f"| {name} | {seconds:.3f} | {rate} |")


if __name__ == "__main__":
    main()
