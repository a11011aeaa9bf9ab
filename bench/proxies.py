"""How well each column alone predicts the target on the shipped data: the basis of PROXY_THRESHOLD.

``medpredict.data.proxies`` flags a column whose cross-validated balanced accuracy alone
reaches 0.98. This prints that figure for every feature of the shipped tables (UCI heart,
Wisconsin, kidney: real predictors, none a restatement) and for the Kermany manifest's
columns (``subtype`` restates the label), with the seconds each table took.

    python bench/proxies.py            # writes bench/results/proxies.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from medpredict.data.proxies import PROXY_THRESHOLD, column_skill
from medpredict.records.tables import load_table
from medpredict.training.records import encode_target

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TABLES = {
    "uci_heart (num>0)": (DATA / "tabular" / "uci_heart_disease" / "processed.cleveland.data", "num>0"),
    "wisconsin (class)": (DATA / "tabular" / "wisconsin_breast_cancer_original" / "breast-cancer-wisconsin.data",
                          None),
    "kidney (class)": (DATA / "tabular" / "uci_chronic_kidney_disease" / "chronic_kidney_disease.arff", None),
}


def main() -> None:
    results: dict[str, object] = {"threshold": PROXY_THRESHOLD}
    for name, (path, target) in TABLES.items():
        started = time.perf_counter()
        frame, schema = load_table(path, target=target)
        y, _, _, keep = encode_target(frame, schema)
        rows = frame.loc[keep].reset_index(drop=True)
        skills = {c: column_skill(rows[c].astype(object), y) for c in schema.features()}
        measured = sorted(((s[0], c) for c, s in skills.items() if s is not None), reverse=True)
        results[name] = {
            "seconds": round(time.perf_counter() - started, 2),
            "balanced_accuracy": {c: round(score, 3) for score, c in measured},
        }
    manifest = pd.read_csv(DATA / "chest_xray_kermany_224" / "manifest.csv")
    started = time.perf_counter()
    skills = {c: column_skill(manifest[c].astype(object), manifest["label"].to_numpy())
              for c in ("subtype", "split", "patient_key_within_split", "sha256")}
    results["kermany (label)"] = {
        "seconds": round(time.perf_counter() - started, 2),
        "balanced_accuracy": {c: round(s[0], 3) if s else "a value per row" for c, s in skills.items()},
    }
    out = ROOT / "bench" / "results" / "proxies.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
