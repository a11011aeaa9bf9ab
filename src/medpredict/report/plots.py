"""Report figures as base64 PNG strings, drawn with matplotlib's Agg canvas.

Figures are built on ``matplotlib.figure.Figure`` directly (no ``pyplot``), so no
global backend or state is touched and the functions are safe in servers and
threads. Each function takes plain dicts from the evaluation (see
:mod:`medpredict.report.evaluation`) and a :class:`Look` (the language of the texts
and the fonts that draw them) and returns the PNG as a base64 string for an
``<img src="data:image/png;base64,...">`` tag. Every axis is labelled, every legend
entry is a plain name, and figures are saved with a tight bounding box so no label is
clipped.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medpredict.report.i18n import Translator, translator

BLUE, ORANGE, GREY, GREEN, RED = "#1f5fa8", "#d9822b", "#8a8f98", "#2e8b57", "#c0392b"
_SIZE = (4.8, 3.6)


@dataclass(frozen=True)
class Look:
    """The language of the plot texts and the font families that draw them.

    ``family`` is None for English (matplotlib's default font); for Chinese it names a
    Latin font and the CJK one (:func:`medpredict.report.fonts.plot_font_family`).
    """

    t: Translator = field(default_factory=lambda: translator("en"))
    family: tuple[str, ...] | None = None


def look_for(lang: str) -> Look:
    """The plot look for ``lang``; English texts when no CJK font is installed (no boxes in PNGs)."""
    if lang == "en":
        return Look()
    from medpredict.report.fonts import plot_font_family

    family = plot_font_family()
    return Look(translator(lang), family) if family else Look()


def _figure(size: tuple[float, float] = _SIZE) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    fig.set_layout_engine("constrained")
    return fig


def _style(ax: Any, xlabel: str, ylabel: str) -> Any:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#e3e6ea", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return ax


def _axes(fig: Any, xlabel: str, ylabel: str) -> Any:
    return _style(fig.add_subplot(1, 1, 1), xlabel, ylabel)


def to_base64(fig: Any, look: Look | None = None) -> str:
    """Render a Figure to PNG (tight bounding box: nothing clipped) and return it base64-encoded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    FigureCanvasAgg(fig)
    if look is not None and look.family:
        family = list(look.family)
        for ax in fig.axes:  # tick labels are made at draw time: set the family they are made with
            ax.tick_params(labelfontfamily=family)
        for text in fig.findobj(Text):
            text.set_fontfamily(family)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.08)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def texts_of(fig: Any) -> list[str]:
    """Every non-empty text drawn in ``fig`` (titles, labels, legends, ticks); used by tests."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text().strip()]


def roc_plot(roc: dict[str, Any], band: dict[str, Any] | None, auc: float, auc_ci: list[float] | None,
             operating: tuple[float, float] | None = None, look: Look | None = None) -> str:
    """ROC curve with its bootstrap band and the operating point ``(1 - spec, sens)``."""
    look = look or Look()
    t = look.t
    fig = _figure()
    ax = _axes(fig, t("plot.fpr"), t("plot.sensitivity"))
    if band:
        ax.fill_between(band["fpr"], band["tpr_lo"], band["tpr_hi"], color=BLUE, alpha=0.18, linewidth=0,
                        label=t("plot.band"))
    label = f"AUC {auc:.3f}"
    if auc_ci and all(np.isfinite(auc_ci)):
        label += f" ({auc_ci[0]:.3f}–{auc_ci[1]:.3f})"
    ax.plot(roc["fpr"], roc["tpr"], color=BLUE, linewidth=2, label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color=GREY, linewidth=1, label=t("plot.no_skill"))
    if operating is not None:
        ax.plot(*operating, "o", color=ORANGE, markersize=8, label=t("plot.locked_threshold"))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", frameon=False, fontsize=8)
    return to_base64(fig, look)


def pr_plot(pr: dict[str, Any], look: Look | None = None) -> str:
    """Precision-recall curve with the prevalence line (what a model with no skill reaches)."""
    look = look or Look()
    t = look.t
    fig = _figure()
    ax = _axes(fig, t("plot.recall"), t("plot.precision"))
    ax.plot(pr["recall"], pr["precision"], color=BLUE, linewidth=2,
            label=t("plot.average_precision", ap=pr["average_precision"]))
    ax.axhline(pr["prevalence"], linestyle="--", color=GREY, linewidth=1,
               label=t("plot.prevalence_no_skill", prevalence=pr["prevalence"]))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower left", frameon=False, fontsize=8)
    return to_base64(fig, look)


def confusion_plot(matrix: list[list[int]], labels: list[str], look: Look | None = None) -> str:
    """Confusion matrix with counts and row percentages (rows = truth)."""
    look = look or Look()
    t = look.t
    cm = np.asarray(matrix, dtype=float)
    k = cm.shape[0]
    fig = _figure((max(3.8, 1.1 * k + 2.4), max(3.2, 1.0 * k + 2.0)))
    ax = fig.add_subplot(1, 1, 1)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            colour = "white" if share[i, j] > 0.55 else "#1b1f24"
            ax.text(j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center", color=colour)
    ax.set_xticks(range(k), labels=labels, rotation=20 if k > 3 else 0)
    ax.set_yticks(range(k), labels=labels)
    ax.set_xlabel(t("plot.predicted_class"))
    ax.set_ylabel(t("plot.true_class"))
    return to_base64(fig, look)


def reliability_plot(curves: dict[str, dict[str, Any]], look: Look | None = None) -> str:
    """Reliability diagram for one or more calibration summaries (``{legend name: summary}``).

    Each bin's observed frequency carries its 95% Wilson interval (``bins[i]["observed_ci"]``)
    as an error bar, so a reader sees which gaps chance explains.
    """
    look = look or Look()
    t = look.t
    fig = _figure()
    ax = _axes(fig, t("plot.predicted_probability"), t("plot.observed_frequency"))
    ax.plot([0, 1], [0, 1], linestyle="--", color=GREY, linewidth=1, label=t("plot.perfect_calibration"))
    for (name, summary), colour in zip(curves.items(), (BLUE, ORANGE, GREEN), strict=False):
        bins = [b for b in summary["bins"] if b["n"]]
        x = np.array([b["mean_predicted"] for b in bins])
        y = np.array([b["observed"] for b in bins])
        ax.plot(x, y, color=colour, linewidth=1.6, marker="o", markersize=4,
                label=f"{name} (ECE {summary['ece']:.3f})")
        intervals = [b.get("observed_ci") for b in bins]
        if all(intervals):
            lo = np.array([c[0] for c in intervals])
            hi = np.array([c[1] for c in intervals])
            ax.errorbar(x, y, yerr=[np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)], fmt="none",
                        ecolor=colour, elinewidth=1, capsize=2.5, alpha=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    return to_base64(fig, look)


def threshold_plot(sweep: dict[str, list[float]], threshold: float, look: Look | None = None) -> str:
    """Sensitivity, specificity and PPV against the threshold, with the locked one marked."""
    look = look or Look()
    t = look.t
    fig = _figure()
    ax = _axes(fig, t("plot.threshold_axis"), t("plot.rate"))
    ax.plot(sweep["threshold"], sweep["sensitivity"], color=BLUE, linewidth=2, label=t("plot.sensitivity"))
    ax.plot(sweep["threshold"], sweep["specificity"], color=GREEN, linewidth=2, label=t("plot.specificity"))
    ax.plot(sweep["threshold"], sweep["ppv"], color=GREY, linewidth=1.2, linestyle=":", label=t("plot.ppv"))
    ax.axvline(threshold, color=ORANGE, linewidth=2, label=t("plot.locked_at", value=threshold))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.yaxis.set_major_formatter(_percent())
    # below the axes: inside, it would hide the curves where they cross
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False, fontsize=8)
    return to_base64(fig, look)


def decision_plot(curve: dict[str, Any], look: Look | None = None) -> str:
    """Decision curve: net benefit of the model, treat-all and treat-none."""
    look = look or Look()
    t = look.t
    fig = _figure()
    ax = _axes(fig, t("plot.risk_threshold"), t("plot.net_benefit"))
    x = curve["thresholds"]
    model = np.asarray(curve["net_benefit_model"])
    ax.plot(x, model, color=BLUE, linewidth=2, label=t("plot.model"))
    ax.plot(x, curve["net_benefit_all"], color=GREY, linewidth=1.4, label=t("plot.treat_all"))
    ax.plot(x, curve["net_benefit_none"], color="#1b1f24", linewidth=1.2, linestyle="--",
            label=t("plot.treat_none"))
    top = max(0.05, float(np.nanmax(model)) * 1.15, curve["prevalence"] * 1.1)
    ax.set_ylim(-0.05 * top * 4, top)
    ax.set_xlim(0, 1)
    ax.legend(loc="upper right", frameon=False, fontsize=8)
    return to_base64(fig, look)


def referral_plot(rows: list[dict[str, float]], look: Look | None = None,
                  marked: tuple[float, ...] = (0.1, 0.2)) -> str:
    """Accuracy of the kept cases against the share referred, with the ``marked`` shares labelled."""
    look = look or Look()
    t = look.t
    fig = _figure()
    ax = _axes(fig, t("plot.share_referred"), t("plot.accuracy_kept"))
    x = [r["referral_rate"] for r in rows]
    y = [r["accuracy_kept"] for r in rows]
    ax.plot(x, y, "o-", color=BLUE, linewidth=2, markersize=4, label=t("plot.accuracy_kept"))
    for rate in marked:
        hit = next((r for r in rows if abs(r["referral_rate"] - rate) < 1e-9), None)
        if hit is not None:
            ax.plot(hit["referral_rate"], hit["accuracy_kept"], "o", color=ORANGE, markersize=8)
            ax.annotate(f"{hit['accuracy_kept']:.1%}", (hit["referral_rate"], hit["accuracy_kept"]),
                        textcoords="offset points", xytext=(-7, 6), ha="right", fontsize=8, color=ORANGE)
    ax.xaxis.set_major_formatter(_percent())
    ax.yaxis.set_major_formatter(_percent())
    return to_base64(fig, look)


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=0)


def forest_plot(rows: list[dict[str, Any]], overall: float, metric: str = "auc",
                look: Look | None = None) -> str | None:
    """Subgroup estimates with CIs as a forest plot; ``None`` when no row has the metric."""
    look = look or Look()
    t = look.t
    usable = [r for r in rows if r.get("status") != "too_few" and r.get(metric) is not None
              and np.isfinite(r[metric])]
    if not usable:
        return None
    fig = _figure((5.6, 0.42 * len(usable) + 1.4))
    ax = _axes(fig, t("plot.subgroup_auc"), "")
    ys = np.arange(len(usable))[::-1]
    for y, row in zip(ys, usable, strict=True):
        lo, hi = row.get(f"{metric}_ci") or [np.nan, np.nan]
        if lo is not None and np.isfinite(lo):
            ax.plot([lo, hi], [y, y], color=BLUE, linewidth=2)
        ax.plot(row[metric], y, "s", color=BLUE, markersize=6)
    ax.axvline(overall, color=ORANGE, linestyle="--", linewidth=1.2, label=t("plot.overall_auc"))
    ax.set_yticks(ys, labels=[f"{r['column']} = {r['level']} (n={r['n']})" for r in usable])
    ax.grid(True, axis="x", color="#e3e6ea")
    ax.grid(False, axis="y")
    ax.legend(loc="lower left", frameon=False, fontsize=8)
    return to_base64(fig, look)


def training_plot(curves: dict[str, list[float]], look: Look | None = None) -> str | None:
    """Loss (training and validation) and the validation score on two separate, named axes."""
    look = look or Look()
    t = look.t
    losses = {k: v for k, v in curves.items() if k.endswith("loss") and isinstance(v, list) and v}
    scores = {k: v for k, v in curves.items() if k != "epoch" and not k.endswith("loss")
              and isinstance(v, list) and v}
    if not losses and not scores:
        return None
    panels = ([(losses, t("plot.loss"))] if losses else []) + ([(scores, t("plot.validation_auc"))] if scores else [])
    fig = _figure((5.6, 2.5 * len(panels) + 0.4))
    from matplotlib.ticker import MaxNLocator

    for i, (series, ylabel) in enumerate(panels):
        ax = _style(fig.add_subplot(len(panels), 1, i + 1), t("plot.epoch"), ylabel)
        for (name, values), colour in zip(series.items(), (BLUE, ORANGE, GREEN, RED, GREY), strict=False):
            epochs = curves.get("epoch") or list(range(1, len(values) + 1))
            ax.plot(epochs[: len(values)], values, color=colour, linewidth=1.8, marker="o", markersize=3,
                    label=t.term("series", name))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(frameon=False, fontsize=8)
    return to_base64(fig, look)


def importance_plot(rows: list[dict[str, Any]], top: int = 15, look: Look | None = None) -> str | None:
    """Horizontal bars of permutation importance (AUC points lost)."""
    look = look or Look()
    if not rows:
        return None
    rows = rows[:top][::-1]
    fig = _figure((5.6, 0.32 * len(rows) + 1.2))
    ax = _axes(fig, look.t("plot.auc_lost"), "")
    ax.barh([r["feature"] for r in rows], [r["importance_mean"] for r in rows],
            xerr=[r.get("importance_std", 0.0) for r in rows], color=BLUE, alpha=0.85)
    ax.grid(False, axis="y")
    return to_base64(fig, look)


def _grey(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 3 and x.shape[0] in (1, 3):
        x = x.mean(axis=0)
    elif x.ndim == 3 and x.shape[-1] in (1, 3):
        x = x.mean(axis=-1)
    return x


def overlay_pair(image: Any, heatmap: Any, heat_title: str, look: Look | None = None) -> str:
    """The image and its heat-map overlay side by side, at the same size, with a colour bar."""
    look = look or Look()
    t = look.t
    grey = _grey(image)
    fig = _figure((5.6, 2.9))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    top = max(1.0, float(grey.max()))
    for ax in axes:
        ax.imshow(grey, cmap="gray", vmin=0, vmax=top, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
    axes[0].set_title(t("plot.original"), fontsize=9)
    heat = np.asarray(heatmap, dtype=np.float32)
    peak = max(1e-6, float(heat.max()))
    # weak evidence stays transparent so the anatomy underneath remains readable
    shown = np.ma.masked_less(heat, 0.2 * peak)
    mappable = axes[1].imshow(shown, cmap="jet", alpha=0.5, vmin=0, vmax=peak, interpolation="bilinear",
                              extent=(-0.5, grey.shape[1] - 0.5, grey.shape[0] - 0.5, -0.5))
    axes[1].set_title(heat_title, fontsize=9)
    bar = fig.colorbar(mappable, ax=list(axes), shrink=0.8, ticks=[0, peak])
    bar.ax.set_yticklabels([t("plot.weak"), t("plot.strong")], fontsize=8)
    return to_base64(fig, look)


def thumbnail_strip(images: list[Any], look: Look | None = None) -> str | None:
    """Small grey images in one row (flagged explanation cases); None for no images."""
    if not images:
        return None
    n = len(images)
    fig = _figure((min(1.2 * n, 8.0), 1.4))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, image in zip(axes, images, strict=True):
        ax.imshow(_grey(image), cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
    return to_base64(fig, look)


def class_balance_plot(counts: dict[str, dict[str, int]], look: Look | None = None) -> str:
    """Grouped bars: images per class (``counts[split][class]``), one group per split."""
    look = look or Look()
    t = look.t
    splits = list(counts)
    classes = sorted({c for row in counts.values() for c in row})
    fig = _figure((5.6, 3.2))
    ax = _axes(fig, t("plot.split"), t("plot.images"))
    width = 0.8 / max(1, len(classes))
    colours = (BLUE, ORANGE, GREEN, RED, GREY)
    for i, name in enumerate(classes):
        xs = np.arange(len(splits)) + (i - (len(classes) - 1) / 2) * width
        ax.bar(xs, [counts[s].get(name, 0) for s in splits], width=width, color=colours[i % len(colours)],
               label=name)
    ax.set_xticks(range(len(splits)), labels=[t.term("split", s) for s in splits])
    ax.grid(False, axis="x")
    ax.legend(title=t("plot.class"), frameon=False, fontsize=8, title_fontsize=8)
    return to_base64(fig, look)

