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


class Adapter:
    """Knows one family of modules: enumerates their sites and injects into them.

    Register an adapter for a module type with :func:`resil.adapters.register_adapter`.
    """

    name: str = "adapter"
    #: if True, the walk does not enumerate this module's submodules separately
    claims_children: bool = False

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
        yield from tensors_in(value, path + (key,))


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
        items[key] = replace_at(items[key], rest, value)  # type: ignore[index]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    new = copy.copy(obj)
    new[key] = replace_at(obj[key], rest, value)  # type: ignore[index]
    return new


#: module types that act on every channel alone (elementwise activations, pooling): a fault that
#: touches some channels stays in those channels through them (the fast campaign path uses this)
CHANNEL_LOCAL: set[type[nn.Module]] = {
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Identity,
    nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
}


#: forward pre-hook types that only recompute a layer's stored tensors from its sites' values
#: (``torch.nn.utils.prune``'s ``weight = weight_orig * weight_mask``, registered by the pruning
#: adapter): a layer with them may still have its output channels recomputed from its sites
TRANSPARENT_PRE_HOOKS: set[type] = set()


def register_transparent_pre_hook(*types: type) -> None:
    """Declare forward pre-hook types that leave a layer computing with its sites' values (adapters call this).

    Example:
        >>> class Recompute: ...
        >>> register_transparent_pre_hook(Recompute); Recompute in TRANSPARENT_PRE_HOOKS
        True
    """
    TRANSPARENT_PRE_HOOKS.update(types)


def register_channel_local(*types: type[nn.Module]) -> None:
    """Declare module types that act on every channel alone (adapters call this for their own).

    Example:
        >>> from torch import nn
        >>> register_channel_local(nn.Softplus); nn.Softplus in CHANNEL_LOCAL
        True
    """
    CHANNEL_LOCAL.update(types)
