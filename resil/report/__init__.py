"""Campaign reports: load result directories, summarise them with intervals over scenarios, tell
variants apart, draw comparison figures and write one self-contained HTML page.

A campaign directory holds ``manifest.json`` and ``parts/shard-NNNNNN.parquet`` (one row per
scenario with outcome counts over the inputs; see :mod:`resil.campaign.store`). The failure
probability of a group is the mean failure fraction of its scenarios (``sum(critical +
non_finite) / sum(inputs)``, every scenario has the same inputs) and its accuracy the mean share
of correct inputs, each with the 95% interval over scenarios of
:func:`resil.statistics.scenario_estimate` (the table says which). Importance-sampled campaigns
(``weight != 1``) use weighted means instead, with Wilson intervals over Kish's effective number
of scenarios. Campaigns are told apart by :func:`resil.campaign.metrics.verdicts`, the rule
``resil compare`` uses too.

Example:
    >>> from resil.report import load_campaign, by_group, plot_layers, write_report
    >>> dense = load_campaign("runs/dense-cnn")  # doctest: +SKIP
    >>> by_group(dense, ["layer", "bit"]).head()  # doctest: +SKIP
    >>> fig, ax = plot_layers([dense, load_campaign("runs/pruned-cnn")])  # doctest: +SKIP
    >>> write_report(["runs/dense-cnn", "runs/pruned-cnn"], "reports/cnn")  # doctest: +SKIP
    PosixPath('reports/cnn/report.html')
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from resil.analysis.results import Campaign, by_group, load_campaign
from resil.campaign.metrics import estimate_failure, own_estimate, sort_groups, verdicts
from resil.errors import FaultError
from resil.report.html import render_html

__all__ = [
    "Campaign", "by_group", "load_campaign", "network_order", "plot_bit_heatmap", "plot_bits", "plot_layer_estimates", "plot_layers",
    "plot_rate", "rank_campaigns",
    "summary", "write_report",
]

PathLike = str | os.PathLike[str]
GroupBy = str | Sequence[str]
Campaigns = Campaign | Sequence[Campaign]


def summary(campaigns: Campaigns) -> pd.DataFrame:
    """One row per campaign: what ran and the overall failure probability and accuracy.

    Columns: ``campaign`` (a unique label), ``model``, ``sampler``, ``scenarios`` (rows read),
    ``planned`` (scenarios in the manifest; for an adaptive campaign, those it stopped at), ``inputs`` (per scenario),
    ``golden_accuracy``, then
    the estimates and intervals of :func:`by_group` (``failure_method``, ``accuracy_method``: which interval).

    Example:
        >>> summary([load_campaign("runs/dense-cnn")])[["campaign", "failure"]]  # doctest: +SKIP
    """
    cs = _as_list(campaigns)
    rows = []
    for c, label in zip(cs, _labels(cs), strict=True):
        total = by_group(c, []).iloc[0].to_dict()
        overall = estimate_failure(c.manifest, c.table) if own_estimate(c.manifest) else None
        if overall is not None:  # stratified / re-weighted estimators
            total.update(failure=overall.value, failure_low=overall.low, failure_high=overall.high, failure_method=overall.method)
        rows.append({
            "campaign": label, "model": c.manifest.get("model"), "sampler": c.manifest.get("sampler"),
            "scenarios": int(total["scenarios"]), "inputs": c.manifest.get("inputs"),
            "planned": (c.manifest.get("stop") or {}).get("scenarios", c.manifest.get("scenarios")),  # adaptive: what it stopped at
            "golden_accuracy": c.manifest.get("golden_accuracy"), "weighted": c.weighted,
            **{k: float(total[k]) for k in ("failure", "failure_low", "failure_high", "accuracy", "accuracy_low", "accuracy_high")},
            "failure_method": total["failure_method"], "accuracy_method": total["accuracy_method"],
        })
    return pd.DataFrame(rows)


def rank_campaigns(campaigns: Campaigns, by: GroupBy | None = None) -> pd.DataFrame:
    """Rank campaigns by failure probability (rank 1 = most robust), overall or per group.

    Groups present in only one campaign are left out (there is nothing to compare). Columns:
    the keys, ``campaign``, ``rank``, ``failure``, ``failure_low``, ``failure_high``,
    ``inputs``, ``scenarios``; sorted by group, then rank.

    Example:
        >>> cs = [load_campaign(d) for d in ("runs/dense-cnn", "runs/pruned-cnn")]  # doctest: +SKIP
        >>> rank_campaigns(cs, "kind")  # doctest: +SKIP
    """
    cs = _as_list(campaigns)
    keys = [] if by is None else [by] if isinstance(by, str) else list(by)
    cols = [*keys, "campaign", "failure", "failure_low", "failure_high", "inputs", "scenarios"]
    long = pd.concat([by_group(c, keys).assign(campaign=label)[cols] for c, label in zip(cs, _labels(cs), strict=True)], ignore_index=True)
    grouper = keys or np.zeros(len(long), dtype=np.int64)
    long = long[long.groupby(grouper)["campaign"].transform("size") >= 2]
    grouper = keys or np.zeros(len(long), dtype=np.int64)
    long.insert(len(keys) + 1, "rank", long.groupby(grouper)["failure"].rank(method="min").astype(np.int64))
    return sort_groups(long, [*keys, "rank"])


def band_opacity(curves: int, given: float | None = None) -> float:
    """Opacity of interval bands: ``given``, or 0.25 for up to two curves and fainter for more,
    so that overlapping bands do not hide the lines.

    Example:
        >>> band_opacity(2), round(band_opacity(6), 2), band_opacity(6, 0.15)
        (0.25, 0.1, 0.15)
    """
    return given if given is not None else (0.25 if curves <= 2 else 0.6 / curves)


def plot_rate(campaigns: Campaigns, metric: str = "accuracy", ax: Axes | None = None,
              band_alpha: float | None = None) -> tuple[Figure, Axes]:
    """Accuracy (or failure probability, ``metric="failure"``) against the bit error rate.

    One line per campaign that has rates (BER campaigns; others are skipped) with the 95% band
    of :func:`by_group` (opacity ``band_alpha``, by default :func:`band_opacity`), on a log rate axis; for
    accuracy, each campaign's fault-free accuracy is dashed.

    Example:
        >>> fig, ax = plot_rate([load_campaign("runs/dense-ber"), load_campaign("runs/snn-ber")])  # doctest: +SKIP
        >>> fig.savefig("accuracy_vs_rate.png")  # doctest: +SKIP

    Raises:
        FaultError: for another metric, or when no campaign has bit error rates.
    """
    if metric not in ("accuracy", "failure"):
        raise FaultError(f"metric must be 'accuracy' or 'failure', not {metric!r}")
    cs = _as_list(campaigns)
    fig, ax = _axes(ax, (7.5, 4.8))
    golden = drawn = False
    for k, (c, label) in zip(_palette(cs, [c.ber for c in cs]), zip(cs, _labels(cs), strict=True), strict=True):
        g = by_group(c, "rate")
        if g.empty:
            continue
        drawn = True
        ax.fill_between(g["rate"], g[f"{metric}_low"], g[f"{metric}_high"], color=_color(k), alpha=band_opacity(len(cs), band_alpha),
                        linewidth=0)
        ax.plot(g["rate"], g[metric], marker=_marker(k), markersize=4, color=_color(k), label=label)
        if metric == "accuracy" and c.manifest.get("golden_accuracy") is not None:
            ax.axhline(c.manifest["golden_accuracy"], color=_color(k), linestyle="--", linewidth=1)
            golden = True
    if not drawn:
        raise FaultError("no campaign has bit error rates (sampler 'ber'); nothing to plot against the rate")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(_percent())
    ax.set_xlabel("bit error rate (probability that a bit is faulty)")
    ax.set_ylabel("accuracy under faults" if metric == "accuracy" else "failure probability")
    ax.set_title(("Accuracy" if metric == "accuracy" else "Failure probability") + " vs bit error rate")
    ax.grid(True, which="major", alpha=0.3)
    extra: list[Artist] = [Patch(color="grey", alpha=0.25, label="95% interval over scenarios")]
    if golden:
        extra.append(Line2D([], [], color="grey", linestyle="--", linewidth=1, label="fault-free accuracy"))
    ax.legend(handles=[*ax.get_legend_handles_labels()[0], *extra], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return fig, ax


def plot_layers(campaigns: Campaigns, log: bool | None = None, ax: Axes | None = None) -> tuple[Figure, Axes]:
    """Failure probability per layer (of each scenario's first fault) as horizontal bars with
    the 95% error bars of :func:`by_group`, layers top to bottom in network order
    (:func:`network_order`); ``log=None`` picks a symmetric-log axis when values span two decades;
    several campaigns give grouped bars (a layer gets a bar from each campaign that has it). Bit-error-rate
    campaigns are left out (see :attr:`Campaign.ber`); colours follow the campaigns' positions.

    Example:
        >>> fig, ax = plot_layers([load_campaign("runs/dense-cnn"), load_campaign("runs/pruned-cnn")])  # doctest: +SKIP

    Raises:
        FaultError: when every campaign is a bit-error-rate campaign.
    """
    cs = _as_list(campaigns)
    groups = {i: by_group(c, "layer").set_index("layer") for i, c in enumerate(cs) if not c.ber}
    if not groups:
        raise FaultError("every campaign is a bit-error-rate campaign; plot them with plot_rate")
    layers = network_order([c for c in cs if not c.ber], [layer for g in groups.values() for layer in g.index])
    fig, ax = _layer_bars(groups, _labels(cs), layers, "failure", ax, _palette(cs, [not c.ber for c in cs]))
    values = np.concatenate([g["failure"].to_numpy(dtype=float) for g in groups.values()])
    positive = values[values > 0]
    if log is None:
        log = positive.size > 0 and positive.max() >= 100 * positive.min()
    if log and positive.size:
        ax.set_xscale("symlog", linthresh=10 ** np.floor(np.log10(positive.min())), linscale=0.4)
    ax.xaxis.set_major_formatter(_percent())
    ax.set_ylabel("layer (of the first fault in a scenario)")
    ax.set_xlabel("failure probability (critical or non-finite output)")
    ax.set_title("Failure probability per layer\n(error bars: 95% interval over scenarios)", fontsize=11)
    return fig, ax


def network_order(campaigns: Sequence[Campaign], layers: Sequence[str]) -> list[str]:
    """``layers`` (unique) in network order: the order of the campaigns' manifests (``layers``,
    merged keeping each one's order), then any others in natural order.

    Example:
        >>> c = Campaign("x", {"layers": ["conv1", "conv2", "fc10", "fc2"]}, pd.DataFrame())
        >>> network_order([c], ["fc2", "conv2", "fc10", "extra"])
        ['conv2', 'fc10', 'fc2', 'extra']
    """
    from resil.analysis.compare import layer_order

    known = layer_order([c.manifest.get("layers") or [] for c in campaigns])
    wanted = list(dict.fromkeys(layers))
    rest = sort_groups(pd.DataFrame({"layer": [x for x in wanted if x not in known]}), ["layer"])["layer"].tolist()
    return [x for x in known if x in wanted] + rest


def _in_network_order(frame: pd.DataFrame, campaigns: Sequence[Campaign]) -> pd.DataFrame:
    """Rows of a per-layer table in network order."""
    order = network_order(campaigns, list(frame["layer"]))
    return frame.assign(_pos=frame["layer"].map({x: i for i, x in enumerate(order)})).sort_values("_pos", kind="stable").drop(
        columns="_pos").reset_index(drop=True)


def plot_layer_estimates(table: pd.DataFrame, labels: Sequence[str] | None = None, layers: Sequence[str] | None = None,
                         value: str = "pvf", label: str = "model", log: bool = False, ax: Axes | None = None,
                         title: str | None = None, xlabel: str | None = None) -> tuple[Figure, Axes]:
    """Per-layer estimates of several models (e.g. the PVF of :func:`resil.analysis.pvf`) as
    grouped horizontal bars with their intervals, drawn like :func:`plot_layers`.

    ``table`` has one row per (model, layer): ``label``, ``layer``, ``value`` and its interval
    ``low`` / ``high``. Models are coloured by their position in ``labels`` (default: order of
    appearance), layers run top to bottom in ``layers`` order; a model without a layer gets no
    bar there. With ``log=True`` the axis is symmetric-log, so zero estimates stay at 0 and
    small ones remain visible next to large ones. ``title`` and ``xlabel`` replace the defaults
    (the value's name).

    Example:
        >>> t = pd.DataFrame({"model": ["a", "a", "b"], "layer": ["conv1", "fc", "fc"], "pvf": [0.02, 0.01, 0.0],
        ...                   "low": [0.01, 0.005, 0.0], "high": [0.03, 0.02, 0.004]})
        >>> fig, ax = plot_layer_estimates(t)
        >>> [t.get_text() for t in ax.get_yticklabels()], ax.get_legend() is not None
        (['conv1', 'fc'], True)

    Raises:
        FaultError: when a column is missing, the table is empty or a model of the table is not in ``labels``.
    """
    missing = [c for c in (label, "layer", value, "low", "high") if c not in table.columns]
    if missing or table.empty:
        raise FaultError(f"plot_layer_estimates needs rows with columns {label}, layer, {value}, low, high; "
                         + (f"missing {missing}" if missing else "the table is empty"))
    names = list(labels) if labels is not None else list(dict.fromkeys(table[label]))
    unknown = sorted(set(table[label]) - set(names))
    if unknown:
        raise FaultError(f"models {unknown} are in the table but not in labels {names}")
    groups = {i: table[table[label] == m].rename(columns={"low": f"{value}_low", "high": f"{value}_high"}).set_index("layer")
              for i, m in enumerate(names) if (table[label] == m).any()}
    order = list(layers) if layers is not None else list(dict.fromkeys(table["layer"]))
    fig, ax = _layer_bars(groups, names, order, value, ax)
    data = table[value].to_numpy(dtype=float)
    positive = np.concatenate([data, table["high"].to_numpy(dtype=float)])
    positive = positive[positive > 0]
    name = value.upper() if len(value) <= 4 else value
    if log and positive.size:
        ax.set_xscale("symlog", linthresh=10 ** np.floor(np.log10(positive.min())), linscale=0.4)
        ax.set_xlim(0, positive.max() * 1.6)
    ax.xaxis.set_major_formatter(_percent())
    ax.set_ylabel("layer")
    ax.set_xlabel((xlabel or name) + (" (symmetric log scale)" if log and positive.size else ""))
    ax.set_title(title or f"{name} per layer\n(error bars: 95% Wilson interval)", fontsize=11)
    return fig, ax


def _layer_bars(groups: dict[int, pd.DataFrame], labels: Sequence[str], layers: Sequence[str], value: str,
                ax: Axes | None, palette: Sequence[int] | None = None) -> tuple[Figure, Axes]:
    """Grouped horizontal bars, one group per layer (top to bottom), one bar per campaign ``i``
    that has the layer (``groups[i]`` indexed by layer, with ``value``, ``<value>_low``,
    ``<value>_high``), coloured by ``i``, with interval error bars."""
    present = {layer: [i for i, g in groups.items() if layer in g.index] for layer in layers}
    most = max(1, max(len(p) for p in present.values()))
    fig, ax = _axes(ax, (8.5, max(3.5, 1.6 + len(layers) * (0.1 + 0.2 * most))))
    thickness = 0.8 / most
    for i, g in groups.items():
        y = [row + (present[layer].index(i) - (len(present[layer]) - 1) / 2) * thickness
             for row, layer in enumerate(layers) if layer in g.index]
        g = g.loc[[layer for layer in layers if layer in g.index]]
        xerr = np.vstack([g[value] - g[f"{value}_low"], g[f"{value}_high"] - g[value]])
        k = palette[i] if palette is not None else i
        ax.barh(y, g[value], thickness * 0.92, xerr=xerr, color=_color(k), label=labels[i],
                error_kw={"elinewidth": 1, "capsize": 2.5, "ecolor": _color(k, dark=True)})
    ax.set_yticks(np.arange(len(layers)), [_layer_name(layer) for layer in layers], fontsize=9)
    ax.set_ylim(len(layers) - 0.5, -0.5)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return fig, ax


def plot_bits(campaigns: Campaigns, log: bool | None = None, ax: Axes | None = None,
              band_alpha: float | None = None) -> tuple[Figure, Axes]:
    """Failure probability against the bit position of single-bit faults, one line per campaign
    with its Wilson 95% band (opacity ``band_alpha``, by default :func:`band_opacity`). Whole-word and multi-bit
    scenarios (``bit == -1``) and bit-error-rate campaigns are left out; colours follow the
    campaigns' positions.

    ``log=None`` picks a symmetric-log y axis when the values span two decades or more, so the
    mantissa bits stay visible next to the exponent bits while zeros still show.

    Example:
        >>> fig, ax = plot_bits([load_campaign("runs/dense-cnn"), load_campaign("runs/int8-cnn")])  # doctest: +SKIP

    Raises:
        FaultError: when no campaign has single-bit faults.
    """
    cs = _as_list(campaigns)
    fig, ax = _axes(ax, (10.0, 4.8))
    drawn = []
    for k, (c, label) in zip(_palette(cs, [not c.ber for c in cs]), zip(cs, _labels(cs), strict=True), strict=True):
        g = by_group(c, "bit")
        g = g[g["bit"] >= 0]
        if c.ber or g.empty:
            continue
        drawn.append(g)
        g = g.set_index("bit").reindex(range(g["bit"].min(), g["bit"].max() + 1)).reset_index()  # gaps break the line
        ax.fill_between(g["bit"], g["failure_low"], g["failure_high"], color=_color(k), alpha=band_opacity(len(cs), band_alpha),
                        linewidth=0)
        ax.plot(g["bit"], g["failure"], marker=_marker(k), markersize=4, color=_color(k), label=label)
    if not drawn:
        raise FaultError("no campaign has single-bit faults (BER campaigns left out); nothing to plot per bit")
    data = pd.concat(drawn)
    positive = data["failure"].to_numpy()
    positive = positive[positive > 0]
    if log is None:
        log = positive.size > 0 and positive.max() >= 100 * positive.min()
    if log and positive.size:
        ax.set_yscale("symlog", linthresh=10 ** np.floor(np.log10(positive.min())), linscale=0.5)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(_percent())
    bits = np.arange(data["bit"].min(), data["bit"].max() + 1)
    ax.set_xticks(bits if len(bits) <= 40 else bits[:: int(np.ceil(len(bits) / 32))])
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("bit position (0 = least significant)")
    ax.set_ylabel("failure probability" + (" (symmetric log)" if log else ""))
    ax.set_title("Failure probability per bit position")
    ax.grid(True, alpha=0.3)
    handles = [*ax.get_legend_handles_labels()[0], Patch(color="grey", alpha=0.25, label="95% interval over scenarios")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return fig, ax


def plot_bit_heatmap(campaigns: Campaigns, rows: str = "layer", log: bool = True, ax: Axes | None = None) -> tuple[Figure, Axes]:
    """Heat map of the failure probability: columns are bit positions, rows are layers
    (``rows="layer"``; prefixed by the campaign when there are several) or campaigns
    (``rows="campaign"``); bit-error-rate campaigns are left out. Cells are annotated in percent
    when the grid is small enough to read. Grey cells saw no failure (on the log scale), white
    cells were not sampled.

    Example:
        >>> fig, ax = plot_bit_heatmap(load_campaign("runs/dense-cnn"))  # doctest: +SKIP

    Raises:
        FaultError: for another ``rows``, or when no campaign has single-bit faults.
    """
    if rows not in ("layer", "campaign"):
        raise FaultError(f"rows must be 'layer' or 'campaign', not {rows!r}")
    cs = _as_list(campaigns)
    kept = [(c, label) for c, label in zip(cs, _labels(cs), strict=True) if not c.ber]
    frames = []
    for c, label in kept:
        if rows == "campaign":
            frames.append(by_group(c, "bit").assign(row=label))
        else:
            g = by_group(c, ["layer", "bit"])
            frames.append(g.assign(row=[(f"{label}: " if len(kept) > 1 else "") + _layer_name(v) for v in g["layer"]]))
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["row", "bit", "failure"])
    data = data[data["bit"] >= 0]
    if data.empty:
        raise FaultError("no campaign has single-bit faults (BER campaigns left out); nothing to map per bit")
    names = list(dict.fromkeys(data["row"]))
    bits = np.arange(data["bit"].min(), data["bit"].max() + 1)
    grid = np.full((len(names), len(bits)), np.nan)
    grid[[names.index(r) for r in data["row"]], np.searchsorted(bits, data["bit"])] = data["failure"]
    fig, ax = _axes(ax, (max(6.5, 3.5 + 0.32 * len(bits)), max(2.8, 1.9 + 0.34 * len(names))))
    positive = grid[grid > 0]
    cmap = colormaps["viridis"].with_extremes(under="#d0d0d0", bad="white")
    if log and positive.size and positive.max() > positive.min():
        norm: Normalize = LogNorm(positive.min(), positive.max())
        shown = np.where(grid == 0, positive.min() / 10, grid)
    else:
        norm, shown, log = Normalize(0, float(np.nanmax(grid)) or 1.0), grid, False
    image = ax.imshow(shown, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    bar = fig.colorbar(image, ax=ax, extend="min" if log and (grid == 0).any() else "neither", pad=0.02)
    bar.set_label("failure probability" + (" (log scale)" if log else ""), labelpad=8)
    if log:
        decades = np.log10(positive.max() / positive.min())
        bar.locator = LogLocator(subs=(1.0, 2.0, 3.0, 5.0) if decades < 1 else (1.0, 2.0, 5.0) if decades < 2.5 else (1.0,))
        bar.ax.yaxis.set_minor_formatter(NullFormatter())
    bar.formatter = _percent()
    bar.update_ticks()
    ax.set_xticks(np.arange(len(bits)), [str(b) for b in bits], fontsize=8)
    ax.set_yticks(np.arange(len(names)), names, fontsize=9)
    if len(bits) <= 40 and len(names) <= 40:
        for (r, b), v in np.ndenumerate(grid):
            if np.isfinite(v):
                rgba = cmap(norm(shown[r, b]))
                dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
                ax.text(b, r, _short_pct(v), ha="center", va="center", fontsize=6.5, color="white" if dark else "black")
    ax.set_xlabel("bit position (0 = least significant)")
    ax.set_ylabel("campaign" if rows == "campaign" else "layer")
    notes = ["cells in %", *(["grey: no failure"] if log and (grid == 0).any() else []),
             *(["white: not sampled"] if np.isnan(grid).any() else [])]
    ax.set_title("Failure probability per bit" + (" and layer" if rows == "layer" else "") + f"\n({'; '.join(notes)})", fontsize=11)
    return fig, ax


def write_report(dirs: Sequence[PathLike], out: PathLike) -> Path:
    """Write a PNG for every figure that applies and one self-contained ``report.html`` into
    ``out`` (created if needed), comparing the campaigns in ``dirs`` side by side. Campaigns are
    ranked only against those of the same sampler (a BER failure probability is not comparable
    with a single-fault one).

    Figures without data are skipped: the rate plots need BER campaigns, the per-layer plot
    other campaigns, the per-bit plots single-bit faults in them, the campaign heat map two such
    campaigns. The page embeds the PNGs as base64 data URIs and has no external links, scripts
    or style sheets.

    Example:
        >>> write_report(["runs/dense-cnn", "runs/pruned-cnn"], "reports/cnn")  # doctest: +SKIP
        PosixPath('reports/cnn/report.html')

    Raises:
        FaultError: when ``dirs`` is empty or a directory is not a campaign.
    """
    loaded = [load_campaign(d) for d in dirs]
    if not loaded:
        raise FaultError("write_report needs at least one campaign directory")
    campaigns = [Campaign(label, c.manifest, c.table) for c, label in zip(loaded, _labels(loaded), strict=True)]
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    images = []
    for filename, caption, fig in _figures(campaigns):
        fig.savefig(root / filename, dpi=100, metadata={"Software": None})
        images.append((filename, caption, (root / filename).read_bytes()))
    samplers: dict[str, list[Campaign]] = {}
    for c in campaigns:
        samplers.setdefault(str(c.manifest["sampler"]), []).append(c)
    def ordered(frame: pd.DataFrame, key: str, group: Sequence[Campaign]) -> pd.DataFrame:
        return _in_network_order(frame, group) if key == "layer" and not frame.empty else frame

    comparisons = [(sampler, [c.name for c in group], {k: (rank_campaigns(group, k or None), ordered(_verdicts(group, k), k, group))
                                                       for k in ("", *_keys(group[0]))})
                   for sampler, group in samplers.items() if len(group) > 1]
    details = [(c.name, c.manifest, {k: ordered(by_group(c, k), k, [c]) for k in _keys(c)}) for c in campaigns]
    path = root / "report.html"
    path.write_text(render_html(summary(campaigns), comparisons, details, images), encoding="utf-8")
    return path


def _verdicts(group: list[Campaign], key: str) -> pd.DataFrame:
    """:func:`resil.campaign.metrics.verdicts` by failure probability (lower is more robust) of the
    campaigns per group of ``key`` (``""``: overall), for the groups they share."""
    v = verdicts({c.name: (c.manifest, c.table) for c in group}, key or None, "failure", higher_is_better=False)
    return v[v["runner_up"].notna()]


def _keys(c: Campaign) -> tuple[str, ...]:
    """The groupings the page tabulates and ranks: per rate for BER campaigns, else per kind and layer."""
    return ("rate",) if c.ber else ("kind", "layer")


def _figures(cs: list[Campaign]) -> Iterator[tuple[str, str, Figure]]:
    """(file name, caption, figure) for every figure whose data exist."""
    band = "Shaded bands: the 95% intervals over scenarios the tables print."
    if any(c.ber for c in cs):
        yield "accuracy_vs_rate.png", f"Accuracy under faults vs bit error rate; dashed: fault-free accuracy. {band}", plot_rate(cs)[0]
        yield "failure_vs_rate.png", f"Failure probability vs bit error rate. {band}", plot_rate(cs, "failure")[0]
    single = [c for c in cs if not c.ber]
    if single:
        yield ("failure_by_layer.png", "Failure probability per layer of the first fault; error bars: the 95% intervals over scenarios "
               "the tables print.", plot_layers(cs)[0])
    with_bits = [c for c in single if (c.table["bit"] >= 0).any()]
    if with_bits:
        yield "failure_by_bit.png", f"Failure probability per bit position of single-bit faults. {band}", plot_bits(cs)[0]
    if len(with_bits) > 1:
        yield "heatmap_campaigns.png", "Failure probability per bit position, one row per campaign.", \
            plot_bit_heatmap(cs, rows="campaign")[0]
    for c, label in zip(cs, _labels(cs), strict=True):
        if c in with_bits:
            yield f"heatmap_{_slug(label)}.png", f"{label}: failure probability per layer and bit position.", plot_bit_heatmap(c)[0]


def _as_list(campaigns: Campaigns) -> list[Campaign]:
    cs = [campaigns] if isinstance(campaigns, Campaign) else list(campaigns)
    if not cs:
        raise FaultError("no campaign given")
    return cs


def _labels(cs: Sequence[Campaign]) -> list[str]:
    """Unique display labels: the names, with the sampler (then a number) when names repeat."""
    names = [c.name for c in cs]
    if len(set(names)) < len(names):
        names = [f"{c.name} ({c.manifest.get('sampler', '?')})" for c in cs]
    if len(set(names)) < len(names):
        names = [f"{n} #{i + 1}" for i, n in enumerate(names)]
    return names


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        fig = ax.get_figure(root=True)
        if fig is None:
            raise FaultError("the axes given belong to no figure")
        return fig, ax
    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _palette(cs: Sequence[Campaign], drawn: Sequence[bool] | None = None) -> list[int]:
    """Colour index per campaign: one per model (its manifest's ``model``), so a model keeps its colour
    across figures and campaign kinds; campaigns of one model drawn in the same figure (``drawn``)
    get colours of their own.

    Example:
        >>> t = pd.DataFrame()
        >>> cs = [Campaign("a", {"model": "int8"}, t), Campaign("b", {"model": "snn"}, t), Campaign("c", {"model": "int8"}, t)]
        >>> _palette(cs, [True, True, False]), _palette(cs)
        ([0, 1, 0], [0, 1, 2])
    """
    models = list(dict.fromkeys(str(c.manifest.get("model", c.name)) for c in cs))
    out, used, spare = [], set(), len(models)
    for c, shown in zip(cs, drawn if drawn is not None else [True] * len(cs), strict=True):
        k = models.index(str(c.manifest.get("model", c.name)))
        if shown and k in used:
            k, spare = spare, spare + 1
        used |= {k} if shown else set()
        out.append(k)
    return out


def _color(i: int, dark: bool = False) -> tuple[float, float, float]:
    """The i-th campaign's colour (darker for error bars drawn over its own bars)."""
    r, g, b = (0.55 * v if dark else v for v in to_rgb(f"C{i % 10}"))
    return r, g, b


def _marker(i: int) -> str:
    return "os^Dv<>ph*"[i % 10]


def _percent() -> FuncFormatter:
    """Tick labels in percent with up to three significant digits (0.001 -> 0.1%)."""
    return FuncFormatter(lambda v, _: f"{100 * v:.3g}%")


def _layer_name(layer: str) -> str:
    return layer or "(no fault)"


def _short_pct(p: float) -> str:
    """A percentage in at most four characters for heat-map cells."""
    v = 100 * p
    return "0" if v == 0 else f"{v:.0f}" if v >= 9.95 else f"{v:.1f}" if v >= 0.95 else f"{v:.2g}".lstrip("0")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "campaign"
