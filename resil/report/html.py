"""The HTML page of :func:`resil.report.write_report`: tables and embedded PNGs, no external
resources (inline style, images as base64 data URIs).

Example:
    >>> html_table(["layer", "failure"], [["conv1", pct(0.25)]]).count("<td")
    2
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

#: a cell that shows a number (aligned right): "12", "3.5% [2, 4]", or "-" for none
NUMBER = re.compile(r"^(-$|[-\d.])")

STYLE = ("""
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 2em; max-width: 1400px; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; }
td.best { font-weight: bold; background: #e8f4e8; } td.wide { min-width: 17em; } """
         """td:first-child { white-space: nowrap; } td:last-child { min-width: 14em; } div.scroll { overflow-x: auto; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, p.note { color: #555; font-size: .9em; } ul.conclusion li { margin: .2em 0; }
""")


def render_html(summary: pd.DataFrame, comparisons: Sequence[tuple[str, list[str], dict[str, pd.DataFrame]]],
                details: Sequence[tuple[str, dict[str, Any], dict[str, pd.DataFrame]]], images: Sequence[tuple[str, str, bytes]]) -> str:
    """The whole page.

    Args:
        summary: :func:`resil.report.summary` of the campaigns.
        comparisons: per sampler shared by several campaigns: the sampler, those campaigns' labels
            and, by grouping key (``""`` = overall), their :func:`resil.report.rank_campaigns` table and
            their :func:`resil.campaign.metrics.verdicts`.
        details: per campaign, its label, manifest and :func:`resil.report.by_group` tables by key.
        images: (file name, caption, PNG bytes) per figure.
    """
    labels = list(summary["campaign"])
    title = "resil report: " + ", ".join(labels)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style>\n</head>\n<body>", f"<h1>{html.escape(title)}</h1>"]
    if comparisons:  # the conclusion first
        parts.append("<h2>Which variant is most robust</h2>")
        for sampler, members, rankings in comparisons:
            if summary["sampler"].nunique() > 1:
                parts.append(f"<h3>Campaigns with the {html.escape(sampler)} sampler</h3>")
            parts.append(_comparison(rankings, members))
    parts += ["<h2>Summary</h2>", _summary(summary)]
    if images:
        parts.append("<h2>Figures</h2>")
        for filename, caption, png in images:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(filename)}\">"
                         f"<figcaption>{html.escape(filename)}: {html.escape(caption)}</figcaption></figure>")
    for label, manifest, tables in details:
        parts.append(f"<h2>{html.escape(label)}</h2>")
        parts.append(f"<p class=\"note\">model {html.escape(str(manifest.get('model')))}, sampler "
                     f"{html.escape(str(manifest.get('sampler')))}, spec hash {html.escape(str(manifest.get('spec_hash', '-')))}</p>")
        for key, table in tables.items():
            if not table.empty:
                parts += [f"<h3>By {html.escape(key)}</h3>", _groups(table, key)]
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], best: Sequence[Sequence[bool]] | None = None,
               wide: int | None = None) -> str:
    """A table of already formatted cells (escaped here); numbers align right, ``best`` marks
    cells to highlight, column ``wide`` (a verdict) gets room to read."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, v in enumerate(row):
            classes = " ".join(c for c, on in (("num", NUMBER.match(v)), ("best", best and best[i][j]), ("wide", j == wide)) if on)
            cells.append(f"<td class=\"{classes}\">{html.escape(v)}</td>" if classes else f"<td>{html.escape(v)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<div class=\"scroll\"><table>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table></div>"


def pct(p: float) -> str:
    """A probability in percent with three significant digits.

    Example:
        >>> pct(0.012345), pct(1.0), pct(float("nan"))
        ('1.23%', '100%', '-')
    """
    return "-" if pd.isna(p) else f"{100 * p:.3g}%"


def pct_ci(p: float, low: float, high: float) -> str:
    """A probability in percent with its interval.

    Example:
        >>> pct_ci(0.5, 0.4, 0.6).replace("\u00a0", " ")
        '50% [40, 60]'
    """
    return f"{pct(p)} [{100 * low:.3g},\u00a0{100 * high:.3g}]"  # may wrap before the interval, not inside it


def _summary(s: pd.DataFrame) -> str:
    header = ["campaign", "model", "sampler", "scenarios", "inputs per scenario", "golden accuracy",
              "failure probability [95% CI]", "accuracy under faults [95% CI]"]
    rows = []
    for r in s.itertuples():
        done = f"{r.scenarios}" if r.scenarios == r.planned else f"{r.scenarios} of {r.planned} (incomplete)"
        star = " *" if r.weighted else ""
        rows.append([r.campaign, str(r.model), str(r.sampler), done, str(r.inputs), pct(r.golden_accuracy),
                     pct_ci(r.failure, r.failure_low, r.failure_high) + star, pct_ci(r.accuracy, r.accuracy_low, r.accuracy_high) + star])
    note = ("<p class=\"note\">Failure = critical (top-1 differs from the fault-free top-1) or non-finite output. "
            + interval_note([*s["failure_method"], *s["accuracy_method"]])
            + (" * importance-sampled: weighted means, intervals over the effective number of scenarios." if s["weighted"].any() else "")
            + "</p>")
    return html_table(header, rows) + "\n" + note


def interval_note(methods: Sequence[str]) -> str:
    """What the intervals of a table count and which ones it shows (escaped HTML).

    Example:
        >>> interval_note(["t", "wilson", "t"]).startswith("Intervals are 95% and count scenarios")
        True
    """
    from resil.statistics import INTERVALS

    shown = [m for m in dict.fromkeys(methods) if isinstance(m, str) and m in INTERVALS]
    return html.escape("Intervals are 95% and count scenarios (fault draws), not scenario x input pairs: the inputs of one "
                       "scenario are not independent trials. " + "; ".join(f"{m}: {INTERVALS[m]}" for m in shown) + ".")


def _comparison(rankings: dict[str, tuple[pd.DataFrame, pd.DataFrame]], labels: list[str]) -> str:
    header = ["group", "verdict (95%)", *(f"{label} failure [95% CI]" for label in labels)]
    rows, best = [], []
    for key, (table, verdicts) in rankings.items():
        keys = [key] if key else []
        cells = {(tuple(getattr(r, k) for k in keys), r.campaign): pct_ci(r.failure, r.failure_low, r.failure_high)
                 for r in table.itertuples()}
        for v in verdicts.to_dict("records"):
            group: tuple[Any, ...] = (v[key],) if key else ()
            name = "all scenarios" if not keys else f"{key} = {_value(group[0])}"
            rows.append([name, v["verdict"], *(cells.get((group, label), "-") for label in labels)])
            best.append([False, False, *(label == v["best"] for label in labels)])
    note = ("<p class=\"note\">Per group, the campaign with the lowest failure probability is compared with every other one by the "
            "95% interval of their difference (paired when the campaigns share fault locations and inputs); only groups that at "
            "least two campaigns share, and only against campaigns of the same sampler. Bold: the lowest failure probability.</p>")
    return html_table(header, rows, best, wide=1) + "\n" + note


def _groups(table: pd.DataFrame, key: str) -> str:
    header = [key, "scenarios", "inputs judged", "failures", "failure probability [95% CI]", "accuracy [95% CI]", "interval"]
    rows = [[_value(getattr(r, key)), str(r.scenarios), str(r.inputs), str(r.failures), pct_ci(r.failure, r.failure_low, r.failure_high),
             pct_ci(r.accuracy, r.accuracy_low, r.accuracy_high), _methods(r.failure_method, r.accuracy_method)]
            for r in table.itertuples()]
    return html_table(header, rows) + f"\n<p class=\"note\">{interval_note([*table['failure_method'], *table['accuracy_method']])}</p>"


def _methods(failure: str, accuracy: str) -> str:
    """The interval methods of a row: one name, or failure / accuracy when they differ."""
    return failure if failure == accuracy or not isinstance(accuracy, str) or not accuracy else f"{failure} / {accuracy}"


def _value(v: Any) -> str:
    """A group key for display: rates as 1e-5, an empty layer as '(no fault)'."""
    if isinstance(v, float):
        if v == 0 or 0.1 <= abs(v) < 1e4:
            return f"{v:.4g}"
        mantissa, exponent = f"{v:.3e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return str(v) if v != "" else "(no fault)"


def render_comparison(settings: dict[str, str], models: Sequence[str], descriptions: dict[str, str], clean: dict[str, float],
                      rates: pd.DataFrame, best: pd.DataFrame, failure_best: pd.DataFrame, layers: pd.DataFrame,
                      layer_best: pd.DataFrame, layer_order: Sequence[str], images: Sequence[tuple[str, str, bytes]]) -> str:
    """The page of :func:`resil.analysis.compare`: the models, the most robust model per bit error
    rate, the figures, and the PVF per layer, side by side.

    Args:
        settings: what every model got (label -> text), listed first.
        models: the models in display order.
        descriptions: a one-line description per model.
        clean: fault-free accuracy per model.
        rates: per model and rate: ``accuracy``, ``failure`` and their ``_low`` / ``_high`` bounds.
        best: :func:`resil.campaign.metrics.verdicts` of the BER campaigns by accuracy.
        failure_best: the same by failure probability (lower is better).
        layers: PVF per model and layer (``pvf``, ``low``, ``high``, ``trials``, ``population``).
        layer_best: the least vulnerable model per layer (lower PVF is better).
        layer_order: layers top to bottom.
        images: (file name, caption, PNG bytes) per figure, embedded as data URIs.

    Example:
        >>> r = pd.DataFrame({"model": ["a", "b"], "rate": [1e-3, 1e-3], "accuracy": [0.9, 0.5], "accuracy_low": [0.8, 0.4],
        ...                   "accuracy_high": [0.95, 0.6], "failure": [0.1, 0.5], "failure_low": [0.05, 0.4], "failure_high": [0.2, 0.6]})
        >>> b = pd.DataFrame({"rate": [1e-3], "best": ["a"], "runner_up": ["b"], "separated": [True],
        ...                   "verdict": ["a more robust than b (95%)"]})
        >>> p = pd.DataFrame(columns=["model", "layer", "pvf", "low", "high", "trials", "population"])
        >>> page = render_comparison({}, ["a", "b"], {}, {"a": 0.98, "b": 0.97}, r, b, b, p, b.iloc[:0], [], [])
        >>> "Most robust model per bit error rate" in page, "90% [80,\xa095]" in page, "a more robust than b (95%)" in page
        (True, True, True)
    """
    title = "resil: robustness of " + ", ".join(models)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style>\n</head>\n<body>", f"<h1>{html.escape(title)}</h1>"]
    parts.append("<h2>Conclusion</h2>")  # first: what the data say, per rate and per layer
    items = [f"<li><b>p = {html.escape(_value(r['rate']))}</b>: {html.escape(str(r['verdict']))}</li>" for _, r in best.iterrows()]
    items += [f"<li><b>{html.escape(str(r['layer']))}</b> (PVF): {html.escape(str(r['verdict']))}</li>" for _, r in layer_best.iterrows()]
    parts.append("<ul class=\"conclusion\">\n" + "\n".join(items) + "\n</ul>")
    parts.append("<p class=\"note\">Accuracy under weight bit errors per bit error rate p and parameter vulnerability per layer; "
                 "each verdict compares the best model with every other one by the 95% interval of their difference.</p>")
    parts.append("<h2>Settings</h2>")
    parts.append(html_table(["setting", "value"], [[k, v] for k, v in settings.items()]))
    parts.append("<h2>Models</h2>")
    rows = [[m, pct(clean.get(m, float("nan"))), descriptions.get(m, "")] for m in models]
    parts.append(html_table(["model", "fault-free accuracy", "description"], rows))
    parts.append("<h2>Most robust model per bit error rate</h2>")
    parts.append(_best_table(rates, best, models, clean, "accuracy", "rate", "highest accuracy under faults"))
    parts.append("<p class=\"note\">Accuracy under faults (share of inputs classified correctly) per rate with its 95% interval. "
                 "The model with the highest accuracy is compared with every other one by the 95% interval of their difference "
                 "(paired when the campaigns share fault locations and inputs, unpaired otherwise); the verdict names the models "
                 "it is shown to beat, or says that no difference was detected and about how many scenarios per rate would "
                 "resolve one. "
                 + interval_note([*rates["accuracy_method"]] if "accuracy_method" in rates.columns else []) + "</p>")
    for filename, caption, png in images:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(filename)}\">"
                     f"<figcaption>{html.escape(filename)}: {html.escape(caption)}</figcaption></figure>")
    parts.append("<h2>Failure probability per bit error rate</h2>")
    parts.append(_best_table(rates, failure_best, models, None, "failure", "rate", "lowest failure probability"))
    parts.append("<p class=\"note\">Failure: top-1 differs from the model's own fault-free top-1, or a non-finite output; "
                 "this compares robustness independently of the fault-free accuracy.</p>")
    parts.append("<h2>Parameter vulnerability factor (PVF) per layer</h2>")
    if not layers.empty:
        wide = layers.rename(columns={"low": "pvf_low", "high": "pvf_high"})
        parts.append(_best_table(wide, layer_best, models, None, "pvf", "layer", "least vulnerable", order=list(layer_order)))
        info = {(r.model, r.layer): f"{int(r.population):,}" + (" (all injected)" if getattr(r, "exhaustive", False) else "")
                for r in layers.itertuples()}
        pop = [[layer, *(info.get((m, layer), "-") for m in models)] for layer in layer_order]
        parts.append("<p class=\"note\">PVF = Pr[top-1 differs from the golden top-1, or non-finite | one random bit flip in the "
                     "layer's stored weights], averaged over inputs, with its 95% Wilson interval over trials (single faults are close "
                     "to all-or-nothing); the verdict compares the least vulnerable model with the others by the interval of "
                     "their difference. '-': the model has "
                     "no such layer. Fault locations (weights x bits) per layer; a layer with no more locations than the trials "
                     "requested gets every location once (all injected):</p>")
        parts.append(html_table(["layer", *models], pop))
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def _best_table(frame: pd.DataFrame, best: pd.DataFrame, models: Sequence[str], clean: dict[str, float] | None, value: str,
                key: str, best_label: str, order: Sequence[Any] | None = None) -> str:
    """One row per group: each model's value [CI], in bold the best and those the data do not separate
    from it (the verdicts are listed in full above the tables); ``clean`` adds a first row."""
    header = [key, *models]
    rows, marks = [], []
    if clean is not None:
        rows.append(["no fault", *(pct(clean.get(m, float("nan"))) for m in models)])
        marks.append([False] * len(header))
    cells = {(r[key], r["model"]): pct_ci(r[value], r[f"{value}_low"], r[f"{value}_high"]) for _, r in frame.iterrows()}
    verdicts = best.set_index(key) if not best.empty else None
    for group in (order if order is not None else list(dict.fromkeys(frame[key]))):
        v = verdicts.loc[group] if verdicts is not None and group in verdicts.index else None
        top = set(v["tied"]) if v is not None and "tied" in v.index else {v["best"]} if v is not None else set()
        rows.append([_value(group), *(cells.get((group, m), "-") for m in models)])
        marks.append([False, *(m in top for m in models)])
    return html_table(header, rows, marks) + (f"\n<p class=\"note\">Bold: {html.escape(best_label)} and the models the data do "
                                              "not separate from it (the verdicts are under Conclusion).</p>")
