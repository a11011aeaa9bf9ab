"""Evaluation report: gather results, then write report.html, metrics.json and the model card.

Typical use (the ``medpredict evaluate`` command does this)::

    from medpredict.report import assemble_evaluation, build_report

    evaluation = assemble_evaluation(y_test, probs_test, labels=labels, groups=patient_ids,
                                     threshold=bundle_meta["threshold"], ...)
    build_report(run_dir / "evaluation", evaluation, lang="en")

The names below are imported on first use, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["assemble_evaluation", "build_model_card", "build_report", "evaluation_to_json", "render_html"]


def __getattr__(name: str) -> Any:
    if name in ("assemble_evaluation", "evaluation_to_json"):
        from medpredict.report import evaluation

        return getattr(evaluation, name)
    if name in ("build_report", "render_html"):
        from medpredict.report import html

        return getattr(html, name)
    if name == "build_model_card":
        from medpredict.report import model_card

        return model_card.build_model_card
    raise AttributeError(f"module 'medpredict.report' has no attribute {name!r}")
