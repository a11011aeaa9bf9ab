"""Content fingerprints of images: exact (SHA-256) and near-duplicate (average hash).

Used by the leakage check and by ``data check`` to find the same image filed twice,
possibly under two patients or in two splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medpredict.progress import progress_bar


def content_hashes(paths: Sequence[str], *, progress: bool = True) -> pd.Series:
    """SHA-256 of each file's bytes (or of the array for ``FILE.npz::KEY/INDEX``); NaN if unreadable."""
    from medpredict.readers.medmnist_refs import is_npz_ref, read_npz_ref

    out: list[object] = []
    for path in progress_bar(
        paths, desc="hashing", unit="file", enabled=progress and len(paths) >= 500, leave=False
    ):
        try:
            if is_npz_ref(path):
                data = np.ascontiguousarray(read_npz_ref(path)).tobytes()
            else:
                with open(path, "rb") as handle:
                    data = handle.read()
        except (OSError, ValueError):
            out.append(np.nan)
            continue
        out.append(hashlib.sha256(data).hexdigest())
    return pd.Series(out, dtype=object)


def average_hashes(images: torch.Tensor, size: int = 16) -> pd.Series:
    """Perceptual average hash of each image ``(N, C, H, W)``: equal for near-identical images.

    Each image is reduced to ``size``×``size`` grey, thresholded at its mean, and the bits
    are written as hex. Resizing, recompression and small intensity changes keep the hash.
    """
    grey = images.float().mean(dim=1, keepdim=True)
    while grey.dim() > 4:  # volumes: average over depth
        grey = grey.mean(dim=2)
    small = F.interpolate(grey, size=(size, size), mode="area").flatten(1)
    bits = (small > small.mean(dim=1, keepdim=True)).numpy()
    flat = small.std(dim=1).numpy() < 1e-6  # blank images would all hash alike
    packed = np.packbits(bits, axis=1)
    return pd.Series(
        [np.nan if f else row.tobytes().hex() for row, f in zip(packed, flat, strict=True)], dtype=object
    )
