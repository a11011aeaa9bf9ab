"""The brief's Keras CNN, trained and exported by Keras, adopted and evaluated by medpredict.

1. Trains the brief's network (conv32-pool-conv64-pool-dense128-softmax, 28 px) in Keras 3
   on PneumoniaMNIST's train split, exports it with ``model.export(format="onnx")`` and saves
   Keras's own probabilities for the validation and test splits
   (``tests/fixtures/keras/make_keras_fixture.py``, run with a Python that has TensorFlow);
2. checks that the descriptor a Keras user would get wrong (``output.activation`` left at
   its default, softmax) is refused;
3. ``medpredict adopt`` on the validation split, ``medpredict evaluate`` on the test split;
4. compares: test AUC of the evaluation with Keras's own, probabilities of the graph with
   Keras's, ECE of the calibrated model with the graph's own, where the threshold and sets
   came from, the report's provenance lines, and the input check on images that are not
   chest radiographs (``bench/point_of_care.py``'s set);
5. diagnoses a miss across splits: the same post-fit cross-fitted within validation and
   within test (``medpredict.calibration.refit``), where nothing shifts.

    .venv/bin/python bench/keras_adopt.py --keras-python /tmp/keras-venv/bin/python \\
        [--data ../shared/data] [--epochs 3] [--out bench/results/keras_adopt]

Writes ``OUT/keras_adopt.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _train_in_keras(python: str, npz: Path, out: Path, epochs: int, dense: int, seed: int) -> dict:
    script = ROOT / "tests" / "fixtures" / "keras" / "make_keras_fixture.py"
    command = [python, str(script), "--data", str(npz), "--out", str(out), "--dense", str(dense),
               "--epochs", str(epochs), "--seed", str(seed), "--all-probs"]
    subprocess.run(command, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return json.loads((out / "fixture.json").read_text())


def _double_softmax_refused(descriptor: Path) -> str:
    from medpredict.errors import ConfigError
    from medpredict.inference.loader import load_predictor

    spec = yaml.safe_load(descriptor.read_text())
    spec["output"].pop("activation")  # the default: softmax, on a graph that ends in softmax
    wrong = descriptor.with_name("wrong.yaml")
    wrong.write_text(yaml.safe_dump(spec))
    try:
        load_predictor(wrong)
    except ConfigError as exc:
        return str(exc)
    return "NOT REFUSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keras-python", required=True, help="a Python with tensorflow-cpu (Keras 3) and tf2onnx")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "keras_adopt")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dense", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args(argv)

    from sklearn.metrics import roc_auc_score

    from medpredict.calibration.scalers import calibration_summary
    from medpredict.inference.loader import load_predictor
    from medpredict.workflows.adopt import adopt
    from medpredict.workflows.evaluate import evaluate

    started = time.monotonic()
    npz = args.data / "medmnist" / "pneumoniamnist.npz"
    keras_dir = args.out / "keras"
    info = _train_in_keras(args.keras_python, npz, keras_dir, args.epochs, args.dense, args.seed)
    keras = np.load(keras_dir / "keras_probs.npz")
    with np.load(npz) as data:
        y_val = data["val_labels"].reshape(-1).astype(int)
        y_test = data["test_labels"].reshape(-1).astype(int)
        test_images = data["test_images"]
    descriptor = keras_dir / "model.yaml"
    refusal = _double_softmax_refused(descriptor)

    graph = load_predictor(descriptor)  # the graph's own probabilities, as the descriptor reads them
    onnx_test = graph.predict_proba_batch(graph.preprocess(list(test_images[:, None].astype(np.float32) / 255)))
    result = adopt(descriptor, npz, args.out / "run", split="val", progress=False)
    evaluation = evaluate(args.out / "run", data=str(npz), split="test", out=args.out / "eval",
                          n_boot=args.n_boot, progress=False)
    metrics = json.loads(evaluation.metrics_path.read_text())
    card = (args.out / "eval" / "model_card.md").read_text()
    provenance_lines = [line for line in card.splitlines() if line.startswith("- ") and ": " in line][:6]

    from point_of_care import _other_inputs

    with tempfile.TemporaryDirectory(prefix="medpredict-bench-") as tmp:
        other = _other_inputs(args.out / "run", args.data, Path(tmp))
    keras_auc = float(roc_auc_score(y_test, keras["test"][:, 1]))
    from medpredict.calibration.refit import cross_fitted_refit

    # adopt's post-fit cross-fitted within one split: does the fitting work where nothing shifts?
    within = {split: cross_fitted_refit(keras[split], labels)
              for split, labels in (("val", y_val), ("test", y_test))}
    figures = {
        "keras": info,
        "double_softmax_descriptor": refusal,
        "max_abs_prob_diff_onnx_vs_keras_test": float(np.abs(onnx_test - keras["test"]).max()),
        "auc_keras": keras_auc,
        "auc_medpredict_evaluate": metrics["metrics"]["auc"],
        "auc_abs_diff": abs(metrics["metrics"]["auc"] - keras_auc),
        "ece_test_keras_own": float(calibration_summary(y_test, keras["test"][:, 1])["ece"]),
        "ece_test_graph_own_in_report": metrics["calibration"]["test_uncalibrated"]["ece"],
        "ece_test_calibrated": metrics["calibration"]["test"]["ece"],
        "same_post_fit_cross_fitted_within_one_split": within,
        "calibrator": metrics["calibration"]["method"],
        "threshold": metrics["threshold"],
        "conformal": {k: metrics["conformal"][k] for k in ("method", "qhat", "target_coverage", "coverage",
                                                            "mean_size", "singleton_rate", "chosen_on")},
        "input_guard": metrics.get("input_guard"),
        "input_guard_features": result.report["features"],
        "referral": {k: metrics["referral"][k] for k in ("share_referred", "reasons", "accuracy_kept")},
        "other_inputs": other,
        "summary_line": evaluation.summary().splitlines()[0],
        "provenance_lines_in_model_card": provenance_lines,
        "tripod_ai_items_claimed": [item["item"] for item in
                                    json.loads((args.out / "eval" / "model_card.json").read_text())["tripod_ai"]],
        "seconds": round(time.monotonic() - started, 1),
    }
    text = json.dumps(figures, indent=2)
    (args.out / "keras_adopt.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
