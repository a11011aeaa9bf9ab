"""Checks that an explanation can be trusted, and attributions for record models.

Heat maps alone persuade more than they should. These checks ask whether a map
reflects what the model learned and what drives its output:

* :func:`randomisation_check` - model-parameter randomisation test (Adebayo et al.,
  "Sanity Checks for Saliency Maps", NeurIPS 2018): maps of the trained model must
  differ from maps of the same architecture with re-initialised weights (Spearman
  rank correlation of the absolute maps below ``max_similarity``).
* :func:`deletion_insertion` - faithfulness (Petsiuk et al., RISE, 2018): hiding the
  most highlighted pixels first should drop the class probability fast (low deletion
  AUC); revealing them first should raise it fast (high insertion AUC). Both are
  compared with a random pixel order.
* :func:`border_fraction`, :func:`burned_in_text_mask`, :func:`shortcut_flag` - a map
  lying mostly on the image border or on burned-in text (markers, labels) suggests a
  shortcut rather than anatomy.
* :func:`explanation_sanity` runs the image checks together.
* :func:`permutation_importance_table` (global) and :func:`local_attribution` (per
  patient) for record models.

Functions take the model only through callables (``explain_fn``, ``predict_fn``) so
they work with any explanation method (Grad-CAM, occlusion) and any runtime.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medpredict.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

ExplainFn = Callable[[Any, np.ndarray, int], np.ndarray]
PredictFn = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------ randomisation


def randomised_copy(model: Any, seed: int = 0) -> Any:
    """Deep copy of a torch model with every layer's parameters re-initialised.

    Uses each module's own ``reset_parameters`` (PyTorch's default initialisation)
    inside a forked RNG, so the caller's random state is untouched.

    Raises:
        ConfigError: no module of the model can be re-initialised.
    """
    import torch

    clone = copy.deepcopy(model)
    reset = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in clone.modules():
            if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                module.reset_parameters()
                reset += 1
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
    if reset == 0:
        raise ConfigError(
            f"{type(model).__name__} has no layer with reset_parameters(); cannot randomise it."
        )
    return clone


def _spearman_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two absolute maps.

    A constant (blank) map has no ranks: two blank maps count as identical (1), one
    blank and one structured map as unrelated (0).
    """
    from scipy.stats import spearmanr

    x, y = np.abs(np.ravel(a)), np.abs(np.ravel(b))
    blank_x, blank_y = np.ptp(x) == 0, np.ptp(y) == 0
    if blank_x or blank_y:
        return 1.0 if blank_x and blank_y else 0.0
    return float(spearmanr(x, y)[0])


def randomisation_check(
    model: Any,
    images: Sequence[np.ndarray] | np.ndarray,
    explain_fn: ExplainFn,
    *,
    class_indices: Sequence[int] | None = None,
    n_randomisations: int = 2,
    max_similarity: float = 0.4,
    seed: int = 0,
) -> dict[str, Any]:
    """Model-parameter randomisation sanity check for a saliency method.

    Args:
        model: a torch module (trained).
        images: ``(N, C, H, W)`` or a list of ``(C, H, W)`` images, preprocessed for the model.
        explain_fn: ``explain_fn(model, image, class_index) -> (H, W)`` heat map, e.g.
            :func:`medpredict.explain.maps.gradcam`.
        class_indices: class to explain per image (default 1, the positive class).
        n_randomisations: independent re-initialisations to compare against.
        max_similarity: the check passes when the mean Spearman correlation between
            trained and randomised maps is below this.
        seed: seed of the re-initialisations.

    Returns:
        ``{similarity, per_image, max_similarity, n_images, n_randomisations,
        n_blank_maps, passed, method}``; ``per_image`` holds each image's mean
        similarity; ``n_blank_maps`` counts trained-model maps with no evidence at all.

    Note:
        The test asks whether a method depends on the learned weights: a method that
        returns the same map whatever the weights (an edge detector, the image
        itself) fails it. An untrained model usually fails too, because its maps are
        blank or follow the image's structure just as another random network's do;
        when it does not, :func:`deletion_insertion` catches it, since an untrained
        model's output does not depend on the highlighted region.
    """
    batch = [np.asarray(im, dtype=np.float32) for im in images]
    if not batch:
        raise DataError("randomisation_check needs at least one image.")
    classes = [1] * len(batch) if class_indices is None else list(class_indices)
    if len(classes) != len(batch):
        raise DataError(f"class_indices has {len(classes)} entries for {len(batch)} images.")
    if n_randomisations < 1:
        raise ConfigError(f"n_randomisations must be at least 1; got {n_randomisations}.")
    trained = [np.asarray(explain_fn(model, im, c)) for im, c in zip(batch, classes, strict=True)]
    sims = np.full((n_randomisations, len(batch)), np.nan)
    for r in range(n_randomisations):
        random_model = randomised_copy(model, seed=seed + r)
        for i, (im, c) in enumerate(zip(batch, classes, strict=True)):
            sims[r, i] = _spearman_abs(trained[i], np.asarray(explain_fn(random_model, im, c)))
    blank_maps = np.array([np.ptp(m) == 0 for m in trained])
    # a blank map shows no evidence at all, so it cannot show dependence on the weights
    per_image = np.where(blank_maps, 1.0, sims.mean(axis=0))
    blank = int(blank_maps.sum())
    similarity = float(per_image.mean())
    passed = similarity < max_similarity
    logger.info("Randomisation check: similarity %.3f (limit %.2f) -> %s", similarity, max_similarity,
                "passed" if passed else "FAILED")
    return {
        "method": "model-parameter randomisation (Adebayo et al. 2018), Spearman of |map|",
        "similarity": similarity,
        "per_image": per_image.astype(float).tolist(),
        "max_similarity": float(max_similarity),
        "n_images": len(batch),
        "n_randomisations": int(n_randomisations),
        "n_blank_maps": blank,
        "passed": bool(passed),
    }


def explanation_sanity(
    model: Any,
    images: Sequence[np.ndarray] | np.ndarray,
    explain_fn: ExplainFn,
    predict_fn: PredictFn,
    *,
    class_index: int = 1,
    max_similarity: float = 0.4,
    min_faithfulness: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """All image-explanation checks at once, for the report and the model card.

    Runs :func:`randomisation_check`, then :func:`deletion_insertion` and
    :func:`shortcut_flag` on every image's map.

    Returns:
        ``{randomisation, faithfulness_mean, faithfulness_per_image, deletion_auc_mean,
        insertion_auc_mean, shortcut_flags, passed}``; ``passed`` needs the
        randomisation check passed, mean faithfulness of at least ``min_faithfulness``
        and no shortcut flag.
    """
    batch = [np.asarray(im, dtype=np.float32) for im in images]
    randomisation = randomisation_check(model, batch, explain_fn, class_indices=[class_index] * len(batch),
                                        max_similarity=max_similarity, seed=seed)
    faith, deletion, insertion, flags = [], [], [], []
    for i, image in enumerate(batch):
        heat = np.asarray(explain_fn(model, image, class_index))
        scores = deletion_insertion(predict_fn, image, heat, class_index=class_index, seed=seed + i)
        faith.append(scores["faithfulness"])
        deletion.append(scores["deletion_auc"])
        insertion.append(scores["insertion_auc"])
        shortcut = shortcut_flag(heat, image)
        if shortcut["flagged"]:
            flags.append({"image": i, "reasons": shortcut["reasons"]})
    faithfulness = float(np.mean(faith))
    return {
        "randomisation": randomisation,
        "faithfulness_mean": faithfulness,
        "faithfulness_per_image": [float(v) for v in faith],
        "deletion_auc_mean": float(np.mean(deletion)),
        "insertion_auc_mean": float(np.mean(insertion)),
        "min_faithfulness": float(min_faithfulness),
        "shortcut_flags": flags,
        "passed": bool(randomisation["passed"] and faithfulness >= min_faithfulness and not flags),
    }


# -------------------------------------------------------------- faithfulness


def deletion_insertion(
    predict_fn: PredictFn,
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    class_index: int = 1,
    steps: int = 20,
    baseline: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Deletion and insertion curves of one heat map, and the same for a random order.

    Pixels are ranked by heat (highest first). Deletion replaces the top k% with
    ``baseline``; insertion starts from a ``baseline`` image and puts the top k% back.
    All ``2 * (steps + 1) * 2`` variants go to ``predict_fn`` in one batch.

    Args:
        predict_fn: maps ``(N, C, H, W)`` float32 to probabilities ``(N, K)``.
        image: ``(C, H, W)`` float32, preprocessed for ``predict_fn``.
        heatmap: ``(H, W)`` heat map of ``image`` for ``class_index``.
        steps: number of fractions between 0 and 1.
        baseline: fill value; default the image mean.

    Returns:
        ``{deletion_auc, insertion_auc, random_deletion_auc, random_insertion_auc,
        faithfulness, fractions, deletion_curve, insertion_curve}`` where
        ``faithfulness = (insertion - deletion) - (random_insertion - random_deletion)``
        (above 0: the map points at what drives the output better than chance).
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    heat = np.asarray(heatmap, dtype=np.float64)
    if x.ndim != 3 or heat.shape != x.shape[1:]:
        raise DataError(f"image must be (C, H, W) and heatmap (H, W) of the same size; got {x.shape} "
                        f"and {heat.shape}.")
    if steps < 2:
        raise ConfigError(f"steps must be at least 2; got {steps}.")
    fill = float(x.mean()) if baseline is None else float(baseline)
    n_pix = heat.size
    rng = np.random.default_rng(seed)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    orders = {"map": np.argsort(-heat.ravel(), kind="stable"), "random": rng.permutation(n_pix)}
    variants = []
    for order in orders.values():
        rank = np.empty(n_pix, dtype=np.int64)
        rank[order] = np.arange(n_pix)
        for frac in fractions:
            top = (rank < int(round(frac * n_pix))).reshape(heat.shape)
            variants.append(np.where(top[None], fill, x))  # deletion
            variants.append(np.where(top[None], x, fill))  # insertion
    probs = np.asarray(predict_fn(np.stack(variants).astype(np.float32)), dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(variants) or not 0 <= class_index < probs.shape[1]:
        raise DataError(f"predict_fn returned shape {probs.shape}; expected ({len(variants)}, K) "
                        f"with class_index {class_index} < K.")
    scores = probs[:, class_index].reshape(2, steps + 1, 2)

    def auc(curve: np.ndarray) -> float:
        return float(np.sum((curve[1:] + curve[:-1]) / 2.0 * np.diff(fractions)))

    deletion, insertion = auc(scores[0, :, 0]), auc(scores[0, :, 1])
    r_del, r_ins = auc(scores[1, :, 0]), auc(scores[1, :, 1])
    return {
        "deletion_auc": deletion,
        "insertion_auc": insertion,
        "random_deletion_auc": r_del,
        "random_insertion_auc": r_ins,
        "faithfulness": float((insertion - deletion) - (r_ins - r_del)),
        "fractions": fractions.tolist(),
        "deletion_curve": scores[0, :, 0].tolist(),
        "insertion_curve": scores[0, :, 1].tolist(),
    }


# ------------------------------------------------------------------ shortcuts


def border_fraction(heatmap: np.ndarray, margin: float = 0.1) -> float:
    """Share of the heat map's mass within ``margin`` (a fraction of each side) of the edges.

    A uniform map gives ``1 - (1 - 2 * margin) ** 2`` (0.36 for 0.1).
    """
    heat = np.abs(np.asarray(heatmap, dtype=np.float64))
    if heat.ndim != 2:
        raise DataError(f"heatmap must be (H, W); got shape {heat.shape}.")
    if not 0.0 < margin < 0.5:
        raise ConfigError(f"margin must lie in (0, 0.5); got {margin}.")
    total = heat.sum()
    if total == 0:
        return 0.0
    h, w = heat.shape
    mh, mw = max(1, int(round(h * margin))), max(1, int(round(w * margin)))
    inner = heat[mh:h - mh, mw:w - mw].sum()
    return float((total - inner) / total)


def burned_in_text_mask(image: np.ndarray, *, level: float = 0.97, margin: float = 0.2) -> np.ndarray:
    """Likely burned-in text or markers: near-saturated pixels in the outer band of the image.

    A heuristic: letters and side markers are drawn at full brightness near the edges,
    where anatomy rarely saturates. Returns an ``(H, W)`` bool mask.
    """
    x = np.asarray(image, dtype=np.float64)
    grey = x.mean(axis=0) if x.ndim == 3 else x
    if grey.ndim != 2:
        raise DataError(f"image must be (H, W) or (C, H, W); got shape {x.shape}.")
    h, w = grey.shape
    band = np.ones_like(grey, dtype=bool)
    mh, mw = int(round(h * margin)), int(round(w * margin))
    band[mh:h - mh, mw:w - mw] = False
    top = grey.max()
    if top <= 0:
        return np.zeros_like(band)
    return band & (grey >= level * top) & (top - grey.min() > 0.2)


def shortcut_flag(
    heatmap: np.ndarray,
    image: np.ndarray | None = None,
    *,
    margin: float = 0.1,
    border_limit: float = 0.5,
    text_limit: float = 0.3,
) -> dict[str, Any]:
    """Flag a heat map that lies mostly on the border or on burned-in text.

    Returns:
        ``{border_fraction, text_fraction, flagged, reasons}``; ``text_fraction`` is
        the share of heat on :func:`burned_in_text_mask` (dilated by one pixel), or
        ``None`` without an image.
    """
    from scipy.ndimage import binary_dilation

    heat = np.abs(np.asarray(heatmap, dtype=np.float64))
    border = border_fraction(heat, margin)
    reasons = []
    if border > border_limit:
        reasons.append(f"{border:.0%} of the attribution lies on the image border (limit {border_limit:.0%})")
    text = None
    if image is not None:
        mask = binary_dilation(burned_in_text_mask(image), iterations=1)
        if mask.shape != heat.shape:
            raise DataError(f"image {mask.shape} and heatmap {heat.shape} differ in size.")
        text = float(heat[mask].sum() / heat.sum()) if heat.sum() > 0 else 0.0
        if text > text_limit:
            reasons.append(f"{text:.0%} of the attribution lies on burned-in text or markers")
    return {"border_fraction": border, "text_fraction": text, "flagged": bool(reasons), "reasons": reasons}


# -------------------------------------------------------------------- tables


class _FunctionEstimator:
    """Adapter so scikit-learn's permutation_importance can call a plain predict function."""

    def __init__(self, predict_fn: Callable[[Any], np.ndarray]) -> None:
        self.predict_fn = predict_fn

    def fit(self, X: Any, y: Any = None) -> _FunctionEstimator:  # noqa: N803 - sklearn's name
        return self


def permutation_importance_table(
    predict_fn: Callable[[Any], np.ndarray],
    X: Any,  # noqa: N803 - the usual name for a feature table
    y: Any,
    *,
    n_repeats: int = 10,
    seed: int = 0,
    class_index: int = 1,
) -> Any:
    """Global importance: drop in AUC when one column is shuffled (scikit-learn).

    Args:
        predict_fn: maps a DataFrame of raw records to probabilities ``(N, K)``.
        X: DataFrame of records; y: ``(N,)`` 0/1 outcomes.

    Returns:
        DataFrame ``feature, importance_mean, importance_std`` sorted by importance
        (AUC points lost; near 0 or negative = not used).
    """
    import pandas as pd
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import roc_auc_score

    if not isinstance(X, pd.DataFrame):
        raise DataError(f"X must be a pandas DataFrame with named columns; got {type(X).__name__}.")
    y_arr = np.asarray(y)
    if np.unique(y_arr).size < 2:
        raise DataError("Permutation importance by AUC needs both outcomes in y.")

    def scorer(estimator: _FunctionEstimator, data: Any, target: Any) -> float:
        return float(roc_auc_score(target, np.asarray(estimator.predict_fn(data))[:, class_index]))

    result = permutation_importance(_FunctionEstimator(predict_fn), X, y_arr, scoring=scorer,
                                    n_repeats=n_repeats, random_state=seed)
    table = pd.DataFrame({"feature": list(X.columns), "importance_mean": result.importances_mean,
                          "importance_std": result.importances_std})
    return table.sort_values("importance_mean", ascending=False, ignore_index=True)


def local_attribution(
    predict_fn: Callable[[Any], np.ndarray],
    X_row: Any,  # noqa: N803
    background: Any,
    *,
    class_index: int = 1,
    max_background: int = 100,
    seed: int = 0,
) -> Any:
    """Per-patient attribution: how the risk changes when one value is replaced by typical ones.

    For each feature j, ``attribution_j = p(x) - mean_b p(x with x_j := background_b[j])``
    over up to ``max_background`` background rows; one ``predict_fn`` call in all.

    Returns:
        DataFrame ``feature, value, attribution`` sorted by |attribution|; ``attrs``
        holds ``prediction`` and ``expected`` (mean prediction over the background).
    """
    import pandas as pd

    row = X_row.to_frame().T if isinstance(X_row, pd.Series) else X_row
    if not isinstance(row, pd.DataFrame) or len(row) != 1:
        raise DataError("X_row must be one record: a pandas Series or a one-row DataFrame.")
    if not isinstance(background, pd.DataFrame) or background.empty:
        raise DataError("background must be a non-empty DataFrame of typical records (e.g. training rows).")
    missing = [c for c in row.columns if c not in background.columns]
    if missing:
        raise DataError(f"background lacks column(s) {missing} of the record.")
    if len(background) > max_background:
        background = background.sample(max_background, random_state=seed)
    row = row.reset_index(drop=True)
    bg = background[row.columns].reset_index(drop=True)
    b = len(bg)
    variants = [row]
    for col in row.columns:
        block = pd.concat([row] * b, ignore_index=True)
        block[col] = bg[col].to_numpy()
        variants.append(block)
    variants.append(bg)
    probs = np.asarray(predict_fn(pd.concat(variants, ignore_index=True)), dtype=np.float64)[:, class_index]
    prediction = float(probs[0])
    replaced = probs[1:1 + b * row.shape[1]].reshape(row.shape[1], b).mean(axis=1)
    table = pd.DataFrame({
        "feature": list(row.columns),
        "value": [row.iloc[0][c] for c in row.columns],
        "attribution": prediction - replaced,
    })
    order = table["attribution"].abs().sort_values(ascending=False).index
    table = table.reindex(order).reset_index(drop=True)
    table.attrs["prediction"] = prediction
    table.attrs["expected"] = float(probs[1 + b * row.shape[1]:].mean())
    return table
