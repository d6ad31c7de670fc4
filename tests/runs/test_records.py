"""HDF5 record files and checkpoints."""

import h5py
import pytest
import torch
from torch import nn

from curvlab.runs import read_record, write_record
from curvlab.runs.records import load_checkpoint, save_checkpoint


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()


def test_record_round_trip(tmp_path):
    model = _model()
    params = dict(model.named_parameters())
    grads = [torch.randn_like(p) for p in params.values()]
    buffers = {k: v for k, v in model.state_dict().items() if k not in params}
    path = tmp_path / "r.h5"
    write_record(
        path,
        step=7,
        parameters=params,
        gradients=grads,
        buffers=buffers,
        attrs={"train_loss": 0.5, "train_accuracy": None, "problem": "p"},
    )
    record = read_record(path)
    assert record.step == 7
    assert record.parameter_names == tuple(params)  # model order, not alphabetical
    for got, want in zip(record.parameters, params.values(), strict=True):
        assert torch.equal(got, want.detach())
        assert got.dtype == torch.float64
    for got, want in zip(record.gradients, grads, strict=True):
        assert torch.equal(got, want)
    assert set(record.buffers) == {
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    }
    assert record.buffers["1.num_batches_tracked"].dtype == torch.int64
    assert record.attrs["train_loss"] == 0.5
    assert record.attrs["problem"] == "p"
    assert record.attrs["train_accuracy"] != record.attrs["train_accuracy"]  # NaN
    fresh = _model()
    named = dict(zip(record.parameter_names, record.parameters, strict=True))
    fresh.load_state_dict({**named, **record.buffers})
    with h5py.File(path) as file:  # readable by any HDF5 reader
        assert file["parameters/0.weight"].shape == (4, 3)
        assert file.attrs["format"] == "curvlab-train-record"


def test_record_without_gradients(tmp_path):
    model = _model()
    write_record(tmp_path / "r.h5", step=0, parameters=dict(model.named_parameters()))
    record = read_record(tmp_path / "r.h5")
    assert record.gradients is None
    assert record.buffers == {}


def test_record_checks(tmp_path):
    params = {"a": torch.zeros(2)}
    with pytest.raises(ValueError, match="gradients must have the parameters' shapes"):
        write_record(tmp_path / "r.h5", step=0, parameters=params, gradients=[])
    with pytest.raises(ValueError, match="may not be empty or hold '/'"):
        write_record(tmp_path / "r.h5", step=0, parameters={"a/b": torch.zeros(1)})
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file.attrs["format"] = "something else"
    with pytest.raises(ValueError, match="not a curvlab train record"):
        read_record(tmp_path / "other.h5")


def test_checkpoint_round_trip(tmp_path):
    model = _model()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 3, dtype=torch.float64)).sum().backward()
    optimizer.step()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "step": 3,
        "none": None,
    }
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["step"] == 3
    assert back["none"] is None
    assert torch.equal(back["rng"], state["rng"])
    other = torch.optim.Adam(_model().parameters())
    other.load_state_dict(back["optimizer"])
