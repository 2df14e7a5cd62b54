"""Sites (named, addressable fault spaces of a model) and the adapter interface that makes them."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .channel_layers import ChannelLayer, ChannelMap, channel_layer_of, channel_map_of
from .encodings import Encoding
from .faults import FOREVER
from .plan import ElementPlan

if TYPE_CHECKING:
    from .discovery import ExampleOutputs

Undo = Callable[[], None]
#: where a tensor sits inside a module's structured output: tuple/list positions and dict keys
OutputPath = tuple[Hashable, ...]


@dataclass(frozen=True, eq=False)
class Site:
    """One named fault space, e.g. ``conv1.weight`` (stored) or ``conv1:out`` (computed).

    Attributes:
        name: stable name used in faults.
        kind: ``weight``, ``bias``, ``parameter``, ``buffer``, ``activation`` ...
        shape: element shape (for activations: per sample, without the batch dimension
            :attr:`batch_dim`); None while unknown (list the sites with an example input to learn it).
        encoding: how the elements are stored in bits.
        adapter: the adapter that owns the site and knows how to inject into it.
        module: the module the site belongs to.
        batched: whether faults may name a batch element (computed tensors).
        live: when only some elements of the tensor are stored (e.g. the unpruned weights of a
            sparse layer), their sorted flat indices; None when every element is stored.
        path: for a tensor inside a module's structured output (``lstm:out[1][0]``), where it
            sits (``(1, 0)``); ``()`` for the output itself.
        batch_dim: for a computed site, the dimension of the tensor that indexes the samples
            (the element index runs over the other dimensions, in order); None when the tensor
            has none: its faults hit the whole tensor and cannot name a batch element.
    """

    name: str
    kind: str
    shape: tuple[int, ...] | None
    encoding: Encoding
    adapter: Adapter = field(repr=False)
    module: nn.Module = field(repr=False)
    attr: str = field(default="", repr=False)
    batched: bool = False
    live: np.ndarray | None = field(default=None, repr=False)
    path: OutputPath = field(default=(), repr=False)
    batch_dim: int | None = field(default=0, repr=False)

    @property
    def bits(self) -> int:
        """Bit width of one element."""
        return self.encoding.bits

    @property
    def numel(self) -> int | None:
        """Number of elements of the tensor (None while the shape is unknown)."""
        return None if self.shape is None else math.prod(self.shape)

    @property
    def size(self) -> int | None:
        """Number of elements that can be faulted: the live ones, or all."""
        return self.numel if self.live is None else len(self.live)

    @property
    def sparsity(self) -> float:
        """Fraction of the tensor's elements that are not stored (0 for dense sites)."""
        return 0.0 if self.live is None or not self.numel else 1 - len(self.live) / self.numel

    def elements(self) -> np.ndarray:
        """Flat indices of every element that can be faulted."""
        if self.live is not None:
            return self.live
        if self.numel is None:
            raise ValueError(f"site {self.name!r} has an unknown shape; list the sites with an example input")
        return np.arange(self.numel, dtype=np.int64)

    def install(self, plan: SitePlan) -> Undo:
        """Apply ``plan`` to the model; return the function that undoes it."""
        return self.adapter.install(self, plan)

    def codes(self) -> torch.Tensor:
        """The stored codes of a stored site, flat (int64, one per element of :attr:`shape`).

        Example:
            >>> import torch, resil
            >>> lin = torch.nn.Linear(1, 1, bias=False); _ = lin.weight.data.fill_(1.0)
            >>> hex(int(resil.sites(lin)["weight"].codes()[0]))
            '0x3f800000'
        """
        if self.batched:
            raise ValueError(f"site {self.name!r} is computed during the forward pass; it has no stored codes")
        return self.adapter.codes(self).reshape(-1)


@dataclass
class WindowPlan:
    """Faults active at steps ``start <= t < stop``: every-sample faults and per-sample faults
    (per-sample keys are ``batch << 40 | element``)."""

    start: int
    stop: int
    all_samples: ElementPlan | None
    per_sample: ElementPlan | None


@dataclass
class SitePlan:
    """The faults of one site, one :class:`WindowPlan` per distinct time window."""

    windows: list[WindowPlan]

    def stored(self) -> ElementPlan:
        """The plan of a stored tensor (permanent faults on every sample)."""
        (w,) = self.windows
        assert w.all_samples is not None and w.per_sample is None and (w.start, w.stop) == (0, FOREVER)
        return w.all_samples


@dataclass(frozen=True)
class OutputTensor:
    """One floating tensor of a module's structured output, as the example forward pass saw it.

    Attributes:
        path: where it sits in the output (e.g. ``(1, 0)`` for ``h_n`` of an LSTM).
        shape: its full shape in the example pass.
        dtype: its dtype.
        batch_dim: the dimension indexing the samples, None if it has none.

    Example:
        >>> t = OutputTensor((1, 0), (2, 3, 5), torch.float32, 1)
        >>> t.per_sample, t.suffix
        ((2, 5), '[1][0]')
    """

    path: OutputPath
    shape: tuple[int, ...]
    dtype: torch.dtype
    batch_dim: int | None

    @property
    def per_sample(self) -> tuple[int, ...]:
        """The shape without the batch dimension (the whole shape if there is none)."""
        if self.batch_dim is None:
            return self.shape
        return self.shape[: self.batch_dim] + self.shape[self.batch_dim + 1:]

    @property
    def suffix(self) -> str:
        """The path as it appears in site names: ``[1][0]``, ``[logits]``."""
        return "".join(f"[{k}]" if isinstance(k, (int, str)) else f"[{k!r}]" for k in self.path)


@dataclass(frozen=True)
class SiteOptions:
    """What the site walk tells every adapter: choices that change which elements a site covers,
    and what the example forward pass of this ``resil.sites`` call recorded.

    Attributes:
        pruned: for weights pruned with ``torch.nn.utils.prune``: ``"live"`` (default; only the
            unpruned weights are stored, as in sparse storage) or ``"dense"`` (the pruned zeros
            are stored cells too, and a fault on them takes effect).
        example: the outputs the example pass recorded; None when the sites are listed without
            an example (then no output structure or shape is known).
    """

    pruned: str = "live"
    example: ExampleOutputs | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.pruned not in ("live", "dense"):
            raise ValueError(f"pruned must be 'live' or 'dense', not {self.pruned!r}")

    def recorded_output(self, module: nn.Module) -> tuple[tuple[int, ...], torch.dtype] | None:
        """Per-sample shape (without dim 0) and dtype of ``module``'s output tensor (the first one
        of a tuple or list output) in the example pass; None if unknown."""
        return None if self.example is None else self.example.primary(module)

    def output_tensors(self, module: nn.Module) -> tuple[OutputTensor, ...] | None:
        """The floating tensors of ``module``'s output in the example pass, if that output was a
        structure (tuple, list, dict); None if it was a tensor or anything else, or is unknown."""
        return None if self.example is None else self.example.tensors(module)


#: a value-level transform: ``fn(values, encoding) -> new values`` (same shape and dtype), where
#: ``values`` is what a layer computes with for one site and ``encoding`` how they are stored at
#: that call (a quantized layer's run-time scale included)
ValueTransform = Callable[[torch.Tensor, Encoding], torch.Tensor]


class Adapter:
    """Knows one family of modules: enumerates their sites and injects into them, and answers,
    for the rest of resil, every question that depends on the family.

    Subclass it and register it with :func:`resil.adapters.register_adapter` (or through the
    ``resil.adapters`` entry-point group). :meth:`sites`, :meth:`install` and :meth:`codes` are
    required; every other member has the behaviour of plain ``torch.nn`` modules, so an adapter
    overrides only what differs for its family. :class:`resil.testing.AdapterTester` checks an
    adapter against this contract.

    Example:
        >>> import torch, resil
        >>> lin = torch.nn.Linear(2, 2); site = resil.sites(lin)["weight"]
        >>> torch.equal(site.adapter.values(site), lin.weight.detach()), site.adapter.trainable(site) is lin.weight
        (True, True)
    """

    name: str = "adapter"
    #: if True, the walk does not enumerate this module's submodules separately
    claims_children: bool = False
    #: whether the family's modules carry state from one forward call to the next (the time steps
    #: of a spiking network): analyses of one forward pass do not apply, and :meth:`reset` matters
    temporal: bool = False

    def sites(self, prefix: str, module: nn.Module, options: SiteOptions) -> Iterable[Site]:
        """The sites of ``module`` (named ``prefix`` inside the model)."""
        raise NotImplementedError

    def install(self, site: Site, plan: SitePlan) -> Undo:
        """Corrupt ``site`` according to ``plan``; return the undo function."""
        raise NotImplementedError

    def codes(self, site: Site) -> torch.Tensor:
        """The codes a stored site holds now (any shape with one code per element)."""
        raise NotImplementedError

    def reset(self, module: nn.Module) -> None:
        """Reset the module's state before a new input sequence (stateful modules only)."""

    def values(self, site: Site) -> torch.Tensor:
        """What the layer computes with for a stored site, in the site's shape, detached (default:
        its codes decoded; e.g. a quantized layer's dequantized integers).

        Example:
            >>> import torch, resil
            >>> lin = torch.nn.Linear(1, 2, bias=False); _ = lin.weight.data.copy_(torch.tensor([[0.5], [-2.0]]))
            >>> Adapter.values(resil.sites(lin)["weight"].adapter, resil.sites(lin)["weight"]).tolist()
            [[0.5], [-2.0]]
        """
        if site.batched or site.shape is None:
            raise ValueError(f"site {site.name!r} is computed during the forward pass (or has an unknown shape); it has no stored values")
        codes = self.codes(site).reshape(-1)
        return site.encoding.at(torch.arange(len(codes)), site.shape).decode(codes).reshape(site.shape)

    def trainable(self, site: Site) -> nn.Parameter | None:
        """The parameter an optimiser updates for a stored site, of the site's shape and requiring
        gradients; None if the site has none (buffers, frozen or layer-wide parameters).

        Example:
            >>> import torch, resil
            >>> bn = torch.nn.BatchNorm1d(2); s = resil.sites(bn)
            >>> s["weight"].adapter.trainable(s["weight"]) is bn.weight, s["running_mean"].adapter.trainable(s["running_mean"])
            (True, None)
        """
        t = getattr(site.module, site.attr, None) if not site.batched else None
        return t if isinstance(t, nn.Parameter) and t.requires_grad and tuple(t.shape) == site.shape else None

    def transform(self, site: Site, fn: ValueTransform) -> Undo:
        """Make the layer compute with ``fn(values, encoding)`` in place of a site's values on every
        forward call until the returned function is called (fault-tolerant training redraws its
        faults this way). Gradients flow through ``fn``.

        Default: a stored site's parameter or buffer is swapped for ``fn(it)`` while its module
        runs; a computed site's tensor in the module's output is replaced by ``fn(it)``.

        Raises:
            FaultError: for a site the family cannot transform (e.g. a neuron's state).

        Example:
            >>> import torch, resil
            >>> lin = torch.nn.Linear(2, 1); site = resil.sites(lin)["weight"]
            >>> undo = site.adapter.transform(site, lambda w, enc: w * 0)
            >>> lin(torch.ones(1, 2)).item() == lin.bias.item(); undo(); lin(torch.ones(1, 2)).item() == lin.bias.item()
            True
            False
        """
        from .errors import FaultError

        module = site.module
        if site.batched:
            def replace(mod: nn.Module, args: object, out: object) -> object:
                tensor = tensor_at(out, site.path)
                if not isinstance(tensor, torch.Tensor):
                    raise FaultError(f"site {site.name!r}: the module returned {type(tensor).__name__}, not a tensor")
                return replace_at(out, site.path, fn(tensor, site.encoding))
            return module.register_forward_hook(replace).remove
        table = module._parameters if site.attr in module._parameters else module._buffers
        if not isinstance(table.get(site.attr), torch.Tensor):
            raise FaultError(f"site {site.name!r}: {type(module).__name__} holds no tensor {site.attr!r} to transform")
        return swap_while_running(module, table, site.attr, lambda stored: fn(stored, site.encoding))

    def faults_act_on_output(self, site: Site) -> bool:
        """Whether a fault on a computed site replaces elements of the module's output tensor by the
        fault model applied to their codes ``site.encoding.encode(value)``, and nothing else (so the
        fast path may fault a recorded golden output itself). Default False."""
        return False

    def channel_local(self, module: nn.Module) -> bool:
        """Whether ``module`` acts on every channel alone (elementwise activations, pooling): a fault
        in some channels stays there through it (default: the types in :data:`CHANNEL_LOCAL`).

        Example:
            >>> from torch import nn
            >>> Adapter().channel_local(nn.ReLU()), Adapter().channel_local(nn.Linear(1, 1))
            (True, False)
        """
        return type(module) in CHANNEL_LOCAL

    def channel_map(self, module: nn.Module) -> ChannelMap | None:
        """How to compute some output channels of ``module`` from the same channels of its input
        alone (:data:`~resil.channel_layers.ChannelMap`), so that a fault touching some channels
        is carried through it alone: a :meth:`channel_local` module as it is, an eval BatchNorm or
        a depthwise convolution with the parameters of those channels
        (:func:`~resil.channel_layers.channel_map_of`); None for other modules and for modules with
        forward hooks or pre-hooks (what they compute depends on the hooks).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> relu = Adapter().channel_map(nn.ReLU())
            >>> relu(torch.tensor([[-1.0, 2.0]]), torch.tensor([4, 0])).tolist(), Adapter().channel_map(nn.Linear(1, 1))
            ([[0.0, 2.0]], None)
        """
        if module._forward_hooks or module._forward_pre_hooks:
            return None
        if self.channel_local(module):
            return lambda y, channels: module(y)
        return channel_map_of(module)

    def channel_layer(self, module: nn.Module) -> ChannelLayer | None:
        """How to call ``module`` to recompute some of its output channels from rows of its stored
        weight and bias values (:meth:`values`), None when it cannot be patched by output channel.
        Default: ``nn.Conv1d/2d/3d`` with zero padding and ``nn.Linear``, without forward hooks and
        with only pre-hooks that :meth:`recomputes_from_sites`.

        Example:
            >>> from torch import nn
            >>> type(Adapter().channel_layer(nn.Linear(1, 1))).__name__, Adapter().channel_layer(nn.ReLU())
            ('LinearLayer', None)
        """
        if module._forward_hooks or not all(self.recomputes_from_sites(h) for h in module._forward_pre_hooks.values()):
            return None
        return channel_layer_of(module)

    def recomputes_from_sites(self, pre_hook: object) -> bool:
        """Whether a forward pre-hook of one of the family's modules only recomputes stored tensors
        from its sites' values (so the layer still computes with :meth:`values`). Default False."""
        return False


def swap_while_running(module: nn.Module, table: dict, attr: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Undo:
    """While ``module`` runs, ``table[attr]`` (e.g. ``module._parameters``) holds ``make(t)`` for the
    tensor ``t`` it held when the call began; ``t`` is put back after every call (an exception
    included) and by the returned function (for :meth:`Adapter.transform`).

    Example:
        >>> lin = nn.Linear(1, 1, bias=False); _ = lin.weight.data.fill_(2.0)
        >>> undo = swap_while_running(lin, lin._parameters, "weight", lambda w: -w)
        >>> lin(torch.ones(1, 1)).item(), lin.weight.item(); undo()
        (-2.0, 2.0)
    """
    kept: list[torch.Tensor] = []

    def pre(mod: nn.Module, args: object) -> None:
        kept.append(table[attr])
        table[attr] = make(kept[-1])

    def post(mod: nn.Module, args: object, out: object) -> None:
        if kept:
            table[attr] = kept.pop()

    handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(post, always_call=True)]

    def undo() -> None:
        for h in handles:
            h.remove()
        while kept:
            table[attr] = kept.pop()

    return undo


class SiteList:
    """The sites of one model, in model order, addressable by name.

    Example:
        >>> import torch, resil
        >>> s = resil.sites(torch.nn.Linear(3, 2))
        >>> [x.name for x in s]
        ['weight', 'bias', ':out']
        >>> s["weight"].shape
        (2, 3)
    """

    def __init__(self, sites: Iterable[Site]) -> None:
        self._by_name = {s.name: s for s in sites}

    def __iter__(self) -> Iterator[Site]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Site:
        from .errors import unknown_site

        try:
            return self._by_name[name]
        except KeyError:
            raise unknown_site(name, self._by_name) from None

    def names(self) -> list[str]:
        return list(self._by_name)

    def of_kind(self, *kinds: str) -> SiteList:
        """The sites whose kind is one of ``kinds``."""
        return SiteList(s for s in self if s.kind in kinds)

    def shapes(self) -> dict[str, tuple[int, ...] | None]:
        return {s.name: s.shape for s in self}

    def table(self) -> str:
        """A text table: name, kind, shape, encoding, number of fault bits.

        A computed site's shape is per sample; one whose batch is not its tensor's dim 0 says
        where it is (``(2, 4) batch dim 1``), one without a batch dim says so.
        """
        rows = [("site", "kind", "shape", "encoding", "bits")]
        for s in self:
            n = s.size
            rows.append((s.name, s.kind, _shape_text(s), s.encoding.name, "?" if n is None else f"{n * s.bits:,}"))
        w = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w[i]) if i < 4 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows)


def _shape_text(site: Site) -> str:
    if site.shape is None:
        return "?"
    shape = str(tuple(site.shape))
    if not site.batched or site.batch_dim == 0:
        return shape
    return shape + (" no batch dim" if site.batch_dim is None else f" batch dim {site.batch_dim}")


# -- structured module outputs: tensors addressed by their path in tuples, lists and dicts ------


def _items(obj: object) -> Iterable[tuple[Hashable, object]] | None:
    """The entries of a structure (tuple, list, dict); None for anything else, including
    tensor-like values such as Brevitas' QuantTensor (a NamedTuple defining ``__torch_function__``)."""
    if hasattr(type(obj), "__torch_function__"):
        return None
    if isinstance(obj, dict):
        return obj.items()
    if isinstance(obj, (tuple, list)):
        return enumerate(obj)
    return None


def is_structure(obj: object) -> bool:
    """Whether ``obj`` is a tuple, list or dict whose tensors are sites of their own."""
    return _items(obj) is not None


def tensors_in(obj: object, path: OutputPath = ()) -> Iterator[tuple[OutputPath, torch.Tensor]]:
    """Every tensor in a (nested) structure with its path, depth first; a tensor alone has path ().

    Example:
        >>> out = (torch.zeros(2), {"h": torch.ones(1), "n": 3})
        >>> [(p, t.shape) for p, t in tensors_in(out)]
        [((0,), torch.Size([2])), ((1, 'h'), torch.Size([1]))]
    """
    if isinstance(obj, torch.Tensor):
        yield path, obj
        return
    for key, value in _items(obj) or ():
        yield from tensors_in(value, (*path, key))


def tensor_at(obj: object, path: OutputPath) -> object:
    """The value at ``path`` in a structure (``obj`` itself for ``()``); None if there is none."""
    for key in path:
        items = _items(obj)
        if items is None:
            return None
        try:
            obj = obj[key]  # type: ignore[index]
        except (IndexError, KeyError, TypeError):
            return None
    return obj


def replace_at(obj: object, path: OutputPath, value: object) -> object:
    """A copy of the structure ``obj`` with ``value`` at ``path``, of the same types (tuples and
    named tuples rebuilt, lists and dicts shallow-copied); ``obj`` is not modified.

    Example:
        >>> replace_at((1, [2, 3], {"a": 4}), (1, 0), 9), replace_at({"a": (1, 2)}, ("a", 1), 0)
        ((1, [9, 3], {'a': 4}), {'a': (1, 0)})
    """
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(obj, tuple):
        items = list(obj)
        assert isinstance(key, int)  # a tuple's entries are addressed by position
        items[key] = replace_at(items[key], rest, value)
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    new = copy.copy(obj)
    new[key] = replace_at(obj[key], rest, value)  # type: ignore[index]
    return new


#: module types that act on every channel alone (elementwise activations, pooling): a fault that
#: touches some channels stays in those channels through them (:meth:`Adapter.channel_local`)
CHANNEL_LOCAL: frozenset[type[nn.Module]] = frozenset({
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Identity,
    nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
})
