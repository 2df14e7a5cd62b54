"""Sites (named, addressable fault spaces of a model) and the adapter interface that makes them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .encodings import Encoding
from .faults import FOREVER
from .plan import ElementPlan

Undo = Callable[[], None]


@dataclass(frozen=True, eq=False)
class Site:
    """One named fault space, e.g. ``conv1.weight`` (stored) or ``conv1:out`` (computed).

    Attributes:
        name: stable name used in faults.
        kind: ``weight``, ``bias``, ``parameter``, ``buffer``, ``activation`` ...
        shape: element shape (for activations: per sample, without the batch dimension);
            None while unknown (list the sites with an example input to learn it).
        encoding: how the elements are stored in bits.
        adapter: the adapter that owns the site and knows how to inject into it.
        module: the module the site belongs to.
        batched: whether faults may name a batch element (computed tensors).
        live: when only some elements of the tensor are stored (e.g. the unpruned weights of a
            sparse layer), their sorted flat indices; None when every element is stored.
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
class SiteOptions:
    """Choices that change which elements a site covers.

    Attributes:
        pruned: for weights pruned with ``torch.nn.utils.prune``: ``"live"`` (default; only the
            unpruned weights are stored, as in sparse storage) or ``"dense"`` (the pruned zeros
            are stored cells too, and a fault on them takes effect).
    """

    pruned: str = "live"

    def __post_init__(self) -> None:
        if self.pruned not in ("live", "dense"):
            raise ValueError(f"pruned must be 'live' or 'dense', not {self.pruned!r}")


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
        """A text table: name, kind, shape, encoding, number of fault bits."""
        rows = [("site", "kind", "shape", "encoding", "bits")]
        for s in self:
            n = s.size
            rows.append((s.name, s.kind, "?" if s.shape is None else str(tuple(s.shape)), s.encoding.name, "?" if n is None else f"{n * s.bits:,}"))
        w = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w[i]) if i < 4 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows)


#: module types that act on every channel alone (elementwise activations, pooling): a fault that
#: touches some channels stays in those channels through them (the fast campaign path uses this)
CHANNEL_LOCAL: set[type[nn.Module]] = {
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
}


def register_channel_local(*types: type[nn.Module]) -> None:
    """Declare module types that act on every channel alone (adapters call this for their own).

    Example:
        >>> from torch import nn
        >>> register_channel_local(nn.Softplus); nn.Softplus in CHANNEL_LOCAL
        True
    """
    CHANNEL_LOCAL.update(types)
