"""Rows of an external evaluation set that were in the model's own training data, found by content.

``evaluate --data`` scores another dataset as external validation. If that dataset holds
images or table rows the model was trained or calibrated on (the training and validation
splits), its figures overstate how the model does on new patients. :func:`training_overlap`
compares contents, not names: the SHA-256 of each image file (of the array for a MedMNIST
``FILE.npz::KEY/INDEX`` reference, as the data check does), and for record models the
SHA-256 of each row's model inputs as the cleaner reads them (spaces and missing-value
tokens normalised).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medpredict.config import RunConfig
from medpredict.data.fingerprints import content_hashes
from medpredict.errors import ConfigError, DataError
from medpredict.records.tables import clean_token

log = logging.getLogger(__name__)

#: The splits whose rows shaped the model: fitted on, early-stopped and calibrated on.
SEEN_SPLITS = ("train", "val")


def row_hashes(frame: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """SHA-256 per row of the values in ``columns`` as the cleaner reads them (``None`` for missing)."""
    tokens = frame[list(columns)].astype(object).apply(lambda col: col.map(clean_token))
    text = tokens.apply(lambda row: "\x1f".join("" if v is None else str(v) for v in row), axis=1)
    return text.map(lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())


def _seen_images(config: RunConfig) -> set[str]:
    if config.kind == "fused":
        from medpredict.training.fusion import load_fused_data

        fused = load_fused_data(config)
        rows = np.concatenate([fused.part[s] for s in SEEN_SPLITS])
        paths = [p for p in fused.images(rows) if p is not None]
    else:
        from medpredict.training.image import load_data

        frame = load_data(config).frame
        paths = frame.loc[frame["split"].isin(SEEN_SPLITS), "image_path"].astype(str).tolist()
    return set(content_hashes(paths, progress=False).dropna())


def _seen_records(config: RunConfig, columns: Sequence[str]) -> set[str]:
    from medpredict.training.records import load_table_data, split_rows

    table = load_table_data(config.data.source, target=config.data.target, task=config.data.task)
    splits = split_rows(
        table, val_fraction=config.data.val_fraction, test_fraction=config.data.test_fraction, seed=config.train.seed
    )
    seen = table.frame.iloc[np.flatnonzero(np.isin(splits, SEEN_SPLITS))]
    return set(row_hashes(seen, columns))


def training_overlap(config: RunConfig, frame: pd.DataFrame, input_columns: Sequence[str] = ()) -> dict[str, Any]:
    """How many rows of ``frame`` (an external evaluation set) the model saw in training or validation.

    Args:
        config: the run's resolved config (where its training data is).
        frame: the evaluated rows: ``image_path`` for image and fused models, the model's
            input columns for record models.
        input_columns: a record model's input columns.

    Returns:
        ``{"rows": n or None, "of": N, "by": how, "checked_against": what, "examples": [...]}``;
        ``rows`` is ``None`` when the training data cannot be read any more (then nothing
        could be checked, and ``note`` says why). Examples are row numbers, never ids.
    """
    source = str(config.data.source)
    try:
        if config.kind == "record":
            columns = [c for c in input_columns if c in frame.columns]
            if not columns:
                return {"rows": 0, "of": len(frame), "by": "none", "note": "no model input column in the data"}
            seen = _seen_records(config, columns)
            keys = row_hashes(frame, columns)
            how = "SHA-256 of each row's model inputs"
        else:
            seen = _seen_images(config)
            keys = content_hashes(frame["image_path"].astype(str).tolist(), progress=False)
            how = "SHA-256 of each image's content"
    except (DataError, ConfigError, OSError) as exc:
        log.warning("The model's training data (%s) cannot be read (%s): overlap with it was not checked.", source, exc)
        return {"rows": None, "of": len(frame), "note": f"training data unreadable: {exc}"}
    hits = np.flatnonzero(keys.isin(seen).to_numpy())
    return {
        "rows": int(len(hits)),
        "of": len(frame),
        "by": how,
        "checked_against": f"the {' and '.join(SEEN_SPLITS)} rows of {source}",
        "examples": [int(i) for i in hits[:10]],
    }
