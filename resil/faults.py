"""Faults: one fault (:class:`Fault`) and many faults held as columns (:class:`FaultSet`).

Example:
    >>> import numpy as np, resil
    >>> f = resil.Fault(site="fc.weight", index=(0, 3), bit=30)
    >>> fs = resil.FaultSet(site="fc.weight", index=np.arange(4), bit=[0, 1, 2, 31])
    >>> len(fs), fs.to_dict()["mask"].tolist()
    (4, [1, 2, 4, 2147483648])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import FaultError
from .fault_models import BitFlip, FaultModel, fault_model_from_spec

Index = int | tuple[int, ...]
Step = int | tuple[int, int] | None

#: the stop of a time window that never ends: a permanent fault
FOREVER = 1 << 62
Bits = int | Sequence[int] | None


@dataclass(frozen=True)
class Fault:
    """One fault: a site, an element of it, the bit(s) and the fault model.

    Args:
        site: site name, e.g. ``"conv1.weight"`` or ``"conv1:out"``.
        index: element index, a tuple over the site's shape or a flat int.
        bit: bit position(s), 0 = least significant; None for models that replace the whole word.
        model: the fault model (default: :class:`~resil.BitFlip`).
        batch: for activation sites, the batch element to corrupt; None corrupts every element.
        step: for computed sites (activations, neuron state, spikes), the time step(s) the
            fault is present: ``t`` (transient, one step), ``(start, stop)`` (steps
            ``start <= t < stop``) or None (permanent: every step).
    """

    site: str
    index: Index
    bit: Bits = None
    model: FaultModel = field(default_factory=BitFlip)
    batch: int | None = None
    step: Step = None

    def __post_init__(self) -> None:
        def ints(v: Any) -> bool:
            return isinstance(v, (tuple, list)) and all(_is_int(i) for i in v)

        if not isinstance(self.site, str):
            raise FaultError(f"Fault site must be a site name (a string such as 'fc.weight'), not {self.site!r:.60}")
        if not (_is_int(self.index) or ints(self.index)):
            raise FaultError(f"Fault index must be an int (flat) or a tuple of ints over the site's shape, not {self.index!r:.60}")
        if not (self.bit is None or _is_int(self.bit) or ints(self.bit)):
            raise FaultError(f"Fault bit must be an int, a list of ints or None, not {self.bit!r:.60}")
        if not isinstance(self.model, FaultModel):
            hint = (f"; build one from its spec with resil.fault_model_from_spec({self.model!r})" if isinstance(self.model, str) else "")
            raise FaultError(f"Fault model must be a fault model such as resil.BitFlip() or resil.StuckAt(1), not "
                             f"{self.model!r:.60}{hint}")
        if not (self.batch is None or _is_int(self.batch)):
            raise FaultError(f"Fault batch must be an int or None, not {self.batch!r:.60}")
        if not (self.step is None or _is_int(self.step) or (ints(self.step) and len(self.step) == 2)):  # type: ignore[arg-type]
            raise FaultError(f"Fault step must be an int, a (start, stop) pair of ints or None, not {self.step!r:.60}")

    @property
    def window(self) -> tuple[int, int]:
        """The steps ``(start, stop)`` the fault is present (stop exclusive)."""
        if self.step is None:
            return (0, FOREVER)
        if isinstance(self.step, (int, np.integer)):
            return (int(self.step), int(self.step) + 1)
        start, stop = self.step
        return (int(start), int(stop))

    @property
    def bits(self) -> tuple[int, ...]:
        if self.bit is None:
            return ()
        return (int(self.bit),) if isinstance(self.bit, (int, np.integer)) else tuple(int(b) for b in self.bit)

    @property
    def mask(self) -> int:
        """The bit mask this fault covers (0 for whole-word models)."""
        if not self.model.uses_bits:
            return 0
        if not self.bits:
            raise FaultError(f"{type(self.model).__name__} on {self.site!r} needs a bit: pass bit=...")
        return self.model.mask(self.bits)


class FaultSet:
    """Many faults as columns: ``site``, ``index`` (flat), ``mask``, ``model``, ``batch``,
    ``t_start`` and ``t_stop`` (the steps a fault is present, stop exclusive).

    Build one from columns (scalars broadcast), from :class:`Fault` objects
    (:meth:`from_faults`), or from a plain dict of arrays (:meth:`from_dict`).

    Args:
        site: one site name or one per fault.
        index: flat element indices (ints).
        bit: one bit per fault (or one for all); alternatively give ``mask``.
        mask: bit masks (int64), for faults covering several bits.
        model: one fault model, or one per fault (default: bit flip).
        batch: batch element per fault for activation sites; -1 or None = every element.
        step: first time step each fault is present (None: permanent, every step).
        step_stop: the step each fault ends (exclusive); default ``step + 1`` (transient).
    """

    COLUMNS = ("index", "mask", "batch", "t_start", "t_stop")

    def __init__(
        self,
        site: str | Sequence[str] | np.ndarray,
        index: int | Sequence[int] | np.ndarray,
        bit: int | Sequence[int] | np.ndarray | None = None,
        *,
        mask: int | Sequence[int] | np.ndarray | None = None,
        model: FaultModel | Sequence[FaultModel] | None = None,
        batch: int | Sequence[int] | np.ndarray | None = None,
        step: int | Sequence[int] | np.ndarray | None = None,
        step_stop: int | Sequence[int] | np.ndarray | None = None,
    ) -> None:
        columns = (("index", index), ("bit", bit), ("mask", mask), ("batch", batch), ("step", step), ("step_stop", step_stop))
        ints = {k: _int_column(k, v) for k, v in columns if v is not None}
        lengths = [a.shape for a in ints.values()]
        lengths += [(len(v),) for v in (site, model) if isinstance(v, (Sequence, np.ndarray)) and not isinstance(v, str)]
        try:
            n = int(np.prod(np.broadcast_shapes(*lengths))) if lengths else 1
            ints = {k: np.broadcast_to(a, (n,)) for k, a in ints.items()}
        except ValueError:
            raise FaultError(f"fault set columns have different lengths: {', '.join(f'{k} {a.shape}' for k, a in ints.items())}") from None
        idx = ints["index"]
        self.site_names, self.site = _categorical("site", site, n, str)
        self.models, self.model = _categorical("model", BitFlip() if model is None else model, n, FaultModel)
        if bit is not None and mask is not None:
            raise FaultError("give either bit or mask, not both")
        masks = np.zeros(n, dtype=np.int64)
        if mask is not None:
            masks[:] = ints["mask"]
        elif bit is not None:
            bits = ints["bit"]
            if ((bits < 0) | (bits > 63)).any():
                raise FaultError(f"bit {int(bits[(bits < 0) | (bits > 63)][0])} is outside any encoding (bits are 0..63)")
            for m, fm in enumerate(self.models):
                sel = self.model == m
                if fm.uses_bits and sel.any():
                    masks[sel] = fm.masks(bits[sel])
        batches = np.full(n, -1, dtype=np.int64) if batch is None else ints["batch"].copy()
        if step is None and step_stop is not None:
            raise FaultError("step_stop needs step")
        t_start = np.zeros(n, dtype=np.int64) if step is None else ints["step"].copy()
        t_stop = np.full(n, FOREVER, dtype=np.int64) if step is None else (t_start + 1 if step_stop is None else ints["step_stop"].copy())
        self._cols: dict[str, np.ndarray] = {
            "index": np.ascontiguousarray(idx, dtype=np.int64), "mask": masks, "batch": batches, "t_start": t_start, "t_stop": t_stop}
        self._flags = {"permanent": True} if step is None else {}
        if batch is None:
            self._flags["per_sample"] = False
        self._check()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def _from_columns(cls, site_names: tuple[str, ...], site: np.ndarray, models: tuple[FaultModel, ...], model: np.ndarray,
                      cols: dict[str, np.ndarray]) -> FaultSet:
        fs = cls.__new__(cls)
        fs.site_names, fs.site, fs.models, fs.model, fs._cols, fs._flags = site_names, site, models, model, cols, {}
        fs._check()
        return fs

    @classmethod
    def from_faults(cls, faults: Iterable[Fault], shapes: Mapping[str, tuple[int, ...] | None] | None = None) -> FaultSet:
        """Collect :class:`Fault` objects; tuple indices are flattened with ``shapes[site]``."""
        faults = list(faults)
        flat = []
        for f in faults:
            if isinstance(f.index, (int, np.integer)):
                flat.append(int(f.index))
                continue
            shape = (shapes or {}).get(f.site)
            if shape is None:
                raise FaultError(
                    f"fault on {f.site!r} has the tuple index {f.index} but the site's shape is unknown; "
                    "give a flat index, or list the sites with an example input: resil.sites(model, x)"
                )
            if len(f.index) != len(shape) or any(not 0 <= i < s for i, s in zip(f.index, shape, strict=True)):
                raise FaultError(f"index {tuple(f.index)} is outside site {f.site!r} of shape {tuple(shape)}")
            flat.append(int(np.ravel_multi_index(tuple(f.index), shape)))
        return cls(
            site=[f.site for f in faults],
            index=np.array(flat, dtype=np.int64),
            mask=np.array([f.mask for f in faults], dtype=np.int64),
            model=[f.model for f in faults],
            batch=np.array([-1 if f.batch is None else f.batch for f in faults], dtype=np.int64),
            step=np.array([f.window[0] for f in faults], dtype=np.int64),
            step_stop=np.array([f.window[1] for f in faults], dtype=np.int64),
        )

    @classmethod
    def concat(cls, sets: Sequence[FaultSet]) -> FaultSet:
        """One fault set holding every fault of ``sets`` in order."""
        if not sets:
            return cls(site=[], index=np.zeros(0, dtype=np.int64))
        site_names = tuple(dict.fromkeys(n for s in sets for n in s.site_names))
        models = tuple(dict.fromkeys(m for s in sets for m in s.models))
        spos = {n: i for i, n in enumerate(site_names)}
        mpos = {m: i for i, m in enumerate(models)}
        site = np.concatenate([np.array([spos[n] for n in s.site_names], dtype=_code_dtype(len(site_names)))[s.site] for s in sets])
        model = np.concatenate([np.array([mpos[m] for m in s.models], dtype=np.int32)[s.model] for s in sets])
        cols = {c: np.concatenate([s._cols[c] for s in sets]) for c in cls.COLUMNS}
        return cls._from_columns(site_names, site, models, model, cols)

    def to_dict(self) -> dict[str, np.ndarray]:
        """A plain dict of numpy arrays (site names and model specs as strings)."""
        specs = np.array([m.spec() for m in self.models] or [""], dtype=object)
        names = np.array(self.site_names or ("",), dtype=object)
        return {"site": names[self.site].astype(str), "model": specs[self.model].astype(str),
                **{c: v.copy() for c, v in self._cols.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FaultSet:
        """Inverse of :meth:`to_dict`."""
        missing = {"site", "index", "mask", "model"} - set(d)
        if missing:
            raise FaultError(f"fault set dict lacks the column(s) {sorted(missing)}")
        spec, spec_code = np.unique(np.asarray(d["model"], dtype=str), return_inverse=True)
        models = [fault_model_from_spec(str(s)) for s in spec]
        return cls(
            site=np.asarray(d["site"], dtype=str), index=d["index"], mask=d["mask"], model=[models[i] for i in spec_code.reshape(-1)],
            batch=d.get("batch"), step=d.get("t_start"), step_stop=d.get("t_stop"))

    # -- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.site)

    def __getitem__(self, sel: slice | np.ndarray | Sequence[int]) -> FaultSet:
        """The faults selected by a slice, boolean mask or index array."""
        cols = {c: v[sel] for c, v in self._cols.items()}
        return FaultSet._from_columns(self.site_names, self.site[sel], self.models, self.model[sel], cols)

    def with_batch(self, batch: np.ndarray) -> FaultSet:
        """The same faults with another batch element per fault (-1: every element).

        Example:
            >>> FaultSet("a:out", [0, 1], [3, 3]).with_batch(np.array([2, -1])).batch.tolist()
            [2, -1]
        """
        cols = {**self._cols, "batch": np.ascontiguousarray(batch, dtype=np.int64)}
        return FaultSet._from_columns(self.site_names, self.site, self.models, self.model, cols)

    def __iter__(self) -> Iterator[Fault]:
        for i in range(len(self)):
            m = self.models[self.model[i]]
            yield Fault(
                site=self.site_names[self.site[i]],
                index=int(self.index[i]),
                bit=_bits_of(int(self.mask[i])) or None,
                model=m,
                batch=None if self.batch[i] < 0 else int(self.batch[i]),
                step=_step_of(int(self.t_start[i]), int(self.t_stop[i])),
            )

    def __repr__(self) -> str:
        models = ", ".join(type(m).__name__ for m in self.models)
        return f"FaultSet({len(self)} faults on {len(np.unique(self.site))} sites, models: {models})"

    @property
    def index(self) -> np.ndarray:
        return self._cols["index"]

    @property
    def mask(self) -> np.ndarray:
        return self._cols["mask"]

    @property
    def batch(self) -> np.ndarray:
        return self._cols["batch"]

    @property
    def permanent(self) -> bool:
        """Whether every fault is present at every step."""
        if "permanent" not in self._flags:
            self._flags["permanent"] = bool((self.t_start == 0).all() and (self.t_stop == FOREVER).all())
        return self._flags["permanent"]

    @property
    def per_sample(self) -> bool:
        """Whether some fault names a batch element."""
        if "per_sample" not in self._flags:
            self._flags["per_sample"] = bool((self.batch >= 0).any())
        return self._flags["per_sample"]

    @property
    def t_start(self) -> np.ndarray:
        return self._cols["t_start"]

    @property
    def t_stop(self) -> np.ndarray:
        return self._cols["t_stop"]

    def _check(self) -> None:
        n = len(self.site)
        for c, v in self._cols.items():
            if v.shape != (n,):
                raise FaultError(f"column {c!r} has shape {v.shape}, expected ({n},)")
        if (self.index < 0).any():
            raise FaultError(f"negative element index {int(self.index[self.index < 0][0])}")
        if (self.batch < -1).any():
            raise FaultError(f"batch element {int(self.batch[self.batch < -1][0])} is negative (use -1 or None for every element)")
        if (self.t_start < 0).any() or (self.t_stop <= self.t_start).any():
            bad = int(np.flatnonzero((self.t_start < 0) | (self.t_stop <= self.t_start))[0])
            raise FaultError(f"fault {bad} has the empty or negative step window [{int(self.t_start[bad])}, {int(self.t_stop[bad])})")
        for m, fm in enumerate(self.models):
            sel = self.model == m
            if fm.uses_bits and (self.mask[sel] == 0).any():
                raise FaultError(f"{type(fm).__name__} needs a bit; fault {int(np.flatnonzero(sel & (self.mask == 0))[0])} names none")


def _step_of(start: int, stop: int) -> Step:
    if (start, stop) == (0, FOREVER):
        return None
    return start if stop == start + 1 else (start, stop)


def _code_dtype(n: int) -> type[np.integer]:
    """int16 codes while they fit (numpy sorts them with a radix sort), else int32."""
    return np.int16 if n < (1 << 15) else np.int32


def _bits_of(mask: int) -> tuple[int, ...]:
    return tuple(b for b in range(64) if (mask >> b) & 1)


def _int_column(name: str, v: Any) -> np.ndarray:
    a = np.asarray(v)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise FaultError(f"{name} must be integers, got {a.dtype} values")
    if a.ndim > 1:
        raise FaultError(f"{name} must be a flat list of ints (got shape {a.shape}); flatten tuple indices with np.ravel_multi_index")
    return a.astype(np.int64)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _categorical(name: str, v: Any, n: int, kind: type) -> tuple[tuple[Any, ...], np.ndarray]:
    if isinstance(v, kind):
        return (v,), np.zeros(n, dtype=np.int16)
    if isinstance(v, str) or not isinstance(v, (Sequence, np.ndarray)):
        hint = f"; build one from its spec with resil.fault_model_from_spec({v!r})" if isinstance(v, str) else ""
        raise FaultError(f"{name} must be a {kind.__name__} or one per fault, not {v!r:.60}{hint}")
    values = list(v) if not isinstance(v, np.ndarray) else v.tolist()
    if len(values) != n:
        raise FaultError(f"{len(values)} {name} values for {n} faults")
    if kind is str:
        arr = np.asarray(values, dtype=str) if values else np.zeros(0, dtype=str)
        names, codes = np.unique(arr, return_inverse=True)
        return tuple(str(x) for x in names), codes.astype(_code_dtype(len(names))).reshape(-1)
    table: dict[Any, int] = {}
    codes = np.empty(n, dtype=np.int32)
    for i, x in enumerate(values):
        if not isinstance(x, kind):
            raise FaultError(f"{name} {i} is {x!r}, not a {kind.__name__}")
        codes[i] = table.setdefault(x, len(table))
    return tuple(table), codes
