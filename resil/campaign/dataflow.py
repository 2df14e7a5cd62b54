"""Which module calls of a forward pass can see faults in given modules: a data-flow trace.

A fault in module ``M`` reaches only what is computed from ``M``'s outputs (or from its stored
tensors). :func:`trace_faults` runs one fault-free forward under a
:class:`~torch.overrides.TorchFunctionMode` that marks the storage of ``M``'s stored tensors, of
its outputs and of the state it keeps as *reached*, and, for every torch operation that reads a
reached storage, marks the storage of its results (and of the tensor an in-place operation writes)
as reached too. A module call in which no operation read a reached storage, and that neither received nor returned a reached
tensor, computes exactly as in the golden run under any fault in ``M``: its golden output can be replayed, even when the call
comes after ``M``'s (a time loop's convolution at every step, a branch that does not read ``M``).

Values that leave torch (``bool(t)``, ``t.item()``, ``t.tolist()``, comparisons such as
``torch.equal``) and operations whose output shape depends on the values (``nonzero``,
``unique``, boolean masks) can steer Python control flow; when a reached value goes through one
of them the trace reports an *escape*, and callers must not rely on it beyond the calls that end
before ``M``'s first call starts.

Example:
    >>> import torch
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.a, self.b, self.c = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    ...     def forward(self, x):
    ...         return self.b(x) + self.c(self.a(x))    # b reads only x
    >>> net = Net().eval()
    >>> t = trace_faults(net, torch.randn(2, 3), [net.a])
    >>> names = {id(m): n for n, m in net.named_modules()}
    >>> [(names[c.module], r) for c, r in zip(t.calls, t.reached)]
    [('b', False), ('a', True), ('c', True)]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten_with_path, tree_leaves

__all__ = ["Call", "CallTracker", "FaultTrace", "Operation", "held_tensors", "read_replays", "trace_faults"]

#: operations whose result leaves torch as a Python value (it can steer control flow)
_TO_PYTHON = frozenset({"__bool__", "item", "tolist", "__int__", "__float__", "__index__", "__complex__", "__array__", "numpy",
                        "equal", "allclose", "is_nonzero", "__format__", "__repr__", "__str__", "__contains__"})
#: operations whose output shape depends on the values
_VALUE_SHAPED = frozenset({"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "repeat_interleave", "bincount",
                           "nonzero_static", "masked_scatter"})


@dataclass(frozen=True)
class Operation:
    """A torch operation that read a reached tensor (see :func:`trace_faults`).

    Attributes:
        func: the function called, with ``args`` and ``kwargs`` as called.
        reads: storages of the reached tensors it read, in argument order.
        writes: storages of the tensors it returned.
        calls: how many module calls had started when it ran.
    """

    func: Any
    args: Any
    kwargs: dict[str, Any]
    reads: tuple[int, ...]
    writes: tuple[int, ...]
    calls: int


@dataclass(frozen=True)
class Call:
    """One module call of a forward pass, in the order the calls start.

    Attributes:
        module: ``id`` of the module.
        index: which call of that module this is (0 for its first).
        parent: position of the innermost enclosing call, -1 for none.
        end: the calls at positions ``position + 1 .. end - 1`` happen inside this one.
    """

    module: int
    index: int
    parent: int
    end: int


class CallTracker:
    """Forward hooks on every submodule of ``model`` that list its calls (:class:`Call`) as they start
    (subclasses see a call's arguments with its keyword arguments after the positional ones).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> with CallTracker(net) as t:
        ...     _ = net(torch.randn(1, 2))
        >>> [(c.index, c.parent, c.end) for c in t.calls]
        [(0, -1, 1), (0, -1, 2)]
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls: list[Call] = []
        self.stack: list[int] = []
        self._count: dict[int, int] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> CallTracker:
        for m in self.model.modules():
            if m is not self.model:
                self._handles.append(m.register_forward_pre_hook(lambda m, a, kw: self._pre(m, _arguments(a, kw)), with_kwargs=True))
                self._handles.append(m.register_forward_hook(lambda m, a, kw, out: self._post(m, _arguments(a, kw), out),
                                                             with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre(self, m: nn.Module, args: Any) -> None:
        k = self._count.get(id(m), 0)
        self._count[id(m)] = k + 1
        self.calls.append(Call(id(m), k, self.stack[-1] if self.stack else -1, -1))
        self.stack.append(len(self.calls) - 1)
        self.started(m, len(self.calls) - 1, args)

    def _post(self, m: nn.Module, args: Any, out: Any) -> None:
        pos = self.stack.pop()
        c = self.calls[pos]
        self.calls[pos] = Call(c.module, c.index, c.parent, len(self.calls))
        self.ended(m, pos, out)

    def started(self, m: nn.Module, pos: int, args: Any) -> None:
        """Called as call ``pos`` of ``m`` starts with positional ``args`` (for subclasses)."""

    def ended(self, m: nn.Module, pos: int, out: Any) -> None:
        """Called as call ``pos`` of ``m`` returns ``out`` (for subclasses)."""


def _arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """A call's arguments as one tuple, keyword arguments after the positional ones (``head(input=h)``
    then reads as ``head(h)``)."""
    return (*args, *kwargs.values()) if kwargs else args


def _storage(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # no storage (sparse, meta): one shared key, so it counts as reached
        return -1


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    return (v for v in tree_leaves(value) if isinstance(v, torch.Tensor))


def held_tensors(m: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a module holds itself, by name: parameters, buffers and tensor attributes,
    also inside lists, tuples and dicts (a neuron's membrane, an RNN cell's ``[h, c]``).

    Example:
        >>> m = torch.nn.Linear(2, 2); m.state = [torch.zeros(1), {"c": torch.ones(1)}]
        >>> sorted(held_tensors(m))
        ['bias', 'state.0', 'state.1.c', 'weight']
    """
    held: dict[str, torch.Tensor] = {**dict(m.named_parameters(recurse=False)), **dict(m.named_buffers(recurse=False))}
    for name, value in vars(m).items():
        if name.startswith("_"):  # torch's own tables (parameters, buffers, hooks)
            continue
        if isinstance(value, torch.Tensor):
            held[name] = value
        elif isinstance(value, (list, tuple, dict)):
            for path, leaf in tree_flatten_with_path(value)[0]:
                if isinstance(leaf, torch.Tensor):
                    held[".".join([name, *(str(getattr(k, "idx", getattr(k, "key", k))) for k in path)])] = leaf
    return held


class _Operations(TorchFunctionMode):
    """A torch function mode that hands every operation and its result to ``seen``."""

    def __init__(self, seen: Any) -> None:
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        self.seen(func, args, kwargs, result)
        return result


class _Trace(CallTracker):
    """The trace of :func:`trace_faults`: the call hooks, and what each operation reads and writes."""

    def __init__(self, model: nn.Module, targets: set[int]) -> None:
        super().__init__(model)
        self.targets = targets
        self.reached_storages: set[int] = set()
        self.reached: list[bool] = []
        self.escaped = self.quiet = False
        self.operations: list[str] = []
        self.tape: list[Operation] = []  # the operations that read a reached tensor
        self.ended_at: dict[int, int] = {}  # call position -> operations on the tape when it returned
        self.call_reads: dict[int, set[int]] = {}  # call position -> reached storages among its arguments
        self.call_writes: dict[int, tuple[int, ...]] = {}  # call position -> storages of the tensors it returned
        self.keep: list[torch.Tensor] = []  # every tensor seen stays alive, so no storage address is reused during the trace
        for m in model.modules():
            if id(m) in targets:
                self._reach(held_tensors(m).values())

    def _reach(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            self.keep.append(t)
            self.reached_storages.add(_storage(t))

    def _mark_open_calls(self) -> None:
        for pos in self.stack:
            self.reached[pos] = True

    def started(self, m: nn.Module, pos: int, args: Any) -> None:
        self.quiet = True  # the hooks run under the mode: their own torch calls are not the model's
        reads = {_storage(t) for t in _tensors(args)} & self.reached_storages
        self.call_reads[pos] = reads
        self.reached.append(id(m) in self.targets or bool(reads))
        self.quiet = False

    def ended(self, m: nn.Module, pos: int, out: Any) -> None:
        self.quiet = True
        self.ended_at[pos] = len(self.tape)
        self.call_writes[pos] = tuple(_storage(t) for t in _tensors(out))
        if self.reached_storages.intersection(self.call_writes[pos]):  # a call that returns what it got (nn.Identity) runs no operation
            self.reached[pos] = True
        if id(m) in self.targets:  # faults in its output or its state reach whatever reads them
            self._reach(_tensors(out))
            self._reach(held_tensors(m).values())
            self.reached[pos] = True
            self._mark_open_calls()
        self.quiet = False

    def operation(self, func: Any, args: Any, kwargs: dict[str, Any], result: Any) -> None:
        if self.quiet:
            return
        inputs = list(_tensors((args, kwargs)))
        self.operations.append(getattr(func, "__name__", repr(func)))
        self.keep.extend(inputs)
        reads = tuple(k for k in map(_storage, inputs) if k in self.reached_storages)
        if reads:
            name = getattr(func, "__name__", "")
            if name in _TO_PYTHON or name in _VALUE_SHAPED or (name == "__getitem__" and any(t.dtype == torch.bool for t in inputs[1:])):
                self.escaped = True
            self._reach(_tensors(result))
            if name.endswith("_") or name.startswith("__i") or name == "__setitem__" or "out" in kwargs:  # writes in place
                self._reach(inputs[:1])
                self._reach(_tensors(kwargs.get("out")))
            self.tape.append(Operation(func, args, kwargs, reads, tuple(_storage(t) for t in _tensors(result)), len(self.calls)))
            self._mark_open_calls()
        else:
            self.keep.extend(_tensors(result))


@dataclass(frozen=True)
class FaultTrace:
    """What :func:`trace_faults` saw.

    Attributes:
        calls: the module calls in start order.
        reached: per call, whether the faults can reach it; None if a reached value escaped to Python.
        operations: the names of the torch operations run, in order.
        tape: the operations that read a reached tensor, in order.
        ended_at: per call position, how many operations of ``tape`` had run when it returned.
        call_reads: per call position, the reached storages among its arguments.
        call_writes: per call position, the storages of the tensors it returned.
    """

    calls: list[Call]
    reached: list[bool] | None
    operations: list[str]
    tape: list[Operation]
    ended_at: dict[int, int]
    call_reads: dict[int, set[int]]
    call_writes: dict[int, tuple[int, ...]]

    def reads_held_outside(self, module: nn.Module) -> bool:
        """Whether an operation outside ``module``'s own calls read a tensor it holds (a functional
        use of its weight, ``F.linear(x, self.a.weight)``); True where the trace kept no operations
        (it cannot tell). ``module`` must be one of the traced targets.

        Example:
            >>> class Net(torch.nn.Module):
            ...     def __init__(self):
            ...         super().__init__(); self.a = torch.nn.Linear(2, 2)
            ...     def forward(self, x):
            ...         return self.a(x) + torch.nn.functional.linear(x, self.a.weight)
            >>> net = Net(); trace_faults(net, torch.randn(1, 2), [net.a]).reads_held_outside(net.a)
            True
        """
        if not self.ended_at:
            return True
        held = {_storage(t) for t in held_tensors(module).values()}
        inside = [(p, self.ended_at[p]) for p, c in enumerate(self.calls) if c.module == id(module) and p in self.ended_at]
        return any(held.intersection(op.reads) and not any(op.calls > p and i < end for p, end in inside) for i, op in enumerate(self.tape))


def trace_faults(model: nn.Module, x: Any, targets: Iterable[nn.Module]) -> FaultTrace:
    """Trace ``model(x)``: per module call, whether faults in the stored tensors, outputs or state
    of ``targets`` can reach it (see the module docstring). Runs one fault-free forward without gradients."""
    trace = _Trace(model, {id(t) for t in targets})
    with torch.no_grad(), trace, _Operations(trace.operation):
        model(x)
    return FaultTrace(trace.calls, None if trace.escaped else trace.reached, trace.operations, trace.tape, trace.ended_at,
                      trace.call_reads, trace.call_writes)


#: results of reading a tensor that do not depend on its values or its shape
_SHAPELESS = (torch.dtype, torch.device, torch.layout, torch.memory_format)


class _Readers(CallTracker):
    """The trace of :func:`read_replays`: storages labelled by the replayed values they derive from,
    labels that are combined in one operation merged (union-find), and the labels that the rest
    of the forward reads."""

    def __init__(self, model: nn.Module, replayed: dict[int, frozenset[int]], target: int) -> None:
        super().__init__(model)
        self.replayed, self.target = replayed, target
        self.label: dict[int, int] = {}  # storage -> label
        self.parent: list[int] = [0, 1]  # label 0: the model's input; label 1: the target's (stacked) outputs
        self.read: set[int] = {1}  # labels whose values the computed part of the forward reads
        self.names: dict[tuple[int, int], int] = {}  # replayed call -> its label
        self.shortcut: list[int] = []  # positions of the replayed and target calls in progress
        self.keep: list[torch.Tensor] = []

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = a = self.parent[self.parent[a]]
        return a

    def merge(self, labels: Iterable[int]) -> int | None:
        roots = {self.find(a) for a in labels}
        if not roots:
            return None
        root = min(roots)
        for r in roots:
            self.parent[r] = root
        return root

    def labels_of(self, value: Any) -> set[int]:
        return {self.label[k] for k in map(_storage, _tensors(value)) if k in self.label}

    def attach(self, value: Any, label: int) -> None:
        for t in _tensors(value):
            self.keep.append(t)
            k = _storage(t)
            self.label[k] = label if k not in self.label else self.merge([label, self.label[k]])  # type: ignore[assignment]

    def started(self, m: nn.Module, pos: int, args: Any) -> None:
        c = self.calls[pos]
        if self.shortcut:
            return
        if id(m) == self.target or c.index in self.replayed.get(id(m), ()):
            self.shortcut.append(pos)
        elif next(m.children(), None) is None:  # a leaf that computes reads what it receives (a container hands it on)
            self.read |= self.labels_of(args)

    def ended(self, m: nn.Module, pos: int, out: Any) -> None:
        if not self.shortcut or self.shortcut[-1] != pos:
            return
        self.shortcut.pop()
        c = self.calls[pos]
        if id(m) == self.target:
            self.attach(out, 1)
        else:
            self.parent.append(len(self.parent))
            self.names[(c.module, c.index)] = self.parent[-1]
            self.attach(out, self.parent[-1])

    def operation(self, func: Any, args: Any, kwargs: dict[str, Any], result: Any) -> None:
        if self.shortcut:  # inside a replayed call: it does not run
            return
        inputs = list(_tensors((args, kwargs)))
        self.keep.extend(inputs)
        label = self.merge(self.labels_of(inputs))
        if label is None:
            return
        outputs = list(_tensors(result))
        if not outputs and not isinstance(result, _SHAPELESS):  # a shape or a value that leaves torch
            self.read.add(label)
        self.attach(outputs, label)
        name = getattr(func, "__name__", "")
        if name.endswith("_") or name.startswith("__i") or name == "__setitem__" or "out" in kwargs:  # writes in place
            self.attach(inputs[:1], label)


def read_replays(model: nn.Module, x: Any, replayed: dict[int, frozenset[int]], target: nn.Module) -> tuple[set[tuple[int, int]], bool]:
    """In a forward of ``model`` over ``x`` where the calls ``replayed`` (module id -> call indices,
    the outermost ones) return golden outputs and ``target`` returns stacked rows, which replayed
    outputs, and whether the input, the stacked part reads: the (module id, call index) of each
    replayed call whose output, through any glue, meets the target's outputs in an operation,
    reaches a leaf module that computes or the model's output, or gives a shape or a Python value. The
    others are read only by replayed calls (which ignore their arguments) and may stay unstacked.
    Runs one fault-free forward; ``x`` must run the golden module calls.

    Example:
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__(); self.a, self.b, self.c = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        ...     def forward(self, x):
        ...         h = self.b(torch.relu(self.a(x)))    # a's output feeds only b, which replays
        ...         return self.c(h) + h                 # b's output meets c's
        >>> net = Net()
        >>> calls, uses_input = read_replays(net, torch.randn(1, 2), {id(net.a): frozenset({0}), id(net.b): frozenset({0})}, net.c)
        >>> sorted({id(net.a): "a", id(net.b): "b"}[k] for k, _ in calls), uses_input
        (['b'], False)
    """
    trace = _Readers(model, replayed, id(target))
    trace.attach(x, 0)
    with torch.no_grad(), trace, _Operations(trace.operation):
        out = model(x)
    trace.read |= trace.labels_of(out)
    read = {trace.find(a) for a in trace.read}
    return {c for c, a in trace.names.items() if trace.find(a) in read}, trace.find(0) in read
