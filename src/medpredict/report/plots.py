"""Report figures as base64 PNG strings, drawn with matplotlib's Agg canvas.

Figures are built on ``matplotlib.figure.Figure`` directly (no ``pyplot``), so no
global backend or state is touched and the functions are safe in servers and
threads. Each function takes plain dicts from the evaluation (see
:mod:`medpredict.report.evaluation`) and returns the PNG as a base64 string for an
``<img src="data:image/png;base64,...">`` tag.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

BLUE, ORANGE, GREY, GREEN, RED = "#1f5fa8", "#d9822b", "#8a8f98", "#2e8b57", "#c0392b"
_SIZE = (4.8, 3.6)


def _figure(size: tuple[float, float] = _SIZE) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    fig.set_layout_engine("constrained")
    return fig


def _axes(fig: Any, xlabel: str, ylabel: str) -> Any:
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#e3e6ea", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return ax


def to_base64(fig: Any) -> str:
    """Render a Figure to PNG and return it base64-encoded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def roc_plot(roc: dict[str, Any], band: dict[str, Any] | None, auc: float, auc_ci: list[float] | None,
             operating: tuple[float, float] | None = None) -> str:
    """ROC curve with its bootstrap band and the operating point ``(1 - spec, sens)``."""
    fig = _figure()
    ax = _axes(fig, "1 - specificity (false-positive rate)", "Sensitivity")
    if band:
        ax.fill_between(band["fpr"], band["tpr_lo"], band["tpr_hi"], color=BLUE, alpha=0.18, linewidth=0)
    label = f"AUC {auc:.3f}"
    if auc_ci and all(np.isfinite(auc_ci)):
        label += f" ({auc_ci[0]:.3f}-{auc_ci[1]:.3f})"
    ax.plot(roc["fpr"], roc["tpr"], color=BLUE, linewidth=2, label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color=GREY, linewidth=1)
    if operating is not None:
        ax.plot(*operating, "o", color=ORANGE, markersize=8, label="locked threshold")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", frameon=False)
    return to_base64(fig)


def pr_plot(pr: dict[str, Any]) -> str:
    """Precision-recall curve with the prevalence baseline."""
    fig = _figure()
    ax = _axes(fig, "Recall (sensitivity)", "Precision (PPV)")
    ax.plot(pr["recall"], pr["precision"], color=BLUE, linewidth=2,
            label=f"AP {pr['average_precision']:.3f}")
    ax.axhline(pr["prevalence"], linestyle="--", color=GREY, linewidth=1, label="prevalence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower left", frameon=False)
    return to_base64(fig)


def confusion_plot(matrix: list[list[int]], labels: list[str]) -> str:
    """Confusion matrix with counts and row percentages (rows = truth)."""
    cm = np.asarray(matrix, dtype=float)
    k = cm.shape[0]
    fig = _figure((max(3.6, 1.1 * k + 2.2), max(3.0, 1.0 * k + 1.8)))
    ax = fig.add_subplot(1, 1, 1)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            colour = "white" if share[i, j] > 0.55 else "#1b1f24"
            ax.text(j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center", color=colour)
    ax.set_xticks(range(k), labels=labels, rotation=20 if k > 3 else 0)
    ax.set_yticks(range(k), labels=labels)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    return to_base64(fig)


def reliability_plot(curves: dict[str, dict[str, Any]]) -> str:
    """Reliability diagram for one or more calibration summaries (``{name: summary}``)."""
    fig = _figure()
    ax = _axes(fig, "Predicted probability", "Observed frequency")
    ax.plot([0, 1], [0, 1], linestyle="--", color=GREY, linewidth=1, label="perfect")
    for (name, summary), colour in zip(curves.items(), (ORANGE, BLUE, GREEN), strict=False):
        bins = [b for b in summary["bins"] if b["n"]]
        x = [b["mean_predicted"] for b in bins]
        y = [b["observed"] for b in bins]
        sizes = [20 + 180 * b["n"] / max(1, summary["n"]) for b in bins]
        ax.plot(x, y, color=colour, linewidth=1.6, label=f"{name} (ECE {summary['ece']:.3f})")
        ax.scatter(x, y, s=sizes, color=colour, alpha=0.8, zorder=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    return to_base64(fig)


def threshold_plot(sweep: dict[str, list[float]], threshold: float) -> str:
    """Sensitivity, specificity and PPV against the threshold, with the locked one marked."""
    fig = _figure()
    ax = _axes(fig, "Threshold on predicted probability", "Value")
    ax.plot(sweep["threshold"], sweep["sensitivity"], color=BLUE, linewidth=2, label="sensitivity")
    ax.plot(sweep["threshold"], sweep["specificity"], color=GREEN, linewidth=2, label="specificity")
    ax.plot(sweep["threshold"], sweep["ppv"], color=GREY, linewidth=1.2, linestyle=":", label="PPV")
    ax.axvline(threshold, color=ORANGE, linewidth=2, label=f"locked {threshold:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="center right", frameon=False, fontsize=8)
    return to_base64(fig)


def decision_plot(curve: dict[str, Any]) -> str:
    """Decision curve: net benefit of the model, treat-all and treat-none."""
    fig = _figure()
    ax = _axes(fig, "Threshold probability", "Net benefit")
    x = curve["thresholds"]
    model = np.asarray(curve["net_benefit_model"])
    ax.plot(x, model, color=BLUE, linewidth=2, label="model")
    ax.plot(x, curve["net_benefit_all"], color=GREY, linewidth=1.4, label="treat all")
    ax.plot(x, curve["net_benefit_none"], color="#1b1f24", linewidth=1.2, linestyle="--", label="treat none")
    top = max(0.05, float(np.nanmax(model)) * 1.15, curve["prevalence"] * 1.1)
    ax.set_ylim(-0.05 * top * 4, top)
    ax.set_xlim(0, 1)
    ax.legend(loc="upper right", frameon=False)
    return to_base64(fig)


def referral_plot(rows: list[dict[str, float]]) -> str:
    """Accuracy of the kept cases against the share referred to a clinician."""
    fig = _figure()
    ax = _axes(fig, "Share of cases referred to a clinician", "Accuracy on kept cases")
    x = [r["referral_rate"] for r in rows]
    y = [r["accuracy_kept"] for r in rows]
    ax.plot(x, y, "o-", color=BLUE, linewidth=2)
    ax.xaxis.set_major_formatter(_percent())
    ax.yaxis.set_major_formatter(_percent())
    return to_base64(fig)


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=0)


def forest_plot(rows: list[dict[str, Any]], overall: float, metric: str = "auc") -> str | None:
    """Subgroup estimates with CIs as a forest plot; ``None`` when no row has the metric."""
    usable = [r for r in rows if r.get("status") != "too_few" and r.get(metric) is not None
              and np.isfinite(r[metric])]
    if not usable:
        return None
    fig = _figure((5.6, 0.42 * len(usable) + 1.2))
    ax = _axes(fig, metric.upper(), "")
    ys = np.arange(len(usable))[::-1]
    for y, row in zip(ys, usable, strict=True):
        lo, hi = row.get(f"{metric}_ci") or [np.nan, np.nan]
        if lo is not None and np.isfinite(lo):
            ax.plot([lo, hi], [y, y], color=BLUE, linewidth=2)
        ax.plot(row[metric], y, "s", color=BLUE, markersize=6)
    ax.axvline(overall, color=ORANGE, linestyle="--", linewidth=1.2)
    ax.set_yticks(ys, labels=[f"{r['column']} = {r['level']} (n={r['n']})" for r in usable])
    ax.grid(True, axis="x", color="#e3e6ea")
    ax.grid(False, axis="y")
    return to_base64(fig)


def training_plot(curves: dict[str, list[float]]) -> str | None:
    """Training curves: every list in ``curves`` against ``curves['epoch']`` (or its index)."""
    series = {k: v for k, v in curves.items() if k != "epoch" and isinstance(v, list) and v}
    if not series:
        return None
    fig = _figure((5.6, 3.4))
    ax = _axes(fig, "Epoch", "Value")
    for (name, values), colour in zip(series.items(), (BLUE, ORANGE, GREEN, RED, GREY), strict=False):
        epochs = curves.get("epoch") or list(range(1, len(values) + 1))
        ax.plot(epochs[: len(values)], values, color=colour, linewidth=1.8, label=name)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(frameon=False, fontsize=8)
    return to_base64(fig)


def importance_plot(rows: list[dict[str, Any]], top: int = 15) -> str | None:
    """Horizontal bars of permutation importance (AUC points lost)."""
    if not rows:
        return None
    rows = rows[:top][::-1]
    fig = _figure((5.6, 0.32 * len(rows) + 1.2))
    ax = _axes(fig, "AUC lost when shuffled", "")
    ax.barh([r["feature"] for r in rows], [r["importance_mean"] for r in rows],
            xerr=[r.get("importance_std", 0.0) for r in rows], color=BLUE, alpha=0.85)
    ax.grid(False, axis="y")
    return to_base64(fig)


def _grey(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 3 and x.shape[0] in (1, 3):
        x = x.mean(axis=0)
    elif x.ndim == 3 and x.shape[-1] in (1, 3):
        x = x.mean(axis=-1)
    return x


def heatmap_grid(examples: list[dict[str, Any]]) -> str | None:
    """Image and heat-map overlay pairs, one row per example with arrays (not PNG paths)."""
    usable = [e for e in examples if e.get("image") is not None and not isinstance(e["image"], str)]
    if not usable:
        return None
    n = len(usable)
    fig = _figure((5.2, 2.5 * n))
    for i, example in enumerate(usable):
        image = _grey(example["image"])
        ax_img = fig.add_subplot(n, 2, 2 * i + 1)
        ax_img.imshow(image, cmap="gray", vmin=0, vmax=max(1.0, float(image.max())))
        ax_img.set_title(str(example.get("title", f"example {i + 1}"))[:40], fontsize=9)
        ax_map = fig.add_subplot(n, 2, 2 * i + 2)
        ax_map.imshow(image, cmap="gray", vmin=0, vmax=max(1.0, float(image.max())))
        if example.get("heatmap") is not None:
            heat = np.asarray(example["heatmap"], dtype=np.float32)
            top = max(1e-6, float(heat.max()))
            # weak evidence stays transparent so the anatomy underneath remains readable
            shown = np.ma.masked_less(heat, 0.2 * top)
            ax_map.imshow(shown, cmap="jet", alpha=0.5, vmin=0, vmax=top,
                          extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
        ax_map.set_title(str(example.get("caption", "heat map"))[:40], fontsize=9)
        for ax in (ax_img, ax_map):
            ax.set_xticks([])
            ax.set_yticks([])
    return to_base64(fig)
