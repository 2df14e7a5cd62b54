"""Reference network definitions (as ``nn.Sequential`` with named stages)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def digits_cnn(width: int = 16) -> nn.Sequential:
    """The dense reference CNN for 1x8x8 digits: two 3x3 convs, a pool, two linear layers (~38k weights)."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, width, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(width, 2 * width, 3, padding=1),
            relu2=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(2 * width * 16, 64),
            relu3=nn.ReLU(),
            fc2=nn.Linear(64, 10),
        )
    )
