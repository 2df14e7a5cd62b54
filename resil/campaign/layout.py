"""Kernels whose bits depend on where a row or an element sits in its tensor, found on the golden run.

The fast mode stacks scenario copies along the batch and gathers rows out of their places. Two
kinds of CPU kernels compute other bits there than in the plain forward, depending on the values,
so a check on a few rows can miss them:

- **pointwise ops whose vectorised loop and scalar tail loop round differently** (on torch 2.13
  with AVX512: sigmoid, GELU, SiLU, softplus, ELU, Mish). The last elements of a tensor run in
  the scalar loop, and stacking moves a copy's last elements into the vectorised body;
- **matrix products and convolutions that compute a batch's last rows in a tail path** (MKL's
  GEMM with one output column; a last partial block of rows).

:func:`layout_sensitive_op` runs one forward under a dispatch mode and tries each such op: a
pointwise op on strided copies of its inputs (which run the scalar loop everywhere) against its
result (where its rows could meet a tail: each row of the batch a multiple of 64 elements, on one
thread, never does), and a product or convolution with one input row placed in the batch's last
row against the same row placed 16 rows earlier (kernels whose bits depend on a row's place
modulo 2..16 are the :class:`~resil.campaign.grouped.Probe`'s concern; in a batch of fewer than
17 rows a product with one output column, whose bits change with the rows by value, is tried
whole, as two stacked copies, against its own result; other products' changes with the number
of rows show on most values, which the probe's perturbed rows see). The first op that differs
is returned; the fast mode then stacks and
gathers nothing for the model and keeps the one-scenario-at-a-time suffix replay, which computes
every batch in its own layout.

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> layout_sensitive_op(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), torch.rand(5, 4)) is None
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from .grouped import same_bits

__all__ = ["layout_sensitive_op"]

_ROWS_OPS = {torch.ops.aten.mm.default: 0, torch.ops.aten.addmm.default: 1, torch.ops.aten.convolution.default: 0}
_SAMPLES = 8  # inputs of a product's batch tried in its last row and in its body
_PERIOD = 16  # rows between the two places: kernels whose bits depend on a row's place modulo 2, 4, 8, 16 see no difference


def _strided(t: Any) -> Any:
    """A copy of a floating tensor with its elements two apart in memory (a scalar loop reads it)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() < 2:
        return t
    wide = torch.empty(*t.shape, 2, dtype=t.dtype, device=t.device).select(-1, 0)
    return wide.copy_(t)


def _same(a: Any, b: Any) -> bool:
    return not isinstance(a, torch.Tensor) or same_bits(a, b)


class _Audit(TorchDispatchMode):
    def __init__(self, batch: int) -> None:
        super().__init__()
        self.found: str | None = None
        self.batch = batch

    def _whole_chunks(self, shape: torch.Size) -> bool:
        """Whether every layout of the rows of an output of ``shape`` leaves no tail: one thread
        (several split a tensor at other places), dimension 0 the batch and each row a multiple of
        64 elements (the widest vector loop step)."""
        return torch.get_num_threads() == 1 and len(shape) > 0 and shape[0] == self.batch and (shape.numel() // self.batch) % 64 == 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        probe = None if self.found is not None else self._probe(func, args, kwargs)
        out = func(*args, **kwargs)
        if probe is not None and not probe(out):
            self.found = str(func.overloadpacket.__name__)
        return out

    def _probe(self, func: Any, args: Any, kwargs: Any) -> Any:
        """A test of ``func``'s output, computed before ``func`` runs (in-place ops change their inputs)."""
        floats = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
        if torch.Tag.pointwise in func.tags and floats and any(a.numel() > 1 for a in floats):
            tensors = [a.shape for a in args if isinstance(a, torch.Tensor)]
            if self._whole_chunks(torch.broadcast_shapes(*tensors)):  # a pointwise op's output has the broadcast shape
                return None
            scalar = func(*tree_map(_strided, args), **tree_map(_strided, kwargs))
            return lambda out: _same(out, scalar)
        if func in _ROWS_OPS:
            at = _ROWS_OPS[func]
            x = args[at]
            n = len(x) if isinstance(x, torch.Tensor) and x.dim() > 0 else 0
            body = n - 1 - _PERIOD  # a row in the body at the last row's place modulo the period
            if body < 0:  # too few rows for that: a one-column product (whose bits change with the rows, by value)
                bias = args[0] if at == 1 else None  # is tried whole, as two stacked copies, as fast mode stacks it
                columns = args[1].shape[0] if func is torch.ops.aten.convolution.default else args[at + 1].shape[-1]
                if n < 2 or columns != 1 or (isinstance(bias, torch.Tensor) and bias.dim() == 2 and len(bias) != 1):
                    return None
                twice = func(*args[:at], torch.cat([x, x]), *args[at + 1:], **kwargs)
                return lambda out: _same(twice[:n], out) and _same(twice[n:], out)
            pairs = []
            for r in sorted({int(v) for v in torch.linspace(0, n - 1, _SAMPLES).round()}):
                moved = x.clone()
                moved[n - 1] = moved[body] = x[r]  # row r's input in the last row and in the body
                y = func(*args[:at], moved, *args[at + 1:], **kwargs)
                pairs.append((y[n - 1], y[body]))
            return lambda out: all(_same(last, inside) for last, inside in pairs)
        return None


def layout_sensitive_op(model: nn.Module, x: torch.Tensor) -> str | None:
    """The first op of ``model``'s forward on batch ``x`` whose bits depend on where a value sits
    (see the module docstring), or None."""
    audit = _Audit(len(x))
    with torch.no_grad(), audit:
        model(x)
    return audit.found
