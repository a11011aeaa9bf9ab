"""The demo model under MedMNIST-C corruptions, trained without and with corruption augmentation, side by side.

Trains the demo recipe (``medpredict.demo.DEMO_SETTINGS``) on PneumoniaMNIST twice — as is,
and with ``augment.corruptions`` set to every corruption medmnistc can load here (probability
0.5) — and scores each with ``medpredict.workflows.evaluate.evaluate(..., robustness=True)``
on the official test split: AUC and accuracy (locked threshold) per corruption and severity,
the clean figures and the mean AUC drop. Writes ``bench/results/robustness.md`` and ``.json``.

Usage::

    nice .venv/bin/python bench/robustness.py --quick        # plumbing: 1 epoch on 300 images per split
    nice .venv/bin/python bench/robustness.py --seeds 0       # two demo trainings (~2 x 3 min quiet) + scoring
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medpredict.atomic import write_json, write_text

log = logging.getLogger("bench.robustness")
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DATA = HERE.parents[1] / "shared" / "data"


def one(augmented: bool, seed: int, workdir: Path, quick: bool) -> dict[str, Any]:
    from medpredict.config import load_config
    from medpredict.demo import DEMO_SETTINGS
    from medpredict.evaluation.robustness import availability
    from medpredict.training.image import train
    from medpredict.workflows.evaluate import evaluate

    loadable = [name for name, why in availability().items() if why is None]
    settings = {**DEMO_SETTINGS, "data.source": str(DATA / "medmnist" / "pneumoniamnist.npz"), "train.seed": seed,
                "train.max_minutes": None, "name": f"{'aug' if augmented else 'plain'}_s{seed}",
                "out_dir": str(workdir)}
    if augmented:
        settings.update({"augment.corruptions": loadable, "augment.corruption_probability": 0.5})
    if quick:
        settings.update({"train.epochs": 1, "data.max_per_split": 300, "train.small_data": "off"})
    result = train(load_config(None, settings), progress=False)
    evaluation = evaluate(result.run_dir, split="test", n_boot=100, progress=False, robustness=True)
    return json.loads(evaluation.metrics_path.read_text())["robustness"]


def to_markdown(payload: dict[str, Any]) -> str:
    lines = ["# Robustness of the demo model to MedMNIST-C corruptions", "",
             f"Command: `{payload['command']}`. PneumoniaMNIST official test split; accuracy at the threshold "
             "locked on validation; corruptions by the medmnistc package at its PneumoniaMNIST severities.", ""]
    for seed, pair in payload["seeds"].items():
        plain, aug = pair["plain"], pair["augmented"]
        lines += [f"## seed {seed}", "",
                  "| corruption | severity | AUC plain | AUC corruption-augmented | ACC plain | ACC augmented |",
                  "|---|---|---|---|---|---|",
                  f"| (clean) | - | {plain['clean']['auc']:.3f} | {aug['clean']['auc']:.3f} | "
                  f"{plain['clean']['accuracy']:.3f} | {aug['clean']['accuracy']:.3f} |"]
        for a, b in zip(plain["corruptions"], aug["corruptions"], strict=True):
            lines.append(f"| {a['name']} | {a['severity']} | {a['auc']:.3f} | {b['auc']:.3f} | {a['accuracy']:.3f} | "
                         f"{b['accuracy']:.3f} |")
        lines += ["", f"Mean AUC drop: plain {plain['mean_auc_drop']:.4f}, augmented {aug['mean_auc_drop']:.4f}. "
                  f"Mean corrupted accuracy: plain {np.mean([r['accuracy'] for r in plain['corruptions']]):.3f}, "
                  f"augmented {np.mean([r['accuracy'] for r in aug['corruptions']]):.3f}.",
                  "Unavailable here: " + (", ".join(u["name"] for u in plain["unavailable"]) or "none")
                  + " (their medmnistc modules import torchvision).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    payload: dict[str, Any] = {"command": " ".join(["nice .venv/bin/python bench/robustness.py", *argv]), "seeds": {}}
    name = "robustness_quick" if args.quick else "robustness"
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="medpredict-robust-") as tmp:
            payload["seeds"][str(seed)] = {
                "plain": one(False, seed, Path(tmp), args.quick), "augmented": one(True, seed, Path(tmp), args.quick)
            }
        write_json(args.out / f"{name}.json", payload)
    write_text(args.out / f"{name}.md", to_markdown(payload))
    print(to_markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
