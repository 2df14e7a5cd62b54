"""Configs registered by name: frozen dataclasses that round-trip through a spec string.

One :class:`Registry` per family of configs (fault models, outcome criteria). A registered class
is named by its spec, ``name`` or ``name:{json of its fields}``, so a TOML file or a manifest can
hold it as one string.

Example:
    >>> from dataclasses import dataclass
    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... @dataclass(frozen=True)
    ... class Square:
    ...     side: float = 1.0
    >>> shapes.spec(Square(2.0)), shapes.from_spec('square:{"side": 3}')
    ('square:{"side": 2.0}', Square(side=3))
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import FaultError

T = TypeVar("T")
#: an example value per field type, for the message naming missing parameters
_EXAMPLES: dict[str, Any] = {"int": 1, "float": 0.5, "bool": True, "str": "..."}
C = TypeVar("C", bound=type)


class Registry(Generic[T]):
    """Classes registered under names, built back from spec strings."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator registering a (frozen dataclass) class under ``name``; sets ``registered_name``."""

        def deco(cls: C) -> C:
            if name in self._classes and self._classes[name] is not cls:
                raise FaultError(f"a {self.what} named {name!r} is already registered ({self._classes[name].__name__})")
            cls.registered_name = name  # type: ignore[attr-defined]
            self._classes[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._classes)

    def classes(self) -> list[type[T]]:
        """Every registered class, in the order they were registered."""
        return list(self._classes.values())

    def get(self, name: str) -> type[T]:
        """The class registered under ``name``.

        Raises:
            FaultError: for an unknown name, naming the registered ones.
        """
        if name not in self._classes:
            raise FaultError(f"unknown {self.what} {name!r}; registered: {', '.join(self.names())}")
        return self._classes[name]

    def from_spec(self, spec: str) -> T:
        """The config a spec string names, e.g. ``'stuck_at:{"value": 1}'``.

        Raises:
            FaultError: for an unknown name or parameters the class does not take.
        """
        if not isinstance(spec, str):
            raise FaultError(f"a {self.what} spec must be a string such as {self.names()[0]!r}, got {type(spec).__name__}")
        name, _, params = spec.partition(":")
        cls = self.get(name)
        try:
            kwargs: dict[str, Any] = json.loads(params) if params else {}
            if not isinstance(kwargs, dict):
                raise TypeError("parameters must be a JSON object")
        except (TypeError, ValueError) as e:
            raise FaultError(f"bad parameters for {self.what} {name!r}: {params!r} ({e})") from None
        required = [f for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING] if dataclasses.is_dataclass(cls) else []
        missing = [f.name for f in required if f.name not in kwargs]
        if missing:
            example = json.dumps({f.name: kwargs.get(f.name, _EXAMPLES.get(str(f.type), 1)) for f in required})
            raise FaultError(f"{self.what} {name!r} needs the parameter(s) {', '.join(missing)}, given as JSON after a colon: "
                             f"'{name}:{example}'")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise FaultError(f"bad parameters for {self.what} {name!r}: {params!r} ({e})") from None

    def spec(self, obj: T) -> str:
        """The spec string :meth:`from_spec` turns back into an equal config."""
        name = getattr(obj, "registered_name", "")
        if not name or self._classes.get(name) is not type(obj):
            raise FaultError(f"{type(obj).__name__} is not registered as a {self.what}, so it cannot be serialized; "
                             f"register it by name on a frozen dataclass")
        params = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else {}  # type: ignore[arg-type]
        return name + (":" + json.dumps(params, sort_keys=True) if params else "")
