"""Fuzzed files given to the command line: an exit code of 0, 1 or 2, never a traceback.

hypothesis writes tables and manifests (random headers, delimiters, cells: numbers, NaN and
infinity, missing-value words, label spellings, paths that exist, do not or escape, npz
references, quotes and newlines), npz archives (random keys, shapes and dtypes, or a valid
MedMNIST-shaped file mutated byte by byte) and mutated images, and hands them to
``data check``, ``predict``, ``evaluate --data`` and ``records train`` through
:func:`medpredict.cli.main`. Any exception that escapes ``main`` is a traceback a user would
see, and fails the property. ``bench/fuzz_campaign.py`` runs these far longer.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fixtures_images import write_png
from medpredict.cli import main
from test_fuzz_readers import mutated

#: Examples per property: the quick ones run in the default suite, the training ones are ``slow``.
EXAMPLES = int(os.environ.get("MEDPREDICT_FUZZ_EXAMPLES", "12"))
SLOW_EXAMPLES = max(3, EXAMPLES // 10)

CAMPAIGN = os.environ.get("MEDPREDICT_FUZZ_RANDOM") == "1"
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=not CAMPAIGN,
    database=None,
    # A command takes seconds: in the campaign, report each failure as found rather than spend
    # minutes shrinking it (the exception and where it was raised are the signature).
    phases=(Phase.explicit, Phase.reuse, Phase.generate) if CAMPAIGN else tuple(Phase),
)
FUZZ_SLOW = settings(FUZZ, max_examples=SLOW_EXAMPLES)

COLUMN_NAMES = ["image_path", "path", "label", "target", "patient_id", "split", "age", "sex", "subtype", "num",
                "class", "id", "outcome"]
WORDS = ["normal", "normal ", "Normal", "pneumonia", "yes", "no", "Unknown", "N/A", "?", "unk", "", "train", "val",
         "test", "holdout", "bogus", "M", "F", "0", "1", "2"]


def run_cli(argv: list[str]) -> int:
    """``medpredict ARGV`` in-process: the exit status; an escaping exception fails the caller."""
    try:
        code = main(["-q", *argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 2
    assert code in (0, 1, 2), f"exit status {code} for {argv}"
    return code


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths a manifest cell may name: a real PNG, a missing file, a folder, a traversal, npz refs."""
    root = tmp_path_factory.mktemp("fuzz_cli_images")
    png = write_png(root / "ok.png", (np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8))
    npz = root / "refs.npz"
    np.savez_compressed(npz, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.zeros((4, 1), np.uint8))
    return {
        "png": str(png),
        "missing": str(root / "missing.png"),
        "folder": str(root),
        "traversal": "../../../../etc/passwd",
        "npz_ref": f"{npz}::train_images/1",
        "npz_ref_bad": f"{npz}::train_images/99",
        "npz_key_bad": f"{npz}::nothing/0",
    }


@st.composite
def cell(draw: st.DrawFn, paths: dict[str, str]) -> str:
    kind = draw(st.sampled_from(("word", "int", "float", "path", "text")))
    if kind == "word":
        return draw(st.sampled_from(WORDS))
    if kind == "int":
        return str(draw(st.integers(-10**12, 10**12)))
    if kind == "float":
        return draw(st.sampled_from(("nan", "inf", "-inf", "1e400", "-0.0"))) if draw(st.booleans()) else repr(
            draw(st.floats(allow_nan=False, allow_infinity=False))
        )
    if kind == "path":
        return draw(st.sampled_from(sorted(paths.values())))
    return draw(st.text(max_size=20))


@st.composite
def table_text(draw: st.DrawFn, paths: dict[str, str]) -> str:
    """A delimited table: a header of known and random names, 0-40 rows of mixed cells."""
    names = draw(st.lists(st.one_of(st.sampled_from(COLUMN_NAMES), st.text(max_size=8)), min_size=1, max_size=6))
    rows = draw(st.lists(st.lists(cell(paths), min_size=0, max_size=len(names) + 1), max_size=40))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=draw(st.sampled_from([",", ",", ";", "\t"])))
    writer.writerow(names)
    writer.writerows(rows)
    return buffer.getvalue()


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


VALID_NPZ = _npz({
    f"{split}_{kind}": (np.arange(n * 64).reshape(n, 8, 8) % 255).astype(np.uint8) if kind == "images"
    else (np.arange(n) % 2).reshape(-1, 1).astype(np.uint8)
    for split, n in (("train", 12), ("val", 6), ("test", 6))
    for kind in ("images", "labels")
})


@st.composite
def npz_bytes(draw: st.DrawFn) -> bytes:
    """A MedMNIST-shaped npz mutated byte by byte, or one of random keys, shapes and dtypes."""
    if draw(st.booleans()):
        return draw(mutated(VALID_NPZ))
    keys = draw(st.lists(st.sampled_from(["train_images", "train_labels", "val_images", "val_labels",
                                          "test_images", "test_labels", "x"]), min_size=1, max_size=6, unique=True))
    arrays = {}
    for key in keys:
        shape = tuple(draw(st.lists(st.integers(0, 6), max_size=4)))
        dtype = draw(st.sampled_from([np.uint8, np.float32, np.int64, np.bool_, np.float16]))
        arrays[key] = np.random.default_rng(draw(st.integers(0, 99))).integers(0, 3, size=shape).astype(dtype)
    return _npz(arrays)


@st.composite
def data_file(draw: st.DrawFn, paths: dict[str, str]) -> tuple[str, bytes]:
    """``(suffix, bytes)`` of a table, a manifest or an npz, valid-looking or not."""
    kind = draw(st.sampled_from(("csv", "tsv", "npz", "garbage")))
    if kind == "npz":
        return ".npz", draw(npz_bytes())
    if kind == "garbage":
        return draw(st.sampled_from([".csv", ".npz", ".arff", ".parquet"])), draw(st.binary(max_size=300))
    text = draw(table_text(paths))
    return f".{kind}", text.encode("utf-8") if draw(st.booleans()) else draw(mutated(text.encode("utf-8")))


def _written(folder: Path, suffix: str, content: bytes) -> str:
    path = folder / f"fuzz{suffix}"
    path.write_bytes(content)
    return str(path)


@FUZZ
@given(data=st.data())
def test_data_check_on_fuzzed_files(images: dict[str, str], data: st.DataObject) -> None:
    suffix, content = data.draw(data_file(images))
    with tempfile.TemporaryDirectory() as tmp:
        run_cli(["data", "check", _written(Path(tmp), suffix, content), "--out", str(Path(tmp) / "report")])


@FUZZ
@given(data=st.data())
def test_predict_on_fuzzed_inputs(tiny_run: Path, images: dict[str, str], data: st.DataObject) -> None:
    png = Path(images["png"]).read_bytes()
    kind = data.draw(st.sampled_from(("image", "manifest", "empty")))
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "image":
            path = _written(Path(tmp), data.draw(st.sampled_from([".png", ".jpg", ".dcm"])), data.draw(mutated(png)))
        elif kind == "manifest":
            path = _written(Path(tmp), ".csv", data.draw(table_text(images)).encode("utf-8"))
        else:
            path = _written(Path(tmp), ".csv", b"")
        run_cli(["predict", str(tiny_run), path, "--out", str(Path(tmp) / "out"), "--no-overlays"])


@pytest.mark.slow
@FUZZ_SLOW
@given(data=st.data())
def test_evaluate_on_fuzzed_data(tiny_run: Path, images: dict[str, str], data: st.DataObject) -> None:
    suffix, content = data.draw(data_file(images))
    with tempfile.TemporaryDirectory() as tmp:
        run_cli(["evaluate", str(tiny_run), "--data", _written(Path(tmp), suffix, content), "--out",
                 str(Path(tmp) / "out"), "--n-boot", "0"])


@pytest.mark.slow
@FUZZ_SLOW
@given(data=st.data())
def test_records_train_on_fuzzed_tables(images: dict[str, str], data: st.DataObject) -> None:
    suffix, content = data.draw(data_file(images))
    with tempfile.TemporaryDirectory() as tmp:
        run_cli(["records", "train", _written(Path(tmp), suffix, content), "--out", str(Path(tmp) / "run")])
