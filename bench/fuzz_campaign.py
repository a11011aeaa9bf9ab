"""A long fuzzing campaign over every reader, the service's upload path and the CLI's file arguments.

Runs the hypothesis properties of ``tests/test_fuzz_readers.py``, ``tests/test_fuzz_service.py``
and ``tests/test_fuzz_cli.py``: uploads, file names, content types, routes and keys, and on a
record model odd and deeply nested JSON records (NaN, infinities, overflowing numbers,
booleans, numeric and missing-value text, unknown fields, nesting up to 100,000 levels, each
answered 200 or 422 naming the field and audited); generated tables, manifests, npz archives
and images given to ``data check``, ``predict``, ``evaluate --data`` and ``records train``
(exit status 0, 1 or 2, never a traceback; slow properties included). It runs them in rounds
with fresh random seeds and many more examples until the time budget is spent; then, when
``atheris`` is installed, a coverage-guided run of ``read_image`` / ``load_table`` over mutated
seed files (PNG, JPEG, DICOM, NIfTI, npz, CSV, ARFF). Writes ``bench/results/fuzz_campaign.json``:
inputs tried per property, time, and every failure signature (exception type, message, where
it was raised).

    python bench/fuzz_campaign.py --minutes 10            # half hypothesis, half atheris
    python bench/fuzz_campaign.py --minutes 30 --no-atheris
    python bench/fuzz_campaign.py --minutes 3 --only cli --no-atheris --examples 40
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
FUZZ_FILES = {
    "readers": "tests/test_fuzz_readers.py",
    "service": "tests/test_fuzz_service.py",
    "cli": "tests/test_fuzz_cli.py",
}
_STATS = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid")
_TEST = re.compile(r"^(tests/\S+::\S+):", re.MULTILINE)


def hypothesis_rounds(seconds: float, examples: int, files: tuple[str, ...] = tuple(FUZZ_FILES.values())
                      ) -> dict[str, object]:
    """Repeat the fuzz test files with random seeds until ``seconds`` are spent."""
    passing: collections.Counter[str] = collections.Counter()
    failing: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    errors: list[str] = []
    rounds = 0
    began = time.monotonic()
    env = {
        **os.environ,
        "MEDPREDICT_FUZZ_EXAMPLES": str(examples),
        "MEDPREDICT_FUZZ_RANDOM": "1",
        "OMP_NUM_THREADS": "1",
    }
    while time.monotonic() - began < seconds:
        rounds += 1
        left = max(60.0, seconds - (time.monotonic() - began) + 120)
        try:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "-W",
                    "ignore::UserWarning",
                    "--hypothesis-show-statistics",
                    "-k",
                    "not xfail",
                    "-m",
                    "slow or not slow",  # the CLI's training properties are marked slow in the default suite
                    *files,
                ],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=left,
            )
        except subprocess.TimeoutExpired as exc:  # a round outlasting the budget: count what it printed
            partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            proc = subprocess.CompletedProcess(exc.cmd, -9, partial, "")
            errors.append(f"round {rounds} was stopped at the time budget; its finished properties are counted")
        out = proc.stdout
        # Statistics blocks start with "tests/...::name:" and list each phase's counts.
        blocks = _TEST.split(out)
        for name, body in zip(blocks[1::2], blocks[2::2], strict=False):
            for ok, bad, _ in _STATS.findall(body):
                passing[name] += int(ok)
                failing[name] += int(bad)
        failures += [line for line in out.splitlines() if line.startswith("FAILED")]
        errors += [line.strip() for line in out.splitlines() if re.match(r"^E\s+\w+(Error|Exception): ", line)]
        if proc.returncode not in (0, 1, -9):
            errors.append(f"pytest exited with {proc.returncode}: {proc.stderr[-300:]}")
    return {
        "rounds": rounds,
        "seconds": round(time.monotonic() - began, 1),
        "examples_per_property_per_round": examples,
        "inputs_tried": sum(passing.values()) + sum(failing.values()),
        "per_property": {k: {"passing": passing[k], "failing": failing[k]} for k in sorted(passing)},
        "failed_tests": sorted(set(failures)),
        "failure_messages": sorted(set(errors))[:20],
    }


# --------------------------------------------------------------------------- atheris


def _seed_files(folder: Path) -> list[Path]:
    sys.path.insert(0, str(TESTS))
    import io

    import numpy as np
    from PIL import Image

    from fixtures_images import SHARED_DATA, write_dicom, write_nifti

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    seeds = []
    for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg")):
        buffer = io.BytesIO()
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(buffer, format=fmt)
        (folder / f"seed.{suffix}").write_bytes(buffer.getvalue())
        seeds.append(folder / f"seed.{suffix}")
    seeds.append(
        write_dicom(
            folder / "seed.dcm", (rng.random((12, 12)) * 4000).astype(np.uint16), WindowCenter=2000, WindowWidth=4000
        )
    )
    seeds.append(write_nifti(folder / "seed.nii", rng.random((4, 5, 6)).astype(np.float32)))
    np.savez_compressed(folder / "seed.npz", x=(rng.random((2, 8, 8)) * 255).astype(np.uint8))
    seeds.append(folder / "seed.npz")
    (folder / "seed.csv").write_text("id,age,sex,target\np1,63,M,1\np2,?,F,0\n")
    seeds.append(folder / "seed.csv")
    ct = SHARED_DATA / "dicom" / "pydicom_wheel" / "CT_small.dcm"
    if ct.is_file():
        seeds.append(ct)
    arff = SHARED_DATA / "tabular" / "uci_chronic_kidney_disease" / "chronic_kidney_disease.arff"
    if arff.is_file():
        (folder / "seed.arff").write_bytes(arff.read_bytes()[:4000])
        seeds.append(folder / "seed.arff")
    return seeds


_KINDS = (".png", ".jpg", ".dcm", ".nii", ".nii.gz", ".npz", ".csv", ".arff")


def atheris_child(seconds: int, corpus: Path, findings: Path) -> None:
    """Runs inside a subprocess: coverage-guided fuzzing of the readers, recording failures."""
    import atheris

    with atheris.instrument_imports(include=["medpredict"]):
        from medpredict.errors import DataError
        from medpredict.readers import read_image
        from medpredict.readers.medmnist_refs import clear_npz_cache
        from medpredict.records.tables import load_table

    sys.path.insert(0, str(TESTS))
    from test_fuzz_readers import _known_bug

    work = Path(tempfile.mkdtemp(prefix="medpredict-atheris-"))
    counts: collections.Counter[str] = collections.Counter()

    def target(data: bytes) -> None:
        if not data:
            return
        suffix = _KINDS[data[0] % len(_KINDS)]
        path = work / f"input{suffix}"
        path.write_bytes(data[1:])
        counts["inputs"] += 1
        try:
            if suffix in (".csv", ".arff"):
                load_table(path)
            elif suffix == ".npz":
                clear_npz_cache()
                read_image(f"{path}::x/0")
            else:
                read_image(path)
        except DataError:
            counts["data_error"] += 1
        except Exception as exc:  # noqa: BLE001 - recording every failure is the point
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            key = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
            counts["known_bug" if _known_bug(exc) else "unknown_failure"] += 1
            if not _known_bug(exc) and key not in seen:
                seen.add(key)
                with findings.open("a") as handle:
                    handle.write(json.dumps({"signature": key, "message": str(exc)[:300], "suffix": suffix}) + "\n")
        else:
            counts["ok"] += 1
        if counts["inputs"] % 500 == 0:
            (findings.with_suffix(".counts.json")).write_text(json.dumps(counts))

    seen: set[str] = set()
    sys.argv = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={seconds}",
        "-timeout=20",
        "-rss_limit_mb=3072",
        "-max_len=65536",
        "-print_final_stats=1",
    ]
    atheris.Setup(sys.argv, target)
    try:
        atheris.Fuzz()
    finally:
        (findings.with_suffix(".counts.json")).write_text(json.dumps(counts))


def atheris_run(seconds: int, out: Path) -> dict[str, object]:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return {"skipped": "atheris is not installed (pip install atheris)"}
    corpus = out / "atheris_corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in _seed_files(out / "atheris_seeds"):
        kind = next(i for i, s in enumerate(_KINDS) if seed.name.endswith(s))
        (corpus / f"seed_{seed.name}").write_bytes(bytes([kind]) + seed.read_bytes()[:65535])
    findings = out / "atheris_findings.jsonl"
    findings.unlink(missing_ok=True)
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, __file__, "--atheris-child", str(seconds), str(corpus), str(findings)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    counts_path = findings.with_suffix(".counts.json")
    counts = json.loads(counts_path.read_text()) if counts_path.exists() else {}
    found = [json.loads(line) for line in findings.read_text().splitlines()] if findings.exists() else []
    return {
        "seconds": round(time.monotonic() - began, 1),
        "exit_code": proc.returncode,
        "counts": counts,
        "corpus_files": len(list(corpus.iterdir())),
        "unknown_failures": found,
        "libfuzzer_tail": proc.stderr.splitlines()[-6:],
    }


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--atheris-child":
        atheris_child(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="total time budget")
    parser.add_argument("--examples", type=int, default=300, help="hypothesis examples per property per round")
    parser.add_argument("--no-atheris", action="store_true")
    parser.add_argument("--only", nargs="+", choices=sorted(FUZZ_FILES), default=sorted(FUZZ_FILES),
                        help="which hypothesis files to run (default all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.minutes * 60
    use_atheris = not args.no_atheris
    summary: dict[str, object] = {"minutes": args.minutes, "files": [FUZZ_FILES[k] for k in args.only]}
    summary["hypothesis"] = hypothesis_rounds(
        budget / 2 if use_atheris else budget, args.examples, tuple(FUZZ_FILES[k] for k in args.only)
    )
    if use_atheris:
        summary["atheris"] = atheris_run(int(budget / 2), args.out)
    (args.out / "fuzz_campaign.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    hypo = summary["hypothesis"]
    failed = bool(hypo["failed_tests"]) if isinstance(hypo, dict) else True  # type: ignore[index]
    ath = summary.get("atheris", {})
    failed = failed or bool(isinstance(ath, dict) and ath.get("unknown_failures"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
