"""``medpredict data check`` for image data: a data-quality report before any training.

Finds missing and unreadable files, class balance per split, byte-identical and
near-identical images (and whether they cross splits), patients in more than one split,
and image size/intensity summaries. Writes ``data_check.json`` and ``data_check.html``;
the report names files, never patient ids.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from medpredict.atomic import write_json, write_text
from medpredict.data.fingerprints import average_hashes, content_hashes
from medpredict.data.manifest import Manifest
from medpredict.data.splits import check_leakage
from medpredict.errors import DataError
from medpredict.records.proxies import target_proxies
from medpredict.records.tables import label_variants

log = logging.getLogger(__name__)

THUMB = 32  # side of the grey thumbnails used for near-duplicate hashing


@dataclass(frozen=True)
class CheckResult:
    """The report as a dict, and whether it found a problem that blocks training."""

    report: dict[str, Any]
    json_path: Path
    html_path: Path

    @property
    def ok(self) -> bool:
        return bool(self.report["ok"])


def _read_thumbnails(
    paths: list[str], skip: set[int], progress: bool
) -> tuple[torch.Tensor, list[dict[str, Any]], list[tuple[int, int]]]:
    from medpredict.data.transforms import resize
    from medpredict.readers import read_image

    thumbs = torch.zeros((len(paths), 1, THUMB, THUMB))
    problems: list[dict[str, Any]] = []
    sizes: list[tuple[int, int]] = []
    for i, path in enumerate(
        tqdm(paths, desc="reading images", unit="img", disable=not progress, leave=False)
    ):
        if i in skip:  # missing files are reported as missing, not also as unreadable
            sizes.append((0, 0))
            continue
        try:
            image = read_image(path, channels=1)
        except DataError as exc:
            problems.append({"file": Path(path.split("::")[0]).name, "row": i, "problem": str(exc)})
            sizes.append((0, 0))
            continue
        sizes.append((int(image.shape[-2]), int(image.shape[-1])))
        thumbs[i] = resize(image, THUMB)
    return thumbs, problems, sizes


def check_images(manifest: Manifest, out_dir: str | Path, *, progress: bool = True) -> CheckResult:
    """Run every image check on ``manifest`` and write the JSON and HTML reports into ``out_dir``."""
    frame = manifest.frame.reset_index(drop=True)
    out_dir = Path(out_dir)
    paths = frame["image_path"].astype(str).tolist()
    missing = [i for i, p in enumerate(paths) if "::" not in p and not Path(p).is_file()]
    exact = content_hashes(paths, progress=progress)
    thumbs, unreadable, sizes = _read_thumbnails(paths, set(missing), progress)
    bad_rows = set(missing) | {p["row"] for p in unreadable}
    near = average_hashes(thumbs)
    near[list(bad_rows)] = np.nan
    exact_report = check_leakage(frame, exact)
    near_report = check_leakage(frame, near)
    has_split = "split" in frame.columns
    balance = (
        frame.groupby(["split", "label_name"]).size().unstack(fill_value=0)
        if has_split
        else frame.groupby("label_name").size().to_frame("all").T
    )
    heights = np.array([s[0] for s in sizes if s[0]])
    widths = np.array([s[1] for s in sizes if s[1]])
    report: dict[str, Any] = {
        "source": manifest.source,
        "task": manifest.task,
        "labels": list(manifest.labels),
        "rows": len(frame),
        "patients": int(frame["patient_id"].nunique()),
        "splits": {k: int(v) for k, v in frame["split"].value_counts().items()} if has_split else {},
        "class_balance": {str(k): {str(c): int(n) for c, n in row.items()} for k, row in balance.iterrows()},
        "missing_files": [Path(paths[i]).name for i in missing],
        "unreadable_files": unreadable,
        "exact_duplicates": {
            "groups": exact_report.duplicate_groups,
            "redundant_files": exact_report.duplicate_redundant_files,
            "groups_across_splits": exact_report.duplicate_groups_across_splits,
            "examples": exact_report.examples,
        },
        "near_duplicates": {
            "groups": near_report.duplicate_groups,
            "redundant_files": near_report.duplicate_redundant_files,
            "groups_across_splits": near_report.duplicate_groups_across_splits,
            "examples": near_report.examples,
            "method": f"average hash of a {THUMB}px grey thumbnail reduced to 16x16 bits",
        },
        "patients_across_splits": exact_report.patients_across_splits,
        "image_size": {
            "height_min": int(heights.min()) if len(heights) else None,
            "height_max": int(heights.max()) if len(heights) else None,
            "width_min": int(widths.min()) if len(widths) else None,
            "width_max": int(widths.max()) if len(widths) else None,
        },
        "intensity": {"mean": float(thumbs.mean()), "std": float(thumbs.std())},
    }
    problems = []
    if missing:
        problems.append(f"{len(missing)} files are missing")
    if unreadable:
        problems.append(f"{len(unreadable)} files are unreadable")
    if exact_report.patients_across_splits:
        problems.append(f"{exact_report.patients_across_splits} patients appear in more than one split")
    if exact_report.duplicate_groups_across_splits:
        problems.append(
            f"{exact_report.duplicate_groups_across_splits} groups of identical images cross splits"
        )
    warnings = []
    if exact_report.duplicate_groups:
        warnings.append(
            f"{exact_report.duplicate_groups} groups of byte-identical images "
            f"({exact_report.duplicate_redundant_files} redundant files)"
        )
    if near_report.duplicate_groups_across_splits:
        warnings.append(
            f"{near_report.duplicate_groups_across_splits} groups of near-identical images cross splits"
        )
    variants = label_variants(frame["label_name"])
    report["label_variants"] = variants
    for group in variants.values():
        problems.append(
            "labels that differ only in case or spaces would train as separate classes: "
            + ", ".join(f"{v!r} ({int((frame['label_name'] == v).sum())} rows)" for v in group)
            + " (merge them with data.label_map)"
        )
    if manifest.dropped.get("missing_target"):
        warnings.append(f"{manifest.dropped['missing_target']} rows have no target value ('Unknown', 'N/A', empty ...) "
                        "and are left out")
    proxies = (
        target_proxies(frame, frame["label_name"].to_numpy(), manifest.other_columns())
        if manifest.task in ("binary", "multiclass")
        else []
    )
    report["target_proxies"] = [p.to_dict() for p in proxies]
    for proxy in proxies:
        warnings.append(f"possible leakage: {proxy.describe(manifest.target_column or 'the target')}; "
                        "do not use it as a clinical input")
    report["problems"], report["warnings"], report["ok"] = problems, warnings, not problems
    json_path = write_json(out_dir / "data_check.json", report)
    html_path = write_text(out_dir / "data_check.html", _html(report, balance))
    return CheckResult(report=report, json_path=json_path, html_path=html_path)


def _balance_png(balance: pd.DataFrame) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    balance.plot.bar(ax=ax, rot=0)
    ax.set(ylabel="images", title="Images per class and split")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _html(report: dict[str, Any], balance: pd.DataFrame) -> str:
    esc = html.escape
    status = (
        "No blocking problem found."
        if report["ok"]
        else "Problems found: " + "; ".join(report["problems"]) + "."
    )
    items = "".join(f"<li>{esc(w)}</li>" for w in report["warnings"]) or "<li>none</li>"
    dup_rows = "".join(
        f"<tr><td>{esc(', '.join(map(str, e['files'])))}</td><td>{esc(', '.join(e['splits']))}</td></tr>"
        for e in report["exact_duplicates"]["examples"]
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Data check</title>
<style>body{{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
.ok{{color:#176b2c}}.bad{{color:#a4161a}}</style></head><body>
<h1>Data-quality report</h1><p>Source: {esc(report["source"])}</p>
<p class="{"ok" if report["ok"] else "bad"}"><b>{esc(status)}</b></p>
<h2>Counts</h2><p>{report["rows"]} images, {report["patients"]} patients, task {esc(report["task"])},
classes {esc(", ".join(report["labels"]))}; splits {esc(str(report["splits"]))}.</p>
<img alt="class balance" src="data:image/png;base64,{_balance_png(balance)}">
<h2>Warnings</h2><ul>{items}</ul>
<h2>Byte-identical images</h2><p>{report["exact_duplicates"]["groups"]} groups,
{report["exact_duplicates"]["redundant_files"]} redundant files,
{report["exact_duplicates"]["groups_across_splits"]} groups across splits.</p>
<table><tr><th>files</th><th>splits</th></tr>{dup_rows}</table>
<h2>Near-identical images</h2><p>{report["near_duplicates"]["groups"]} groups
({esc(report["near_duplicates"]["method"])}), {report["near_duplicates"]["groups_across_splits"]} across splits.</p>
<h2>Files</h2><p>Missing: {len(report["missing_files"])}; unreadable: {len(report["unreadable_files"])}.
Image sizes: {esc(str(report["image_size"]))}.</p></body></html>"""
