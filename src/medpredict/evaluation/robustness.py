"""How a model holds up under image corruptions seen in radiography (MedMNIST-C), and the same as augmentation.

The corruptions are those of MedMNIST-C (Di Salvo et al., "MedMNIST-C: Comprehensive
benchmark and improved classifier robustness by simulating realistic image corruptions",
2024), implemented by the ``medmnistc`` package from PyPI; the severities are the package's
own table for PneumoniaMNIST (``medmnistc.corruptions.registry``, levels 1-5):

==================  =========================================  ===========================
name                what it simulates in an X-ray              medmnistc module
==================  =========================================  ===========================
pixelate            a lower-resolution detector / downsampling  corruptions.compression
jpeg_compression    lossy compression on the way to the PACS   corruptions.compression
gaussian_noise      electronic detector noise                  corruptions.noise
speckle_noise       multiplicative noise                       corruptions.noise
impulse_noise       dead or hot detector pixels                corruptions.noise
shot_noise          quantum mottle (Poisson noise, low dose)   corruptions.noise
gaussian_blur       patient motion / focal-spot blur           corruptions.filter
brightness_up/down  over- / under-exposure                     corruptions.enhance
contrast_up/down    kVp and post-processing differences        corruptions.enhance
gamma_corr_up/down  display LUT differences                    corruptions.enhance
==================  =========================================  ===========================

``medmnistc.corruptions.filter`` and ``.enhance`` import torchvision at module level, which
does not import beside the CPU build of PyTorch this project installs; where they cannot be
imported their corruptions are reported as unavailable (with the reason), never replaced by
code of our own. The package is installed without its declared dependencies (they would
replace torch): ``scripts/setup.sh`` does ``pip install --no-deps medmnistc`` beside the
``robustness`` extra (scikit-image, OpenCV).

Corruptions apply to the preprocessed image at the model's input size (uint8, as the
datasets hold it), one image at a time, with the global NumPy RNG seeded per image from
the caller's seed and restored afterwards (medmnistc draws from it), so results repeat.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medpredict.errors import ConfigError, DependencyError, unknown_choice
from medpredict.progress import progress_bar

log = logging.getLogger(__name__)

SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class CorruptionSpec:
    """One row of :data:`CORRUPTIONS`: the medmnistc class and its five severity parameters."""

    module: str
    cls: str
    params: tuple[float, ...]


#: medmnistc's PneumoniaMNIST table (``medmnistc/corruptions/registry.py``, version 0.1.0).
CORRUPTIONS: dict[str, CorruptionSpec] = {
    "pixelate": CorruptionSpec("compression", "Pixelate", (0.8, 0.7, 0.6, 0.5, 0.40)),
    "jpeg_compression": CorruptionSpec("compression", "JPEGCompression", (50, 30, 15, 10, 7)),
    "gaussian_noise": CorruptionSpec("noise", "GaussianNoise", (0.04, 0.05, 0.06, 0.07, 0.08)),
    "speckle_noise": CorruptionSpec("noise", "SpeckleNoise", (0.05, 0.07, 0.10, 0.15, 0.20)),
    "impulse_noise": CorruptionSpec("noise", "ImpulseNoise", (0.005, 0.01, 0.013, 0.017, 0.02)),
    "shot_noise": CorruptionSpec("noise", "ShotNoise", (300, 200, 150, 100, 80)),
    "gaussian_blur": CorruptionSpec("filter", "GaussianBlur", (3, 5, 7, 9, 11)),
    "brightness_up": CorruptionSpec("enhance", "Brightness", (1.1, 1.2, 1.3, 1.4, 1.5)),
    "brightness_down": CorruptionSpec("enhance", "Brightness", (0.9, 0.8, 0.7, 0.6, 0.5)),
    "contrast_up": CorruptionSpec("enhance", "Contrast", (1.1, 1.2, 1.3, 1.4, 1.6)),
    "contrast_down": CorruptionSpec("enhance", "Contrast", (0.9, 0.8, 0.7, 0.6, 0.4)),
    "gamma_corr_up": CorruptionSpec("enhance", "GammaCorrection", (1.1, 1.2, 1.3, 1.4, 1.6)),
    "gamma_corr_down": CorruptionSpec("enhance", "GammaCorrection", (0.9, 0.8, 0.7, 0.6, 0.4)),
}


def load_corruption(name: str) -> Any:
    """The medmnistc corruption object for ``name``, with its PneumoniaMNIST severities.

    Raises:
        ConfigError: an unknown name (with a suggestion).
        DependencyError: medmnistc or the image libraries it needs are not installed.
        ImportError: the corruption's medmnistc module cannot be imported here (torchvision).
    """
    if name not in CORRUPTIONS:
        raise unknown_choice("corruption", name, CORRUPTIONS)
    require_medmnistc()
    spec = CORRUPTIONS[name]
    module = importlib.import_module(f"medmnistc.corruptions.{spec.module}")
    return getattr(module, spec.cls)(severity_params=list(spec.params))


def require_medmnistc() -> None:
    """Refuse with the install commands when medmnistc or its image libraries are missing.

    Raises:
        DependencyError: names what to install (medmnistc itself goes in without its
            dependencies, which would replace torch).
    """
    try:
        importlib.import_module("medmnistc.corruptions.noise")  # medmnistc + OpenCV + scikit-image
    except ImportError as exc:
        raise DependencyError(
            f"Corruptions need the medmnistc package and its image libraries ({exc}). Install them with: "
            "pip install 'medpredict[robustness]' && pip install --no-deps medmnistc==0.1.0"
        ) from exc


def availability() -> dict[str, str | None]:
    """``{name: None}`` for the corruptions that load here, ``{name: reason}`` for the others."""
    out: dict[str, str | None] = {}
    for name in CORRUPTIONS:
        try:
            load_corruption(name)
            out[name] = None
        except DependencyError:
            raise
        except ImportError as exc:  # a medmnistc module that imports torchvision or wand
            out[name] = f"medmnistc.corruptions.{CORRUPTIONS[name].module} cannot be imported here ({exc})"
    return out


@contextlib.contextmanager
def _numpy_seeded(seed: int) -> Iterator[None]:
    """Seed the global NumPy RNG (which medmnistc draws from) and restore it afterwards."""
    state = np.random.get_state()
    np.random.seed(seed % (2**32))
    try:
        yield
    finally:
        np.random.set_state(state)


def corrupt_image(corruption: Any, image: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """One uint8 image ``(C, H, W)`` (C = 1 or 3) corrupted at ``severity`` (1-5), same shape and dtype."""
    from PIL import Image

    if not 1 <= severity <= len(SEVERITIES):
        raise ConfigError(f"Corruption severity must be 1-5; got {severity}.")
    grey = image.shape[0] == 1
    pil = Image.fromarray(image[0] if grey else np.moveaxis(image[:3], 0, -1), mode="L" if grey else "RGB")
    corruption.rng = np.random.default_rng(seed)  # ImpulseNoise reads it (medmnistc sets it per dataset)
    with _numpy_seeded(seed):
        out = np.asarray(corruption.apply(pil, severity=severity - 1))
    out = out.astype(np.uint8)
    if out.ndim == 3 and grey:  # some corruptions return H x W x 3 for a grey input
        out = out[..., 0]
    return out[None] if grey else np.moveaxis(out, -1, 0)


def corrupt_batch(corruption: Any, images: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 images corrupted at ``severity``; image ``i`` uses seed ``seed + i``."""
    array = images.numpy()
    out = [corrupt_image(corruption, array[i], severity, seed + i) for i in range(len(array))]
    return torch.from_numpy(np.stack(out))


def robustness_table(
    score: Callable[[torch.Tensor], np.ndarray],
    images: torch.Tensor,
    y: np.ndarray,
    *,
    metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """AUC and accuracy of a model on corrupted copies of ``images``, per corruption and severity.

    Args:
        score: maps ``(N, C, H, W)`` float32 in [0, 1] to the model's probabilities ``(N, K)``.
        images: ``(N, C, H, W)`` uint8, preprocessed for the model.
        y: ``(N,)`` true classes.
        metrics: ``metrics(y, probs) -> {"auc": ..., "accuracy": ...}`` (the evaluation's own
            rule: the locked threshold for binary models).
        corruptions: names from :data:`CORRUPTIONS`; ``None`` takes every one that loads here.

    Returns:
        ``{"clean": {"auc", "accuracy"}, "corruptions": [{"name", "severity", "auc",
        "accuracy"}], "mean_auc_drop": clean AUC minus the mean corrupted AUC,
        "unavailable": [{"name", "reason"}], "n": N}``.
    """
    names = list(corruptions) if corruptions is not None else list(CORRUPTIONS)
    for name in names:
        if name not in CORRUPTIONS:
            raise unknown_choice("corruption", name, CORRUPTIONS)
    clean = metrics(y, score(images.float().div(255)))
    rows: list[dict[str, Any]] = []
    unavailable: list[dict[str, str]] = []
    jobs = []
    for name in names:
        try:
            jobs.append((name, load_corruption(name)))
        except DependencyError:
            raise
        except ImportError as exc:
            unavailable.append({"name": name, "reason": f"medmnistc cannot load it here: {exc}"})
            log.warning("Corruption %s is unavailable: %s", name, exc)
    bar = progress_bar(total=len(jobs) * len(severities), desc="robustness", unit="setting", enabled=progress)
    for index, (name, corruption) in enumerate(jobs):
        for severity in severities:
            corrupted = corrupt_batch(corruption, images, severity, seed + 1_000_003 * index + 7919 * severity)
            got = metrics(y, score(corrupted.float().div(255)))
            rows.append({"name": name, "severity": int(severity), "auc": got["auc"], "accuracy": got["accuracy"]})
            bar.update(1)
    bar.close()
    aucs = [r["auc"] for r in rows if r["auc"] is not None and r["auc"] == r["auc"]]
    drop = float(clean["auc"] - np.mean(aucs)) if aucs and clean.get("auc") is not None else None
    return {"clean": clean, "corruptions": rows, "mean_auc_drop": drop, "unavailable": unavailable, "n": len(y)}


class CorruptionAugment:
    """Training augmentation: with ``probability``, one of ``names`` at a random severity (1-5) per image.

    Works on a float batch ``(N, C, H, W)`` in [0, 1] (after the geometric augmentation);
    the corruption, severity and each image's seed come from the training generator, so a
    run repeats exactly.

    Raises:
        ConfigError: an unknown or unloadable corruption name.
    """

    def __init__(self, names: Sequence[str], probability: float) -> None:
        if not names:
            raise ConfigError("augment.corruptions is empty; name at least one corruption or leave it out.")
        self.names = tuple(names)
        self.probability = float(probability)
        self.corruptions = []
        for name in self.names:
            try:
                self.corruptions.append(load_corruption(name))
            except DependencyError:
                raise
            except ImportError as exc:
                raise ConfigError(
                    f"augment.corruptions names '{name}', which medmnistc cannot load here ({exc}). "
                    f"Loadable here: {[n for n, why in availability().items() if why is None]}."
                ) from None

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = batch.shape[0]
        hit = torch.rand(n, generator=generator) < self.probability
        which = torch.randint(len(self.corruptions), (n,), generator=generator)
        severity = torch.randint(1, len(SEVERITIES) + 1, (n,), generator=generator)
        seeds = torch.randint(2**31 - 1, (n,), generator=generator)
        if not bool(hit.any()):
            return batch
        out = batch.clone()
        as_uint8 = batch.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
        for i in np.flatnonzero(hit.numpy()):
            image = corrupt_image(self.corruptions[int(which[i])], as_uint8[i], int(severity[i]), int(seeds[i]))
            out[i] = torch.from_numpy(image).float().div(255)
        return out
