"""Reference architectures written as classes with their own ``forward`` (not ``nn.Sequential``).

They are the shapes users bring (residual connections, functional glue, a hand-written time
loop), for measuring and testing resil's campaign runner on models that are not an
``nn.Sequential``:

- :class:`ResNet20`: CIFAR-style ResNet-20 (3x32x32 in), option-B 1x1 conv shortcuts;
- :class:`MobileNetV2`: inverted residual blocks with depthwise convolutions, a reduced CIFAR
  configuration (3x32x32 in);
- :class:`DenseCNNClass`: the bundled ``dense-cnn`` (1x8x8 digits in) with the same layer names,
  so its checkpoint loads, and ``F.relu`` / ``F.max_pool2d`` / ``torch.flatten`` in ``forward``;
- :class:`SpikingClass`: the bundled ``snn``'s layers (its checkpoint loads) with explicit
  membrane states and the time loop in ``forward``.

ResNet20 and MobileNetV2 come with random weights (seed torch before building them for
reproducible weights; :func:`calibrate_batchnorm` gives their BatchNorm layers the statistics of
some inputs); every model is deterministic in eval mode on the CPU.

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> net = ResNet20().eval()
    >>> sum(p.numel() for p in net.parameters())
    272474
    >>> tuple(net(torch.rand(2, 3, 32, 32)).shape)
    (2, 10)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BasicBlock", "DenseCNNClass", "InvertedResidual", "MobileNetV2", "ResNet20", "SpikingClass", "calibrate_batchnorm"]


class BasicBlock(nn.Module):
    """ResNet basic block: 3x3 conv + BN + ReLU, 3x3 conv + BN, plus the shortcut, then ReLU.

    The shortcut is the identity, or a 1x1 conv + BN (option B) where the stride or the channel
    count changes.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        changes = stride != 1 or cin != cout
        self.shortcut: nn.Module = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                                    if changes else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 for ``[B, 3, 32, 32]`` inputs: 3x3 conv (16) + BN + ReLU, three stages of
    three :class:`BasicBlock` (16, 32, 64 channels; stride 2 at the first block of stages 2 and
    3), global average pooling, ``fc``. 272,474 parameters for 10 classes."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, 1)
        self.layer2 = self._stage(16, 32, 2)
        self.layer3 = self._stage(32, 64, 2)
        self.fc = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(cin: int, cout: int, stride: int, blocks: int = 3) -> nn.Sequential:
        return nn.Sequential(BasicBlock(cin, cout, stride), *(BasicBlock(cout, cout, 1) for _ in range(blocks - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand conv + BN + ReLU6 (absent for ``expand == 1``), 3x3
    depthwise conv (``groups`` = channels) + BN + ReLU6, 1x1 project conv + BN; the input is
    added when the stride is 1 and the channel count is unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.expand = nn.Conv2d(cin, hidden, 1, bias=False) if expand != 1 else None
        self.expand_bn = nn.BatchNorm2d(hidden) if expand != 1 else None
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand is not None and self.expand_bn is not None:
            out = F.relu6(self.expand_bn(self.expand(out)))
        out = F.relu6(self.depthwise_bn(self.depthwise(out)))
        out = self.project_bn(self.project(out))
        return out + x if self.residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for ``[B, 3, 32, 32]`` inputs, in a reduced CIFAR configuration.

    Stem: 3x3 conv (stride 1 for 32x32 inputs) + BN + ReLU6. Then :class:`InvertedResidual`
    stages ``(expansion, channels, blocks, stride)`` = (1, 16, 1, 1), (6, 24, 2, 2),
    (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1), (6, 160, 1, 2) (feature maps 32, 16, 8, 4, 4,
    2): ImageNet's strides after a stride-1 stem, fewer blocks per stage, no 320-channel stage;
    then a 1x1 head conv (640 channels instead of 1280) + BN + ReLU6, global average pooling and
    ``fc``. Every channel count but the head's is scaled by ``width`` and rounded to a multiple
    of 8 (at least 8).

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> net = MobileNetV2().eval()
        >>> sum(p.numel() for p in net.parameters()), tuple(net(torch.rand(2, 3, 32, 32)).shape)
        (154026, (2, 10))
    """

    STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1), (6, 160, 1, 2))
    HEAD = 640

    def __init__(self, num_classes: int = 10, width: float = 0.5) -> None:
        super().__init__()

        def scaled(c: int) -> int:
            return max(8, round(c * width / 8) * 8)

        cin = scaled(32)
        self.conv1 = nn.Conv2d(3, cin, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        blocks: list[nn.Module] = []
        for expand, channels, n, stride in self.STAGES:
            for i in range(n):
                blocks.append(InvertedResidual(cin, scaled(channels), stride if i == 0 else 1, expand))
                cin = scaled(channels)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(cin, self.HEAD, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(self.HEAD)
        self.fc = nn.Linear(self.HEAD, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu6(self.bn1(self.conv1(x))))
        x = F.relu6(self.head_bn(self.head(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseCNNClass(nn.Module):
    """The bundled ``dense-cnn`` for ``[B, 1, 8, 8]`` digits as a class: ``conv1`` (1->16, 3x3,
    padding 1), ReLU, ``conv2`` (16->32), ReLU, 2x2 max pool, flatten, ``fc1`` (512->64), ReLU,
    ``fc2`` (64->10). The layers carry the bundled model's names and shapes, so the ``dense-cnn``
    checkpoint loads; the glue is functional."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 16, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class SpikingClass(nn.Module):
    """The bundled ``snn`` for ``[B, 1, 8, 8]`` digits as a class with its own time loop: per step,
    ``conv1`` + ``lif1``, 2x2 max pool, flatten, ``fc1`` + ``lif2``, ``fc2`` + ``lif3`` (snnTorch
    Leaky neurons, beta 0.9, membranes passed explicitly, starting at zero on every forward), the
    static image as input current for ``steps`` steps; the scores are the mean membrane of
    ``lif3``. The layers carry the bundled model's names, so the ``snn`` checkpoint loads."""

    def __init__(self, steps: int = 8, beta: float = 0.9) -> None:
        import snntorch as snn

        super().__init__()
        self.steps = steps
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.lif1 = snn.Leaky(beta=beta)
        self.fc1 = nn.Linear(16 * 16, 64)
        self.lif2 = snn.Leaky(beta=beta)
        self.fc2 = nn.Linear(64, 10)
        self.lif3 = snn.Leaky(beta=beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem1 = mem2 = mem3 = torch.zeros(())  # a state of another shape starts at zeros of the input's shape
        total = torch.zeros(())
        for _ in range(self.steps):
            spk1, mem1 = self.lif1(self.conv1(x), mem1)
            spk2, mem2 = self.lif2(self.fc1(torch.flatten(F.max_pool2d(spk1, 2), 1)), mem2)
            _spk3, mem3 = self.lif3(self.fc2(spk2), mem3)
            total = total + mem3
        for neuron in (self.lif1, self.lif2, self.lif3):  # stored states: leaves again, so the model deep-copies
            neuron.mem = neuron.mem.detach()
        return total / self.steps


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set the running statistics of every ``BatchNorm2d`` to those of the batch ``x`` (one
    forward in training mode; weights untouched), so that a network with random weights keeps
    unit-scale activations and input-dependent outputs in eval mode; returns it in eval mode.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> x = torch.rand(8, 3, 32, 32)
        >>> net = calibrate_batchnorm(ResNet20(), x)
        >>> z = net.bn1(net.conv1(x))  # zero mean, unit variance per channel over x
        >>> net.training, bool(z.mean().abs() < 1e-5), round(z.var(dim=(0, 2, 3), unbiased=False).mean().item(), 2)
        (False, True, 1.0)
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: after one batch, exactly its statistics
    with torch.no_grad():
        model.train()(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()
