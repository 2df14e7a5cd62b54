"""Where a campaign's model and data come from: bundled names, user code, checkpoints and data files.

A model source is a model zoo's name (:func:`zoo_models`; the bundled reference models of
``resil.models`` are a zoo), ``package.module:factory`` or ``path/to/file.py:factory``; a data
source is a zoo's dataset name, ``package.module:function``,
``path/to/file.py:function`` or a ``.pt`` / ``.npz`` file. Module names are imported normally
first, then looked up as ``name.py``, ``name/`` (a package) in the current folder and in ``base``
(the campaign file's folder), without touching ``sys.path``; relative file paths resolve from
the current folder, then from ``base``. Every problem raises a :class:`~resil.errors.FaultError`
that says what was tried.

A model zoo (:class:`Zoo`: model names, a model by name, dataset names, a dataset's test split,
a model's description) is registered with :func:`register_zoo` or shipped in another package
through the ``resil.zoos`` entry-point group (each entry point names a :class:`Zoo` object,
registered under the entry point's name); the bundled one is ``resil.models:ZOO``.

Example:
    >>> x, y = load_data("digits")
    >>> x, y = select(x, y, 4, how="random", seed=1)
    >>> model = load_model("dense-cnn")
    >>> tuple(check_forward(model, x).shape)
    (2, 10)
    >>> fingerprint_model(model) == fingerprint_model(load_model("dense-cnn"))
    True
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..discovery import reset
from ..errors import FaultError

SELECTIONS = ("first", "random")


@dataclass(frozen=True)
class Zoo:
    """A collection of named models and datasets that campaigns can name as sources.

    Attributes:
        models: the model names, in display order.
        load: the model of a name (ready to evaluate: in eval mode, on the CPU).
        datasets: the dataset names.
        data: the evaluation inputs and labels of a dataset name or of a model name (its dataset).
        describe: a one-line description of a model.

    Example:
        >>> import torch
        >>> zoo = Zoo(models=lambda: ["tiny"], load=lambda name: torch.nn.Linear(2, 2).eval(), datasets=lambda: ["pairs"],
        ...           data=lambda name: (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)), describe=lambda name: "a 2x2 linear layer")
        >>> register_zoo("doctest-zoo", zoo)
        >>> "tiny" in zoo_models(), tuple(load_data("pairs")[0].shape), zoo_description("tiny")
        (True, (4, 2), 'a 2x2 linear layer')
        >>> unregister_zoo("doctest-zoo")
    """

    models: Callable[[], Sequence[str]]
    load: Callable[[str], nn.Module]
    datasets: Callable[[], Sequence[str]]
    data: Callable[[str], tuple[torch.Tensor, torch.Tensor | None]]
    describe: Callable[[str], str]


_ZOOS: dict[str, Zoo] = {}
_zoo_entry_points_loaded = False


def register_zoo(name: str, zoo: Zoo) -> None:
    """Make the models and datasets of ``zoo`` nameable as sources (a name listed by an earlier
    zoo keeps meaning that zoo's model or dataset)."""
    if not isinstance(name, str) or not name or not isinstance(zoo, Zoo):
        raise FaultError(f"register_zoo needs a non-empty name and a resil.campaign.sources.Zoo, got {name!r} and a {_type(zoo)}")
    if name in _ZOOS and _ZOOS[name] is not zoo:
        raise FaultError(f"a model zoo named {name!r} is already registered")
    _ZOOS[name] = zoo


def unregister_zoo(name: str) -> None:
    """Forget the zoo registered as ``name`` (no error when there is none)."""
    _ZOOS.pop(name, None)


def zoos() -> dict[str, Zoo]:
    """The registered zoos by name, in registration order (the ``resil.zoos`` entry points first)."""
    global _zoo_entry_points_loaded
    if not _zoo_entry_points_loaded:
        found = {ep.name: ep for ep in entry_points(group="resil.zoos")}
        for ep_name in sorted(found, key=lambda n: (n != "bundled", n)):  # the bundled zoo's names first
            try:
                zoo = found[ep_name].load()
            except Exception as e:
                raise FaultError(f"the model zoo entry point {ep_name!r} ({found[ep_name].value}) failed to load: {_exc(e)}") from e
            register_zoo(ep_name, zoo)
        _zoo_entry_points_loaded = True
    return dict(_ZOOS)


def zoo_models() -> list[str]:
    """Every model name of every registered zoo, without repeats."""
    return list(dict.fromkeys(m for zoo in zoos().values() for m in zoo.models()))


def zoo_datasets() -> list[str]:
    """Every dataset name of every registered zoo, without repeats."""
    return list(dict.fromkeys(d for zoo in zoos().values() for d in zoo.datasets()))


def _model_zoo(name: str) -> Zoo | None:
    """The first zoo listing model ``name``."""
    return next((zoo for zoo in zoos().values() if name in zoo.models()), None)


def zoo_description(name: str) -> str:
    """The description of a zoo model, or ``name`` itself for any other source."""
    zoo = _model_zoo(name)
    return zoo.describe(name) if zoo is not None else name


def _exc(e: BaseException) -> str:
    """An exception as ``Type: first line of its message`` (the FaultError chains the whole one)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _few(names: Sequence[str], n: int = 3) -> str:
    """The first ``n`` names, and how many more."""
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(repr(k) for k in names[:n]) + more


def _folders(base: Path | None) -> list[Path]:
    """The folders relative names resolve from: the current one, then ``base``."""
    cwd = Path.cwd()
    return [cwd] if base is None or Path(base).resolve() == cwd.resolve() else [cwd, Path(base)]


def _existing(path: str | os.PathLike[str], base: Path | None, role: str) -> Path:
    """``path`` itself when absolute, else the first of cwd/path, base/path that exists."""
    p = Path(path)
    tried = [p] if p.is_absolute() else [f / p for f in _folders(base)]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise FaultError(f"{role} {os.fspath(path)} does not exist (looked for {', '.join(map(str, tried))})")


def _execute(spec: importlib.machinery.ModuleSpec) -> ModuleType:
    """Create, register in ``sys.modules`` (so its classes pickle) and run the module of ``spec``."""
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        assert spec.loader is not None  # module_from_spec gives namespace packages a loader
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[spec.name]
        raise FaultError(f"importing {spec.name!r} from {spec.origin} failed: {_exc(e)}") from e
    return module


def _try_import(name: str) -> ModuleType | None:
    """``importlib.import_module(name)``, or None when neither it nor a parent package is found."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            return None
        raise FaultError(f"importing {name!r} failed: {_exc(e)}") from e
    except Exception as e:
        raise FaultError(f"importing {name!r} failed: {_exc(e)}") from e


def _import_top(top: str, folders: list[Path]) -> bool:
    """Import the top-level module or package ``top`` from the first folder holding it."""
    for folder in folders:
        package, file = folder / top, folder / f"{top}.py"
        if (package / "__init__.py").is_file():
            spec = importlib.util.spec_from_file_location(top, package / "__init__.py", submodule_search_locations=[str(package)])
        elif file.is_file():
            spec = importlib.util.spec_from_file_location(top, file)
        elif package.is_dir():  # a namespace package: a folder of modules without __init__.py
            spec = importlib.machinery.ModuleSpec(top, None, is_package=True)
            spec.submodule_search_locations = [str(package)]
        else:
            continue
        assert spec is not None  # spec_from_file_location returns None only for unknown suffixes
        _execute(spec)
        return True
    return False


def _import_module(name: str, folders: list[Path]) -> ModuleType:
    """Import ``name`` normally, else from ``name.py`` or ``name/`` in ``folders``."""
    if not all(part.isidentifier() for part in name.split(".")):
        raise FaultError(f"{name!r} is neither a module name (package.module) nor a .py file")
    top = name.partition(".")[0]
    module = _try_import(name)
    if module is None and top not in sys.modules and _import_top(top, folders):
        module = _try_import(name)
    if module is not None:
        return module
    if top in sys.modules:
        found = getattr(sys.modules[top], "__path__", None) or [getattr(sys.modules[top], "__file__", top)]
        raise FaultError(f"cannot import {name!r}: package {top!r} ({', '.join(map(str, found))}) has no module {name[len(top) + 1:]!r}")
    raise FaultError(f"cannot import {name!r}: it is not importable from sys.path and there is no {top}.py or {top}/ "
                     f"in {', '.join(map(str, folders))}")


def _import_file(path: str, base: Path | None) -> ModuleType:
    """Run a ``.py`` file once per process as module ``resil_source_<stem>_<hash of its path>``."""
    file = _existing(path, base, "source file").resolve()
    digest = hashlib.sha256(str(file).encode()).hexdigest()[:8]
    stem = re.sub(r"\W", "_", file.stem)
    name = f"resil_source_{stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None  # a .py file always has a source loader
    return _execute(spec)


def _resolve(source: str, base: Path | None) -> Callable[..., Any]:
    """The callable named by ``package.module:name`` or ``path/to/file.py:name``."""
    where, _, attr = source.rpartition(":")
    module = _import_file(where, base) if where.endswith(".py") else _import_module(where, _folders(base))
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attr, public, n=3, cutoff=0.5)
        hint = f"did you mean {_few(close)}?" if close else f"it has: {_few(sorted(public), 10)}"
        raise FaultError(f"{where!r} ({getattr(module, '__file__', None) or 'built in'}) has no attribute {attr!r}; {hint}")
    obj = getattr(module, attr)
    if not callable(obj):
        raise FaultError(f"{source!r} is a {type(obj).__name__}, not a function or class")
    return obj


def _type(obj: Any) -> str:
    """The qualified type name of ``obj`` (``torch.Tensor``, ``tuple``)."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}".removeprefix("builtins.")


def load_model(source: str, *, checkpoint: str | os.PathLike[str] | None = None, kwargs: Mapping[str, Any] | None = None,
               base: Path | None = None) -> nn.Module:
    """The model of a bundled name (in eval mode), or ``factory(**kwargs)`` of ``package.module:factory``
    or ``path/to/file.py:factory`` in the mode the factory returns; then the state dict in
    ``checkpoint`` (a ``torch.save`` file of the state dict, or of a dict holding it under
    ``"state_dict"`` or ``"model"``) loaded into it, every key matching.

    Example:
        >>> net = load_model("torch.nn:Linear", kwargs={"in_features": 3, "out_features": 2})
        >>> net.training, tuple(net.weight.shape)
        (True, (2, 3))
        >>> load_model("dense-cnn").training
        False
    """
    if not isinstance(source, str):
        got = "a torch.nn.Module; pass live models as model=... instead" if isinstance(source, nn.Module) else f"a {_type(source)}"
        raise FaultError(f"expected a model name or 'package.module:factory' string, got {got}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise FaultError(f"kwargs of model {source!r} must be a mapping of argument names to values, got a {_type(kwargs)}")
    zoo = _model_zoo(source)
    if zoo is not None:
        if kwargs:
            raise FaultError(f"bundled model {source!r} takes no kwargs, got {', '.join(kwargs)}")
        model = zoo.load(source)
    elif ":" in source:
        factory = _resolve(source, base)
        try:
            model = factory(**(kwargs or {}))
        except Exception as e:
            raise FaultError(f"model factory {source!r} raised {_exc(e)}") from e
        if not isinstance(model, nn.Module):
            raise FaultError(f"model factory {source!r} returned a {_type(model)}, not a torch.nn.Module")
    else:
        known = zoo_models()
        close = difflib.get_close_matches(source, known, n=3, cutoff=0.5)
        hint = f"; did you mean {_few(close)}?" if close else ""
        raise FaultError(f"unknown model {source!r}: give a bundled name ({', '.join(known)}), "
                         f"'package.module:factory' or 'path/to/file.py:factory'{hint}")
    if checkpoint is not None:
        _load_checkpoint(model, _existing(checkpoint, base, "checkpoint"))
    return model


def _load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load the state dict in ``path`` into ``model``; every key must match."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FaultError(f"cannot read checkpoint {path} with torch.load(weights_only=True): {_exc(e)} "
                         "(save model.state_dict() with torch.save, not the model object)") from e
    if isinstance(state, Mapping):
        state = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), Mapping)), state)
    if not (isinstance(state, Mapping) and all(isinstance(k, str) for k in state)
            and any(isinstance(v, torch.Tensor) for v in state.values())):
        keys = f" with keys {_few([str(k) for k in state], 6)}" if isinstance(state, Mapping) else ""
        raise FaultError(f"checkpoint {path} is not a state dict (parameter names to tensors, optionally under 'state_dict' "
                         f"or 'model'): it holds a {_type(state)}{keys}")
    try:  # strict=False only to name the mismatched keys ourselves: any mismatch raises below
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # "Error(s) in loading state_dict for Net:" then one tab-indented line per error
        errors = "; ".join(line.strip() for line in str(e).splitlines()[1:]) or str(e)
        raise FaultError(f"checkpoint {path} does not fit the {type(model).__name__} model: {errors}") from e
    problems = [f"{len(keys)} {kind} key(s): {_few(keys)}"
                for kind, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)) if keys]
    if problems:
        raise FaultError(f"checkpoint {path} does not match the {type(model).__name__} model's state dict: {'; '.join(problems)}")


DATA_FILES = (".pt", ".pth", ".npz")


def load_data(source: str | os.PathLike[str], *, base: Path | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs and labels (None when there are none) from a bundled dataset name (its test split; a
    bundled model name gives its dataset), ``package.module:function`` or ``file.py:function``
    (called without arguments, its result normalized by :func:`as_data`), a ``.pt`` / ``.pth``
    file (``torch.save`` of a dict with tensor ``x`` and optionally ``y``) or an ``.npz`` file
    (``np.savez`` with arrays ``x`` and optionally ``y``).

    Example:
        >>> import os, tempfile, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "d.npz")
        >>> np.savez(path, x=np.zeros((3, 2), np.float32), y=np.array([0, 1, 1]))
        >>> x, y = load_data(path)
        >>> tuple(x.shape), y.tolist()
        ((3, 2), [0, 1, 1])
        >>> x, y = load_data("digits")
        >>> tuple(x.shape), tuple(y.shape)
        ((359, 1, 8, 8), (359,))
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise FaultError("expected a dataset name, a .pt/.npz file or a 'package.module:function' string, "
                         f"got a {_type(source)}; pass live data as data=... instead")
    suffix = Path(source).suffix.lower()
    if suffix in DATA_FILES:
        return _load_file(_existing(source, base, "data file"), source)
    if ":" in source:
        function = _resolve(source, base)
        try:
            data = function()
        except Exception as e:
            raise FaultError(f"data function {source!r} raised {_exc(e)}") from e
        return as_data(data)
    zoo = next((z for z in zoos().values() if source in z.datasets()), None) or _model_zoo(source)
    if zoo is not None:
        return zoo.data(source)
    if suffix or os.sep in source or "/" in source:
        raise FaultError(f"unknown data file extension {suffix or '(none)'!r} of {source!r}: use {', '.join(DATA_FILES)} "
                         "(or 'file.py:function' for data made by code)")
    datasets = zoo_datasets()
    close = difflib.get_close_matches(source, [*datasets, *zoo_models()], n=3, cutoff=0.5)
    hint = f"; did you mean {_few(close)}?" if close else ""
    raise FaultError(f"unknown data {source!r}: give a bundled dataset ({', '.join(datasets)}), a .pt or .npz file, "
                     f"or 'package.module:function'{hint}")


def _load_file(path: Path, shown: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``x`` and ``y`` of a ``.pt`` / ``.pth`` or ``.npz`` data file."""
    content: Any
    try:
        if path.suffix.lower() == ".npz":
            content = np.load(path, allow_pickle=False)
            if isinstance(content, np.lib.npyio.NpzFile):
                with content:
                    content = {k: content[k] for k in content.files}
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # numpy and torch raise many types for unreadable files
        raise FaultError(f"cannot read data file {shown}: {_exc(e)}") from e
    if not isinstance(content, Mapping):
        raise FaultError(f"data file {shown} holds a {_type(content)}, not a dict with 'x' and optionally 'y'")
    if "x" not in content:
        raise FaultError(f"data file {shown} has no array 'x'; it has: {', '.join(map(str, content)) or 'nothing'}")
    return as_data({k: content[k] for k in ("x", "y") if k in content})


def _tensor(value: Any, what: str) -> torch.Tensor:
    """A tensor as is, or a numpy array shared with torch.from_numpy (copied first if read-only or strided)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        try:
            return torch.from_numpy(np.require(value, requirements=["C", "W"]))
        except TypeError as e:
            raise FaultError(f"{what} has numpy dtype {value.dtype}, which torch cannot hold") from e
    raise FaultError(f"{what} must be a torch.Tensor or a numpy array, got a {_type(value)}")


def _labels(value: Any, what: str) -> torch.Tensor:
    """Labels: a tensor or array, or numbers (as Dataset items often give them)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return _tensor(value, what)
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise FaultError(f"{what} must be a tensor, an array or numbers, got a {_type(value)}") from e


def _split(item: Any, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(inputs, labels)``, ``(inputs,)``, ``inputs`` or ``{"x": inputs, "y": labels}`` as tensors."""
    if isinstance(item, (tuple, list)):
        if len(item) not in (1, 2):
            raise FaultError(f"{what} is a {_type(item)} of {len(item)} entries; expected (inputs, labels) or (inputs,)")
        return _tensor(item[0], f"the inputs of {what}"), _labels(item[1], f"the labels of {what}") if len(item) == 2 else None
    if isinstance(item, Mapping):
        if "x" not in item:
            raise FaultError(f"{what} is a dict without 'x'; it has: {', '.join(map(str, item)) or 'nothing'}")
        return _tensor(item["x"], f"the inputs of {what}"), _labels(item["y"], f"the labels of {what}") if "y" in item else None
    if isinstance(item, (torch.Tensor, np.ndarray)):
        return _tensor(item, what), None
    raise FaultError(f"{what} is a {_type(item)}; expected a tensor, an array, an (inputs, labels) tuple or a dict with 'x' and 'y'")


def _join(parts: list[tuple[torch.Tensor, torch.Tensor | None]], join: Callable[[list[torch.Tensor]], torch.Tensor],
          what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack or concatenate the inputs and the labels of ``parts``."""
    if not parts:
        raise FaultError(f"the data is empty: {what} gave nothing")
    labelled = {y is not None for _, y in parts}
    if len(labelled) > 1:
        raise FaultError(f"some of the {what} have labels and some do not")
    try:
        x = join([x for x, _ in parts])
        y = join([y for _, y in parts if y is not None]) if labelled == {True} else None
    except RuntimeError as e:
        raise FaultError(f"cannot join the {what}: {e}") from e
    return x, y


def as_data(obj: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs and labels (None when there are none) as tensors, from ``(inputs, labels)`` or
    ``(inputs,)`` (tensors or numpy arrays), a single tensor or array, a dict with ``"x"`` and
    optionally ``"y"``, a map-style ``torch.utils.data.Dataset`` (items ``(x, y)``, ``(x,)``, ``x``
    or such dicts; stacked) or a ``DataLoader`` (iterated once, batches concatenated in the order
    it yields them, so a shuffling loader gives a shuffled order). Dtypes are kept as given
    (numpy float64 stays float64); labels that are a column ``[N, 1]`` become ``[N]``, other
    shapes (e.g. 2-D regression targets) are kept.

    Example:
        >>> import numpy as np
        >>> x, y = as_data((np.ones((4, 3), np.float32), np.array([[0], [1], [2], [3]])))
        >>> x.dtype, y.tolist()
        (torch.float32, [0, 1, 2, 3])
        >>> as_data(torch.zeros(2, 5))[1] is None
        True
    """
    if isinstance(obj, DataLoader):
        x, y = _join([_split(b, f"batch {i} of the DataLoader") for i, b in enumerate(obj)], torch.cat, "DataLoader batches")
    elif isinstance(obj, IterableDataset):
        raise FaultError("an IterableDataset has no length to read it by; give a map-style Dataset, a DataLoader or tensors")
    elif isinstance(obj, Dataset):
        if not hasattr(obj, "__len__"):
            raise FaultError(f"the Dataset {_type(obj)} has no __len__; give a map-style Dataset, a DataLoader or tensors")
        x, y = _join([_split(obj[i], f"item {i} of the Dataset") for i in range(len(obj))], torch.stack, "Dataset items")
    else:
        x, y = _split(obj, "the data")
    if x.dim() == 0:
        raise FaultError(f"the inputs are a 0-d tensor; they need a first dimension over inputs, got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise FaultError(f"the data is empty: the inputs have shape {tuple(x.shape)}")
    if y is None:
        return x, None
    if y.dim() == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.dim() == 0:
        raise FaultError(f"labels is a single 0-d value for {len(x)} inputs; give one label per input")
    if len(y) != len(x):
        raise FaultError(f"labels has {len(y)} entries for {len(x)} inputs")
    return x, y


def select(inputs: torch.Tensor, labels: torch.Tensor | None, count: int | None, how: str = "first", seed: int = 0, *,
           what: str = "the data") -> tuple[torch.Tensor, torch.Tensor | None]:
    """``count`` of the inputs and their labels (all when ``count`` is None): the first ones, or with
    ``how="random"`` a random subset drawn without replacement by ``numpy.random.default_rng(seed)``
    and kept in the data's order (sorted indices), so the same seed gives the same inputs in the
    same order. ``what`` names the data in the error for too large a count.

    Example:
        >>> x, y = torch.arange(10.0), torch.arange(10)
        >>> select(x, y, 3)[1].tolist()
        [0, 1, 2]
        >>> picked = select(x, y, 4, how="random", seed=0)[1].tolist()
        >>> picked == sorted(picked), len(set(picked))
        (True, 4)
    """
    if how not in SELECTIONS:
        raise FaultError(f"unknown input selection {how!r}: one of {', '.join(SELECTIONS)}")
    if count is None:
        return inputs, labels
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise FaultError(f"the number of inputs must be an integer >= 1 (or None for all), got {count!r}")
    if count > len(inputs):
        raise FaultError(f"{count} inputs requested but {what} has {len(inputs)}")
    if how == "first":
        return inputs[:count], None if labels is None else labels[:count]
    rows = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(inputs), size=count, replace=False)))
    return inputs[rows], None if labels is None else labels[rows]


def _update(h: Any, t: torch.Tensor) -> None:
    """Feed dtype, shape and raw bytes of ``t`` (on the CPU, contiguous) to the hash ``h``."""
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def fingerprint_model(model: nn.Module) -> str:
    """16 hex digits of the SHA-256 of every state dict entry (name, dtype, shape, raw bytes, in
    state dict order; non-tensor extra state by its repr): equal for equal weights in any
    process, different when any bit changes.

    Example:
        >>> import copy
        >>> net = torch.nn.Linear(2, 1)
        >>> fingerprint_model(net) == fingerprint_model(copy.deepcopy(net))
        True
        >>> with torch.no_grad():
        ...     _ = net.bias.add_(1)
        >>> len(fingerprint_model(net))
        16
    """
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(f"{name}|".encode())
        if isinstance(value, torch.Tensor):
            _update(h, value)
        else:
            h.update(f"extra|{value!r}|".encode())
    return h.hexdigest()[:16]


def fingerprint_tensors(*tensors: torch.Tensor | None) -> str:
    """16 hex digits of the SHA-256 of the dtypes, shapes and raw bytes of ``tensors`` (None hashes
    as a marker of its own), e.g. of a campaign's inputs and labels.

    Example:
        >>> fingerprint_tensors(torch.zeros(2), None)
        '52feeeee77131d95'
        >>> fingerprint_tensors(torch.zeros(2), None) == fingerprint_tensors(torch.zeros(2, dtype=torch.float64), None)
        False
    """
    h = hashlib.sha256()
    for i, t in enumerate(tensors):
        h.update(f"{i}|".encode())
        if t is None:
            h.update(b"none|")
        elif isinstance(t, torch.Tensor):
            _update(h, t)
        else:
            raise FaultError(f"fingerprint_tensors takes tensors or None, got a {_type(t)} as argument {i}")
    return h.hexdigest()[:16]


def check_forward(model: nn.Module, inputs: torch.Tensor, batch: int = 2) -> torch.Tensor:
    """The model's output on ``inputs[:batch]`` (no gradients), checked to be one tensor with the
    batch as its first dimension, as campaigns need; stateful modules are reset afterwards.

    Example:
        >>> tuple(check_forward(torch.nn.Linear(3, 2), torch.zeros(5, 3)).shape)
        (2, 2)
        >>> check_forward(torch.nn.Linear(3, 2), torch.zeros(5, 4))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        resil.errors.FaultError: the model failed on the first input batch of shape (2, 4): RuntimeError: ...
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise FaultError(f"batch must be an integer >= 1, got {batch!r}")
    x = inputs[:batch]
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise FaultError(f"the model failed on the first input batch of shape {tuple(x.shape)}: {_exc(e)}") from e
    finally:
        reset(model)
    if not isinstance(out, torch.Tensor):
        raise FaultError(f"the model returned a {_type(out)} for a batch of shape {tuple(x.shape)}; campaigns need one tensor "
                         "output [B, ...] (wrap the model to return the scores tensor)")
    if out.dim() == 0 or out.shape[0] != len(x):
        raise FaultError(f"the model's output has shape {tuple(out.shape)} for a batch of {len(x)} inputs; "
                         "its first dimension must be the batch")
    return out


__all__ = [
    "Zoo", "as_data", "check_forward", "fingerprint_model", "fingerprint_tensors", "load_data", "load_model", "register_zoo", "select",
    "unregister_zoo", "zoo_datasets", "zoo_description", "zoo_models", "zoos",
]
