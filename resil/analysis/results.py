"""Campaign results read back: a campaign directory's manifest and one row per scenario, and its
failure probability and accuracy per group (with the intervals of :mod:`resil.campaign.metrics`).

:mod:`resil.report` draws and writes reports of them; :mod:`resil.analysis.compare` tabulates
comparisons from them.

Example:
    >>> from resil.analysis.results import by_group, load_campaign
    >>> dense = load_campaign("runs/dense-cnn")  # doctest: +SKIP
    >>> by_group(dense, ["layer", "bit"]).head()  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from resil.campaign.metrics import COUNTS, sequential
from resil.campaign.metrics import by_group as group_table
from resil.errors import FaultError

__all__ = ["COLUMNS", "MANIFEST_KEYS", "Campaign", "by_group", "load_campaign"]

#: the columns of a part the report reads (every part has them: the store's schema)
COLUMNS = ("scenario", "stratum", "site", "layer", "kind", "bit", "n_faults", "rate", "weight", *COUNTS)
#: manifest keys the report reads
MANIFEST_KEYS = ("version", "name", "model", "sampler", "inputs", "scenarios", "golden_accuracy")

PathLike = str | os.PathLike[str]
GroupBy = str | Sequence[str]


@dataclass(frozen=True, eq=False)
class Campaign:
    """One campaign's results: its name, its manifest and one row per scenario.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"layer": ["fc", "conv1"], "inputs": [10, 10], "critical": [2, 5],
        ...                   "non_finite": [1, 0], "correct": [7, 5], "weight": [1.0, 1.0]})
        >>> c = Campaign("demo", {"sampler": "uniform"}, t.assign(rate=float("nan")))
        >>> c.weighted, c.ber
        (False, False)
    """

    name: str
    manifest: dict[str, Any]
    table: pd.DataFrame

    @property
    def ber(self) -> bool:
        """True for a bit-error-rate campaign (its ``rate`` column is set). Its scenarios hold many
        faults, so the figures per layer and per bit leave it out."""
        return bool(self.table["rate"].notna().any())

    @property
    def weighted(self) -> bool:
        """True for importance-sampled results (some scenario weight differs from 1)."""
        return bool((self.table["weight"] != 1.0).any())


def load_campaign(directory: PathLike) -> Campaign:
    """Read a campaign directory: the manifest and every part (its :data:`COLUMNS`), concatenated in scenario order.

    Example:
        >>> c = load_campaign("runs/dense-cnn")  # doctest: +SKIP
        >>> c.name, len(c.table), c.manifest["sampler"]  # doctest: +SKIP
        ('dense-cnn', 2000, 'uniform')

    Raises:
        FaultError: naming the directory when the manifest or the parts are missing or malformed.
    """
    from resil.campaign.store import Store

    root = Path(directory)
    path = root / "manifest.json"
    store = Store(root)
    manifest = store.manifest()
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise FaultError(f"{path} lacks {', '.join(missing)}")
    table = store.table().select(list(COLUMNS)).to_pandas()  # every part verified; only the columns reports use
    if table.empty:
        raise FaultError(f"{root} has no results: its parts hold no scenarios")
    return Campaign(str(manifest["name"]), manifest, table)


def by_group(campaign: Campaign, by: GroupBy = "layer") -> pd.DataFrame:
    """Failure probability and accuracy of ``campaign`` per group: :func:`resil.campaign.metrics.by_group`.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"layer": ["fc", "fc", "conv1"], "inputs": [10, 10, 10], "masked": [8, 9, 5],
        ...                   "tolerable": 0, "critical": [2, 0, 5], "non_finite": [0, 1, 0],
        ...                   "correct": [8, 9, 5], "weight": 1.0})
        >>> by_group(Campaign("demo", {}, t), "layer")[["layer", "failures", "inputs", "failure"]].round(4).values.tolist()
        [['conv1', 5, 10, 0.5], ['fc', 3, 20, 0.15]]
    """
    return group_table(campaign.table, by, campaign.name, sequential=sequential(campaign.manifest))
