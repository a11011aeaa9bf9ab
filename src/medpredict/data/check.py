"""``medpredict data check`` for image data: a data-quality report before any training.

Finds missing and unreadable files, class balance per split, byte-identical and
near-identical images (and whether they cross splits), patients in more than one split,
and image size/intensity summaries. Writes ``data_check.json`` and ``data_check.html``;
the report names files, never patient ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpredict.atomic import write_json, write_text
from medpredict.data.fingerprints import average_hashes, content_hashes
from medpredict.data.manifest import Manifest
from medpredict.data.proxies import target_proxies
from medpredict.data.splits import check_leakage
from medpredict.data.tokens import label_variants
from medpredict.errors import DataError
from medpredict.progress import progress_bar
from medpredict.report.i18n import Translator, translator
from medpredict.report.plots import Look, class_balance_plot, look_for
from medpredict.report.render import bullets, data, fig, figs, h3, p, render_page, rich, table

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

    @property
    def exit_code(self) -> int:
        """0 when nothing blocks training, 1 when a problem does."""
        return 0 if self.ok else 1

    def summary(self) -> str:
        """Counts, duplicates, problems and warnings, and where the report went."""
        report = self.report
        dup, near = report["exact_duplicates"], report["near_duplicates"]
        lines = [
            f"{report['rows']} images, {report['patients']} patients, classes {report['labels']}, "
            f"splits {report['splits']}",
            f"Byte-identical images: {dup['groups']} groups ({dup['redundant_files']} redundant files), "
            f"{dup['groups_across_splits']} across splits",
            f"Near-identical images: {near['groups']} groups, {near['groups_across_splits']} across splits",
            *(f"PROBLEM: {line}" for line in report["problems"]),
            *(f"warning: {line}" for line in report["warnings"]),
            f"Report: {self.html_path} and {self.json_path}",
        ]
        return "\n".join(lines)


def _read_thumbnails(
    paths: list[str], skip: set[int], progress: bool
) -> tuple[torch.Tensor, list[dict[str, Any]], list[tuple[int, int]]]:
    from medpredict.data.transforms import resize
    from medpredict.readers import read_image

    thumbs = torch.zeros((len(paths), 1, THUMB, THUMB))
    problems: list[dict[str, Any]] = []
    sizes: list[tuple[int, int]] = []
    for i, path in enumerate(
        progress_bar(paths, desc="reading images", unit="img", enabled=progress, leave=False)
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


def check_images(
    manifest: Manifest, out_dir: str | Path, *, progress: bool = True, lang: str = "en"
) -> CheckResult:
    """Run every image check on ``manifest`` and write the JSON and HTML reports into ``out_dir``.

    The JSON is always English; ``lang`` (``"en"`` or ``"zh"``) is the language of the HTML page.

    Raises:
        ConfigError: unknown ``lang`` (before anything is read or written).
    """
    translator(lang)
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
    variants = label_variants(frame["label_name"])
    report["label_variants"] = variants
    report["label_variant_rows"] = {v: int((frame["label_name"] == v).sum()) for g in variants.values() for v in g}
    report["rows_without_target"] = int(manifest.dropped.get("missing_target", 0))
    proxies = (
        target_proxies(frame, frame["label_name"].to_numpy(), manifest.other_columns())
        if manifest.task in ("binary", "multiclass")
        else []
    )
    report["target_proxies"] = [{**proxy.to_dict(), "target": manifest.target_column or "label"} for proxy in proxies]
    english = translator("en")
    problems = [english(key, **fields) for key, fields in _problem_items(report)]
    warnings = [english(key, **fields) for key, fields in _warning_items(report)]
    report["problems"], report["warnings"], report["ok"] = problems, warnings, not problems
    json_path = write_json(out_dir / "data_check.json", report)
    html_path = write_text(out_dir / "data_check.html", render_check_html(report, lang=lang))
    return CheckResult(report=report, json_path=json_path, html_path=html_path)


def _problem_items(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Problems that block training, as (translation key, fields)."""
    items: list[tuple[str, dict[str, Any]]] = []
    if report["missing_files"]:
        items.append(("check.problem_missing", {"n": len(report["missing_files"])}))
    if report["unreadable_files"]:
        items.append(("check.problem_unreadable", {"n": len(report["unreadable_files"])}))
    if report["patients_across_splits"]:
        items.append(("check.problem_patients", {"n": report["patients_across_splits"]}))
    if report["exact_duplicates"]["groups_across_splits"]:
        items.append(("check.problem_identical", {"n": report["exact_duplicates"]["groups_across_splits"]}))
    for group in report.get("label_variants", {}).values():
        values = ", ".join(f"{value!r} ({report['label_variant_rows'][value]})" for value in group)
        items.append(("check.problem_label_variants", {"values": values}))
    return items


def _warning_items(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Findings worth a look that do not block training, as (translation key, fields)."""
    items: list[tuple[str, dict[str, Any]]] = []
    exact = report["exact_duplicates"]
    if exact["groups"]:
        items.append(("check.warning_identical", {"n": exact["groups"], "redundant": exact["redundant_files"]}))
    if report["near_duplicates"]["groups_across_splits"]:
        items.append(("check.warning_near", {"n": report["near_duplicates"]["groups_across_splits"]}))
    if report.get("rows_without_target"):
        items.append(("check.warning_no_target", {"n": report["rows_without_target"]}))
    for proxy in report.get("target_proxies", []):
        items.append(("check.warning_proxy", {
            "column": proxy["column"], "target": proxy["target"], "score": f"{proxy['balanced_accuracy']:.3f}",
            "rows": proxy["rows"],
        }))
    return items


def check_sections(report: dict[str, Any], t: Translator, look: Look) -> list[dict[str, Any]]:
    """The image data check as page sections (see :mod:`medpredict.report.render`)."""
    problems = [t(key, **fields) for key, fields in _problem_items(report)]
    warnings = [t(key, **fields) for key, fields in _warning_items(report)]
    status = p(t("check.status_ok"), "ok") if report["ok"] else p(
        t("check.status_problems", problems=t("punct.semicolon").join(problems)), "bad")
    splits = t("punct.comma").join(f"{t.term('split', k)} {v}" for k, v in _in_split_order(report["splits"]).items())
    splits = splits or t("check.no_splits")
    summary = [
        status,
        p(rich(t, "check.counts", data_fields={"labels": ", ".join(map(str, report["labels"]))},
               rows=report["rows"], patients=report["patients"], task=t.term("task", report["task"]), splits=splits)),
        h3(t("check.warnings_title")),
        bullets(warnings or [t("none")], "flags"),
    ]
    balance = _in_split_order(report["class_balance"])
    classes = sorted({c for row in balance.values() for c in row})
    balance_rows = [[t.term("split", split)] + [row.get(c, 0) for c in classes] for split, row in balance.items()]
    biggest = max((n for row in balance.values() for n in row.values()), default=0)
    balance_blocks = [
        table([t("split")] + [data(c) for c in classes], balance_rows),
        figs(fig(class_balance_plot(balance, look=look),
                 t("check.alt_balance", k=len(classes), splits=len(balance), biggest=biggest),
                 t("check.cap_balance"))),
    ]
    exact, near = report["exact_duplicates"], report["near_duplicates"]
    comma = t("punct.comma")
    dup_rows = [[data(", ".join(map(str, e["files"]))), comma.join(t.term("split", s) for s in e["splits"])]
                for e in exact["examples"]]
    near_rows = [[data(", ".join(map(str, e["files"]))), comma.join(t.term("split", s) for s in e["splits"])]
                 for e in near["examples"]]
    duplicates = [
        h3(t("check.exact_title")),
        p(t("check.exact_line", groups=exact["groups"], redundant=exact["redundant_files"],
            across=exact["groups_across_splits"])),
        table([t("check.files"), t("check.splits")], dup_rows) if dup_rows else None,
        h3(t("check.near_title")),
        p(t("check.near_line", groups=near["groups"], across=near["groups_across_splits"], thumb=THUMB)),
        table([t("check.files"), t("check.splits")], near_rows) if near_rows else None,
        p(t("check.patients_line", n=report["patients_across_splits"])),
    ]
    size = report["image_size"]
    files = [
        p(t("check.files_line", missing=len(report["missing_files"]), unreadable=len(report["unreadable_files"]))),
    ]
    if report["missing_files"]:
        files += [h3(t("check.missing_title")), bullets([data(f) for f in report["missing_files"][:50]])]
    if report["unreadable_files"]:
        files += [h3(t("check.unreadable_title")), bullets([data(u["file"]) for u in report["unreadable_files"][:50]])]
    if size["height_min"] is not None:
        files.append(p(t("check.size_line", hmin=size["height_min"], hmax=size["height_max"],
                         wmin=size["width_min"], wmax=size["width_max"])))
    files.append(p(t("check.intensity_line", mean=f"{report['intensity']['mean']:.3f}",
                     std=f"{report['intensity']['std']:.3f}"), "note"))
    sections: dict[str, list[Any]] = {"summary": summary, "balance": balance_blocks, "duplicates": duplicates,
                                      "files": files}
    return [{"key": k, "title": t(f"check.sec_{k}"), "blocks": [b for b in v if b]} for k, v in sections.items()]


def _in_split_order(by_split: dict[str, Any]) -> dict[str, Any]:
    """``by_split`` ordered train, val, test, then any other split."""
    rank = {"train": 0, "val": 1, "test": 2}
    return dict(sorted(by_split.items(), key=lambda kv: (rank.get(kv[0], 3), kv[0])))


def render_check_html(report: dict[str, Any], *, lang: str = "en") -> str:
    """The image data check as a self-contained HTML page (one template set with every report)."""
    t = translator(lang)
    return render_page("data_check.html.j2", lang=lang, title=t("check.title"),
                       subtitle=Path(str(report["source"])).name,
                       sections=check_sections(report, t, look_for(lang)))
