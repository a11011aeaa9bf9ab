"""Parse and read MedMNIST-style npz references ``FILE.npz::KEY/INDEX``.

A manifest row points at one image inside an npz archive, e.g.
``/data/pneumoniamnist.npz::train_images/17``. MedMNIST archives are zip-deflated, so
reading one image means decompressing its whole array; the arrays are therefore cached
(a few, least recently used) and the archive itself is closed right after reading.
"""

from __future__ import annotations

import functools
import math
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
#: Largest array (bytes, decompressed) a reference may load: MedMNIST's largest split, the
#: 224 x 224 ChestMNIST training images, is about 4 GiB.
MAX_ARRAY_BYTES = 16 * 2**30
#: Deflate cannot expand data more than about 1032-fold; a zip entry claiming more lies.
_MAX_DEFLATE_RATIO = 1100


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
            if archive.zip is not None:  # always set for a file opened by np.load
                _check_declared_size(archive.zip, key, path)
            array = archive[key]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"npz file '{path}' is not a readable npz archive ({exc}).") from exc
    except MemoryError as exc:
        raise DataError(f"Array '{key}' in npz file '{path}' is too large to load into memory.") from exc
    if array.ndim < 1:
        raise DataError(
            f"Array '{key}' in '{path}' is a scalar; an image reference needs an indexable array."
        )
    array.flags.writeable = False
    return array


def _check_declared_size(archive: zipfile.ZipFile, key: str, path: str) -> None:
    """Refuse a member whose .npy header declares more data than it holds, before numpy allocates it.

    numpy allocates the array its header declares and only then reads the data, so a few
    bytes declaring ``shape=(10**12,)`` would ask for a terabyte. The member's uncompressed
    size (itself bounded by its compressed size) caps what the header may declare.
    """
    # The lookup np.load's NpzFile does: the exact member name first, then KEY.npy.
    member = key if key in archive.namelist() else f"{key}.npy"
    info = archive.getinfo(member)
    stored_cap = info.compress_size if info.compress_type == zipfile.ZIP_STORED else None
    deflate_cap = info.compress_size * _MAX_DEFLATE_RATIO + 1024
    if (stored_cap is not None and info.file_size > stored_cap) or (
        info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > deflate_cap
    ):
        raise DataError(
            f"npz file '{path}' is corrupt: member '{member}' claims {info.file_size:,} bytes "
            f"from {info.compress_size:,} compressed bytes."
        )
    with archive.open(info) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise DataError(f"Array '{key}' in npz file '{path}' uses .npy format {version}, which is not read.")
        available = info.file_size - handle.tell()
    if dtype.hasobject:
        raise DataError(
            f"npz file '{path}' is not a readable npz archive: array '{key}' holds Python objects, "
            "which are never unpickled. Save it with a numeric dtype."
        )
    declared = math.prod(int(n) for n in shape) * dtype.itemsize
    if declared > available or declared > MAX_ARRAY_BYTES:
        raise DataError(
            f"Array '{key}' in npz file '{path}' declares shape {tuple(shape)} of {dtype} ({declared:,} bytes), "
            f"but the archive holds {max(available, 0):,} bytes for it (and at most {MAX_ARRAY_BYTES:,} are "
            "loaded); the file is corrupt or too large."
        )
