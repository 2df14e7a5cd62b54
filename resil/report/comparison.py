"""The report of a robustness comparison (:func:`resil.analysis.compare.compare`): its text summary
and its self-contained HTML page with PNG figures.

Example:
    >>> from resil.analysis.compare import compare
    >>> c = compare(["dense-cnn", "int8"], "runs/compare", quick=True)  # doctest: +SKIP
    >>> page = write_comparison(c)  # doctest: +SKIP
    >>> print(comparison_summary(c, page))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from resil.analysis.compare import Comparison, campaign_dirs, layer_order
from resil.analysis.results import Campaign, load_campaign

from . import plot_layer_estimates, plot_rate
from .html import pct, render_comparison

__all__ = ["comparison_summary", "write_comparison"]


def comparison_summary(c: Comparison, report: Path | None = None, seconds: float | None = None) -> str:
    """The verdict per rate and the PVF per layer, as printed by ``resil compare``, then the report
    written (``report``) and the run time (``seconds``, default: the comparison's own)."""
    width = max(len(m) for m in c.models)
    s = c.settings
    lines = [f"\nmost robust model per bit error rate (accuracy under faults over {s.scenarios} scenarios per rate; "
             "verdicts from the 95% interval of each difference to the best):",
             f"{'rate':>8s}  {'best':{width}s}  {'accuracy [95% CI]':22s}  verdict",
             f"{'no fault':>8s}  {'':{width}s}  " + ", ".join(f"{m} {_pct(c.clean[m])}" for m in c.models)]
    acc = c.rates.set_index(["rate", "model"])
    for r in c.best.itertuples():
        a = acc.loc[(r.rate, r.best)]
        ci = f"{_pct(a.accuracy)} [{_pct(a.accuracy_low, False)}, {_pct(a.accuracy_high, False)}]"
        lines.append(f"{_rate(r.rate):>8s}  {r.best:{width}s}  {ci:22s}  {r.verdict}")
    lines.append(f"\nPVF per layer ({s.trials} single bit flips per layer; PVF [95% Wilson interval over trials] in %):")
    layers = list(dict.fromkeys(c.layers["layer"]))
    pvf = c.layers.set_index(["model", "layer"])
    lines.append(f"{'model':{width}s}  " + "  ".join(f"{layer:>21s}" for layer in layers))
    for m in c.models:
        cells = [f"{100 * pvf.loc[(m, layer), 'pvf']:.3f} [{100 * pvf.loc[(m, layer), 'low']:.3f}, {100 * pvf.loc[(m, layer), 'high']:.3f}]"
                 if (m, layer) in pvf.index else "-" for layer in layers]
        lines.append(f"{m:{width}s}  " + "  ".join(f"{cell:>21s}" for cell in cells))
    lines.extend(f"{r.layer}: {r.verdict}" for r in c.layer_best.itertuples())
    lines.append(f"\nreport: {report}\nrun time: {c.seconds if seconds is None else seconds:.0f} s")
    return "\n".join(lines)


def write_comparison(c: Comparison, out: str | os.PathLike[str] | None = None) -> Path:
    """Write the comparison report: PNGs and a self-contained ``index.html`` into ``out`` (default:
    ``report`` in the comparison's directory); returns the page's path."""
    root = c.root / "report" if out is None else Path(out)
    root.mkdir(parents=True, exist_ok=True)
    campaigns = []
    for label in c.models:
        ber = load_campaign(campaign_dirs(c.root, label)[0])
        campaigns.append(Campaign(label, ber.manifest, ber.table))
    layers = layer_order([list(dict.fromkeys(c.layers.loc[c.layers.model == m, "layer"])) for m in c.models])
    s = c.settings
    inputs = f"{campaigns[0].manifest['inputs']}" if campaigns else str(s.inputs)  # the inputs used (settings: 0 = all)
    flips = "one bit flip of the stored encoding (float32 bits of float weights, integer code bits of quantized ones)"
    figures = [
        ("ber_accuracy.png", "Accuracy under faults vs bit error rate (every stored weight bit flips with probability p, "
         f"{s.scenarios} scenarios per rate, {inputs} inputs); shaded: the 95% intervals over scenarios the tables print; "
         "dashed: fault-free accuracy.",
         plot_rate(campaigns, band_alpha=0.15)[0]),
        ("ber_failure.png", "Failure probability (top-1 differs from the fault-free top-1, or non-finite output) vs bit error rate; "
         "shaded: the 95% intervals over scenarios the tables print.", plot_rate(campaigns, "failure", band_alpha=0.15)[0]),
        ("layers_pvf.png", f"PVF per layer: {s.trials} trials per layer, each {flips} in the layer's weights, judged over {inputs} "
         "inputs (a layer with fewer fault locations gets every location once); error bars: 95% Wilson intervals. "
         "Neither bar nor error bar: the model has no such layer.",
         plot_layer_estimates(c.layers, labels=list(c.models), layers=layers, value="pvf", log=True,
                              title=f"Parameter vulnerability factor per layer: {s.trials} single weight bit flips per layer\n"
                                    "(error bars: 95% Wilson interval)",
                              xlabel="PVF = P(top-1 changes | one bit flip in the layer's weights)")[0]),
    ]
    images = []
    for filename, caption, fig in figures:
        fig.savefig(root / filename, dpi=110, metadata={"Software": None})
        images.append((filename, caption, (root / filename).read_bytes()))
    settings = {
        "models": ", ".join(c.models),
        "fault model": flips,
        "faulted sites": ", ".join(s.kinds) + " (pruned weights are not stored: only live weights can fail)",
        "PVF": f"{s.trials} trials per layer (all locations when a layer has fewer), {inputs} inputs per trial",
        "bit error rates": ", ".join(_rate(r) for r in s.rates) + f"; {s.scenarios} scenarios per rate",
        "seed": str(s.seed),
        "run time": f"{c.seconds:.0f} s (this call; finished parts are not re-run)",
    }
    page = render_comparison(settings, list(c.models), dict(c.descriptions), c.clean, c.rates, c.best, c.failure_best, c.layers,
                             c.layer_best, layers, images)
    path = root / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _pct(p: float, sign: bool = True) -> str:
    """A share in percent with three significant digits, the one number format of the tables (0.9712 -> 97.1%)."""
    text = pct(p)
    return text if sign else text.rstrip("%")


def _rate(r: float) -> str:
    """A rate for display: 1e-7, 3e-5, 0.1.

    Example:
        >>> _rate(3e-5), _rate(0.1)
        ('3e-5', '0.1')
    """
    mantissa, exponent = f"{r:.2e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}" if r < 0.01 else f"{r:g}"
