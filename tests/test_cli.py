"""Tests for medpredict.cli: exit codes and messages of the ``medpredict`` command."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fixtures_images import write_npz, write_png
from medpredict import __version__
from medpredict.cli import main


def blocks(seed: int) -> np.ndarray:
    values = np.random.default_rng(seed).integers(40, 216, (4, 4))
    return np.kron(values, np.ones((8, 8))).astype(np.uint8)


def image_folder(root: Path, *, leak: bool) -> Path:
    """train/test folders of two classes, with one byte-identical copy inside train (or across splits)."""
    seed = 0
    for split in ("train", "test"):
        for label in ("normal", "pneumonia"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                seed += 1
                write_png(folder / f"{i}.png", blocks(seed))
    target = root / ("test" if leak else "train") / "normal" / "copy.png"
    shutil.copy(root / "train" / "normal" / "0.png", target)
    return root


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    return write_npz(tmp_path / "pneumoniamnist.npz", **arrays)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"medpredict {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no sub-command
        ["data"],  # no data sub-command
        ["trian"],  # unknown sub-command
        ["train", "--epochs", "many"],  # a flag of the wrong type
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: medpredict" in capsys.readouterr().err


def test_unknown_model_name(tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", str(tiny_npz), "--model", "tiny-resnt", "--epochs", "1",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "medpredict: error: Unknown model 'tiny-resnt'. Did you mean 'tiny-resnet'?" in err
    assert "Traceback" not in err


def test_unknown_model_is_refused_before_any_work(tiny_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = main(["-q", "train", "--data", str(tiny_npz), "--model", "tiny-resnt", "--out", str(run)])
    assert code == 2
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("train.epoch=3", "Unknown config key 'train.epoch'. Did you mean 'epochs'?"),  # typo in a key
        ("train.lr=-1", "train.lr = -1.0 is out of range"),  # value out of range
        ("no-equals-sign", "--set expects KEY=VALUE"),  # malformed flag
    ],
)
def test_bad_set_flags(tmp_path: Path, flag: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", str(tmp_path), "--set", flag, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.parametrize(
    "command",
    [
        ["data", "check"],  # data-quality report
        ["train", "--data"],  # training
    ],
)
def test_missing_data_path(command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_data.csv"
    extra = ["--out", str(tmp_path / "out")]
    code = main([*command, str(missing), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert f"Data source not found: {missing}" in err and "Traceback" not in err


def test_data_check_clean_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = image_folder(tmp_path / "data", leak=False)
    code = main(["-q", "data", "check", str(data), "--out", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert code == 0
    assert "13 images" in out
    assert "Byte-identical images: 1 groups (1 redundant files), 0 across splits" in out
    assert "PROBLEM" not in out
    assert (tmp_path / "report" / "data_check.json").is_file()
    assert (tmp_path / "report" / "data_check.html").is_file()


def test_data_check_with_leakage_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = image_folder(tmp_path / "data", leak=True)
    code = main(["-q", "data", "check", str(data), "--out", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert code == 1
    assert "Byte-identical images: 1 groups (1 redundant files), 1 across splits" in out
    assert "PROBLEM: 1 groups of identical images cross splits" in out


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A loopback HTTP server with one file; yields its URL and MD5."""
    root = tmp_path / "served"
    root.mkdir()
    payload = b"medmnist mirror " * 1000
    (root / "file.npz").write_bytes(payload)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/file.npz", hashlib.md5(payload).hexdigest()
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_data_fetch_from_a_mirror(
    served: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, md5 = served
    dest = tmp_path / "data"
    code = main(["-q", "data", "fetch", "mymirror", "--dest", str(dest), "--url", url, "--md5", md5])
    assert code == 0
    assert f"Downloaded and verified: {dest / 'mymirror.npz'}" in capsys.readouterr().out
    assert (dest / "mymirror.npz").stat().st_size == 16_000


def test_data_fetch_wrong_md5_exits_2(
    served: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = served
    dest = tmp_path / "data"
    code = main(["-q", "data", "fetch", "mymirror", "--dest", str(dest), "--url", url, "--md5", "0" * 32])
    err = capsys.readouterr().err
    assert code == 2 and "expected 00000000" in err and "Traceback" not in err
    assert list(dest.iterdir()) == []


def test_data_fetch_unknown_name_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["data", "fetch", "pneumonia", "--dest", str(tmp_path)])
    assert code == 2
    assert "Did you mean 'pneumoniamnist'?" in capsys.readouterr().err


def _table(path: Path, *, classes: int = 2, n: int = 60) -> Path:
    rng = np.random.default_rng(0)
    age = rng.normal(60, 10, n).round(0)
    outcome = (age > 60).astype(int) if classes == 2 else np.zeros(n, dtype=int)
    pd.DataFrame({"age": age, "chol": rng.normal(230, 30, n).round(0), "outcome": outcome}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("classes", "code"),
    [
        (2, 0),  # a table that can train a model
        (1, 1),  # one class only: a problem, so exit 1 as for images
    ],
)
def test_data_check_of_a_table_exits_1_on_a_problem(
    tmp_path: Path, classes: int, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    table = _table(tmp_path / "table.csv", classes=classes)
    assert main(["-q", "data", "check", str(table), "--target", "outcome", "--out", str(tmp_path / "r")]) == code
    out = capsys.readouterr().out
    assert ("PROBLEM: the target 'outcome' has fewer than two classes" in out) == (code == 1)
    assert (tmp_path / "r" / "table_check.json").is_file()


def test_records_cv_writes_cv_json_in_the_library(tmp_path: Path) -> None:
    from medpredict.training.records import cross_validate_table

    table = _table(tmp_path / "table.csv")
    result = cross_validate_table(
        table, target="outcome", n_splits=2, n_repeats=1, out=tmp_path / "cv", progress=False
    )
    saved = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert set(saved["models"]) == {"mlp", "logistic", "boosting"} and len(saved["models"]["mlp"]["scores"]) == 2
    assert result.path == tmp_path / "cv" / "cv.json" and result.exit_code == 0
    assert f"Results: {result.path}" in result.summary()


@pytest.mark.parametrize("word", ["records", "tabular"])  # 'tabular' is the former name, still accepted
def test_the_records_cv_command_only_calls_the_library(
    tmp_path: Path, word: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from medpredict.training import records

    calls: list[dict[str, object]] = []

    class Done:
        exit_code = 0

        def summary(self) -> str:
            return "summary of the library's result"

    def fake(source: str, **kwargs: object) -> Done:
        calls.append({"source": source, **kwargs})
        return Done()

    monkeypatch.setattr(records, "cross_validate_table", fake)
    argv = [word, "cv", "t.csv", "--target", "num>0", "--repeats", "3", "--out", str(tmp_path / "cv")]
    assert main(["-q", *argv]) == 0
    assert calls == [{"source": "t.csv", "out": str(tmp_path / "cv"), "target": "num>0", "schema": None,
                      "task": "auto", "model": "mlp", "n_repeats": 3, "seed": 0}]
    assert capsys.readouterr().out.strip() == "summary of the library's result"
    assert not (tmp_path / "cv").exists()  # the CLI itself writes nothing


@pytest.mark.parametrize(
    "argv",
    [
        ["records", "train", "t.csv", "--k", "3"],  # --k clusters: only 'records cluster' reads it
        ["records", "cluster", "t.csv", "--repeats", "2"],  # clustering runs no cross-validation
        ["export", "run", "--onnx"],  # ONNX is the only export format; the flag did nothing
        ["records", "train", "t.csv", "--model", "mpl"],  # record networks come from the model table
    ],
)
def test_flags_that_did_nothing_are_gone(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err


def test_image_model_names_in_help_come_from_the_model_table(capsys: pytest.CaptureFixture[str]) -> None:
    from medpredict.models import MODELS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in MODELS) and "brief-cnn" not in text


# --------------------------------------------------------------------------- issue 13: one line, exit 2


def _npz_bytes(kind: str) -> bytes:
    import io

    buffer = io.BytesIO()
    labels = (np.arange(8) % 2).reshape(-1, 1).astype(np.uint8)
    np.savez_compressed(buffer, train_images=np.zeros((8, 8, 8), np.uint8), train_labels=labels)
    data = buffer.getvalue()
    if kind == "empty":
        return b""
    if kind == "truncated":
        return data[: len(data) // 2]
    return data[:120] + bytes(b ^ 0x5A for b in data[120:240]) + data[240:]  # corrupt compressed members


@pytest.fixture
def files(tmp_path: Path, tiny_run: Path) -> dict[str, str]:
    (tmp_path / "a_file").write_text("x")
    for kind in ("empty", "truncated", "corrupt"):
        (tmp_path / f"{kind}.npz").write_bytes(_npz_bytes(kind))
    rows = ["patient_id,age,num"] + [f"p{i},{40 + i},{i % 3}" for i in range(40)]
    (tmp_path / "table.csv").write_text("\n".join(rows) + "\n")
    write_png(tmp_path / "x.png", blocks(1))
    return {"tmp": str(tmp_path), "run": str(tiny_run), "file": str(tmp_path / "a_file"),
            "table": str(tmp_path / "table.csv"), "png": str(tmp_path / "x.png")}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "check", "{tmp}/empty.npz"], "empty, truncated or not an npz"),  # EOFError before
        (["data", "check", "{tmp}/truncated.npz"], "empty, truncated or not an npz"),  # BadZipFile before
        (["data", "check", "{tmp}/corrupt.npz"], "empty, truncated or not an npz"),  # zlib.error before
        (["train", "--data", "{tmp}/truncated.npz", "--out", "{tmp}/r"], "empty, truncated or not an npz"),
        (["train", "--data", "{tmp}/empty.npz", "--out", "{file}"], "is a file, not a folder"),  # --out a file
        (["train", "--data", "{tmp}/empty.npz", "--out", "{file}/run"], "cannot be created: .* is a file"),
        (["evaluate", "{run}", "--out", "{file}"], "is a file, not a folder"),
        (["predict", "{run}", "{png}", "--out", "{file}"], "is a file, not a folder"),
        (["export", "{run}", "--out", "{file}"], "is a file, not a folder"),
        (["train", "--data", "{tmp}/empty.npz", "--device", "cuda", "--out", "{tmp}/r"], "--device cuda: "),
        (["serve", "{run}", "--port", "99999"], "--port 99999 is not a TCP port"),
        (["records", "train", "{table}", "--target", "num>10", "--out", "{tmp}/r"], "gives a single class"),
        (["tabular", "train", "{table}", "--target", "patient_id", "--out", "{tmp}/r"], "holds identifiers"),
        (["evaluate", "{run}", "--lang", "fr"], "Unknown report language 'fr'"),
        (["records", "cluster", "{table}", "--target", "num", "--k", "1", "--out", "{tmp}/c"], "--k 1: k-means"),
        (["export", "{run}", "--atol", "0"], "--atol 0.0: give a positive parity bound"),
        (["tune", "--data", "{tmp}/empty.npz", "--trials", "0", "--out", "{tmp}/t"], "--trials 0"),
        (["train", "--data", "{tmp}/empty.npz", "--set", "name=../../..", "--out", "{tmp}/r"], "plain folder name"),
        (["train", "--data", "{tmp}/empty.npz", "--resume", "--out", "{tmp}/r"], "--resume: .* holds no checkpoint"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(
    files: dict[str, str], argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    if argv[0] == "tune":
        pytest.importorskip("optuna")
    code = main(["-q", *(a.format(**files) for a in argv)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("medpredict: error: "), err
    assert re.search(message, err), err
    assert not (Path(files["tmp"]) / "r").exists()  # a refused run leaves no folder behind


def test_the_already_holds_a_run_message_names_flags_that_exist(tiny_run: Path, capsys) -> None:
    import re

    from medpredict.cli import build_parser

    code = main(["-q", "train", "--data", "unused.npz", "--out", str(tiny_run)])
    err = capsys.readouterr().err
    assert code == 2 and "already holds an image model" in err
    named = set(re.findall(r"--[a-z][a-z-]+", err))
    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    known = {option for action in train_parser._actions for option in action.option_strings}
    assert named and named <= known, named - known  # the issue: it suggested a --name flag that does not exist
