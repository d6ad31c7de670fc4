"""Shared fixtures: small float64 problems on which dense truth is cheap."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

# Relative error allowed against dense float64 truth. Products and the dense
# references differ only by rounding in a different order of operations; with
# D <= ~100 and well-scaled data that is ~1e-15 relative, so 1e-10 leaves five
# orders of margin for accumulation while catching any wrong term or scale.
RTOL_FLOAT64 = 1e-10


@dataclass
class Case:
    """A model, loss and batched data, all in float64."""

    name: str
    model: nn.Module
    loss_fn: nn.Module
    data: list
    params: list | None = None


def _regression_targets(N, C, g):
    return torch.randn(N, C, generator=g, dtype=torch.float64)


def _make_case(name, build, loss_fn, N, in_shape, target, batch_sizes, params=None):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build().double()
    X = torch.randn(N, *in_shape, generator=g, dtype=torch.float64)
    y = target(N, g)
    data, start = [], 0
    for b in batch_sizes:
        data.append((X[start : start + b], y[start : start + b]))
        start += b
    assert start == N
    return Case(name, model, loss_fn, data, params)


def _classes(C):
    return lambda N, g: torch.randint(0, C, (N,), generator=g)


def _binary(C):
    return lambda N, g: torch.randint(0, 2, (N, C), generator=g).double()


def _mlp(act):
    return lambda: nn.Sequential(nn.Linear(5, 4), act(), nn.Linear(4, 3))


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 2),
        nn.Sigmoid(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(3, 3),
    )


def make_cases() -> list[Case]:
    """The small cases every operator is checked on (uneven last batches)."""
    uneven = [4, 4, 3]
    return [
        _make_case(
            "mlp_tanh_ce_mean",
            _mlp(nn.Tanh),
            nn.CrossEntropyLoss(),
            11,
            (5,),
            _classes(3),
            uneven,
        ),
        _make_case(
            "mlp_relu_ce_sum",
            _mlp(nn.ReLU),
            nn.CrossEntropyLoss(reduction="sum"),
            11,
            (5,),
            _classes(3),
            uneven,
        ),
        _make_case(
            "mlp_sigmoid_mse_mean",
            _mlp(nn.Sigmoid),
            nn.MSELoss(),
            11,
            (5,),
            lambda N, g: _regression_targets(N, 3, g),
            uneven,
        ),
        _make_case(
            "mlp_tanh_mse_sum",
            _mlp(nn.Tanh),
            nn.MSELoss(reduction="sum"),
            9,
            (5,),
            lambda N, g: _regression_targets(N, 3, g),
            [5, 4],
        ),
        _make_case(
            "mlp_tanh_bce_mean",
            _mlp(nn.Tanh),
            nn.BCEWithLogitsLoss(),
            10,
            (5,),
            _binary(3),
            [6, 4],
        ),
        _make_case(
            "cnn_pool_ce_mean",
            _cnn,
            nn.CrossEntropyLoss(),
            7,
            (1, 6, 6),
            _classes(3),
            [3, 3, 1],
        ),
        _make_case(
            "mlp_tanh_ce_mean_subset",
            _mlp(nn.Tanh),
            nn.CrossEntropyLoss(),
            11,
            (5,),
            _classes(3),
            uneven,
            params=["2.weight", "0.bias"],
        ),
    ]


CASES = make_cases()


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request) -> Case:
    """Each small case in turn."""
    return request.param


def param_names(case: Case) -> list[str]:
    """The parameter names an operator on the case acts on, in order."""
    if case.params is not None:
        return list(case.params)
    return [n for n, _ in case.model.named_parameters()]


# Folders whose tests run whole experiments: small products, where a second thread
# gains little while on shared cores several threads slow a test down by an order
# of magnitude.
ONE_THREAD_FOLDERS = (
    "cli",
    "diagonal",
    "experiments",
    "linalg",
    "optim",
    "store",
    "subspace",
)


@pytest.fixture
def one_thread():
    """Run the test on one PyTorch thread, restoring the count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Put the tests of ``ONE_THREAD_FOLDERS`` on one thread."""
    root = Path(__file__).parent
    for item in items:
        path = Path(item.fspath)
        if not path.is_relative_to(root):  # doctests in src/
            continue
        parts = path.relative_to(root).parts
        if parts and parts[0] in ONE_THREAD_FOLDERS:
            item.fixturenames.insert(0, "one_thread")


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """SLURM faked on loopback: ``sbatch`` runs a job script here, ``scancel`` kills.

    The Dask scheduler of a ``SLURMCluster`` listens on 127.0.0.1 only, so the
    workers the job scripts start talk to it over loopback.
    """
    import os
    import stat
    import textwrap

    import dask

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "sbatch": f"""\
            #!/usr/bin/env bash
            job="{tmp_path}/job_$RANDOM"
            cp "$1" "$job.sh"  # the caller deletes its script when we return
            setsid bash "$job.sh" > "$job.log" 2>&1 < /dev/null &
            echo "Submitted batch job $!"
            """,
        "scancel": """\
            #!/usr/bin/env bash
            for job in "$@"; do kill -TERM -- "-$job" 2>/dev/null || kill "$job"; done
            """,
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(textwrap.dedent(text))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    loopback = {"jobqueue.slurm.scheduler-options": {"host": "127.0.0.1"}}
    with dask.config.set(loopback):
        yield bin_dir
