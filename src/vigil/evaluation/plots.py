"""PNG figures of the evaluation report (matplotlib, Agg backend, imported lazily inside each function)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Curve", "reliability_plot", "roc_pr_plot", "lead_time_plot"]

_DPI = 110


class Curve(NamedTuple):
    """A ranking's ROC and PR curves, its areas, and an operating point ``(fpr, tpr, recall, precision)``."""

    fpr: np.ndarray
    tpr: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    auroc: float
    auprc: float
    points: list[tuple[str, float, float, float, float]]  # (label, fpr, tpr, recall, precision)


def _figure(ncols: int, nrows: int = 1, **kw: Any) -> Figure:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    return Figure(figsize=(5.2 * ncols, 4.2 * nrows), dpi=_DPI, **kw)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def reliability_plot(bins: list[dict[str, Any]], path: Path, *, title: str, note: str = "") -> Path:
    """Observed positive rate against mean predicted probability per bin (with the diagonal), over a bar
    chart of the row count per bin (log scale, counts written on the bars)."""
    fig = _figure(1, 2)
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    used = [b for b in bins if b["n"]]
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfect calibration")
    ax.plot([b["mean_predicted"] for b in used], [b["observed_rate"] for b in used], "o-", label="model")
    ax.set(ylabel="observed SepsisLabel rate", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left", fontsize=8)
    if note:
        ax.text(0.02, 0.86, note, transform=ax.transAxes, ha="left", va="top", fontsize=7, wrap=True)
    centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
    counts = [b["n"] for b in bins]
    ax_n.bar(centers, [max(c, 0.8) for c in counts], width=0.09, color="0.5")
    ax_n.set(yscale="log", xlabel="predicted probability (bin)", ylabel="rows", ylim=(0.8, max(counts + [1]) * 3))
    for x, c in zip(centers, counts, strict=True):
        ax_n.text(x, max(c, 1), f"{c:,}", ha="center", va="bottom", fontsize=6)
    return _save(fig, path)


def roc_pr_plot(curves: Mapping[str, Curve], path: Path, *, prevalence: float, title: str) -> Path:
    """ROC (left) and precision-recall (right) curves of several rankings, with their operating points."""
    fig = _figure(2)
    ax_roc, ax_pr = fig.subplots(1, 2)
    for i, (name, c) in enumerate(curves.items()):
        color = f"C{i}"
        ax_roc.plot(c.fpr, c.tpr, color=color, lw=1.4, label=f"{name} (AUROC {c.auroc:.3f})")
        ax_pr.plot(c.recall, c.precision, color=color, lw=1.4, label=f"{name} (AUPRC {c.auprc:.3f})")
        for label, fpr, tpr, rec, prec in c.points:
            ax_roc.plot(fpr, tpr, "o", color=color, ms=5)
            ax_roc.annotate(label, (fpr, tpr), textcoords="offset points", xytext=(4, -10), fontsize=7)
            ax_pr.plot(rec, prec, "o", color=color, ms=5)
    ax_roc.plot([0, 1], [0, 1], ls="--", color="0.7", lw=1)
    ax_roc.set(
        xlabel="false positive rate (rows)",
        ylabel="true positive rate (rows)",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"ROC - {title}",
    )
    ax_pr.axhline(prevalence, ls="--", color="0.7", lw=1, label=f"prevalence {prevalence:.3f}")
    ax_pr.set(xlabel="recall (rows)", ylabel="precision (rows)", xlim=(0, 1), ylim=(0, 1), title="Precision-recall")
    ax_roc.legend(loc="lower right", fontsize=7)
    ax_pr.legend(loc="upper right", fontsize=7)
    return _save(fig, path)


def lead_time_plot(leads: Mapping[str, np.ndarray], path: Path, *, title: str, cap_h: float = 96.0) -> Path:
    """Histograms (2-h bins, values above ``cap_h`` in the last bin) of the lead times of septic stays
    alerted before onset, one outline per alert stream."""
    fig = _figure(1)
    ax = fig.subplots()
    edges = np.arange(0.0, cap_h + 2.0, 2.0)
    for i, (name, x) in enumerate(leads.items()):
        if x.size == 0:
            continue
        ax.hist(
            np.minimum(x, cap_h),
            bins=edges,
            histtype="step",
            lw=1.6,
            color=f"C{i}",
            label=f"{name}: n={x.size}, median {np.median(x):.0f} h",
        )
    ax.set(
        xlabel=f"lead time before onset, hours (> {cap_h:.0f} h in the last bin)", ylabel="septic stays", title=title
    )
    ax.legend(fontsize=8)
    return _save(fig, path)
