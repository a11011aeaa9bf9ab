"""The model bundle: everything inference needs, in one folder, checked on load.

Layout of ``runs/<name>/model/``::

    weights.safetensors   network weights (safetensors: loading never runs code), or
    model.onnx            the ONNX graph of a model trained elsewhere (``medpredict adopt``),
                          byte for byte as the user gave it
    bundle.json           format version, resolved config, labels, task, input kind,
                          preprocessing, threshold, calibration, conformal, metrics
    cleaner.json          fitted table cleaner (record and fused models only)
    input_guard.json      fitted out-of-distribution detector on the network's features
    model_card.md/.json   the model card, when evaluation has written one
    checksums.json        SHA-256 of every file above (and an HMAC when a key is set)

Loading recomputes every checksum and refuses a bundle whose files were changed, are
missing, or whose format version this medpredict does not understand. When the
environment variable ``MEDPREDICT_BUNDLE_KEY`` is set, bundles are also signed with an
HMAC of the checksum list, so a tamperer cannot simply rewrite ``checksums.json``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from medpredict import __version__
from medpredict.atomic import atomic_dir, recover_dir, write_json
from medpredict.errors import BundleError

FORMAT = "medpredict-bundle"
FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
#: The network of an adopted model trained elsewhere (``medpredict adopt``), instead of WEIGHTS.
ONNX_MODEL = "model.onnx"
META = "bundle.json"
CHECKSUMS = "checksums.json"
#: The fitted out-of-distribution detector (``medpredict.calibration.ood``), when the model has one.
GUARD = "input_guard.json"
KEY_ENV = "MEDPREDICT_BUNDLE_KEY"


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle: its folder, metadata and weights."""

    path: Path
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    def read_json(self, name: str) -> dict[str, Any] | None:
        """Parse an optional JSON file of the bundle (already checksum-verified)."""
        file = self.path / name
        return json.loads(file.read_text(encoding="utf-8")) if file.exists() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _signature(files: dict[str, str], key: str, bound_to: dict[str, str] | None = None) -> str:
    signed: Any = files if bound_to is None else {"files": files, "bound_to": bound_to}
    message = json.dumps(signed, sort_keys=True).encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def write_checksums(folder: Path, *, bound_to: dict[str, str] | None = None) -> None:
    """(Re)write ``checksums.json`` for every file in ``folder``; signs it if a key is set.

    ``bound_to`` ties the folder to another one (an ONNX export to its bundle's weights:
    ``{"weights.safetensors": SHA-256}``); it is stored and covered by the HMAC.
    """
    files = {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != CHECKSUMS}
    manifest: dict[str, Any] = {"algorithm": "sha256", "files": files}
    if bound_to is not None:
        manifest["bound_to"] = dict(bound_to)
    key = os.environ.get(KEY_ENV)
    if key:
        manifest["hmac_sha256"] = _signature(files, key, bound_to)
    write_json(folder / CHECKSUMS, manifest)


def save_bundle(
    folder: str | Path,
    *,
    state_dict: dict[str, torch.Tensor] | None,
    meta: dict[str, Any],
    json_files: dict[str, Any] | None = None,
    text_files: dict[str, str] | None = None,
    onnx_model: str | Path | None = None,
) -> Path:
    """Write a complete bundle atomically: a crash leaves the previous bundle intact.

    Args:
        folder: the bundle folder, usually ``runs/<name>/model``.
        state_dict: network weights (None for a bundle that wraps ``onnx_model`` instead).
        meta: the content of ``bundle.json`` (format fields are added here).
        json_files / text_files: extra files such as ``cleaner.json`` or ``model_card.md``.
        onnx_model: an ONNX file copied byte for byte into the bundle as ``model.onnx``.

    Raises:
        BundleError: neither weights nor an ONNX model were given.
    """
    folder = Path(folder)
    if state_dict is None and onnx_model is None:
        raise BundleError(f"A bundle needs a network: give weights or an ONNX model for {folder}.")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "medpredict_version": __version__, **meta}
    with atomic_dir(folder) as tmp:
        if state_dict is not None:
            tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
            save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        if onnx_model is not None:
            import shutil

            shutil.copyfile(onnx_model, tmp / ONNX_MODEL)
        write_json(tmp / META, meta)
        for name, obj in (json_files or {}).items():
            write_json(tmp / name, obj)
        for name, text in (text_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        write_checksums(tmp)
    return folder


def add_files(
    folder: str | Path, *, json_files: dict[str, Any] | None = None, text_files: dict[str, str] | None = None
) -> None:
    """Add or replace files in an existing, verified bundle and re-sign it (e.g. the model card)."""
    folder = resolve_bundle_dir(folder)
    verify(folder)
    for name, obj in (json_files or {}).items():
        write_json(folder / name, obj)
    for name, text in (text_files or {}).items():
        from medpredict.atomic import write_text

        write_text(folder / name, text)
    write_checksums(folder)


def resolve_bundle_dir(path: str | Path) -> Path:
    """Accept a run folder (``runs/x``) or the bundle folder itself (``runs/x/model``).

    A bundle whose replacement was interrupted between its two renames is restored first.
    """
    path = Path(path)
    recover_dir(path)
    recover_dir(path / "model")
    if (path / META).exists():
        return path
    if (path / "model" / META).exists():
        return path / "model"
    raise BundleError(
        f"No model bundle at {path}: expected {path}/model/{META}. Give a run folder written by 'medpredict train'."
    )


def verify(folder: Path, *, required: tuple[str, ...] | None = None, what: str = "bundle") -> dict[str, Any]:
    """Check every file against ``checksums.json`` (and the HMAC when a key is set).

    Args:
        folder: the bundle (or ONNX export) folder.
        required: files the checksum list must name; ``None`` for a model bundle (its metadata,
            and weights or the ONNX graph it wraps).
        what: how messages name the folder (``bundle``, ``ONNX export``).

    Returns:
        The checksum of every file (``checksums.json``'s ``files``; its ``bound_to``, when
        written with one, is covered by the HMAC too).

    Raises:
        BundleError: a file changed, missing, unlisted, or not signed with the key.
    """
    sums_path = folder / CHECKSUMS
    if not sums_path.exists():
        raise BundleError(
            f"The {what} {folder} has no {CHECKSUMS}; it is incomplete, altered, or not written by medpredict."
        )
    try:
        sums = json.loads(sums_path.read_text(encoding="utf-8"))
        files: dict[str, str] = sums["files"]
        bound_to = sums.get("bound_to")
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{sums_path} is unreadable ({exc}); the {what} is damaged.") from exc
    if required is None:  # a model bundle: its metadata, and weights or the ONNX graph it wraps
        if META not in files:
            raise BundleError(f"{sums_path} does not list {META}; the bundle is damaged or was altered.")
        if WEIGHTS not in files and ONNX_MODEL not in files:
            raise BundleError(
                f"{sums_path} lists neither {WEIGHTS} nor {ONNX_MODEL}; the bundle is damaged or was altered."
            )
    for name in required or ():
        if name not in files:
            raise BundleError(f"{sums_path} does not list {name}; the {what} is damaged or was altered.")
    unlisted = sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS and p.name not in files
    )
    if unlisted:
        raise BundleError(
            f"The {what} {folder} holds files its checksums do not cover: {unlisted}. "
            f"Remove them or restore the original {what}."
        )
    for name, expected in files.items():
        file = folder / name
        if Path(name).name != name or not file.is_file():
            raise BundleError(f"The {what} {folder} is missing {name}; restore it or write it again.")
        if _sha256(file) != expected:
            raise BundleError(
                f"{file} does not match its checksum: the {what} was modified after it was written. "
                f"Refusing to load it; restore the original {what}."
            )
    key = os.environ.get(KEY_ENV)
    if key:
        signature = sums.get("hmac_sha256")
        if not signature or not hmac.compare_digest(signature, _signature(files, key, bound_to)):
            raise BundleError(
                f"The {what} {folder} is not signed with the key in {KEY_ENV}; refusing to load it."
            )
    return files


def load_bundle(path: str | Path) -> Bundle:
    """Load and verify a bundle.

    Raises:
        BundleError: missing, tampered, unsigned (when a key is set) or of another format version.
    """
    folder = resolve_bundle_dir(path)
    verify(folder)
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise BundleError(f"{folder}/{META} is not a medpredict bundle (format {meta.get('format')!r}).")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"The bundle {folder} has format version {version}; this medpredict {__version__} reads version "
            f"{FORMAT_VERSION}. Use the medpredict version that wrote it ({meta.get('medpredict_version')})."
        )
    from safetensors import SafetensorError

    if not (folder / WEIGHTS).is_file():  # verified above: the bundle wraps model.onnx instead
        return Bundle(path=folder, meta=meta, state_dict={})
    try:
        state_dict = load_file(str(folder / WEIGHTS))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise BundleError(f"Cannot read {folder / WEIGHTS}: {exc}") from exc
    return Bundle(path=folder, meta=meta, state_dict=state_dict)
