"""Patient-level splits and the leakage check that guards them.

Splits are stratified by the target and grouped by patient, so no patient is ever on
both sides. Images that are byte-identical (given as ``content_keys``) are tied into the
same group as well, so a duplicated image cannot leak across splits even when it was
filed under two patients.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from medpredict.data.manifest import Manifest
from medpredict.errors import DataError, LeakageError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def group_ids(patients: pd.Series, content_keys: pd.Series | None = None) -> np.ndarray:
    """Integer group per row: rows sharing a patient or an identical content key share a group."""
    parent = list(range(len(patients)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union_by(keys: pd.Series) -> None:
        first: dict[object, int] = {}
        for i, key in enumerate(keys.to_numpy()):
            if pd.isna(key):
                continue
            if key in first:
                a, b = find(i), find(first[key])
                if a != b:
                    parent[a] = b
            else:
                first[key] = i

    union_by(patients.reset_index(drop=True))
    if content_keys is not None:
        union_by(content_keys.reset_index(drop=True))
    roots = np.array([find(i) for i in range(len(patients))])
    _, dense = np.unique(roots, return_inverse=True)
    return dense


def _strata(frame: pd.DataFrame, task: str) -> np.ndarray:
    if task == "regression":
        values = frame["target"].astype(float)
        return pd.qcut(values.rank(method="first"), q=min(5, len(values)), labels=False).to_numpy()
    if task == "multilabel":
        return frame["target"].map(lambda t: int(np.argmax(t)) if any(t) else -1).to_numpy()
    return frame["target"].to_numpy()


def _carve(frame: pd.DataFrame, groups: np.ndarray, fraction: float, task: str, seed: int) -> np.ndarray:
    """Boolean mask of about ``fraction`` of the rows, whole groups only, stratified."""
    n_groups = len(np.unique(groups))
    n_splits = max(2, round(1.0 / fraction))
    if n_groups < n_splits:
        raise DataError(
            f"Only {n_groups} patients to split, too few to hold out {fraction:.0%} of them by patient. "
            "Give a 'split' column or more data."
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    strata = _strata(frame, task)
    try:
        _, held = next(splitter.split(np.zeros(len(frame)), strata, groups))
    except ValueError as exc:  # every class smaller than the number of folds
        raise DataError(
            f"Cannot hold out {fraction:.0%} of the patients class by class: the {len(np.unique(strata))} classes "
            f"have at most {int(pd.Series(strata).value_counts().max())} row(s) each ({exc}). Check that the "
            "target names an outcome, not an identifier, or give a 'split' column."
        ) from None
    mask = np.zeros(len(frame), dtype=bool)
    mask[held] = True
    return mask


def assign_splits(
    manifest: Manifest,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    content_keys: pd.Series | None = None,
) -> Manifest:
    """Fill in ``train``/``val``/``test`` for rows that have none, by patient.

    A given ``split`` column is respected: rows that have a split keep it. If the data
    has no validation rows, ``val_fraction`` of the training patients become validation;
    if it has no test rows and ``test_fraction`` > 0, test patients are held out first.
    """
    frame = manifest.frame.copy()
    if "split" not in frame.columns:
        frame["split"] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    groups_all = group_ids(frame["patient_id"], content_keys)
    present = set(frame["split"].dropna())
    open_rows = frame["split"].isna().to_numpy()
    if "test" not in present and test_fraction > 0 and open_rows.any():
        sub = frame[open_rows]
        held = _carve(sub, groups_all[open_rows], test_fraction, manifest.task, seed)
        frame.loc[sub.index[held], "split"] = "test"
        open_rows = frame["split"].isna().to_numpy()
    if "val" not in present and val_fraction > 0:
        pool = open_rows | (frame["split"] == "train").to_numpy()
        sub = frame[pool]
        held = _carve(
            sub,
            groups_all[pool],
            val_fraction / max(1e-9, 1 - (test_fraction if "test" not in present else 0)),
            manifest.task,
            seed + 1,
        )
        frame.loc[sub.index[held], "split"] = "val"
    frame["split"] = frame["split"].fillna("train")
    counts = frame.groupby("split")["patient_id"].nunique().to_dict()
    log.info("Splits (%ss per split): %s", manifest.units, counts)
    return dataclasses.replace(manifest, frame=frame)


@dataclass
class LeakageReport:
    """What the leakage check found; ``ok`` is False when anything crosses splits."""

    patients_across_splits: int = 0
    duplicate_groups: int = 0
    duplicate_redundant_files: int = 0
    duplicate_groups_across_splits: int = 0
    examples: list[dict[str, object]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.patients_across_splits == 0 and self.duplicate_groups_across_splits == 0

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "patients_across_splits": self.patients_across_splits,
            "duplicate_groups": self.duplicate_groups,
            "duplicate_redundant_files": self.duplicate_redundant_files,
            "duplicate_groups_across_splits": self.duplicate_groups_across_splits,
            "examples": self.examples,
        }


def check_leakage(frame: pd.DataFrame, content_keys: pd.Series | None = None) -> LeakageReport:
    """Count patients and identical images that appear in more than one split.

    Examples name row indices and file names only, never patient ids.
    """
    report = LeakageReport()
    if "split" in frame.columns:
        per_patient = frame.groupby("patient_id")["split"].nunique()
        report.patients_across_splits = int((per_patient > 1).sum())
    if content_keys is not None:
        keyed = pd.DataFrame(
            {
                "key": content_keys.to_numpy(),
                "split": frame.get("split", pd.Series(index=frame.index)).to_numpy(),
            }
        )
        keyed["file"] = [
            str(p).rsplit("/", 1)[-1] for p in frame.get("image_path", pd.Series([""] * len(frame)))
        ]
        dupes = keyed[keyed["key"].duplicated(keep=False) & keyed["key"].notna()]
        grouped = dupes.groupby("key")
        report.duplicate_groups = int(grouped.ngroups)
        report.duplicate_redundant_files = int(len(dupes) - grouped.ngroups)
        across = grouped["split"].nunique()
        report.duplicate_groups_across_splits = int((across > 1).sum())
        for _, rows in list(grouped)[:10]:
            report.examples.append(
                {"files": rows["file"].tolist(), "splits": sorted(set(map(str, rows["split"])))}
            )
    return report


def require_no_leakage(frame: pd.DataFrame, content_keys: pd.Series | None = None) -> LeakageReport:
    """Run :func:`check_leakage` and raise :class:`LeakageError` if anything crosses splits."""
    report = check_leakage(frame, content_keys)
    if not report.ok:
        raise LeakageError(
            f"Data leakage between splits: {report.patients_across_splits} patients and "
            f"{report.duplicate_groups_across_splits} groups of identical images appear in more than one split. "
            "Fix the 'split' column (split by patient), or run 'medpredict data check' for details."
        )
    return report
