"""Clusters of patients in the record network's learned embedding.

:func:`cluster_embeddings` runs k-means on the encoder's embedding ``(N, d)``, choosing
``k`` by silhouette score when it is not given, and maps the patients to 2-D with PCA.
:func:`cluster_table` trains the network on a table (as :func:`medpredict.training.records.train_table`
does) and writes ``clusters.json``, ``clusters.csv`` (row number, cluster, outcome —
never ids) and ``clusters.png`` (the 2-D map coloured by cluster and by outcome).

Clusters found this way describe how *this model* groups patients; they are a
starting point for a clinician's look at the records, not phenotypes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medpredict.errors import ConfigError
from medpredict.models.records import RecordNetwork

logger = logging.getLogger(__name__)


@torch.no_grad()
def embed(model: RecordNetwork, x: np.ndarray) -> np.ndarray:
    """The encoder's embedding of cleaner output ``(N, F)`` -> ``(N, embedding_dim)`` float32."""
    model.eval()
    return model.features(torch.as_tensor(np.asarray(x, dtype=np.float32))).numpy()


def cluster_embeddings(
    embedding: np.ndarray, *, k: int | None = None, k_range: Sequence[int] = (2, 3, 4, 5, 6), seed: int = 0
) -> dict[str, Any]:
    """k-means on an embedding, ``k`` chosen by silhouette when not given.

    Returns:
        ``{"k", "labels" (N,), "silhouette", "silhouette_by_k", "map" (N, 2) PCA
        coordinates, "explained_variance"}``.

    Raises:
        ConfigError: ``k`` is below 2 or not below the number of rows.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    z = np.asarray(embedding, dtype=np.float64)
    candidates = [k] if k is not None else [c for c in k_range if 2 <= c < len(z)]
    if not candidates or any(c < 2 or c >= len(z) for c in candidates):
        raise ConfigError(f"k = {k} is not usable for {len(z)} rows; choose 2 <= k < {len(z)}.")
    fits = {}
    for c in candidates:
        labels = KMeans(n_clusters=c, n_init=10, random_state=seed).fit_predict(z)
        fits[c] = (labels, float(silhouette_score(z, labels)) if len(set(labels)) > 1 else float("nan"))
    best = max(fits, key=lambda c: -np.inf if np.isnan(fits[c][1]) else fits[c][1])
    pca = PCA(n_components=min(2, z.shape[1]), random_state=seed).fit(z)
    coords = pca.transform(z)
    if coords.shape[1] == 1:
        coords = np.column_stack([coords[:, 0], np.zeros(len(coords))])
    return {
        "k": int(best),
        "labels": fits[best][0],
        "silhouette": fits[best][1],
        "silhouette_by_k": {int(c): s for c, (_, s) in fits.items()},
        "map": coords,
        "explained_variance": [float(v) for v in pca.explained_variance_ratio_],
    }


def cluster_profile(
    labels: np.ndarray, y: np.ndarray, task: str, class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Size and outcome of each cluster: positive rate (binary), class shares, or target mean."""
    rows = []
    for cluster in sorted(set(labels.tolist())):
        member = labels == cluster
        entry: dict[str, Any] = {"cluster": int(cluster), "n": int(member.sum())}
        if task == "regression":
            entry["target_mean"] = float(np.mean(y[member]))
        else:
            counts = np.bincount(y[member].astype(int), minlength=len(class_names))
            entry["outcome_share"] = {
                name: float(c / member.sum()) for name, c in zip(class_names, counts, strict=True)
            }
        rows.append(entry)
    return rows


def cluster_map_png(
    coords: np.ndarray, labels: np.ndarray, y: np.ndarray, task: str, class_names: Sequence[str]
) -> bytes:
    """Two panels of the same 2-D map: coloured by cluster, and by outcome."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.6))
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for cluster in sorted(set(labels.tolist())):
        member = labels == cluster
        left.scatter(coords[member, 0], coords[member, 1], s=14, alpha=0.8, label=f"cluster {cluster}")
    left.legend(fontsize=8)
    left.set_title("Patients by cluster (k-means on the network embedding)")
    if task == "regression":
        points = right.scatter(coords[:, 0], coords[:, 1], c=y, s=14, cmap="viridis")
        fig.colorbar(points, ax=right, label="target")
    else:
        for k, name in enumerate(class_names):
            member = y == k
            right.scatter(coords[member, 0], coords[member, 1], s=14, alpha=0.8, label=str(name))
        right.legend(fontsize=8)
    right.set_title("Same map, coloured by outcome")
    for ax in (left, right):
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


@dataclass(frozen=True)
class Clustering:
    """What :func:`cluster_table` found (``clusters.json``) and where the map went."""

    found: dict[str, Any]
    out: Path
    exit_code = 0

    def summary(self) -> str:
        found = self.found
        return (
            f"k={found['k']}, silhouette {found['silhouette']:.3f}: {json.dumps(found['clusters'])}\n"
            f"Map: {self.out / 'clusters.png'}"
        )


def cluster_table(
    source: Any,
    *,
    target: str | None = None,
    out: str | Path = "runs/table_clusters",
    k: int | None = None,
    model: str = "mlp",
    schema: str | Path | Mapping[str, Any] | None = None,
    seed: int = 0,
    force: bool = False,
) -> Clustering:
    """Train the network on a table, cluster every row in its embedding, write the map.

    The network is trained by :func:`medpredict.training.records.train_table` (its run folder is
    ``out/run``); all rows, cleaned by that run's cleaner, are then embedded and clustered.

    Returns:
        The :class:`Clustering`; its ``found`` is the JSON written to ``out/clusters.json``:
        ``k, silhouette, silhouette_by_k, explained_variance, clusters`` (size and outcome per cluster).
    """
    from medpredict.atomic import write_bytes, write_json, write_text
    from medpredict.training.records import train_table

    if k is not None and k < 2:  # before any training
        raise ConfigError(f"--k {k}: k-means needs at least 2 clusters; give --k 2 or more, or leave it out.")
    out = Path(out)
    run = train_table(
        source,
        target=target,
        schema=schema,
        out=out / "run",
        model=model,
        seed=seed,
        baselines=False,
        n_boot=200,
        progress=False,
        force=force,
    )
    data = run.data
    z = embed(run.model, run.cleaner.transform(data.frame))
    result = cluster_embeddings(z, k=k, seed=seed)
    summary = {
        "source": data.source,
        "task": data.task,
        "embedding_dim": int(z.shape[1]),
        "k": result["k"],
        "silhouette": result["silhouette"],
        "silhouette_by_k": result["silhouette_by_k"],
        "explained_variance": result["explained_variance"],
        "clusters": cluster_profile(result["labels"], data.y, data.task, data.labels),
    }
    table = pd.DataFrame(
        {
            "row": np.arange(len(data.y)),
            "cluster": result["labels"],
            "target": data.y,
            "map_x": result["map"][:, 0],
            "map_y": result["map"][:, 1],
        }
    )
    write_json(out / "clusters.json", summary)
    write_text(out / "clusters.csv", table.to_csv(index=False))
    write_bytes(
        out / "clusters.png", cluster_map_png(result["map"], result["labels"], data.y, data.task, data.labels)
    )
    logger.info(
        "Clustered %d rows into k=%d (silhouette %.3f); written to %s.",
        len(z),
        result["k"],
        result["silhouette"],
        out,
    )
    return Clustering(summary, out)
