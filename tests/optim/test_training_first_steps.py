"""AdaHesScale's and AdaHessian's first steps inside `train`, checked by hand.

On ``digits_logreg`` (a linear model with cross-entropy) HesScale's diagonal is
exact (the last layer's rule), so AdaHesScale's first step is
``theta - lr * g / (|diag H| + eps)`` with the dense Hessian of the first
mini-batch loss; AdaHessian's is ``theta - lr * g / (|z * Hz| + eps)`` with the
probe ``z`` that training's seeded global generator draws. Both in float64.
"""

from __future__ import annotations

import pytest
import torch

from curvlab import problems
from curvlab._seeds import derive_seed
from curvlab.experiments.training import batch_indices, train
from curvlab.runs import TrainConfig
from curvlab.runs.folder import RunFolder

SEED, BATCH, SAMPLES = 3, 16, 120


def _config(optimizer: str, lr: float, **changes) -> TrainConfig:
    values = dict(
        problem="digits_logreg",
        optimizer=optimizer,
        lr=lr,
        steps=2,
        batch_size=BATCH,
        record_steps=(0, 1, 2),
        seed=SEED,
        dtype="float64",
        num_samples=SAMPLES,
        record_gradients=False,
    )
    values.update(changes)
    return TrainConfig(**values)


def _first_batch_loss():
    """The loss of step 0's mini-batch as a function of the flat parameters."""
    problem = problems.get(
        "digits_logreg", seed=SEED, dtype=torch.float64, num_samples=SAMPLES
    )
    model, loss_fn = problem.model, problem.loss_fn
    X, y = problem.train_data.X, problem.train_data.y
    index = batch_indices(SEED, 0, len(y), BATCH)
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]

    def loss(flat):
        chunks, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            n = shape.numel()
            chunks[name] = flat[start : start + n].view(shape)
            start += n
        output = torch.func.functional_call(model, chunks, (X[index],))
        return loss_fn(output, y[index])

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return loss, flat, shapes


def test_adahesscale_first_step_uses_the_exact_hessian_diagonal(tmp_path):
    lr, eps = 0.01, 1e-8
    run = train(_config("adahesscale", lr), tmp_path).run
    loss, theta, _ = _first_batch_loss()
    assert torch.equal(run.load_parameters(0, flat=True), theta)
    grad = torch.func.grad(loss)(theta)
    diag = torch.diagonal(torch.func.hessian(loss)(theta))
    expected = theta - lr * grad / (diag.abs() + eps)
    got = run.load_parameters(1, flat=True)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-14)


def test_adahessian_first_step_uses_the_probe_of_the_seeded_generator(tmp_path):
    lr, eps = 0.05, 1e-4
    run = train(_config("adahessian", lr), tmp_path).run
    loss, theta, shapes = _first_batch_loss()
    grad = torch.func.grad(loss)(theta)
    hessian = torch.func.hessian(loss)(theta)
    # training seeds the global generator so; AdaHessian draws per parameter
    generator = torch.Generator().manual_seed(derive_seed(SEED, spawn_key=(1,)))
    z = (
        torch.cat(
            [
                torch.randint(0, 2, shape, generator=generator).reshape(-1)
                for shape in shapes
            ]
        ).double()
        * 2
        - 1
    )
    D = z * (hessian @ z)
    expected = theta - lr * grad / (D.abs() + eps)
    got = run.load_parameters(1, flat=True)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-14)


class Interrupt(Exception):
    pass


def test_adahessian_training_resumes_bit_identically(tmp_path):
    config = _config("adahessian", 0.05, steps=8, record_steps=(0, 4, 8))
    expected = train(config, tmp_path / "reference").run

    def stop(event):
        if event.kind == "step" and event.step == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, tmp_path / "run", on_progress=stop)
    assert train(config, tmp_path / "run").resumed_from == 4
    run = RunFolder.open(tmp_path / "run")
    assert torch.equal(
        run.load_parameters(8, flat=True), expected.load_parameters(8, flat=True)
    )


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(
                    not torch.cuda.is_available(), reason="needs a CUDA device"
                ),
            ],
        ),
    ],
)
def test_adahessian_trains_a_cnn_and_resumes_bit_identically(tmp_path, device):
    """Convolution kernels take the spatially averaged diagonal (digits_cnn)."""
    config = _config(
        "adahessian", 0.01, problem="digits_cnn", steps=8, record_steps=(0, 4, 8)
    )
    expected = train(config, tmp_path / "reference", device=device).run

    def stop(event):
        if event.kind == "step" and event.step == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, tmp_path / "run", device=device, on_progress=stop)
    assert train(config, tmp_path / "run", device=device).resumed_from == 4
    run = RunFolder.open(tmp_path / "run")
    assert torch.equal(
        run.load_parameters(8, flat=True), expected.load_parameters(8, flat=True)
    )
    losses = [row["train_loss"] for row in expected.metrics()]
    assert losses[-1] < losses[0]
