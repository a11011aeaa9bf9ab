"""Read every DICOM file that ships inside pydicom as ``medpredict predict`` would; print the outcome.

    PYTHONPATH=src .venv/bin/python bench/dicom_corpus.py            # a table, then the counts
    PYTHONPATH=src .venv/bin/python bench/dicom_corpus.py --failed   # only the files that fail

The corpus is pydicom's own ``pydicom/data/test_files`` folder (read in place, never copied):
every ``*.dcm`` file plus the suffix-less files of its ``dicomdirtests`` tree. Each file goes
through ``medpredict.readers.read_dicom``; a file is *read* when that returns pixels, else the
first line of its ``DataError`` is shown with the category it falls in:

``--without python-gdcm pylibjpeg-libjpeg pylibjpeg-rle`` takes those packages' plugins out of
pydicom's decoders for the run, as if they were not installed: with ``PYTHONPATH`` pointing at
the sources of ``main`` before issue 18, that reproduces its figures in today's environment.

- ``no pixels``: the file holds no image (report, RT plan, waveform, DICOMDIR);
- ``no decoder``: no installed decoder reads the transfer syntax;
- ``decoders failed``: decoders are installed but each one failed on the data (on ``main`` before
  issue 18 this case read "could not be decoded; ... needs another decoder");
- ``other``: anything else (a corrupt or truncated file, an unsupported photometric).

The counts go to stdout; nothing is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

from medpredict.errors import DataError
from medpredict.readers.dicom import read_dicom

_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
         "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
# package -> (pydicom plugin label, the transfer syntaxes for which that plugin relies on the package)
_PLUGINS_OF: dict[str, tuple[str, tuple[str, ...]]] = {
    "python-gdcm": ("gdcm", ()),  # () = every syntax
    "pylibjpeg-libjpeg": ("pylibjpeg", _JPEG),
    "pylibjpeg-rle": ("pylibjpeg", ("1.2.840.10008.1.2.5",)),
}


def _hide(package: str) -> None:
    """Take ``package``'s plugin out of pydicom's decoders (for this process only)."""
    from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS

    label, syntaxes = _PLUGINS_OF[package]
    for uid, (decoder, _) in _PIXEL_DATA_DECODERS.items():
        if (not syntaxes or uid in syntaxes) and label in decoder.available_plugins:
            decoder.remove_plugin(label)
    if package == "python-gdcm":
        sys.modules["gdcm"] = None  # type: ignore[assignment]  # medpredict's own GDCM plugin then finds none


def corpus_root() -> Path:
    """pydicom's shipped test-file folder."""
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files"


def corpus_files(root: Path) -> list[Path]:
    """The DICOM files of the corpus (``*.dcm``, and suffix-less files with the DICM preamble), sorted."""
    found = [
        path
        for path in root.rglob("*")
        if path.is_file() and (path.suffix == ".dcm" or (path.suffix == "" and _has_preamble(path)))
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _has_preamble(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def classify(message: str) -> str:
    """The category of a ``read_dicom`` error message (see the module docstring)."""
    if "holds no image" in message:
        return "no pixels"
    if "no installed decoder reads it" in message or "no DICOM decoder in pydicom" in message:
        return "no decoder"
    if "could not be decoded by the installed decoders" in message or "needs another decoder" in message:
        return "decoders failed"
    return "other"


def _syntax(path: Path) -> str:
    import pydicom

    try:
        meta = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta
        return str(meta.get("TransferSyntaxUID", "?"))
    except Exception:  # noqa: BLE001 - only a label for the table
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failed", action="store_true", help="list only the files that are not read")
    parser.add_argument(
        "--without", nargs="*", default=[], choices=sorted(_PLUGINS_OF), metavar="PACKAGE",
        help=f"decode as if these were not installed: {', '.join(sorted(_PLUGINS_OF))}",
    )
    args = parser.parse_args()
    import pydicom  # noqa: F401  # imported first: pydicom sets its logger's level on import

    logging.basicConfig(level=logging.ERROR)
    # pydicom logs each plugin's failed attempt with a traceback; the table already says why.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore")
    for package in args.without:
        _hide(package)
    root = corpus_root()
    start = time.perf_counter()
    rows = []
    for path in corpus_files(root):
        name = path.relative_to(root).as_posix()
        try:
            image = read_dicom(path)
            outcome, detail = "read", f"{tuple(image.pixels.shape)}"
        except DataError as exc:
            detail = str(exc).replace(str(path), "FILE").splitlines()[0]
            outcome = classify(detail)
        rows.append((name, _syntax(path), outcome, detail))
    seconds = time.perf_counter() - start
    for name, syntax, outcome, detail in rows:
        if not args.failed or outcome != "read":
            print(f"| {name} | {syntax} | {outcome} | {detail} |")
    print(f"\n{root} ({seconds:.1f} s)")
    top_level = [row for row in rows if "/" not in row[0]]
    for scope, selected in (("top-level *.dcm", top_level), ("all, with dicomdirtests", rows)):
        counts = dict.fromkeys(("read", "no pixels", "no decoder", "decoders failed", "other"), 0)
        for row in selected:
            counts[row[2]] += 1
        print(f"{scope}: {len(selected)} files: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
