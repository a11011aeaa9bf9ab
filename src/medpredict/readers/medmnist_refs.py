"""Parse and read MedMNIST-style npz references ``FILE.npz::KEY/INDEX``.

A manifest row points at one image inside an npz archive, e.g.
``/data/pneumoniamnist.npz::train_images/17``. MedMNIST archives are zip-deflated, so
reading one image means decompressing its whole array; the arrays are therefore cached
(a few, least recently used) and the archive itself is closed right after reading.
"""

from __future__ import annotations

import functools
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medpredict.errors import DataError, did_you_mean

SEPARATOR = "::"
#: How many decompressed arrays stay cached (one per archive and key).
CACHE_SIZE = 4


@dataclass(frozen=True)
class NpzRef:
    """One image inside an npz archive: ``path::key/index``."""

    path: Path
    key: str
    index: int

    def __str__(self) -> str:
        return format_npz_ref(self.path, self.key, self.index)


def format_npz_ref(path: str | os.PathLike[str], key: str, index: int) -> str:
    """Build the reference string, e.g. ``format_npz_ref("p.npz", "train_images", 17)``."""
    return f"{os.fspath(path)}{SEPARATOR}{key}/{int(index)}"


def is_npz_ref(value: str | os.PathLike[str]) -> bool:
    """Tell whether ``value`` uses the reference syntax (it is not checked against the file)."""
    text = os.fspath(value)
    return SEPARATOR in text and text.rsplit(SEPARATOR, 1)[0].lower().endswith(".npz")


def parse_npz_ref(value: str | os.PathLike[str]) -> NpzRef:
    """Split ``FILE.npz::KEY/INDEX`` into its parts.

    Raises:
        DataError: The text does not follow the syntax, or INDEX is not a whole number >= 0.
    """
    text = os.fspath(value)
    example = "pneumoniamnist.npz::train_images/17"
    if not is_npz_ref(text):
        raise DataError(f"'{text}' is not an npz reference; write FILE.npz::KEY/INDEX, e.g. '{example}'.")
    file_part, inner = text.rsplit(SEPARATOR, 1)
    key, sep, index_text = inner.rpartition("/")
    if not sep or not key or not index_text.isdigit():
        raise DataError(
            f"npz reference '{text}' needs KEY/INDEX after '::' with INDEX a whole number >= 0, "
            f"e.g. '{example}'."
        )
    return NpzRef(path=Path(file_part), key=key, index=int(index_text))


def read_npz_ref(value: str | os.PathLike[str] | NpzRef) -> np.ndarray:
    """Return the array one reference points at, as stored (e.g. ``(28, 28)`` uint8).

    The result is a read-only view into a cached array; copy it before changing it.

    Raises:
        DataError: The archive is missing or unreadable, the key is absent (with a
            suggestion), or the index is out of range.
    """
    ref = value if isinstance(value, NpzRef) else parse_npz_ref(value)
    try:
        stat = ref.path.stat()
    except OSError as exc:
        raise DataError(
            f"npz file '{ref.path}' of reference '{ref}' does not exist or cannot be read."
        ) from exc
    array = _load_array(str(ref.path.resolve()), ref.key, stat.st_mtime_ns, stat.st_size)
    if ref.index >= len(array):
        raise DataError(
            f"Index {ref.index} of reference '{ref}' is out of range: '{ref.key}' holds {len(array)} "
            f"items (0 to {len(array) - 1})."
        )
    return array[ref.index]


def clear_npz_cache() -> None:
    """Drop the cached arrays (frees memory; the next read decompresses again)."""
    _load_array.cache_clear()


# mtime and size are part of the key so that a rewritten archive is read afresh.
@functools.lru_cache(maxsize=CACHE_SIZE)
def _load_array(path: str, key: str, mtime_ns: int, size: int) -> np.ndarray:
    try:
        # allow_pickle=False: an npz from elsewhere must not be able to run code.
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"'{path}' is a single .npy array, not an npz archive of named arrays.")
        with loaded as archive:
            if key not in archive.files:
                raise DataError(
                    f"npz file '{path}' has no array '{key}'.{did_you_mean(key, archive.files)} "
                    f"It holds: {', '.join(archive.files)}."
                )
            array = archive[key]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"npz file '{path}' is not a readable npz archive ({exc}).") from exc
    if array.ndim < 1:
        raise DataError(
            f"Array '{key}' in '{path}' is a scalar; an image reference needs an indexable array."
        )
    array.flags.writeable = False
    return array
