"""ImageNet-shaped arrays: the folder format, memory mapping, imagenet_resnet18."""

from pathlib import Path

import numpy as np
import pytest
import torch

import curvlab as cl
from curvlab import problems
from curvlab.problems import arrays
from curvlab.problems.vision import IMAGENET_MEAN_STD
from problems._files import write_fake_imagenet


@pytest.mark.parametrize("last", [True, False], ids=["NHWC", "NCHW"])
def test_split_is_a_memory_mapped_uint8_view(tmp_path, last):
    X_train, y_train, *_ = write_fake_imagenet(tmp_path, last=last)
    images, labels = arrays.load_array_split(tmp_path)
    assert images.dtype == torch.uint8
    assert images.shape == (20, 3, 32, 32)
    expected = X_train.transpose(0, 3, 1, 2) if last else X_train
    np.testing.assert_array_equal(images.numpy(), expected)
    assert labels.dtype == torch.int64
    assert labels.tolist() == y_train.tolist()
    assert _is_mapped_from(images, tmp_path / "imagenet" / "train" / "X.npy")


def _is_mapped_from(tensor, path):
    """Whether the tensor's memory lies in a mapping of ``path`` (Linux)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps")
    address = tensor.untyped_storage().data_ptr()
    for line in maps.read_text().splitlines():
        if line.endswith(str(path)):
            start, stop = (int(a, 16) for a in line.split()[0].split("-"))
            if start <= address < stop:
                return True
    return False


def test_imagenet_folder_itself_can_be_data_dir(tmp_path):
    write_fake_imagenet(tmp_path)
    images, _ = arrays.load_array_split(tmp_path / "imagenet", train=False)
    assert images.shape == (10, 3, 32, 32)


def test_problem_standardises_in_the_model(tmp_path, no_torchvision):
    X_train, y_train, X_test, y_test = write_fake_imagenet(tmp_path)
    problem = problems.get("imagenet_resnet18", data_dir=tmp_path, batch_size=4)
    assert problem.num_params == 11_689_512
    assert problem.num_classes == 1000
    assert problem.train_data.X.dtype == torch.uint8
    assert problem.test_data.y.tolist() == y_test.tolist()
    assert len(problem.train_data) == 5
    X, y = problem.train_data[0]
    mean, std = (torch.tensor(v).reshape(1, 3, 1, 1) for v in IMAGENET_MEAN_STD)
    standardised = (X.float() / 255 - mean) / std
    with torch.no_grad():
        torch.testing.assert_close(
            problem.model(X), problem.model(standardised), rtol=1e-5, atol=1e-5
        )
        out = problem.model(X)
    assert out.shape == (4, 1000)
    assert torch.isfinite(problem.loss_fn(out, y))
    assert "preprocess.mean" not in problem.model.state_dict()


def test_float64_model_takes_uint8_input(tmp_path):
    write_fake_imagenet(tmp_path, num_train=4, num_test=2)
    problem = problems.get("imagenet_resnet18", data_dir=tmp_path, dtype=torch.float64)
    X, _ = problem.test_data[0]
    with torch.no_grad():
        assert problem.model(X).dtype == torch.float64


def test_missing_files_are_named_with_their_place(tmp_path):
    write_fake_imagenet(tmp_path)
    (tmp_path / "imagenet" / "val" / "y.npy").unlink()
    with pytest.raises(FileNotFoundError) as info:
        problems.get("imagenet_resnet18", data_dir=tmp_path)
    message = str(info.value)
    assert f"missing: {tmp_path / 'imagenet' / 'val' / 'y.npy'}." in message
    assert "uint8 images (N, H, W, 3) or (N, 3, H, W)" in message
    with pytest.raises(ValueError, match=r"imagenet/train/X\.npy"):
        problems.get("imagenet_resnet18")


@pytest.mark.parametrize(
    ("file", "array", "match"),
    [
        ("X.npy", np.zeros((2, 8, 8, 3), np.float32), "must hold uint8 images"),
        ("X.npy", np.zeros((2, 8, 8), np.uint8), "must hold uint8 images"),
        ("X.npy", np.zeros((2, 4, 8, 8), np.uint8), "expected 3 channels"),
        ("y.npy", np.zeros((20, 1), np.int64), "integer labels of shape"),
        ("y.npy", np.zeros(19, np.int64), "holds 20 images but"),
        ("y.npy", np.full(20, 1000), r"labels in \[1000, 1000\]"),
    ],
)
def test_wrong_arrays_are_named(tmp_path, file, array, match):
    write_fake_imagenet(tmp_path)
    np.save(tmp_path / "imagenet" / "train" / file, array)
    with pytest.raises(ValueError, match=match) as info:
        arrays.load_array_split(tmp_path)
    assert "imagenet/train/" in str(info.value)


@pytest.mark.parametrize("cut", [40, -100])
def test_damaged_npy_is_named(tmp_path, cut):
    write_fake_imagenet(tmp_path)
    path = tmp_path / "imagenet" / "train" / "X.npy"
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ValueError, match="not a readable .npy file") as info:
        arrays.load_array_split(tmp_path)
    assert str(path) in str(info.value)


@pytest.mark.slow
def test_hessian_products_take_the_uint8_batches(tmp_path):
    """The data loop passes uint8 inputs through; the model standardises them."""
    write_fake_imagenet(tmp_path, num_train=4, num_test=2)
    problem = problems.get("imagenet_resnet18", data_dir=tmp_path, batch_size=2)
    H = cl.HessianOperator(problem.model, problem.loss_fn, problem.train_data)
    assert H.shape == (11_689_512, 11_689_512)
    generator = torch.Generator().manual_seed(0)
    u, v = torch.randn(2, H.shape[0], generator=generator)
    Hu, Hv = H @ u, H @ v
    assert torch.isfinite(Hu).all()
    torch.testing.assert_close(v @ Hu, u @ Hv, rtol=1e-3, atol=1e-3)
