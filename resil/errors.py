"""The one exception family of resil."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FaultError(ValueError):
    """A fault, fault set or site request that cannot be applied.

    Raised before anything in the model is modified, with a message that names the problem.
    """


def unknown_site(name: str, known: Iterable[str]) -> FaultError:
    """Build the error for an unknown site name, suggesting the closest known names."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return FaultError(f"unknown site {name!r}{hint} (the model has {len(known)} sites; list them with resil.sites(model))")
