"""Seed ensembles: several trained image runs of one recipe joined into one bundle.

``ensemble_runs([RUN_A, RUN_B, ...], out=RUN)`` loads the runs' networks (same network,
input size, classes and data; small-data ensembles are flattened into their fold models),
joins them into one :class:`~medpredict.models.ensemble.EnsembleNet` (the mean of their
logits), and post-fits the ensemble as training post-fits one network — calibration, the
locked threshold and conformal sets on the validation split's ensemble logits, the input
guard on the ensemble's features (:mod:`medpredict.training.postfit`) — then writes a
normal run folder with a verified bundle (``model.members`` = the number of networks).

Validation logits of members that were themselves cross-fitted include cases they trained
on; post-fit then trusts the validation split less than it should, so joining small-data
runs is refused unless ``allow_in_sample=True``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpredict.atomic import write_text
from medpredict.bundle.kinds import ImageNet
from medpredict.bundle.schema import BundleMeta, ModelBundle, read_bundle, write_bundle
from medpredict.errors import ConfigError
from medpredict.training import policy
from medpredict.training.engine import predict_logits
from medpredict.training.postfit import fit_input_guard, pooled_features, post_fit, resolve_positive

log = logging.getLogger(__name__)


def _members(bundle: ModelBundle) -> list[torch.nn.Module]:
    from medpredict.models.ensemble import EnsembleNet

    net = bundle.info.build_network()
    net.load_state_dict(bundle.state_dict)
    return list(net.members) if isinstance(net, EnsembleNet) else [net]


def _check_compatible(bundles: list[ModelBundle]) -> None:
    first = bundles[0].info
    for bundle in bundles[1:]:
        info = bundle.info
        problems = [
            what for what, same in (
                ("kind", info.kind == first.kind == "image"),
                ("classes", info.labels == first.labels and info.task == first.task),
                ("network", isinstance(info.model, ImageNet) and isinstance(first.model, ImageNet)
                 and dataclasses.replace(info.model, members=1) == dataclasses.replace(first.model, members=1)),
                ("input", info.image is not None and first.image is not None
                 and info.image.shape == first.image.shape),
                ("data", info.config.data == first.config.data),
            ) if not same
        ]
        if problems:
            raise ConfigError(
                f"{bundle.path} cannot join an ensemble with {bundles[0].path}: their {', '.join(problems)} differ. "
                "Join runs of one recipe that differ only in their seed."
            )


def ensemble_runs(
    runs: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str],
    name: str | None = None,
    allow_in_sample: bool = False,
    progress: bool = False,
) -> Path:
    """Join ``runs`` into one ensemble run folder at ``out`` (see the module docstring); returns its bundle.

    Raises:
        ConfigError: fewer than two runs, runs of different recipes, small-data runs without
            ``allow_in_sample``, or ``out`` already holding a bundle.
    """
    from medpredict.data.transforms import Normalisation
    from medpredict.evaluation.metrics import classification_metrics
    from medpredict.models.ensemble import EnsembleNet
    from medpredict.training.image import build_dataset, image_input, load_data

    if len(runs) < 2:
        raise ConfigError(f"An ensemble joins at least two runs; got {len(runs)}.")
    out = Path(out)
    if (out / "model" / "bundle.json").exists():
        raise ConfigError(f"{out} already holds a bundle; choose another --out.")
    bundles = [read_bundle(run) for run in runs]
    not_images = [str(b.path) for b in bundles if b.info.kind != "image"]
    if not_images:
        raise ConfigError(f"Only image runs join an ensemble; {not_images} hold other kinds of model.")
    _check_compatible(bundles)
    if not allow_in_sample and any((b.info.training or {}).get("small_data") for b in bundles):
        raise ConfigError(
            "A small-data run's validation cases were training cases of its fold models; joining it would fit "
            "calibration in-sample. Pass allow_in_sample=True to do it anyway."
        )
    members = [m for b in bundles for m in _members(b)]
    ensemble = EnsembleNet(members).eval()
    first = bundles[0].info
    config = first.config.replace({"name": name or out.name, "out_dir": str(out.parent)})
    manifest = load_data(config)
    train_frame, val_frame = manifest.split("train"), manifest.split("val")
    val_set = build_dataset(val_frame, config, manifest.task, progress=progress)
    train_set = build_dataset(train_frame, config, manifest.task, progress=progress)
    num_outputs = len(first.labels)
    counts = np.bincount(train_set.target.numpy(), minlength=num_outputs)
    positive = resolve_positive(config.data.positive, first.labels, first.task)
    fields, val_probs = post_fit(
        predict_logits(ensemble, val_set), val_set.target.numpy(), first.task, first.labels,
        class_weights=policy.class_weights(counts, config.train.class_weighting), positive_index=positive,
        seed=config.train.seed,
    )
    rows = np.sort(np.random.default_rng(config.train.seed).permutation(len(train_set))[:5000])
    guard = fit_input_guard(
        pooled_features(ensemble, train_set.inputs[0], index=rows), train_set.target.numpy()[rows],
        pooled_features(ensemble, val_set.inputs[0]),
    )
    threshold = fields["threshold"]["threshold"] if fields.get("threshold") else None
    val_metrics = classification_metrics(val_set.target.numpy(), val_probs, labels=list(first.labels),
                                         threshold=threshold, n_boot=0)
    if first.image is None or not isinstance(first.model, ImageNet):
        raise ConfigError(f"{bundles[0].path} is not an image model; only image runs join an ensemble.")
    meta = BundleMeta(
        name=config.name, kind="image", task=first.task, labels=first.labels, config=config,
        model=dataclasses.replace(first.model, members=len(members)),
        image=image_input(config, Normalisation(first.image.mean, first.image.std)),
        **fields,
        positive_label=first.positive_label, intended_use=first.intended_use, val_metrics=val_metrics,
        reference_stats=first.reference_stats, data=first.data,
        training={"ensemble_of": [_describe(b) for b in bundles], "members": len(members)},
    )
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", config.to_yaml())
    bundle_dir = write_bundle(out / "model", meta, state_dict=ensemble.state_dict(), guard=guard)
    log.info("Ensemble of %d networks from %d runs written to %s (validation AUC %.4f).",
             len(members), len(bundles), bundle_dir, val_metrics.get("auc", float("nan")))
    return bundle_dir


def _describe(bundle: ModelBundle) -> dict[str, Any]:
    sums = bundle.read_json("checksums.json") or {}
    return {
        "run": str(bundle.path.parent),
        "seed": bundle.info.config.train.seed,
        "weights_sha256": sums.get("files", {}).get("weights.safetensors", ""),
        "val_auc": (bundle.info.val_metrics or {}).get("auc"),
    }
