"""Crash safety, tested by really killing processes (SIGKILL), and bundles that never unpickle.

* A process saving a bundle over an existing one is killed at random moments: the bundle
  at the path always loads and verifies, and is wholly the old or wholly the new one.
* The same for an atomic file write (what ONNX export and reports use), and, marked slow,
  for a real ``export_run``.
* No ``pickle`` / unsafe ``torch.load`` / ``allow_pickle=True`` anywhere in the source
  (checked on the syntax tree), and a bundle whose files are pickles is refused.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medpredict.bundle.store import load_bundle
from medpredict.errors import BundleError

SRC = Path(__file__).resolve().parents[1] / "src" / "medpredict"
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# A child that saves bundles over ``folder`` forever; version v holds weights filled with v.
_SAVER = """
import sys, torch
from medpredict.bundle.store import save_bundle
folder, size = sys.argv[1], int(sys.argv[2])
version = 0
while True:
    version += 1
    save_bundle(folder, state_dict={{"w": torch.full((size,), float(version))}}, meta={{"version": version}},
                json_files={{"extra.json": {{"version": version}}}}, text_files={{"model_card.md": "v%d" % version}})
    print("saved", version, flush=True)
    {after_save}
"""


def _start(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env=CHILD_ENV)


def _wait_for_line(process: subprocess.Popen[str], prefix: str, timeout: float = 90.0) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and process.poll() is not None:
            raise AssertionError(f"child exited with {process.returncode} before printing {prefix!r}")
    raise AssertionError(f"child did not print {prefix!r} within {timeout} s")


def _check_whole_bundle(folder: Path) -> int:
    """The bundle at ``folder`` verifies and is one consistent version; return that version."""
    bundle = load_bundle(folder)  # recomputes every checksum
    version = int(bundle.meta["version"])
    weights = bundle.state_dict["w"]
    assert bool((weights == float(version)).all()), "weights of another version than bundle.json"
    assert bundle.read_json("extra.json") == {"version": version}
    assert (folder / "model_card.md").read_text() == f"v{version}"
    return version


def test_kill_during_bundle_save_leaves_a_whole_bundle(tmp_path: Path) -> None:
    """Three children, each SIGKILLed at a random moment while saving 24 MB bundles in a loop."""
    folder = tmp_path / "model"
    rng = random.Random(1234)
    seen: list[int] = []
    for _ in range(3):
        child = _start(_SAVER.format(after_save=""), str(folder), str(6_000_000))
        try:
            _wait_for_line(child, "saved")
            time.sleep(rng.uniform(0.0, 0.6))  # a save takes ~0.1-0.3 s here: kills land anywhere in it
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        seen.append(_check_whole_bundle(folder))
        # Nothing half-written sits at the path; leftovers are hidden temporaries beside it.
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["weights.safetensors", "bundle.json", "checksums.json", "extra.json", "model_card.md"]
        )
    assert all(v >= 1 for v in seen)


_REPLACE_HOOK = """
import os, signal
import medpredict.atomic as atomic
_real = os.replace
def _replace_then_die(src, dst):
    _real(src, dst)
    if str(dst).endswith(".old"):  # the old bundle was just moved aside: die at the worst moment
        os.kill(os.getpid(), signal.SIGKILL)
atomic.os.replace = _replace_then_die
"""


def test_kill_between_the_two_renames_of_a_bundle_save(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    first = _start(_SAVER.format(after_save="break"), str(folder), "16")
    _wait_for_line(first, "saved")
    first.wait(timeout=60)
    assert _check_whole_bundle(folder) == 1
    script = _REPLACE_HOOK + _SAVER.format(after_save="")
    second = _start(script, str(folder), "16")
    second.wait(timeout=90)
    assert second.returncode == -signal.SIGKILL  # it really died inside the save
    assert (tmp_path / ".model.old").is_dir()
    _check_whole_bundle(folder)  # BundleError today: no bundle at the path


_WRITER = """
import sys
from medpredict.atomic import write_bytes
path, size = sys.argv[1], int(sys.argv[2])
version = 0
while True:
    version += 1
    write_bytes(path, bytes([version % 256]) * size)
    print("wrote", version, flush=True)
"""


def test_kill_during_atomic_file_write_keeps_the_previous_file(tmp_path: Path) -> None:
    """write_bytes is what export (model.onnx) and reports use: a kill leaves a whole old or new file."""
    target = tmp_path / "model.onnx"
    rng = random.Random(99)
    for _ in range(3):
        child = _start(_WRITER, str(target), str(32 * 2**20))
        try:
            _wait_for_line(child, "wrote")
            time.sleep(rng.uniform(0.0, 0.4))
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait(timeout=30)
        data = target.read_bytes()
        assert len(data) == 32 * 2**20 and data.count(data[:1]) == len(data)  # one whole version
        assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["model.onnx"]


_EXPORTER = """
import sys
from medpredict.deploy.export import export_run
print("exporting", flush=True)
export_run(sys.argv[1], exporter="torchscript")
print("exported", flush=True)
"""


@pytest.mark.slow
def test_kill_during_onnx_export_keeps_the_previous_export(tiny_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    subprocess.run(
        [sys.executable, "-c", _EXPORTER, str(run)], check=True, env=CHILD_ENV, capture_output=True, timeout=300
    )
    onnx_file = run / "onnx" / "model.onnx"
    before = hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    rng = random.Random(7)
    for _ in range(3):
        child = _start(_EXPORTER, str(run))
        try:
            _wait_for_line(child, "exporting")
            time.sleep(rng.uniform(0.5, 4.0))
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait(timeout=30)
        # Whole: the previous export, or a complete new one that ONNX Runtime loads.
        import onnxruntime

        onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        assert json.loads((run / "onnx" / "export.json").read_text())
        assert hashlib.sha256(onnx_file.read_bytes()).hexdigest() == before or onnx_file.stat().st_size > 0
    _check_bundle_untouched = load_bundle(run)  # export never touches the bundle
    assert _check_bundle_untouched.meta


# --------------------------------------------------------------------------- never unpickle


def _unsafe_calls(tree: ast.AST) -> list[str]:
    """Calls and imports that can execute code from data: pickle, torch.load without weights_only..."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [
                f"import {n}"
                for n in names
                if n and n.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal")
            ]
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if name.endswith("torch.load") and keywords.get("weights_only") != "True":
            found.append(f"{name}(...) without weights_only=True")
        if name.endswith(("np.load", "numpy.load")) and keywords.get("allow_pickle", "False") != "False":
            found.append(f"{name}(allow_pickle={keywords['allow_pickle']})")
        if name.endswith(("read_pickle", "pickle.load", "pickle.loads", "joblib.load")):
            found.append(name)
        if name.endswith("yaml.load") and "Loader" not in keywords:
            found.append("yaml.load without a safe Loader")
        if name in ("yaml.unsafe_load", "yaml.full_load", "eval", "exec"):
            found.append(name)
    return found


def test_no_source_file_can_unpickle() -> None:
    problems = {}
    for path in sorted(SRC.rglob("*.py")):
        found = _unsafe_calls(ast.parse(path.read_text(encoding="utf-8")))
        if found:
            problems[str(path.relative_to(SRC))] = found
    assert problems == {}


def test_the_scanner_catches_what_it_looks_for() -> None:
    code = (
        "import pickle\nimport torch, numpy as np\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
        "np.load(f, allow_pickle=True)\npd.read_pickle(f)\n"
    )
    assert len(_unsafe_calls(ast.parse(code))) == 5
    assert _unsafe_calls(ast.parse("torch.load(f, weights_only=True)\nnp.load(f)\n")) == []


class _Boom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - what a malicious pickle does on load
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("target", ["weights.safetensors", "bundle.json"])
def test_a_bundle_file_replaced_by_a_pickle_is_refused_and_never_run(tiny_run: Path, tmp_path: Path, target) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_run / "model", folder)
    marker = tmp_path / "pwned"
    (folder / target).write_bytes(pickle.dumps({"w": _Boom(marker)}))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(folder)
    # Even with the checksums rewritten to match (an attacker without the HMAC key can do that),
    # the pickle is read as safetensors/JSON, never unpickled.
    from medpredict.bundle.store import write_checksums

    write_checksums(folder)
    with pytest.raises((BundleError, ValueError)):
        load_bundle(folder)
    assert not marker.exists()


def test_a_pickled_bundle_is_refused_when_a_signing_key_is_set(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDPREDICT_BUNDLE_KEY", "site-secret-key")
    folder = tmp_path / "model"
    shutil.copytree(tiny_run / "model", folder)
    from medpredict.bundle.store import write_checksums

    write_checksums(folder)  # signed with the key
    load_bundle(folder)
    (folder / "weights.safetensors").write_bytes(pickle.dumps({"w": 1}))
    monkeypatch.setenv("MEDPREDICT_BUNDLE_KEY", "attacker-guess")
    write_checksums(folder)  # the attacker re-signs with the wrong key
    monkeypatch.setenv("MEDPREDICT_BUNDLE_KEY", "site-secret-key")
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(folder)
