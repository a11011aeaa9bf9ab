"""MedMNIST-C corruptions (the medmnistc package): scoring a model under them, and training with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from medpredict.errors import ConfigError
from medpredict.evaluation.robustness import (
    CORRUPTIONS,
    CorruptionAugment,
    availability,
    corrupt_image,
    load_corruption,
    robustness_table,
)

pytest.importorskip("medmnistc.corruptions.noise", reason="needs medmnistc (scripts/setup.sh installs it)")

# The corruptions whose medmnistc module imports here (noise and compression; blur and the
# exposure changes import torchvision, which does not import beside the CPU build of torch).
LOADABLE = [name for name, why in availability().items() if why is None]
IMAGE = (np.random.default_rng(0).random((1, 28, 28)) * 200 + 20).astype(np.uint8)


def test_noise_and_compression_corruptions_load() -> None:
    assert {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "pixelate", "jpeg_compression"} <= set(
        LOADABLE
    )


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "pixelate", "jpeg_compression"])
def test_corruption_is_seeded_keeps_shape_and_grows_with_severity(name: str) -> None:
    corruption = load_corruption(name)
    out = [corrupt_image(corruption, IMAGE, severity, seed=3) for severity in (1, 3, 5)]
    assert all(o.shape == IMAGE.shape and o.dtype == np.uint8 for o in out)
    change = [np.abs(o.astype(int) - IMAGE).mean() for o in out]
    assert change[0] > 0 and change[0] < change[2]
    np.testing.assert_array_equal(out[1], corrupt_image(corruption, IMAGE, 3, seed=3))  # same seed, same image
    state = np.random.get_state()[1].copy()
    corrupt_image(corruption, IMAGE, 3, seed=4)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # the global NumPy RNG is restored


def test_unknown_corruption_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="gaussian_noise"):
        load_corruption("gausian_noise")


def test_robustness_table_scores_every_loadable_corruption_and_severity() -> None:
    rng = np.random.default_rng(1)
    y = np.arange(40) % 2
    images = torch.from_numpy((rng.random((40, 1, 28, 28)) * 60 + 60).astype(np.uint8))
    images[y == 1, :, 8:20, 8:20] += 120  # class 1: a bright square that noise and pixelation blur

    def score(batch: torch.Tensor) -> np.ndarray:
        p = (batch[:, 0, 8:20, 8:20].mean((1, 2)) - batch.mean((1, 2, 3))).numpy()
        p = 1 / (1 + np.exp(-20 * p))
        return np.stack([1 - p, p], 1)

    def metrics(yy: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import roc_auc_score

        return {"auc": float(roc_auc_score(yy, probs[:, 1])), "accuracy": float(np.mean((probs[:, 1] > 0.5) == yy))}

    table = robustness_table(score, images, y, metrics=metrics, progress=False)
    assert len(table["corruptions"]) == 5 * len(LOADABLE)
    assert {r["name"] for r in table["corruptions"]} == set(LOADABLE)
    assert {u["name"] for u in table["unavailable"]} == set(CORRUPTIONS) - set(LOADABLE)
    aucs = [r["auc"] for r in table["corruptions"]]
    assert table["mean_auc_drop"] == pytest.approx(table["clean"]["auc"] - np.mean(aucs))


def test_corruption_augment_is_reproducible_and_respects_its_probability() -> None:
    batch = torch.from_numpy(np.repeat(IMAGE[None], 8, 0)).float().div(255)
    never = CorruptionAugment(["gaussian_noise"], 0.0)
    assert torch.equal(never(batch, torch.Generator().manual_seed(0)), batch)
    always = CorruptionAugment(["gaussian_noise", "pixelate"], 1.0)
    a = always(batch, torch.Generator().manual_seed(0))
    b = always(batch, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, batch)
    assert all(not torch.equal(a[i], batch[i]) for i in range(8))


def test_a_corruption_medmnistc_cannot_load_is_refused_for_training() -> None:
    missing = [name for name in CORRUPTIONS if name not in LOADABLE]
    if not missing:
        pytest.skip("every corruption loads here")
    with pytest.raises(ConfigError, match="cannot load"):
        CorruptionAugment([missing[0]], 0.5)


@pytest.mark.slow
def test_training_with_corruption_augmentation(square_npz: Path, tmp_path: Path) -> None:
    from medpredict.training.image import train

    config = tiny_config(square_npz, tmp_path, **{
        "train.epochs": 1, "augment.corruptions": ["gaussian_noise", "jpeg_compression"],
        "augment.corruption_probability": 0.5,
    })
    result = train(config, progress=False)
    meta = json.loads((result.bundle_dir / "bundle.json").read_text())
    assert meta["config"]["augment"]["corruptions"] == ["gaussian_noise", "jpeg_compression"]
    bad = tiny_config(square_npz, tmp_path, name="bad", **{"augment.corruptions": ["jpeg"]})
    with pytest.raises(ConfigError, match="jpeg_compression"):
        train(bad, progress=False)  # refused before any data is read
    assert not (tmp_path / "bad" / "splits.csv").exists()


def test_evaluate_robustness_writes_the_table(tiny_run: Path, tmp_path: Path) -> None:
    from medpredict.cli import main

    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_run), "--robustness", "--n-boot", "20", "--out", str(out)]) == 0
    robust = json.loads((out / "metrics.json").read_text())["robustness"]
    assert {"name", "severity", "auc", "accuracy"} <= set(robust["corruptions"][0])
    assert len(robust["corruptions"]) == 5 * len(LOADABLE) and robust["n"] == 48
    assert isinstance(robust["mean_auc_drop"], float)
    assert "Robustness to image corruptions" in (out / "report.html").read_text()
