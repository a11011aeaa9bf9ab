"""What a clinician sees per case, measured the way a user gets it: one file at a time.

Given a trained PneumoniaMNIST run (e.g. ``medpredict demo --out runs/demo``), this script

1. writes the official test images as PNG files and runs ``medpredict predict`` on them
   one file at a time (the CLI's own loop), then compares every case with what
   ``medpredict evaluate`` computes for the same image in one batch;
2. reports set coverage (overall and per class), set sizes, the share of two-class and
   empty sets, decisions outside their own set without a referral (must be 0), and the
   share referred with its reasons;
3. runs the input check on other images built from the shipped data (the non-chest DICOMs
   with their tags, the same pixels as tag-less PNGs, NIfTI slices, Kermany chest X-rays,
   noise and blank images) and reports the share refused or flagged.

    .venv/bin/python bench/point_of_care.py runs/demo [--data ../shared/data] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _write_pngs(npz: Path, key: str, folder: Path, limit: int | None = None) -> tuple[list[Path], np.ndarray]:
    with np.load(npz) as data:
        images, labels = data[f"{key}_images"], data[f"{key}_labels"].reshape(-1)
    n = len(images) if limit is None else min(limit, len(images))
    paths = []
    for i in range(n):
        path = folder / f"{key}_{i:04d}.png"
        Image.fromarray(images[i]).save(path)
        paths.append(path)
    return paths, labels[:n]


def _per_file(run: Path, paths: list[Path], out: Path) -> list[dict]:
    """``medpredict predict`` on the files: its loop predicts each file on its own."""
    from medpredict.inference.files import predict_files

    result = predict_files(run, [str(p) for p in paths], out, overlays=False, progress=False)
    return result.rows


def _set_figures(rows: list[dict], labels: np.ndarray, names: list[str]) -> dict:
    sets = [tuple(r.get("prediction_set") or ()) for r in rows]
    truth = [names[int(y)] for y in labels]
    covered = np.array([t in s for t, s in zip(truth, sets, strict=True)])
    sizes = np.array([len(s) for s in sets])
    outside = sum(1 for r in rows if r["label"] not in (r.get("prediction_set") or ()) and not r["refer"])
    reasons: dict[str, int] = {}
    for r in rows:
        for reason in r.get("referral_reasons") or []:
            reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "n": len(rows),
        "coverage": float(covered.mean()),
        "coverage_per_class": {n: float(covered[np.array(truth) == n].mean()) for n in names},
        "two_class_sets": int((sizes == 2).sum()),
        "empty_sets": int((sizes == 0).sum()),
        "decisions_outside_set_without_referral": int(outside),
        "referred": int(sum(r["refer"] for r in rows)),
        "share_referred": float(np.mean([r["refer"] for r in rows])),
        "referral_reasons": reasons,
        "input_flagged_unusual": int(sum((r.get("input_check") or {}).get("status") == "unusual" for r in rows)),
        "accuracy_kept": float(
            np.mean([r["label"] == t for r, t in zip(rows, truth, strict=True) if not r["refer"]])
        ),
    }


def _agreement(run: Path, rows: list[dict], npz: Path) -> dict:
    """Per-file results against the same images scored as one batch (evaluate's path)."""
    from medpredict.config import PreprocessConfig
    from medpredict.data.datasets import load_images
    from medpredict.inference.loader import load_predictor

    predictor = load_predictor(run)
    refs = [f"{npz}::test_images/{i}" for i in range(len(rows))]
    config = PreprocessConfig(image_size=predictor.image_size, spatial_dims=2)
    images = load_images(refs, config, predictor.channels, progress=False)
    logits, features = predictor.outputs(images.float().div(255))
    cases = predictor.cases(predictor.calibrate(logits), features)
    diffs = [
        max(abs(c.probabilities[k] - r["probabilities"][k]) for k in c.probabilities)
        for c, r in zip(cases, rows, strict=True)
    ]
    same = sum(
        c.decision == r["label"] and list(c.prediction_set) == r["prediction_set"] and c.refer == r["refer"]
        for c, r in zip(cases, rows, strict=True)
    )
    return {"max_probability_difference": float(max(diffs)), "identical_decision_set_referral": int(same)}


def _other_inputs(run: Path, data: Path, folder: Path) -> dict:
    """Refusal (by DICOM tags) and out-of-distribution flags on images the model was not built for."""
    from medpredict.inference.contract import InputRefused
    from medpredict.inference.loader import load_predictor
    from medpredict.readers import read_image

    predictor = load_predictor(run)  # any bundle, adopted ones included
    groups: dict[str, list] = {}
    dicom = data / "dicom"
    non_chest = [
        dicom / "pydicom_data" / n
        for n in ("RG3_J2KR.dcm", "MR2_UNCR.dcm", "emri_small.dcm", "US1_UNCR.dcm", "eCT_Supplemental.dcm")
    ] + [dicom / "pydicom_wheel" / "CT_small.dcm", dicom / "pydicom_data" / "MR-SIEMENS-DICOM-WithOverlays.dcm"]
    chest = dicom / "pydicom_data" / "RG1_J2KI.dcm"
    for path in [*non_chest, chest]:
        name = f"DICOM with tags: {path.name}"
        try:
            case = predictor.predict([str(path)])[0]
            groups[name] = ["unusual" if case.input_check.status == "unusual" else "answered"]
        except InputRefused:
            groups[name] = ["refused"]
    # the same pixels without tags (as PNG): only the detector can catch them
    for path in [*non_chest, chest]:
        array = read_image(path, channels=1)
        png = folder / f"{path.stem}.png"
        Image.fromarray((array[0] * 255).astype(np.uint8)).save(png)
        case = predictor.predict([str(png)])[0]
        key = "pixels of the chest CR as PNG" if path == chest else "pixels of the non-chest DICOMs as PNG"
        groups.setdefault(key, []).append(case.input_check.status)
    for nifti in sorted((data / "nifti").glob("*.nii*")):
        if "mask" in nifti.name:
            continue
        try:
            array = read_image(nifti, channels=1)
        except Exception:  # noqa: BLE001 - a bench: skip what the reader cannot read
            continue
        case = predictor.predict([array])[0]
        groups.setdefault("NIfTI middle slices (MR, CT)", []).append(case.input_check.status)
    kermany = sorted((data / "chest_xray_kermany_224" / "test").rglob("*.jpeg"))[::13][:48]
    for path in kermany:
        case = predictor.predict([str(path)])[0]
        groups.setdefault("Kermany chest X-rays (224 px JPEG, resized)", []).append(case.input_check.status)
    rng = np.random.default_rng(0)
    for i in range(20):
        noise = rng.random((1, 64, 64)).astype(np.float32)
        groups.setdefault("uniform noise", []).append(predictor.predict([noise])[0].input_check.status)
        blank = np.full((1, 64, 64), i / 19, dtype=np.float32)
        groups.setdefault("blank images (20 grey levels)", []).append(predictor.predict([blank])[0].input_check.status)
    return {
        name: {
            "n": len(v),
            "refused": sum(x == "refused" for x in v),
            "flagged_unusual": sum(x == "unusual" for x in v),
        }
        for name, v in groups.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--limit", type=int, help="only the first N test images")
    args = parser.parse_args(argv)
    npz = args.data / "medmnist" / "pneumoniamnist.npz"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="medpredict-bench-") as tmp:
        folder = Path(tmp)
        (folder / "png").mkdir()
        paths, labels = _write_pngs(npz, "test", folder / "png", args.limit)
        rows = _per_file(args.run, paths, folder / "out")
        meta = json.loads((args.run / "model" / "bundle.json").read_text())
        figures = {
            "run": str(args.run),
            "per_file": _set_figures(rows, labels, meta["labels"]),
            "agreement_with_batch": _agreement(args.run, rows, npz),
            "other_inputs": _other_inputs(args.run, args.data, folder),
            "seconds": round(time.monotonic() - started, 1),
        }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
