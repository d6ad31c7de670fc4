"""Model factories for curvature problems.

Every factory takes a keyword ``seed`` and returns a fresh model whose parameters
depend only on that seed: the initialisation runs under
``torch.random.fork_rng`` with the CPU generator seeded, so the global random
state is left untouched. Models are built on the CPU in float32 and in training
mode; :func:`curvlab.problems.get` moves them and switches to eval mode.

Unless a docstring says otherwise, parameters use PyTorch's default
initialisation. Activations are never in-place, so double backpropagation
(Hessian-vector products) works on every model.

Parameter counts ``D`` (10 classes unless stated):

========================  =========  ==========================================
factory                   D          input
========================  =========  ==========================================
``logistic_regression``   650        ``(N, 64)`` or ``(N, 1, 8, 8)``
``digits_cnn``            1,898      ``(N, 1, 8, 8)``
``digits_mlp``            3,190      ``(N, 64)``
``mnist_mini_mlp``        7,030      ``(N, 1, 16, 16)``
``hesscale_mlp``          59,210     ``(N, 1, 28, 28)``
``lenet5``                61,706     ``(N, 1, 28, 28)``; 62,006 for 3x32x32
``deepobs_3c3d``          895,210    ``(N, 3, 32, 32)``; 918,340 for 100 classes
``all_cnn_c``             1,369,738  ``(N, 3, 32, 32)``; 1,387,108 for 100
``vgg11_bn``              28,157,706 ``(N, 3, 32, 32)``; 9,231,114 with
                                     ``head="linear"``
``resnet18``              11,173,962 ``(N, 3, 32, 32)``
``imagenet_resnet18``     11,689,512 ``(N, 3, 224, 224)``, 1000 classes
========================  =========  ==========================================

Where the counts come from: ``deepobs_3c3d`` and ``all_cnn_c`` are DeepOBS's
``net_cifar10_3c3d`` and ``net_cifar100_allcnnc``
(``deepobs/pytorch/testproblems/testproblems_modules.py``); ``lenet5``,
``vgg11_bn`` and ``resnet18`` are the ``LeNet``, ``VGG11_bn`` and ``ResNet18``
(``resnet_type='small'``) of the LayerHessians code
(``LayerHessians/models/cifar/network.py`` in github.com/yashkhasbage25/HTR),
which pads every image to 32x32; ``imagenet_resnet18`` is
``torchvision.models.resnet18()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "ResNet",
    "Standardize",
    "all_cnn_c",
    "deepobs_3c3d",
    "digits_cnn",
    "digits_mlp",
    "hesscale_mlp",
    "imagenet_resnet18",
    "lenet5",
    "logistic_regression",
    "mlp",
    "mnist_mini_mlp",
    "num_params",
    "regression_mlp",
    "resnet18",
    "vgg11_bn",
]

#: Activation names accepted by :func:`mlp`.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "leaky_relu": nn.LeakyReLU,
}

_VGG11_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def num_params(model: nn.Module) -> int:
    """Return the number ``D`` of trainable parameters of ``model``.

    Args:
        model: Any module.

    Returns:
        The total number of elements of the parameters that require gradients.

    Example:
        >>> num_params(mnist_mini_mlp())
        7030
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed the CPU generator inside a fork of the global random state."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int. Got {type(seed).__name__}.")
    with torch.random.fork_rng(devices=[]):
        # Seed only the CPU generator: torch.manual_seed would also reseed CUDA
        # generators, which fork_rng(devices=[]) does not restore.
        torch.default_generator.manual_seed(seed)
        yield


def _activation(activation: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)} or a callable "
                f"returning a module. Got {activation!r}."
            )
        return ACTIVATIONS[activation]
    if not callable(activation):
        raise TypeError(
            "activation must be a name or a callable returning a module. "
            f"Got {type(activation).__name__}."
        )
    return activation


def _mlp_layers(
    dims: Sequence[int], activation: Callable[[], nn.Module]
) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(dims) - 2:
            layers.append(activation())
    return layers


def mlp(
    dims: Sequence[int],
    activation: str | Callable[[], nn.Module] = "tanh",
    *,
    flatten: bool = False,
    seed: int = 0,
) -> nn.Sequential:
    """Build a multi-layer perceptron: Linear and activation, last layer linear.

    Args:
        dims: Layer widths ``(in, hidden..., out)``, at least two entries.
        activation: A name from :data:`ACTIVATIONS` or a callable returning a
            module, applied after every Linear layer but the last.
        flatten: Start with ``nn.Flatten()`` so that images are accepted.
        seed: Seed of the initialisation.

    Returns:
        The network as ``nn.Sequential``.

    Raises:
        ValueError: If ``dims`` has fewer than two entries or a non-positive
            width, or the activation name is unknown.
        TypeError: If ``activation`` is neither a name nor callable.

    Example:
        >>> mlp((4, 3, 2), "relu")
        Sequential(
          (0): Linear(in_features=4, out_features=3, bias=True)
          (1): ReLU()
          (2): Linear(in_features=3, out_features=2, bias=True)
        )
    """
    dims = tuple(dims)
    if len(dims) < 2 or any(
        isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims
    ):
        raise ValueError(
            f"dims must hold at least two positive ints (in, ..., out). Got {dims}."
        )
    make_activation = _activation(activation)
    with _seeded(seed):
        layers = _mlp_layers(dims, make_activation)
    if flatten:
        layers.insert(0, nn.Flatten())
    return nn.Sequential(*layers)


def mnist_mini_mlp(*, seed: int = 0) -> nn.Sequential:
    """Build the mnist_mini network: ``FlexiMLP(256, 20, 20, 20, 20, 20, 10)``, tanh.

    Flatten, Linear(256, 20), Tanh, four times [Linear(20, 20), Tanh], then
    Linear(20, 10); every layer has a bias, so ``D = 7030``. Inputs are 16x16
    MNIST images.

    Args:
        seed: Seed of the initialisation.

    Returns:
        The network.
    """
    return mlp((256, 20, 20, 20, 20, 20, 10), "tanh", flatten=True, seed=seed)


def digits_mlp(*, seed: int = 0) -> nn.Sequential:
    """Build a 64-20-20-20-20-20-10 tanh MLP for the 8x8 digits (``D = 3190``).

    The same shape as mnist_mini with 64 inputs.

    Args:
        seed: Seed of the initialisation.

    Returns:
        The network, taking ``(N, 64)`` inputs.
    """
    return mlp((64, 20, 20, 20, 20, 20, 10), "tanh", seed=seed)


def hesscale_mlp(*, seed: int = 0) -> nn.Sequential:
    """Build the MLP of HesScale's approximation-quality study (``D = 59,210``).

    Flatten, then 784-64-64-64-10 with tanh and biases (Elsayed & Mahmood,
    2022, arXiv 2210.11639). Only Linear, Tanh and Flatten modules, so every
    diagonal backpropagation rule applies.

    Args:
        seed: Seed of the initialisation.

    Returns:
        The network, taking ``(N, 1, 28, 28)`` or ``(N, 784)`` inputs.
    """
    return mlp((784, 64, 64, 64, 10), "tanh", flatten=True, seed=seed)


def regression_mlp(
    in_features: int = 10,
    out_features: int = 3,
    hidden: Sequence[int] = (16, 16),
    *,
    seed: int = 0,
) -> nn.Sequential:
    """Build a small tanh MLP for regression (``D = 499`` with the defaults).

    Args:
        in_features: Input dimension.
        out_features: Output dimension.
        hidden: Hidden widths.
        seed: Seed of the initialisation.

    Returns:
        The network.
    """
    return mlp((in_features, *hidden, out_features), "tanh", seed=seed)


def logistic_regression(
    in_features: int = 64, num_classes: int = 10, *, seed: int = 0
) -> nn.Sequential:
    """Build multinomial logistic regression: Flatten and one Linear layer.

    Args:
        in_features: Number of input features after flattening.
        num_classes: Number of classes.
        seed: Seed of the initialisation.

    Returns:
        The model (``D = 650`` for the 8x8 digits).
    """
    with _seeded(seed):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))


def digits_cnn(*, seed: int = 0) -> nn.Sequential:
    """Build a small CNN for 8x8 digits with max and average pooling (``D = 1898``).

    Conv2d(1, 8, 3, padding=1), ReLU, MaxPool2d(2), Conv2d(8, 16, 3, padding=1),
    ReLU, AvgPool2d(2), Flatten, Linear(64, 10).

    Args:
        seed: Seed of the initialisation.

    Returns:
        The network, taking ``(N, 1, 8, 8)`` inputs.
    """
    with _seeded(seed):
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64, 10),
        )


def lenet5(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    *,
    seed: int = 0,
) -> nn.Sequential:
    """Build LeNet-5 with ReLU and max pooling, as in the LayerHessians study.

    Conv2d(C, 6, 5), ReLU, MaxPool2d(2), Conv2d(6, 16, 5), ReLU, MaxPool2d(2),
    Flatten, Linear(400, 120), ReLU, Linear(120, 84), ReLU, Linear(84, classes).
    28x28 inputs are zero-padded by 2 in the first convolution, so both 28x28 and
    32x32 inputs reach the 16x5x5 feature map (Sankar et al. pad the images to
    32x32 before normalising instead). ``D = 61,706`` for 1x28x28 and
    ``62,006`` for 3x32x32 with 10 classes.

    Args:
        in_channels: Input channels (1 for MNIST, 3 for CIFAR/SVHN).
        num_classes: Number of classes.
        image_size: Input side length, 28 or 32.
        seed: Seed of the initialisation.

    Returns:
        The network.

    Raises:
        ValueError: If ``image_size`` is not 28 or 32.
    """
    if image_size not in (28, 32):
        raise ValueError(f"image_size must be 28 or 32. Got {image_size}.")
    padding = (32 - image_size) // 2
    with _seeded(seed):
        return nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            *_mlp_layers((16 * 5 * 5, 120, 84, num_classes), nn.ReLU),
        )


def deepobs_3c3d(num_classes: int = 10, *, seed: int = 0) -> nn.Sequential:
    """Build DeepOBS's 3c3d network for 3x32x32 images.

    Conv 64 5x5 valid, ReLU, max-pool 3x3/2 'same'; conv 96 3x3 valid, ReLU,
    max-pool; conv 128 3x3 'same', ReLU, max-pool; then fully connected
    1152-512-256-``num_classes`` with ReLU. TensorFlow's 'same' max pooling pads
    only at the bottom/right here, which ``MaxPool2d(3, 2, ceil_mode=True)``
    reproduces exactly for 28, 12 and 6 pixel inputs. Initialisation as in
    DeepOBS: Xavier normal for convolutions, Xavier uniform for linear layers,
    zero biases. ``D = 895,210`` for 10 classes (Schneider et al., DeepOBS,
    ICLR 2019).

    Args:
        num_classes: Number of classes (10 in DeepOBS's ``cifar10_3c3d``).
        seed: Seed of the initialisation.

    Returns:
        The network, for ``(N, 3, 32, 32)`` images.
    """
    with _seeded(seed):
        model = nn.Sequential(
            nn.Conv2d(3, 64, 5),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            nn.Conv2d(64, 96, 3),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            nn.Conv2d(96, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            nn.Flatten(),
            *_mlp_layers((3 * 3 * 128, 512, 256, num_classes), nn.ReLU),
        )
        return _deepobs_init(model, conv_bias=0.0)


def all_cnn_c(num_classes: int = 100, *, seed: int = 0) -> nn.Sequential:
    """Build All-CNN-C (Springenberg et al., ICLR 2015 workshop) for 3x32x32.

    Dropout(0.2); conv 96, 96, 96/stride 2 (3x3, padded); Dropout(0.5); conv
    192, 192, 192/stride 2 (3x3, padded); Dropout(0.5); conv 192 3x3 valid,
    conv 192 1x1, conv ``num_classes`` 1x1; ReLU after every convolution;
    global average pooling (``AvgPool2d(6)``) and Flatten. Dropout only acts in
    training mode. Initialisation as in DeepOBS: Xavier normal weights, biases
    0.1. The stride-2 convolutions pad symmetrically, where TensorFlow's 'same'
    (used by DeepOBS) pads only bottom/right; ``D`` is the same: 1,387,108 for
    100 classes and 1,369,738 for 10.

    Args:
        num_classes: Number of classes (100 in DeepOBS's ``cifar100_allcnnc``).
        seed: Seed of the initialisation.

    Returns:
        The network.
    """
    with _seeded(seed):
        model = nn.Sequential(
            nn.Dropout(0.2),
            *_conv_relu(3, 96, 3, padding=1),
            *_conv_relu(96, 96, 3, padding=1),
            *_conv_relu(96, 96, 3, stride=2, padding=1),
            nn.Dropout(0.5),
            *_conv_relu(96, 192, 3, padding=1),
            *_conv_relu(192, 192, 3, padding=1),
            *_conv_relu(192, 192, 3, stride=2, padding=1),
            nn.Dropout(0.5),
            *_conv_relu(192, 192, 3),
            *_conv_relu(192, 192, 1),
            *_conv_relu(192, num_classes, 1),
            nn.AvgPool2d(6),
            nn.Flatten(),
        )
        return _deepobs_init(model, conv_bias=0.1)


def _deepobs_init(model: nn.Sequential, *, conv_bias: float) -> nn.Sequential:
    """Initialise as DeepOBS: Xavier weights, convolution biases ``conv_bias``.

    Convolutions get Xavier normal weights, linear layers Xavier uniform weights
    and zero biases.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_normal_(module.weight)
            nn.init.constant_(module.bias, conv_bias)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def _conv_relu(
    in_channels: int, out_channels: int, kernel_size: int, **options: int
) -> tuple[nn.Module, nn.Module]:
    return nn.Conv2d(in_channels, out_channels, kernel_size, **options), nn.ReLU()


def vgg11_bn(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    head: str = "layerhessians",
    seed: int = 0,
) -> nn.Sequential:
    r"""Build VGG-11 with batch normalisation for 32x32 images, as LayerHessians does.

    Features: configuration A of Simonyan & Zisserman (ICLR 2015), conv 64, M,
    128, M, 256, 256, M, 512, 512, M, 512, 512, M (3x3 convolutions with bias,
    padding 1, each followed by BatchNorm2d and ReLU; M is MaxPool2d(2)), then
    Flatten. The head is one of

    * ``"layerhessians"`` (default): the classifier of Sankar et al.'s code
      (``models/cifar/network.py`` of the LayerHessians study), Linear(512,
      4096, no bias), BatchNorm1d, ReLU, Linear(4096, 4096, no bias),
      BatchNorm1d, ReLU, Linear(4096, ``num_classes``). ``D = 28,157,706`` for
      3x32x32 inputs and 10 classes, ``28,156,554`` for 1x32x32.
    * ``"linear"``: one Linear(512, ``num_classes``), the usual CIFAR head;
      ``D = 9,231,114`` for 3x32x32 and 10 classes.

    Initialisation as in that code: convolution weights
    :math:`\mathcal{N}(0, 2 / (9 \cdot C_\text{out}))`, linear weights
    :math:`\mathcal{N}(0, 0.01^2)`, biases zero, BatchNorm weights one. In eval
    mode BatchNorm uses its running statistics.

    Args:
        num_classes: Number of classes.
        in_channels: Input channels (1 for MNIST, padded to 32x32).
        head: ``"layerhessians"`` or ``"linear"``.
        seed: Seed of the initialisation.

    Returns:
        The network, taking ``(N, in_channels, 32, 32)`` inputs.

    Raises:
        ValueError: If ``head`` is unknown.
    """
    if head not in ("layerhessians", "linear"):
        raise ValueError(f"head must be 'layerhessians' or 'linear'. Got {head!r}.")
    layers: list[nn.Module] = []
    channels = in_channels
    with _seeded(seed):
        for item in _VGG11_CONFIG:
            if isinstance(item, str):  # "M"
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [
                nn.Conv2d(channels, item, 3, padding=1),
                nn.BatchNorm2d(item),
                nn.ReLU(),
            ]
            channels = item
        layers.append(nn.Flatten())
        if head == "linear":
            layers.append(nn.Linear(512, num_classes))
        else:
            layers += [
                nn.Linear(512, 4096, bias=False),
                nn.BatchNorm1d(4096),
                nn.ReLU(),
                nn.Linear(4096, 4096, bias=False),
                nn.BatchNorm1d(4096),
                nn.ReLU(),
                nn.Linear(4096, num_classes),
            ]
        model = nn.Sequential(*layers)
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1]
                fan_out *= module.out_channels
                nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with BatchNorm and a shortcut.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution; the shortcut becomes a 1x1
            convolution with BatchNorm when the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: Input of shape ``(N, in_channels, H, W)``.

        Returns:
            Output of shape ``(N, out_channels, H / stride, W / stride)``.
        """
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Standardize(nn.Module):
    """Turn raw ``uint8`` images into standardised floats; pass floats through.

    ``uint8`` input ``x`` becomes ``(x / 255 - mean) / std`` per channel, in the
    dtype of the module's buffers (so ``model.to(torch.float64)`` carries it
    along). Floating input is taken as already preprocessed and returned as it
    is. The buffers are not saved in the ``state_dict``.

    Args:
        mean: Per-channel means of pixels in ``[0, 1]``.
        std: Per-channel standard deviations.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        shape = (1, len(mean), 1, 1)
        self.register_buffer(
            "mean", torch.tensor(mean).reshape(shape), persistent=False
        )
        self.register_buffer("std", torch.tensor(std).reshape(shape), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Standardise ``uint8`` images.

        Args:
            x: Images of shape ``(N, C, H, W)``.

        Returns:
            The standardised images (``uint8`` input) or ``x`` (floating input).
        """
        if x.is_floating_point():
            return x
        return (x.to(self.mean.dtype) / 255.0 - self.mean) / self.std


class ResNet(nn.Module):
    """ResNet of :class:`BasicBlock` stages, with a CIFAR or an ImageNet stem.

    The ``"cifar"`` stem is one 3x3 convolution (stride 1) with BatchNorm and
    ReLU and no max pooling, for 32x32 images; the ``"imagenet"`` stem is
    torchvision's: a 7x7 convolution with stride 2 and padding 3, BatchNorm,
    ReLU and MaxPool2d(3, stride 2, padding 1). Then four stages of 64, 128,
    256, 512 channels (stages 2-4 halve the resolution), global average pooling
    and Linear(512, ``num_classes``).

    Args:
        num_blocks: Number of :class:`BasicBlock` per stage.
        num_classes: Number of classes.
        in_channels: Input channels.
        stem: ``"cifar"`` or ``"imagenet"``.
        preprocess: Optional module applied to the input first (e.g.
            :class:`Standardize`); it holds no parameters.

    Raises:
        ValueError: If ``num_blocks`` does not give 4 stages or ``stem`` is
            unknown.
    """

    def __init__(
        self,
        num_blocks: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        stem: str = "cifar",
        preprocess: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks must give 4 stages. Got {tuple(num_blocks)}.")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet'. Got {stem!r}.")
        self.preprocess = preprocess
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = (
            nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else None
        )
        stages = []
        channels = 64
        for index, (width, count) in enumerate(
            zip((64, 128, 256, 512), num_blocks, strict=True)
        ):
            strides = [1 if index == 0 else 2] + [1] * (count - 1)
            blocks = []
            for stride in strides:
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        # He et al.'s initialisation, as torchvision's ResNet and LayerHessians'
        # code: N(0, 2 / (k * k * C_out)) for convolutions, BatchNorm 1 and 0,
        # PyTorch's default for the final Linear.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(
                    module.weight, mode="fan_out", nonlinearity="relu"
                )

    def forward(self, x: Tensor) -> Tensor:
        """Compute the logits.

        Args:
            x: Images of shape ``(N, in_channels, H, W)``.

        Returns:
            Logits of shape ``(N, num_classes)``.
        """
        if self.preprocess is not None:
            x = self.preprocess(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            out = self.maxpool(out)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.pool(out), 1))


#: The CIFAR-stem :class:`ResNet` (kept under its earlier name).
CifarResNet = ResNet


def resnet18(num_classes: int = 10, in_channels: int = 3, *, seed: int = 0) -> ResNet:
    """Build the CIFAR-sized ResNet-18 (He et al., CVPR 2016) of LayerHessians.

    3x3 stem convolution with 64 channels, BatchNorm and ReLU, no max pooling,
    then :class:`BasicBlock` stages ``[2, 2, 2, 2]``, global average pooling and
    Linear(512, ``num_classes``): the ``resnet_type='small'`` ResNet18 of
    Sankar et al.'s ``models/cifar/network.py``. ``D = 11,173,962`` for 3x32x32
    inputs and 10 classes, ``11,172,810`` for 1x32x32.

    Args:
        num_classes: Number of classes.
        in_channels: Input channels.
        seed: Seed of the initialisation.

    Returns:
        The network.
    """
    with _seeded(seed):
        return ResNet((2, 2, 2, 2), num_classes, in_channels)


def imagenet_resnet18(
    num_classes: int = 1000,
    *,
    mean_std: tuple[Sequence[float], Sequence[float]] | None = None,
    seed: int = 0,
) -> ResNet:
    """Build torchvision's ResNet-18 for ImageNet, written here (``D = 11,689,512``).

    The architecture of ``torchvision.models.resnet18()`` (He et al., CVPR 2016):
    7x7/2 stem convolution, BatchNorm, ReLU, 3x3/2 max pooling, four stages of
    two :class:`BasicBlock` (64, 128, 256, 512 channels; 1x1 convolution and
    BatchNorm on the shortcut where the shape changes), global average pooling
    and Linear(512, ``num_classes``), with torchvision's initialisation. The
    parameter count and shapes are torchvision's; module names differ (the
    shortcut is ``shortcut``, not ``downsample``). Global average pooling makes
    any input side of at least 32 work; ImageNet's is 224.

    Args:
        num_classes: Number of classes.
        mean_std: If given, prepend :class:`Standardize` with these per-channel
            means and standard deviations, so that raw ``uint8`` images are
            accepted (as the ``imagenet_resnet18`` problem does).
        seed: Seed of the initialisation.

    Returns:
        The network, taking ``(N, 3, H, W)`` inputs.
    """
    preprocess = None if mean_std is None else Standardize(*mean_std)
    with _seeded(seed):
        return ResNet(
            (2, 2, 2, 2), num_classes, 3, stem="imagenet", preprocess=preprocess
        )
