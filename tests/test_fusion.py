"""Image + record fusion: FusionNet masking, modality dropout, input batching, and training.

The training tests use a synthetic paired set in which each modality carries half of the
signal: a bright top-left corner in the image (latent ``a``) and two lab values (latent
``b``), with ``label = a + b + noise > 0``. Either half alone can reach an AUC of about
0.75; both together about 0.97. Some rows have no image and some no record.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medpredict.errors import ConfigError, DataError
from medpredict.models import build_model
from medpredict.models.fusion import FusionNet, drop_modalities, fusion_inputs, prepare_fusion_batch
from medpredict.models.records import RecordEncoder
from medpredict.training.fusion import train_fusion

N_ROWS = 400
CLINICAL = ["lab_a", "lab_b", "noise_1", "noise_2", "smoker"]


def make_paired_manifest(folder: Path, *, n: int = N_ROWS, seed: int = 0) -> Path:
    """400 rows (200 patients, two visits each) in ``manifest.csv``, images in ``paired.npz``."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)  # the image's half of the signal
    b1, b2 = rng.normal(size=n), rng.normal(size=n)
    y = (a + (b1 + b2) / np.sqrt(2) + 0.3 * rng.normal(size=n) > 0).astype(int)
    images = rng.normal(100, 20, size=(n, 16, 16))
    images[:, 1:6, 1:6] += 40 * a[:, None, None]  # corner brightness tracks a
    np.savez_compressed(
        folder / "paired.npz",
        train_images=np.clip(images, 0, 255).astype(np.uint8),
        train_labels=y.reshape(-1, 1).astype(np.uint8),
    )
    frame = pd.DataFrame(
        {
            "image_path": [f"paired.npz::train_images/{i}" for i in range(n)],
            "patient_id": [f"p{i // 2:03d}" for i in range(n)],
            "lab_a": (100 + 15 * b1).round(1),  # the record's half of the signal ...
            "lab_b": (5 + b2).round(2),  # ... in two columns
            "noise_1": rng.normal(50, 10, n).round(1),
            "noise_2": rng.normal(size=n).round(2),
            "smoker": rng.choice(["never", "former", "current"], n),
            "label": np.where(y == 1, "disease", "healthy"),
        }
    )
    for column in ("lab_a", "lab_b", "noise_1"):
        frame.loc[rng.random(n) < 0.08, column] = np.nan
    frame["image_path"] = frame["image_path"].astype(object)
    frame.loc[rng.choice(n, 12, replace=False), "image_path"] = None  # rows without an image
    no_record = rng.choice(n, 12, replace=False)
    frame.loc[no_record, CLINICAL] = None  # rows without a record
    path = folder / "manifest.csv"
    frame.to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- the network


def _net(mode: str, *, n_continuous: int = 3) -> FusionNet:
    torch.manual_seed(0)
    image = build_model("small-cnn", in_channels=1, num_classes=2)
    table = RecordEncoder(n_continuous, [], hidden=(8,))
    return FusionNet(image, table, 2, mode=mode, dropout=0.0).eval()


@pytest.mark.parametrize("mode", ["intermediate", "late"])
def test_an_absent_modality_does_not_change_the_prediction(mode: str) -> None:
    net = _net(mode)
    image, record = torch.rand(4, 1, 16, 16), torch.randn(4, 3)
    present = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    with torch.no_grad():
        base = net(image, record, present)
        other = net(torch.rand(4, 1, 16, 16), torch.randn(4, 3), present)
        no_image = net(None, record, torch.ones(4, 2))
        no_record = net(image, None)
    # row 1 has no image: only its record counts; row 2 has no record: only its image counts
    torch.testing.assert_close(base[1], net(torch.zeros_like(image), record, present)[1].detach())
    torch.testing.assert_close(base[2], net(image, torch.zeros_like(record), present)[2].detach())
    assert not torch.allclose(base[0], other[0])  # both present: both inputs matter
    # None means "absent in every row" and skips the encoder
    torch.testing.assert_close(no_image, net(image, record, torch.tensor([[0.0, 1.0]] * 4)).detach())
    torch.testing.assert_close(no_record, net(image, record, torch.tensor([[1.0, 0.0]] * 4)).detach())
    assert net.features(image, record, present).shape == (4, net.embedding_dim)


def test_late_fusion_averages_the_heads_of_the_present_modalities() -> None:
    net = _net("late")
    image, record = torch.rand(3, 1, 16, 16), torch.randn(3, 3)
    with torch.no_grad():
        image_logits = net.image_head(net.image_encoder.features(image))
        record_logits = net.record_head(net.table_encoder(record))
        out = net(image, record, torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(out[0], (image_logits[0] + record_logits[0]) / 2)
    torch.testing.assert_close(out[1], image_logits[1])
    torch.testing.assert_close(out[2], record_logits[2])


def test_fusion_net_refuses_bad_arguments() -> None:
    image = build_model("small-cnn", in_channels=1, num_classes=2)
    table = RecordEncoder(3, [], hidden=(8,))
    with pytest.raises(ConfigError, match="Did you mean 'late'"):
        FusionNet(image, table, 2, mode="lates")
    with pytest.raises(ConfigError, match="modality_dropout"):
        FusionNet(image, table, 2, modality_dropout=1.5)
    with pytest.raises(ConfigError, match=r"\(N, 2\)"):
        FusionNet(image, table, 2)(torch.rand(2, 1, 16, 16), torch.randn(2, 3), torch.ones(2, 3))


def test_modality_dropout_hides_one_modality_and_never_the_only_one() -> None:
    present = torch.tensor([[1.0, 1.0]] * 4000 + [[1.0, 0.0]] * 500 + [[0.0, 1.0]] * 500)
    out = drop_modalities(present, 0.3, torch.Generator().manual_seed(0))
    assert out.sum(dim=1).min() == 1  # every row keeps a modality
    torch.testing.assert_close(out[4000:], present[4000:])  # single-modality rows untouched
    reduced = out[:4000].sum(dim=1) == 1
    assert 0.26 < reduced.float().mean() < 0.34
    hidden_image = (out[:4000][reduced][:, 0] == 0).float().mean()
    assert 0.4 < hidden_image < 0.6  # image and record hidden about equally often
    torch.testing.assert_close(out, drop_modalities(present, 0.3, torch.Generator().manual_seed(0)))
    assert present.sum() == 9000  # the input is not modified
    assert drop_modalities(present, 0.0, torch.Generator()) is present


def test_prepare_fusion_batch_stacks_inputs_with_gaps() -> None:
    image = torch.rand(1, 8, 8)
    images, records, present = prepare_fusion_batch([image, None], [None, torch.ones(3), torch.ones(3)], 3)
    assert images is not None and records is not None
    assert images.shape == (3, 1, 8, 8) and records.shape == (3, 3)
    torch.testing.assert_close(present, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))
    torch.testing.assert_close(images[0], image)
    assert images[1:].abs().sum() == 0 and records[0].abs().sum() == 0
    none_images, _, present = prepare_fusion_batch(None, torch.ones(2, 3), 2)
    assert none_images is None and present[:, 0].sum() == 0
    with pytest.raises(DataError, match=r"Rows \[1\] have neither"):
        prepare_fusion_batch([image, None], [torch.ones(3)], 2)
    with pytest.raises(DataError, match="at most one image per row"):
        prepare_fusion_batch([image] * 3, None, 2)


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_paired_manifest(tmp_path_factory.mktemp("paired"))


@pytest.fixture(scope="module")
def hidden() -> dict[str, list[tuple[float, float]]]:
    """Per run: (probability, share of two-modality rows hidden) of every modality-dropout call."""
    return {}


@pytest.fixture(scope="module")
def runs(
    paired: Path, tmp_path_factory: pytest.TempPathFactory, hidden: dict[str, list[tuple[float, float]]]
) -> dict[str, object]:
    """Fused (intermediate and late), image-only and record-only runs on the same split."""
    from medpredict.config import TrainConfig
    from medpredict.training import fusion as fusion_trainer

    real_drop = fusion_trainer.drop_modalities
    current: list[str] = []

    def spy(present: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
        out = real_drop(present, probability, generator)
        both = present.sum(dim=1) == 2
        share = float((out[both].sum(dim=1) < 2).float().mean()) if both.any() else 0.0
        hidden.setdefault(current[-1], []).append((probability, share))
        return out

    out = tmp_path_factory.mktemp("fusion_runs")
    train = TrainConfig(epochs=15, batch_size=32, lr=0.01, patience=20, threads=1, seed=0)
    variants = {
        "intermediate": {"mode": "intermediate"},
        "late": {"mode": "late"},
        "image": {"modalities": ("image",)},
        "record": {"modalities": ("record",)},
    }
    with pytest.MonkeyPatch.context() as patch:
        # curves.png is redrawn every epoch (~0.6 s each), longer than a 16-px epoch takes
        patch.setattr("medpredict.training.engine._plot_curves", lambda history, path: None)
        patch.setattr(fusion_trainer, "drop_modalities", spy)
        trained = {}
        for name, options in variants.items():
            current.append(name)
            trained[name] = train_fusion(
                paired,
                target="label",
                out=out / name,
                image_model="small-cnn",
                image_size=16,
                train=train,
                val_fraction=0.2,
                test_fraction=0.2,
                n_boot=50,
                progress=False,
                **options,  # type: ignore[arg-type]
            )
        return trained


def _auc(run: object, view: str, split: str) -> float:
    return float(run.metrics["views"][view][split]["auc"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["intermediate", "late"])
def test_fused_model_beats_each_single_modality(runs: dict[str, object], mode: str) -> None:
    # same patients in the same splits for every variant
    for name in ("image", "record", "late"):
        assert (runs[name].splits == runs["intermediate"].splits).all()  # type: ignore[attr-defined]
    for split in ("val", "test"):
        fused = _auc(runs[mode], "fused", split)
        image_only, record_only = _auc(runs["image"], "fused", split), _auc(runs["record"], "fused", split)
        assert fused > max(image_only, record_only) + 0.05, (split, fused, image_only, record_only)
        assert min(image_only, record_only) > 0.65  # each modality does carry signal


@pytest.mark.parametrize("mode", ["intermediate", "late"])
def test_fused_model_predicts_with_one_modality_absent(runs: dict[str, object], mode: str) -> None:
    for split in ("val", "test"):
        # modality dropout taught the fused model to stand on either leg alone
        assert _auc(runs[mode], "image_only", split) > 0.7
        assert _auc(runs[mode], "record_only", split) > 0.65
        assert _auc(runs[mode], "fused", split) > _auc(runs[mode], "image_only", split)


def test_training_batches_get_modality_dropout(runs: dict[str, object], hidden: dict[str, list]) -> None:
    calls = hidden["intermediate"]
    assert len(calls) >= 15 * 7  # every training batch of every epoch (7-8 batches of 32)
    assert {p for p, _ in calls} == {0.2}
    assert 0.12 < float(np.mean([share for _, share in calls])) < 0.28
    # a single-modality ablation has nothing to drop
    assert {p for p, _ in hidden["image"]} == {0.0} and {p for p, _ in hidden["record"]} == {0.0}


def test_bundle_rebuilds_and_predicts_through_the_predictor(runs: dict[str, object], paired: Path) -> None:
    """The wiring the Predictor needs for input_kind 'fusion', exercised with the real Predictor class."""
    from medpredict.bundle.schema import read_bundle
    from medpredict.inference.predictor import Predictor

    run = runs["intermediate"]
    bundle = read_bundle(run.run_dir)  # type: ignore[attr-defined]
    assert bundle.meta["input_kind"] == "fusion" and bundle.meta["model"]["kind"] == "fusion"
    assert bundle.info.kind == "fused" and bundle.info.config.kind == "fused"
    assert bundle.info.labels == ("disease", "healthy") and bundle.info.threshold is not None
    assert bundle.info.data["with_image"]["train"] < bundle.info.data["rows"]["train"]
    model = bundle.info.build_network()
    model.load_state_dict(bundle.state_dict)
    predictor = Predictor(bundle, model, torch.device("cpu"), bundle.cleaner())
    assert predictor.input_columns == CLINICAL

    frame = pd.read_csv(paired)
    with np.load(paired.parent / "paired.npz") as npz:
        pixels = npz["train_images"]
    test_rows = np.flatnonzero(run.splits == "test")  # type: ignore[attr-defined]
    images = [None if pd.isna(frame.at[i, "image_path"]) else pixels[i] / 255.0 for i in test_rows]
    records = [{c: (None if pd.isna(v) else v) for c, v in frame.loc[i, CLINICAL].items()} for i in test_rows]
    y = (frame["label"].iloc[test_rows] == "healthy").to_numpy().astype(int)

    def probabilities(images: list | None, records: list | None) -> np.ndarray:
        inputs = fusion_inputs(images, records, prepare_image=predictor.prepare, cleaner=predictor.cleaner)
        with torch.no_grad():
            logits = predictor.model(*inputs).float().numpy()
        return predictor.calibrate(logits)

    both = probabilities(images, records)
    stored = pd.read_csv(run.run_dir / "test_predictions.csv")  # type: ignore[attr-defined]
    np.testing.assert_allclose(both, stored[["p_disease", "p_healthy"]].to_numpy(), atol=1e-4)
    has_image = np.array([i is not None for i in images])
    has_record = np.array([any(v is not None for v in r.values()) for r in records])
    image_alone = probabilities([images[i] for i in np.flatnonzero(has_image)], None)
    record_alone = probabilities(None, [records[i] for i in np.flatnonzero(has_record)])
    for probs, rows in ((image_alone, has_image), (record_alone, has_record)):
        assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert roc_auc_score(y[rows], probs[:, 1]) > 0.65
    with pytest.raises(DataError, match="neither"):
        fusion_inputs([None], [{"lab_a": None}], prepare_image=predictor.prepare, cleaner=predictor.cleaner)


def test_run_folder_splits_by_patient_and_fits_the_cleaner_on_training_rows(
    runs: dict[str, object], paired: Path
) -> None:
    run = runs["intermediate"]
    frame = pd.read_csv(paired)
    sides = pd.Series(run.splits).groupby(frame["patient_id"]).nunique()  # type: ignore[attr-defined]
    assert (sides == 1).all()
    cleaner = json.loads((run.run_dir / "model" / "cleaner.json").read_text())  # type: ignore[attr-defined]
    train = frame[run.splits == "train"]  # type: ignore[attr-defined]
    assert cleaner["columns"]["lab_a"]["median"] == pytest.approx(train["lab_a"].median())
    assert cleaner["columns"]["lab_a"]["median"] != pytest.approx(frame["lab_a"].median())
    for name in ("config.yaml", "metrics.json", "splits.csv", "test_predictions.csv", "metrics.jsonl"):
        assert (run.run_dir / name).is_file()  # type: ignore[attr-defined]
    assert "p0" not in (run.run_dir / "test_predictions.csv").read_text()  # type: ignore[attr-defined]


def test_train_fusion_refuses_bad_input(paired: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Clinical column"):
        train_fusion(paired, clinical_columns=["lab_c"], out=tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="Did you mean 'intermediate'"):
        train_fusion(paired, mode="intermediat", out=tmp_path / "x", progress=False)
    table = tmp_path / "records.csv"
    pd.read_csv(paired).drop(columns="image_path").to_csv(table, index=False)
    with pytest.raises(DataError, match="records train"):
        train_fusion(table, out=tmp_path / "x", progress=False)


def test_cli_trains_a_fusion_model(paired: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medpredict.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("medpredict.training.engine._plot_curves", lambda history, path: None)
        code = main(
            [
                "-q",
                "fusion",
                "train",
                str(paired),
                "--out",
                str(tmp_path / "cli"),
                "--image-model",
                "small-cnn",
                "--image-size",
                "16",
                "--epochs",
                "1",
                "--mode",
                "late",
                "--clinical-columns",
                "lab_a,lab_b",
            ]
        )
    assert code == 0
    printed = capsys.readouterr().out
    assert "fused" in printed and "image_only" in printed and "Run folder" in printed
    meta = json.loads((tmp_path / "cli" / "model" / "bundle.json").read_text())
    assert meta["model"]["mode"] == "late" and meta["preprocess"]["input_columns"] == ["lab_a", "lab_b"]


def test_predictor_from_bundle_predicts_with_either_modality_missing(runs: dict[str, object], paired: Path) -> None:
    from medpredict.inference.predictor import Predictor

    run = runs["intermediate"]
    predictor = Predictor.from_bundle(run.run_dir)  # type: ignore[attr-defined]
    frame = pd.read_csv(paired)
    with np.load(paired.parent / "paired.npz") as npz:
        pixels = npz["train_images"]
    row = int(np.flatnonzero(frame["image_path"].notna() & frame[CLINICAL].notna().all(axis=1))[0])
    record = {c: frame.at[row, c] for c in CLINICAL}
    image = pixels[row] / 255.0
    both, image_only, record_only = (
        predictor.predict(images=[image], records=[record])[0],
        predictor.predict(images=[image])[0],
        predictor.predict(records=[record])[0],
    )
    for prediction in (both, image_only, record_only):
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0)
        assert prediction.label in ("disease", "healthy")
    with pytest.raises(DataError, match="neither"):
        predictor.predict(images=[None], records=[None])
