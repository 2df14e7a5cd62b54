"""Reference network definitions (as ``nn.Sequential`` with named stages).

Every network takes a batch of digits images ``[B, 1, 8, 8]`` and returns class scores
``[B, 10]``, so the same evaluation code works for all of them. snnTorch and Brevitas are
imported only when a spiking or quantized network is built, to keep ``import resil.models`` light.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils import prune

PRUNABLE = (nn.Conv2d, nn.Linear)


def digits_cnn(width: int = 16, hidden: int = 64) -> nn.Sequential:
    """The dense reference CNN for 1x8x8 digits: two 3x3 convs, a pool, two linear layers (~38k weights)."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, width, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(width, 2 * width, 3, padding=1),
            relu2=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(2 * width * 16, hidden),
            relu3=nn.ReLU(),
            fc2=nn.Linear(hidden, 10),
        )
    )


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` for every conv and linear layer: the tensors unstructured pruning acts on."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def masked_cnn() -> nn.Sequential:
    """The dense CNN with the ``torch.nn.utils.prune`` reparametrization (``weight_orig`` and an
    all-ones ``weight_mask``) on every conv and linear weight: a pruned checkpoint loads into it."""
    model = digits_cnn()
    for module, name in prunable_weights(model):
        prune.identity(module, name)
    return model


class SpikingCNN(nn.Sequential):
    """An ``nn.Sequential`` of layers and ``init_hidden=True`` snnTorch neurons run for ``steps``
    time steps on the same (static) input, which acts as a constant input current (direct coding).

    The last stage must be a neuron with ``output=True``; the class scores are its membrane
    potential averaged over the steps. Every forward starts with :func:`resil.reset` (the state of
    every neuron, deep copies included, and the time step of fault hooks: a fault at step t hits
    step t of every forward), so outputs never depend on a previous call,
    and ends by detaching the stored states, so the model can be deep-copied after a
    grad-enabled forward (snnTorch otherwise keeps non-leaf states that ``deepcopy`` rejects).

    Why ``init_hidden=True``: the network stays a plain ``nn.Sequential`` with the dense CNN's
    stage names (``conv1``, ``lif1``, ``fc1`` ...), one time step is one call of it, and each
    neuron's state lives on the neuron module (``lif1.mem``), where forward hooks and resil's
    spiking adapter find it; fault hooks behave the same as with explicit state.
    """

    STATES = ("mem", "syn", "syn_exc", "syn_inh", "spk")

    def __init__(self, stages: OrderedDict[str, nn.Module], steps: int) -> None:
        super().__init__(stages)
        self.steps = steps

    def neurons(self) -> list[nn.Module]:
        """Every snnTorch neuron in the model."""
        import snntorch

        return [m for m in self.modules() if isinstance(m, snntorch.SpikingNeuron)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from resil.discovery import reset

        reset(self)  # neuron states, and the step count of fault hooks: a forward is one sequence
        total: torch.Tensor | float = 0.0
        for _ in range(self.steps):
            _spk, mem = super().forward(x)
            total = total + mem
        for m in self.neurons():
            for name in self.STATES:
                state = getattr(m, name, None)
                if isinstance(state, torch.Tensor):
                    setattr(m, name, state.detach())
        assert isinstance(total, torch.Tensor)  # steps >= 1
        return total / self.steps


def digits_snn(width: int = 16, hidden: int = 64, steps: int = 8, beta: float = 0.9) -> SpikingCNN:
    """A spiking CNN for digits: Conv(1->width)+Leaky, 2x2 max pool, FC(->hidden)+Leaky,
    FC(->10)+Leaky read out by its mean membrane potential over ``steps`` steps."""
    import snntorch as snn

    def lif(output: bool = False) -> nn.Module:
        return snn.Leaky(beta=beta, init_hidden=True, output=output)

    return SpikingCNN(
        OrderedDict(
            conv1=nn.Conv2d(1, width, 3, padding=1),
            lif1=lif(),
            pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(width * 16, hidden),
            lif2=lif(),
            fc2=nn.Linear(hidden, 10),
            lif3=lif(output=True),
        ),
        steps,
    )


def channel_pruned_state(model: nn.Module) -> dict[str, dict[str, object]]:
    """``tp.state_dict(model)`` (torch-pruning's format: per-module tensors plus the layer
    attributes such as ``out_channels``) restricted to parameters, buffers and plain
    attributes, so it loads with ``torch.load(..., weights_only=True)``."""
    import torch_pruning as tp

    state = tp.state_dict(model)
    tensors = {name: {k: entry[k] for k in ("_parameters", "_buffers")} for name, entry in state["full_state_dict"].items()}
    return {"full_state_dict": tensors, "attributions": state["attributions"]}


def load_channel_pruned(model: nn.Module, state: dict[str, dict[str, object]]) -> nn.Module:
    """Resize the freshly built (unpruned) ``model`` to the pruned shapes of ``state`` and load
    its weights, with ``tp.load_state_dict``."""
    import torch_pruning as tp

    return tp.load_state_dict(model, state_dict=state)
