import pytest
import torch
from torch import nn

from curvlab.problems import models

# factory, positional args, input shape (without N), output width, D
CASES = {
    "logreg": (models.logistic_regression, (64, 10), (64,), 10, 650),
    "digits_cnn": (models.digits_cnn, (), (1, 8, 8), 10, 1898),
    "digits_mlp": (models.digits_mlp, (), (64,), 10, 3190),
    "regression_mlp": (models.regression_mlp, (10, 3), (10,), 3, 499),
    "mnist_mini": (models.mnist_mini_mlp, (), (1, 16, 16), 10, 7030),
    "hesscale": (models.hesscale_mlp, (), (1, 28, 28), 10, 59210),
    "lenet5_28": (models.lenet5, (1, 10, 28), (1, 28, 28), 10, 61706),
    "lenet5_32": (models.lenet5, (3, 10, 32), (3, 32, 32), 10, 62006),
    "3c3d": (models.deepobs_3c3d, (10,), (3, 32, 32), 10, 895210),
    "allcnnc_100": (models.all_cnn_c, (100,), (3, 32, 32), 100, 1387108),
    "vgg11_bn": (models.vgg11_bn, (10,), (3, 32, 32), 10, 28157706),
    "vgg11_bn_1ch": (models.vgg11_bn, (10, 1), (1, 32, 32), 10, 28156554),
    "resnet18": (models.resnet18, (10,), (3, 32, 32), 10, 11173962),
    "resnet18_1ch": (models.resnet18, (10, 1), (1, 32, 32), 10, 11172810),
    "imagenet_resnet18": (models.imagenet_resnet18, (), (3, 224, 224), 1000, 11689512),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_factory_shapes_and_parameter_count(case):
    factory, args, in_shape, out_width, num_params = CASES[case]
    # Large models are checked on the meta device: shapes only, no slow init.
    device = torch.device("meta" if num_params > 1_000_000 else "cpu")
    with device:
        model = factory(*args, seed=0).eval()
        with torch.no_grad():
            out = model(torch.randn(2, *in_shape))
    assert models.num_params(model) == num_params
    assert out.shape == (2, out_width)
    if device.type == "cpu":
        assert torch.isfinite(out).all()


def test_mnist_mini_is_the_papers_flexi_mlp():
    model = models.mnist_mini_mlp()
    assert models.num_params(model) == 7030
    assert isinstance(model[0], nn.Flatten)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (256, 20),
        (20, 20),
        (20, 20),
        (20, 20),
        (20, 20),
        (20, 10),
    ]
    assert all(m.bias is not None for m in linears)
    assert sum(isinstance(m, nn.Tanh) for m in model) == 5
    assert isinstance(model[-1], nn.Linear)


def test_other_class_counts():
    assert models.num_params(models.deepobs_3c3d(100)) == 918340
    assert models.num_params(models.all_cnn_c(10)) == 1369738
    with torch.device("meta"):
        assert models.num_params(models.vgg11_bn(10, head="linear")) == 9231114
        assert models.num_params(models.vgg11_bn(100)) == 28526436


def _counts(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


def test_vgg11_bn_is_layerhessians_vgg():
    """LayerHessians' VGG11_bn: config A with biased convs, 4096-4096 BN1d head."""
    with torch.device("meta"):
        model = models.vgg11_bn(10)
    convs = _counts(model, nn.Conv2d)
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert all(c.bias is not None for c in convs)
    assert len(_counts(model, nn.BatchNorm2d)) == 8
    assert len(_counts(model, nn.MaxPool2d)) == 5
    linears = _counts(model, nn.Linear)
    assert [(m.in_features, m.out_features) for m in linears] == [
        (512, 4096),
        (4096, 4096),
        (4096, 10),
    ]
    assert [m.bias is not None for m in linears] == [False, False, True]
    assert len(_counts(model, nn.BatchNorm1d)) == 2
    with pytest.raises(ValueError, match="head must be"):
        models.vgg11_bn(head="wide")


@torch.no_grad()
def test_vgg11_bn_initialisation_follows_layerhessians():
    model = models.vgg11_bn(10)
    conv = _counts(model, nn.Conv2d)[-1]
    expected = (2.0 / (9 * 512)) ** 0.5
    assert abs(float(conv.weight.std()) / expected - 1) < 0.01
    assert not conv.bias.any()
    last = _counts(model, nn.Linear)[-1]
    assert abs(float(last.weight.std()) / 0.01 - 1) < 0.05
    assert not last.bias.any()


def test_imagenet_resnet18_is_torchvisions_architecture():
    """Shapes of torchvision's resnet18(): 7x7/2 stem, max pool, [2, 2, 2, 2]."""
    with torch.device("meta"):
        model = models.imagenet_resnet18()
    assert model.conv1.weight.shape == (64, 3, 7, 7)
    assert model.conv1.stride == (2, 2)
    assert model.maxpool is not None
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3,
            model.layer4)] == [2, 2, 2, 2]  # fmt: skip
    shortcuts = [
        b.shortcut[0].weight.shape
        for stage in (model.layer2, model.layer3, model.layer4)
        for b in stage
        if isinstance(b.shortcut, nn.Sequential)
    ]
    assert shortcuts == [(128, 64, 1, 1), (256, 128, 1, 1), (512, 256, 1, 1)]
    assert model.fc.weight.shape == (1000, 512)
    assert len(_counts(model, nn.BatchNorm2d)) == 20


def test_imagenet_resnet18_small_forward_and_uint8_input():
    model = models.imagenet_resnet18(
        10, mean_std=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    ).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        out = model(images)
        same = model((images.float() / 255 - 0.5) / 0.25)
    assert out.shape == (2, 10)
    torch.testing.assert_close(out, same)
    assert not any("preprocess" in key for key in model.state_dict())


def test_seed_determines_parameters_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    first = models.digits_cnn(seed=3)
    second = models.digits_cnn(seed=3)
    third = models.digits_cnn(seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(first[0].weight, third[0].weight)


def test_mlp_builds_linear_activation_stacks():
    model = models.mlp((5, 4, 3, 2), "relu", flatten=True)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    custom = models.mlp((3, 2, 1), lambda: nn.Softplus())
    assert isinstance(custom[1], nn.Softplus)


def test_mlp_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"at least two positive ints.*Got \(5,\)"):
        models.mlp((5,))
    with pytest.raises(
        ValueError, match="activation must be one of.*'tanh'.*Got 'swish'"
    ):
        models.mlp((5, 2), "swish")
    with pytest.raises(TypeError, match="seed must be an int"):
        models.mlp((5, 2), seed=1.5)
    with pytest.raises(ValueError, match="image_size must be 28 or 32"):
        models.lenet5(image_size=30)


@pytest.mark.parametrize("size", [28, 12, 6])
def test_3c3d_pooling_matches_tensorflow_same_padding(size):
    x = torch.randn(2, 4, size, size)
    same = nn.functional.max_pool2d(
        nn.functional.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, stride=2
    )
    ceil = nn.MaxPool2d(3, stride=2, ceil_mode=True)(x)
    torch.testing.assert_close(ceil, same)


def test_models_support_hessian_vector_products():
    model = models.digits_cnn()
    X, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(X), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    vector = [torch.ones_like(p) for p in params]
    dot = sum((g * v).sum() for g, v in zip(grads, vector, strict=True))
    hvp = torch.autograd.grad(dot, params)
    assert all(torch.isfinite(h).all() for h in hvp)
