"""A test harness for adapters (``torchmetrics``' ``MetricTester`` for resil): run it against your
adapter with a small model that uses your module family.

:class:`AdapterTester` checks the :class:`~resil.site.Adapter` contract on every site the adapter
lists for the model, against oracles that do not come from resil: the model's tensors as numpy
bit patterns, and the model's own outputs.

- sites: at least one, names unique, shapes known after listing with the example and matching
  the stored codes (one code per element of a stored site's shape);
- codes: every stored site's codes decode to its :meth:`~resil.site.Adapter.values` and encode
  back to themselves;
- restore: a bit flip on elements of every stored site changes exactly those codes while active,
  and after the block every tensor of the model has its original bits again, under
  ``torch.no_grad``, ``torch.inference_mode`` and with gradients (a backward pass included);
- per-sample faults (computed sites with a batch dimension): a fault on sample 1 leaves
  sample 0's output bit for bit as it was;
- time windows (computed sites): a fault whose window opens after the module's last call changes
  nothing, and one spanning all its calls equals a permanent fault;
- transform (:meth:`~resil.site.Adapter.transform`): making the layer compute with a flipped bit
  gives the output bit for bit of injecting that flip, and undoing it restores the model.

Each check raises ``AssertionError`` naming the site and what went wrong; :meth:`AdapterTester.run`
runs them all and returns what each check covered.

Example:
    >>> import torch
    >>> from resil.testing import AdapterTester
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    >>> report = AdapterTester(net, torch.rand(2, 3)).run()
    >>> report["restore"], report["transform"]
    (['0.weight', '0.bias', '2.weight', '2.bias'], ['0.weight', '0.bias', '0:out', '1:out', '2.weight', '2.bias', '2:out'])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .adapter_registry import adapter_for
from .discovery import reset
from .discovery import sites as list_sites
from .encodings import Encoding
from .errors import FaultError
from .faults import FOREVER, Fault
from .injection import inject
from .site import Adapter, Site, SiteList, SiteOptions

Forward = Callable[[nn.Module, Any], torch.Tensor]
MODES: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
    "no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "grad": torch.enable_grad,
}


def _forward(model: nn.Module, x: Any) -> torch.Tensor:
    reset(model)
    out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__}; pass forward= to return one tensor")
    return out


def bit_snapshot(model: nn.Module) -> dict[str, bytes]:
    """Every parameter and buffer of ``model`` as its raw bytes, from numpy.

    Example:
        >>> lin = torch.nn.Linear(1, 1, bias=False); _ = lin.weight.data.fill_(1.0)
        >>> bit_snapshot(lin)["weight"].hex()
        '0000803f'
    """
    return {name: _bits(t) for name, t in (*model.named_parameters(), *model.named_buffers())}


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().numpy().tobytes()


class AdapterTester:
    """Checks an adapter on a small model (see the module docstring).

    Args:
        model: a model in eval mode that uses the family (its outputs depend on its inputs sample by sample).
        example: an input batch of at least 2 samples.
        adapter: the adapter to check; default every adapter that lists sites for the model.
        forward: ``forward(model, x) -> tensor``; default ``resil.reset(model)`` then ``model(x)``
            (a temporal model loops over its time steps inside its forward).
        elements: how many elements of each site to fault (first, last, and between).

    Raises:
        FaultError: for a model in training mode or an example of fewer than 2 samples.
    """

    def __init__(self, model: nn.Module, example: Any, *, adapter: Adapter | None = None, forward: Forward = _forward,
                 elements: int = 3) -> None:
        if model.training:
            raise FaultError("AdapterTester needs the model in eval mode (model.eval())")
        if not isinstance(example, torch.Tensor) or example.dim() == 0 or len(example) < 2:
            raise FaultError("AdapterTester needs an example batch tensor of at least 2 samples")
        self.model, self.example, self.forward, self.elements = model, example, forward, elements
        self.sites: SiteList = list_sites(model, example)
        self.chosen = [s for s in self.sites if adapter is None or s.adapter is adapter]
        self.adapter = adapter
        with torch.no_grad():
            self.golden = forward(model, example).detach().clone()

    def run(self) -> dict[str, list[str]]:
        """Run every check; return, per check, the names of the sites it covered."""
        return {"sites": self.check_sites(), "codes": self.check_codes(), "restore": self.check_restore(),
                "per_sample": self.check_per_sample(), "time_window": self.check_time_window(),
                "transform": self.check_transform()}

    # -- the checks ---------------------------------------------------------------------------
    def check_sites(self) -> list[str]:
        """Sites listed, names unique (across every module of the model), shapes known and consistent."""
        assert self.chosen, f"the adapter {self.adapter!r} lists no site for the model" if self.adapter else "the model has no site"
        names = [s.name for s in self._walk()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        assert not duplicates, f"site names listed twice: {duplicates}"
        for s in self.chosen:
            assert s.shape is not None, f"site {s.name!r}: shape unknown after listing with the example"
            if not s.batched:
                n = s.codes().numel()
                assert n == s.numel, f"site {s.name!r}: {n} codes for shape {s.shape}"
            assert s.size and s.size > 0, f"site {s.name!r}: no element can be faulted"
        return [s.name for s in self.chosen]

    def check_codes(self) -> list[str]:
        """Stored codes decode to the values the layer computes with, and encode back to themselves."""
        covered = []
        for s in self._stored():
            codes = s.codes()
            assert codes.dtype == torch.int64, f"site {s.name!r}: codes of dtype {codes.dtype}, not int64"
            enc = self._elementwise(s)
            values = enc.decode(codes)
            assert torch.equal(enc.encode(values), codes), f"site {s.name!r}: codes do not survive decode/encode"
            computed = s.adapter.values(s)
            assert tuple(computed.shape) == s.shape, f"site {s.name!r}: values of shape {tuple(computed.shape)}, not {s.shape}"
            same = (computed.reshape(-1).to(torch.float64) == values.to(torch.float64)) | (computed.reshape(-1).isnan() & values.isnan())
            assert bool(same.all()), f"site {s.name!r}: values() differ from the decoded codes at {int((~same).sum())} elements"
            covered.append(s.name)
        return covered

    def check_restore(self) -> list[str]:
        """Bit flips change exactly the faulted codes, and every tensor's bits come back, in every grad mode."""
        before = self._snapshot()
        covered = []
        for s in self._stored():
            faults, expected = self._flips(s)
            for mode, make in MODES.items():
                with make(), inject(self.model, faults, sites=self.sites):
                    now = s.codes()
                    assert torch.equal(now, expected), f"site {s.name!r} ({mode}): the codes in the block are not the flipped ones"
                    out = self.forward(self.model, self.example)
                    if mode == "grad" and out.requires_grad:
                        out.float().sum().backward()
                self._assert_restored(before, f"site {s.name!r} ({mode})")
            covered.append(s.name)
        for p in self.model.parameters():
            p.grad = None
        return covered

    def check_per_sample(self) -> list[str]:
        """A fault on sample 1 of a computed site leaves sample 0's output as it was."""
        covered = []
        for s in self._computed():
            if s.batch_dim is None:
                continue
            faults = [Fault(s.name, int(i), bit=self._high_bit(s), batch=1) for i in self._picks(s)]
            out = self._faulty(faults)
            assert _bits(out[:1]) == _bits(self.golden[:1]), f"site {s.name!r}: a fault on sample 1 changed sample 0's output"
            covered.append(s.name)
        self._assert_output_restored("per-sample faults")
        return covered

    def check_time_window(self) -> list[str]:
        """A fault on a computed site whose window opens after the module's last call in a forward
        pass changes nothing; one whose window spans all its calls acts as a permanent fault."""
        calls = self._calls()
        covered = []
        for s in self._computed():
            late = calls.get(s.module, 0)
            index, bit = int(self._picks(s)[0]), self._high_bit(s)
            out = self._faulty(Fault(s.name, index, bit=bit, step=(late, FOREVER)))
            assert _bits(out) == _bits(self.golden), f"site {s.name!r}: a fault from step {late} (after its last call) changed the output"
            spanning = self._faulty(Fault(s.name, index, bit=bit, step=(0, late)))
            permanent = self._faulty(Fault(s.name, index, bit=bit))
            assert _bits(spanning) == _bits(permanent), f"site {s.name!r}: a fault over steps 0..{late - 1} differs from a permanent one"
            covered.append(s.name)
        self._assert_output_restored("time-window faults")
        return covered

    def check_transform(self) -> list[str]:
        """``transform`` with a bit flip equals injecting it; undoing it restores the model."""
        before = self._snapshot()
        covered = []
        for s in self.chosen:
            if s.batched and (s.kind != "activation" or s.batch_dim != 0):
                continue  # neuron state and spikes are no values a layer computes with; batch first only
            i, bit = int(self._picks(s)[-1]), self._high_bit(s)
            try:
                undo = s.adapter.transform(s, _flip(s, i, bit))
            except FaultError:
                continue  # the family does not transform this site
            try:
                with torch.no_grad():
                    transformed = self.forward(self.model, self.example)
            finally:
                undo()
            self._assert_restored(before, f"site {s.name!r} (transform undone)")
            injected = self._faulty(Fault(s.name, i, bit=bit))
            assert _bits(transformed) == _bits(injected), f"site {s.name!r}: transform with a bit flip differs from injecting it"
            covered.append(s.name)
        self._assert_output_restored("transforms")
        return covered

    # -- helpers ------------------------------------------------------------------------------
    def _faulty(self, faults: Fault | list[Fault]) -> Any:
        """The model's output on the example with ``faults`` injected (no gradients)."""
        with torch.no_grad(), inject(self.model, faults, sites=self.sites):
            return self.forward(self.model, self.example)

    def _walk(self) -> Iterator[Site]:
        """Every site every adapter yields for the model, before names are merged into a SiteList."""
        options = SiteOptions()
        claimed: list[str] = []
        for prefix, module in self.model.named_modules():
            if any(c == "" or prefix == c or prefix.startswith(c + ".") for c in claimed):
                continue
            adapter = adapter_for(module)
            yield from adapter.sites(prefix, module, options)
            if adapter.claims_children:
                claimed.append(prefix)

    def _stored(self) -> list[Site]:
        return [s for s in self.chosen if not s.batched]

    def _computed(self) -> list[Site]:
        return [s for s in self.chosen if s.batched]

    def _picks(self, s: Site) -> np.ndarray:
        e = s.elements()
        return np.unique(e[np.linspace(0, len(e) - 1, min(self.elements, len(e))).astype(np.int64)])

    @staticmethod
    def _high_bit(s: Site) -> int:
        return max(s.bits - 2, 0)  # a float's high exponent bit; an integer's high value bit

    @staticmethod
    def _elementwise(s: Site) -> Encoding:
        assert s.shape is not None
        return s.encoding.at(torch.arange(int(np.prod(s.shape))), s.shape)

    def _flips(self, s: Site) -> tuple[list[Fault], torch.Tensor]:
        """Bit flips on picked elements of a stored site (bit 0 and a high bit), and the codes they should give."""
        codes = s.codes().clone()
        faults = []
        for k, i in enumerate(self._picks(s)):
            bit = 0 if k % 2 else self._high_bit(s)
            faults.append(Fault(s.name, int(i), bit=bit))
            codes[int(i)] ^= 1 << bit
        return faults, codes

    def _calls(self) -> dict[nn.Module, int]:
        """How many times each module is called in one forward pass."""
        counts: dict[nn.Module, int] = {}

        def count(m: nn.Module, args: object, out: object) -> None:
            counts[m] = counts.get(m, 0) + 1

        handles = [m.register_forward_hook(count) for m in self.model.modules()]
        try:
            with torch.no_grad():
                self.forward(self.model, self.example)
        finally:
            for h in handles:
                h.remove()
        return counts

    def _snapshot(self) -> dict[str, bytes]:
        """The model's bits after :func:`resil.reset` (a temporal family's state is per sequence)."""
        reset(self.model)
        return bit_snapshot(self.model)

    def _assert_restored(self, before: dict[str, bytes], what: str) -> None:
        after = self._snapshot()
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"{what}: tensors not restored bit for bit: {changed}"
        self._assert_output_restored(what)

    def _assert_output_restored(self, what: str) -> None:
        with torch.no_grad():
            assert _bits(self.forward(self.model, self.example)) == _bits(self.golden), f"{what}: the model's output is not restored"


def _flip(s: Site, i: int, bit: int) -> Callable[[torch.Tensor, Encoding], torch.Tensor]:
    """A value transform flipping ``bit`` of element ``i`` (of every sample of a computed site)."""
    def fn(values: torch.Tensor, encoding: Encoding) -> torch.Tensor:
        assert s.shape is not None
        flat = values.detach().clone().reshape(len(values) if s.batched else 1, -1)
        enc = encoding.at(torch.tensor([i]), s.shape)
        code = enc.encode(flat[:, i:i + 1])
        flat[:, i:i + 1] = enc.decode(code ^ (1 << bit)).to(flat.dtype)
        return flat.reshape(values.shape)
    return fn


__all__ = ["AdapterTester", "bit_snapshot"]
