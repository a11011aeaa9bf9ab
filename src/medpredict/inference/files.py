"""``medpredict predict``: predictions for files, folders, DICOM files or a manifest.

Writes ``predictions.csv`` and ``predictions.json`` (one row per input, with calibrated
probabilities, the label at the locked threshold, uncertainty, the overlay file, the model
version and the time of prediction), and
a Grad-CAM overlay PNG per image under ``overlays/``. An unreadable input gets a row with
its error instead of stopping the whole batch. Each row names its input relative to the
folder (or manifest) it was found in, never by its absolute local path: folder names on a
workstation can carry patient identifiers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medpredict.atomic import write_json, write_text
from medpredict.data.manifest import IMAGE_COLUMN_ALIASES
from medpredict.errors import DataError
from medpredict.inference.contract import InputRefused
from medpredict.progress import progress_bar

log = logging.getLogger(__name__)

OVERLAY_MAX_SIDE = 512


@dataclass(frozen=True)
class PredictResult:
    """What was written and how many inputs failed."""

    rows: list[dict[str, Any]]
    csv_path: Path
    json_path: Path

    @property
    def refused(self) -> int:
        """Inputs refused because their DICOM tags contradict the model's intended use."""
        return sum(1 for r in self.rows if r.get("refused"))

    @property
    def failed(self) -> int:
        """Inputs that could not be read or predicted."""
        return sum(1 for r in self.rows if r.get("error"))

    @property
    def exit_code(self) -> int:
        """0 when every input got its prediction, 2 when any was refused or failed."""
        return 2 if self.refused or self.failed else 0

    def summary(self) -> str:
        done = len(self.rows) - self.failed - self.refused
        referred = sum(1 for r in self.rows if r.get("refer"))
        lines = [
            f"Predicted {done} of {len(self.rows)} inputs ({referred} referred to a clinician, "
            f"{self.refused} refused, {self.failed} failed) -> {self.csv_path}"
        ]
        for row in self.rows[:10]:
            name = Path(str(row["source"]).split("::")[0]).name
            if row.get("refused"):
                lines.append(f"  {name}: REFUSED {row['refused']}")
            elif row.get("error"):
                lines.append(f"  {name}: ERROR {row['error']}")
            else:
                score = f" p({row['positive_label']})={row['score']:.3f}" if row.get("score") is not None else ""
                refer = "  REFER: " + "; ".join(row["referral_reasons"]) if row.get("refer") else ""
                lines.append(f"  {name}: {row['label']}{score}{refer}")
        if len(self.rows) > 10:
            lines.append(f"  ... {len(self.rows) - 10} more in the CSV")
        return "\n".join(lines)


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Files as given, folders searched for images, manifests read for their image column.

    Raises:
        DataError: an input does not exist, or a manifest has no image column.
    """
    from medpredict.readers import is_image_path

    paths: list[str] = []
    for item in inputs:
        path = Path(item)
        if "::" in str(item):
            paths.append(str(item))
        elif not path.exists():
            raise DataError(
                f"Input not found: {path}. Give image files, DICOM files, folders or a manifest CSV."
            )
        elif path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and is_image_path(p, sniff=True))
            if not found:
                raise DataError(f"No images found in the folder {path}.")
            paths.extend(found)
        elif path.suffix.lower() in (".csv", ".tsv"):
            frame = _read_manifest(path)
            lowered = {str(c).lower(): c for c in frame.columns}
            column = next((lowered[a] for a in IMAGE_COLUMN_ALIASES if a in lowered), None)
            if column is None:
                raise DataError(
                    f"The manifest {path} has no image column; name one of {IMAGE_COLUMN_ALIASES}."
                )
            cells = frame[column].astype(object)
            empty = cells.isna() | (cells.astype(str).str.strip() == "")
            if empty.any():
                rows = [int(i) + 2 for i in np.flatnonzero(empty.to_numpy())[:5]]  # file lines, header = line 1
                raise DataError(
                    f"The manifest {path} has {int(empty.sum())} row(s) without an image path in '{column}' "
                    f"(lines {rows}); fill or remove them."
                )
            paths.extend(str(p if Path(p).is_absolute() else (path.parent / p)) for p in cells.astype(str))
        else:
            paths.append(str(path))
    return paths


def _read_manifest(path: Path) -> pd.DataFrame:
    """A manifest of inputs, or a :class:`DataError` naming the file when it is empty or not a table."""
    try:
        frame = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"Cannot read the manifest {path}: {str(exc).splitlines()[0] if str(exc) else exc}. "
                        "Give a CSV with an image_path column.") from None
    if frame.empty:
        raise DataError(f"The manifest {path} has no rows; give a CSV with one image per row.")
    return frame


def _display_image(path: str, spatial_dims: int) -> Any:
    from medpredict.readers import read_image

    image = read_image(path, channels=1, spatial_dims=spatial_dims)
    side = max(image.shape[1:])
    if side > OVERLAY_MAX_SIDE:
        scale = OVERLAY_MAX_SIDE / side
        shape = tuple(max(1, round(s * scale)) for s in image.shape[1:])
        import torch
        import torch.nn.functional as F

        image = F.interpolate(torch.as_tensor(image)[None], size=shape, mode="area")[0].numpy()
    return image[0]


def predict_files(
    run: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    overlays: bool = True,
    progress: bool = True,
    backend: str = "torch",
    ignore_intended_use: bool = False,
    force: bool = False,
) -> PredictResult:
    """Predict for every input and write the CSV, JSON and overlays into ``out``.

    ``run`` is a run folder, or a bring-your-own ONNX model's YAML descriptor;
    ``backend="onnx"`` runs a run's exported ONNX model (see ``medpredict export``).
    ``out`` must be a folder of its own: not a run folder, nothing inside a bundle, and
    without earlier predictions unless ``force`` moves them aside
    (:func:`medpredict.rundirs.claim_output_dir`).

    Raises:
        ConfigError: ``out`` is a file, unwritable, a run or bundle folder, or holds predictions.
        DataError: an input does not exist, or a manifest is empty or has no image column.
    """
    from medpredict.explain.maps import save_overlay_png
    from medpredict.inference.loader import load_predictor
    from medpredict.rundirs import PREDICTION_FILES, claim_output_dir

    claim_output_dir(out, PREDICTION_FILES, force=force)
    predictor = load_predictor(run, backend=backend)
    paths = expand_inputs(inputs)
    out = Path(out)
    rows: list[dict[str, Any]] = []
    for index, path in enumerate(
        progress_bar(paths, desc="predicting", unit="img", enabled=progress and len(paths) >= 5)
    ):
        row: dict[str, Any] = {"source": source_name(path, inputs)}
        try:
            explain = overlays and getattr(predictor, "spatial_dims", 2) == 2
            prediction = predictor.predict([path], explain=explain, ignore_intended_use=ignore_intended_use)[0]
            row.update(prediction.to_dict())
            row["source"] = source_name(path, inputs)
            if prediction.explanation is not None:
                name = f"{index:05d}_{Path(path.split('::')[0]).stem[:40]}.png"
                title = f"{prediction.decision}" + (
                    f"  p({prediction.positive_label})={prediction.score:.2f}" if prediction.score is not None else ""
                )
                save_overlay_png(
                    out / "overlays" / name, _display_image(path, 2), prediction.explanation.heatmap,
                    title=title, caption=prediction.explanation.caption(),
                )
                row["overlay"] = f"overlays/{name}"
        except InputRefused as exc:
            log.warning("Refused %s: %s", Path(path).name, exc)
            row["refused"] = str(exc).replace(path, row["source"])  # messages name the file; keep it relative
        except DataError as exc:
            log.warning("Could not predict for %s: %s", Path(path).name, exc)
            row["error"] = str(exc).replace(path, row["source"])
        row["model_version"] = getattr(predictor, "version", None)  # also on rows that failed or were refused
        row["predicted_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        rows.append(row)
    csv_path = write_text(out / "predictions.csv", _flat_table(rows).to_csv(index=False, float_format="%.6f"))
    json_path = write_json(
        out / "predictions.json", {"model": getattr(predictor, "version", None), "predictions": rows}
    )
    return PredictResult(rows=rows, csv_path=csv_path, json_path=json_path)


def source_name(path: str, inputs: Sequence[str | os.PathLike[str]]) -> str:
    """How a row names its input: relative to the folder or manifest it came from, else its file name.

    ``FILE.npz::KEY/INDEX`` keeps its reference after the file name.
    """
    file, sep, ref = str(path).partition("::")
    found = Path(file)
    for item in inputs:
        base = Path(item)
        folder = base if base.is_dir() else base.parent if base.suffix.lower() in (".csv", ".tsv") else None
        if folder is not None and found.is_relative_to(folder) and found != folder:
            return f"{found.relative_to(folder).as_posix()}{sep}{ref}"
    return f"{found.name}{sep}{ref}"


def _flat_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One CSV row per input: nested fields of the contract become plain columns."""
    nested = ("probabilities", "uncertainty", "input_check", "model", "explanation")
    flat = []
    for row in rows:
        item = {k: ("|".join(map(str, v)) if isinstance(v, list) else v) for k, v in row.items() if k not in nested}
        for name, p in (row.get("probabilities") or {}).items():
            item[f"p_{name}"] = p
        for key, value in (row.get("uncertainty") or {}).items():
            item[key] = value
        check = row.get("input_check") or {}
        if check:
            item["input_check"] = check.get("status")
            item["ood_score"] = check.get("ood_score")
        if row.get("model"):
            item["model"] = row["model"].get("text")
        if row.get("explanation"):
            item["explained_class"] = row["explanation"].get("class")
        flat.append(item)
    return pd.DataFrame(flat)
