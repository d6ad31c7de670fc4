"""Throughput of SEIGH measurements on cifar10_3c3d with 1 and 2 Dask workers.

A run of ``cifar10_3c3d`` (D = 895,210) trained 2 steps on synthetic CIFAR-10
files, then ``MeasureStage`` (81 measurements: 80 sketch columns and 1 probe, 100
Hessian samples, blocks of 4) on a loopback ``LocalCluster`` of 1, then 2
single-thread worker processes; the time includes starting the workers and
building the operator on each.

Usage: ``python benchmarks/bench_measure_scaling.py``
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_measure_cost import synthetic_cifar
from curvlab.experiments.sketch_stages import MeasureStage, SketchSettings
from curvlab.experiments.training import train
from curvlab.runs import RunFolder, TrainConfig
from curvlab.runs.stage import run_stage
from curvlab.store.cluster import connect


def main():
    root = synthetic_cifar(Path(tempfile.mkdtemp()))
    cfg = TrainConfig(
        problem="cifar10_3c3d",
        steps=2,
        batch_size=10,
        num_samples=100,
        record_steps=(0,),
    )
    torch.set_num_threads(1)
    base = Path(tempfile.mkdtemp())
    run = train(cfg, base / "run", data_dir=root).run
    S = SketchSettings(num_outer=40, num_inner=80, samples_per_class=10, num_probes=1)
    for workers in (1, 2):
        copy = base / f"run{workers}"
        shutil.copytree(run.path, copy)
        folder = RunFolder.open(copy)
        with connect("local", workers=workers) as client:
            stage = MeasureStage(
                folder, S, 895210, client=client, data_dir=str(root), block_size=4
            )
            start = time.perf_counter()
            run_stage(stage, [0])
            seconds = time.perf_counter() - start
        print(
            f"workers={workers}: 81 measurements in {seconds:.1f} s, "
            f"{81 / seconds:.2f} per second",
            flush=True,
        )


if __name__ == "__main__":
    main()
