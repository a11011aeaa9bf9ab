"""Image + record fusion: one network over an image encoder and a table encoder.

:class:`FusionNet` takes ``(image, record, present)``: an image batch ``(N, C, H, W)``
float32 in [0, 1], the cleaner's record matrix ``(N, F)`` float32, and a presence mask
``(N, 2)`` float (column 0: image present, column 1: record present). A modality that is
absent for a row is masked, so the model still predicts from the other one:

* ``intermediate`` fusion projects each encoder's embedding to ``fusion_dim``; a learned
  "missing" vector replaces the projection of an absent modality, and a small MLP
  classifies the concatenated projections plus the presence mask.
* ``late`` fusion gives each modality its own linear head and averages the two heads'
  logits over the modalities present in the row.

Either input may also be ``None``: that modality is absent for every row and its encoder
is not run. :func:`fusion_inputs` turns raw images and clinical records (either may be
missing per row) into the three inputs. Modality dropout (training with randomly hidden modalities, so that the
"missing" paths are learned) is :func:`drop_modalities`, applied to the presence mask of
training batches by the caller; ``forward`` itself is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import pandas as pd
import torch
from torch import nn

from medpredict.errors import ConfigError, DataError, unknown_choice
from medpredict.records.tables import clean_token

FUSION_MODES = ("intermediate", "late")
IMAGE, RECORD = 0, 1  # columns of the presence mask


def drop_modalities(present: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Hide one modality of randomly chosen rows: the training half of modality dropout.

    Each row that has both modalities loses one of them (image or record, even odds) with
    probability ``probability``. A row never loses its only modality.

    Args:
        present: ``(N, 2)`` float presence mask (image, record).
        probability: chance that a row with both modalities is reduced to one, in [0, 1].
        generator: the source of randomness (the training loop's seeded generator).

    Returns:
        A new ``(N, 2)`` mask; ``present`` is not modified.
    """
    if probability <= 0:
        return present
    both = present.min(dim=1).values > 0
    drop = both & (torch.rand(len(present), generator=generator) < probability)
    which = (torch.rand(len(present), generator=generator) < 0.5).long()  # 0: hide image, 1: hide record
    out = present.clone()
    rows = torch.nonzero(drop).flatten()
    out[rows, which[rows]] = 0.0
    return out


def _embedding_dim(encoder: nn.Module) -> int:
    dim = getattr(encoder, "embedding_dim", None)
    if not isinstance(dim, int) or dim < 1:
        raise ConfigError(
            f"{type(encoder).__name__} has no positive integer embedding_dim; fusion needs an encoder that "
            "says how long its embedding is (every model of medpredict.models does)."
        )
    return dim


class FusionNet(nn.Module):
    """An image encoder and a table encoder fused into one classifier.

    Args:
        image_encoder: an image model of :data:`medpredict.models.MODELS` (usually wrapped
            in :class:`~medpredict.models.normalised.InputNormalised`); only its
            ``features(x) -> (N, embedding_dim)`` is used.
        table_encoder: a record encoder (``RecordEncoder``/``TransformerEncoder``),
            ``(N, F) -> (N, embedding_dim)``.
        num_classes: number of logits (2 for binary tasks, which use softmax).
        mode: ``intermediate`` or ``late`` (see the module docstring).
        modality_dropout: probability the training loop hides one modality of a row (stored
            here so that it travels with the model's hyper-parameters; see
            :func:`drop_modalities`).
        fusion_dim: width each embedding is projected to (intermediate fusion).
        dropout: dropout in the fusion head.

    Raises:
        ConfigError: unknown mode, or a size or probability out of range.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        table_encoder: nn.Module,
        num_classes: int,
        *,
        mode: str = "intermediate",
        modality_dropout: float = 0.2,
        fusion_dim: int = 32,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise unknown_choice("fusion mode", mode, FUSION_MODES)
        if not 0.0 <= modality_dropout <= 1.0:
            raise ConfigError(f"modality_dropout must be in [0, 1], got {modality_dropout!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}.")
        if int(num_classes) < 1 or int(fusion_dim) < 1:
            raise ConfigError(f"num_classes ({num_classes}) and fusion_dim ({fusion_dim}) must be positive.")
        self.image_encoder = image_encoder
        self.table_encoder = table_encoder
        self.mode = mode
        self.modality_dropout = float(modality_dropout)
        self.num_classes = int(num_classes)
        image_dim, record_dim = _embedding_dim(image_encoder), _embedding_dim(table_encoder)
        self.image_dim, self.record_dim = image_dim, record_dim
        if mode == "intermediate":
            self.image_proj = nn.Sequential(nn.Linear(image_dim, fusion_dim), nn.LayerNorm(fusion_dim))
            self.record_proj = nn.Sequential(nn.Linear(record_dim, fusion_dim), nn.LayerNorm(fusion_dim))
            # What the head sees in place of an absent modality, learned during modality dropout.
            self.missing = nn.Parameter(torch.zeros(2, fusion_dim))
            self.head = nn.Sequential(
                nn.Linear(2 * fusion_dim + 2, fusion_dim),
                nn.SiLU(),
                nn.Dropout(dropout),
                nn.Linear(fusion_dim, self.num_classes),
            )
            self.embedding_dim = 2 * fusion_dim + 2
        else:
            self.image_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(image_dim, self.num_classes))
            self.record_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(record_dim, self.num_classes))
            self.embedding_dim = image_dim + record_dim
        # Grad-CAM would hook the image branch (empty when the encoder names no layer).
        layer = getattr(image_encoder, "gradcam_layer", "")
        self.gradcam_layer = f"image_encoder.{layer}" if layer else ""

    def _mask(
        self, image: torch.Tensor | None, record: torch.Tensor | None, present: torch.Tensor | None
    ) -> torch.Tensor:
        reference = image if image is not None else record
        if reference is None:
            raise ConfigError("FusionNet needs an image batch, a record batch or both; both were None.")
        n = reference.shape[0]  # not len(): the ONNX tracer keeps shape[0] dynamic
        if present is None:
            present = torch.ones(n, 2, device=reference.device)
        else:
            present = present.to(device=reference.device, dtype=torch.float32)
            if tuple(present.shape) != (n, 2):
                raise ConfigError(
                    f"The presence mask must be (N, 2) = ({n}, 2) (image, record); got {tuple(present.shape)}."
                )
        if image is None:
            present = present * present.new_tensor([0.0, 1.0])
        if record is None:
            present = present * present.new_tensor([1.0, 0.0])
        return present

    def _embeddings(
        self, image: torch.Tensor | None, record: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        encode_image = cast(Callable[[torch.Tensor], torch.Tensor], self.image_encoder.features)
        image_z = encode_image(image) if image is not None else None
        record_z = self.table_encoder(record) if record is not None else None
        return image_z, record_z

    def forward(
        self, image: torch.Tensor | None, record: torch.Tensor | None = None, present: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``(N, num_classes)``; rows whose modalities are all absent get zero logits.

        ``model(image)`` alone predicts from the image branch, which is what Grad-CAM calls.
        """
        present = self._mask(image, record, present)
        image_z, record_z = self._embeddings(image, record)
        if self.mode == "late":
            return self._late(image_z, record_z, present)
        return self.head(self.features_from(image_z, record_z, present))

    def features(
        self, image: torch.Tensor | None, record: torch.Tensor | None = None, present: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The fused representation ``(N, embedding_dim)`` (absent modalities masked)."""
        present = self._mask(image, record, present)
        image_z, record_z = self._embeddings(image, record)
        if self.mode == "intermediate":
            return self.features_from(image_z, record_z, present)
        n = present.shape[0]
        if image_z is None:
            image_z = present.new_zeros(n, self.image_dim)
        if record_z is None:
            record_z = present.new_zeros(n, self.record_dim)
        return torch.cat([image_z * present[:, IMAGE : IMAGE + 1], record_z * present[:, RECORD : RECORD + 1]], dim=1)

    def features_from(
        self, image_z: torch.Tensor | None, record_z: torch.Tensor | None, present: torch.Tensor
    ) -> torch.Tensor:
        """Intermediate fusion: projections with absent ones replaced by the learned vectors."""
        n = present.shape[0]
        parts = []
        for k, (z, proj) in enumerate(((image_z, self.image_proj), (record_z, self.record_proj))):
            missing = self.missing[k].expand(n, -1)
            if z is None:
                parts.append(missing)
                continue
            keep = present[:, k : k + 1]
            parts.append(keep * proj(z) + (1.0 - keep) * missing)
        return torch.cat([*parts, present], dim=1)

    def _late(self, image_z: torch.Tensor | None, record_z: torch.Tensor | None, present: torch.Tensor) -> torch.Tensor:
        total = present.new_zeros(present.shape[0], self.num_classes)
        if image_z is not None:
            total = total + present[:, IMAGE : IMAGE + 1] * self.image_head(image_z)
        if record_z is not None:
            total = total + present[:, RECORD : RECORD + 1] * self.record_head(record_z)
        return total / present.sum(dim=1, keepdim=True).clamp(min=1.0)


# --------------------------------------------------------------------------- inputs


def _rows(values: torch.Tensor | Sequence[torch.Tensor | None] | None, n: int, what: str) -> list[torch.Tensor | None]:
    if values is None:
        return [None] * n
    rows = list(values)
    if len(rows) > n:
        raise DataError(f"Got {len(rows)} {what}s for {n} rows; give at most one {what} per row.")
    return rows + [None] * (n - len(rows))


def prepare_fusion_batch(
    images: torch.Tensor | Sequence[torch.Tensor | None] | None,
    records: torch.Tensor | Sequence[torch.Tensor | None] | None,
    n: int,
    *,
    image_shape: Sequence[int] | None = None,
    record_width: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Stack prepared inputs, any of which may be missing, into ``FusionNet``'s inputs.

    Args:
        images: ``(N, C, H, W)`` float32 in [0, 1], or a list of ``(C, H, W)`` tensors with
            ``None`` for rows without an image, or ``None`` (no images at all). A list
            shorter than ``n`` leaves the last rows without an image.
        records: ``(N, F)`` cleaner output, or a list of ``(F,)`` rows / ``None``, or ``None``.
        n: number of rows.
        image_shape / record_width: one image's ``(C, H, W)`` and the record width ``F``;
            given, a modality no row has becomes zeros (masked) instead of ``None``, so the
            batch suits a graph with fixed inputs (ONNX). The prediction is the same.

    Returns:
        ``(image, record, present)``: stacked tensors (zeros in absent rows; ``None`` when no
        row has that modality and its shape is not given) and the ``(N, 2)`` float presence
        mask (image, record).

    Raises:
        DataError: a row has neither an image nor a record, or a list is longer than ``n``.
    """
    image_rows, record_rows = _rows(images, n, "image"), _rows(records, n, "record")
    present = torch.tensor(
        [[float(i is not None), float(r is not None)] for i, r in zip(image_rows, record_rows, strict=True)],
        dtype=torch.float32,
    ).reshape(n, 2)
    empty = torch.nonzero(present.sum(dim=1) == 0).flatten().tolist()
    if empty:
        raise DataError(
            f"Rows {empty[:10]} have neither an image nor a clinical record; give at least one of them per row."
        )

    def stack(rows: list[torch.Tensor | None], shape: Sequence[int] | None) -> torch.Tensor | None:
        given = [r for r in rows if r is not None]
        if not given:
            return None if shape is None else torch.zeros((n, *shape), dtype=torch.float32)
        template = torch.zeros_like(torch.as_tensor(given[0], dtype=torch.float32))
        return torch.stack([template if r is None else torch.as_tensor(r, dtype=torch.float32) for r in rows])

    record_shape = None if record_width is None else (record_width,)
    return stack(image_rows, image_shape), stack(record_rows, record_shape), present


def fusion_inputs(
    images: Sequence[Any] | None,
    records: Sequence[Mapping[str, Any] | None] | None,
    *,
    prepare_image: Callable[[Any], torch.Tensor],
    cleaner: Any,
    image_shape: Sequence[int] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Raw images and clinical records (either may be ``None`` per row) -> ``FusionNet`` inputs.

    Args:
        images: arrays as out of the readers, or paths; ``None`` entries for missing images.
        records: dicts of clinical values; ``None``, or a dict with no value for any of the
            model's columns, means no record for that row.
        prepare_image: one image -> ``(C, H, W)`` in [0, 1] (the predictor's ``prepare``).
        cleaner: the bundle's fitted :class:`~medpredict.records.cleaning.TableCleaner`.
        image_shape: one prepared image's ``(C, H, W)``; given, a batch without images gets
            masked zeros in their place (see :func:`prepare_fusion_batch`). Absent records
            always become masked zeros of the cleaner's width.

    Raises:
        DataError: a row has neither modality, or a record lacks a column the model reads.
    """
    images, records = list(images or []), list(records or [])
    n = max(len(images), len(records))
    if n == 0:
        raise DataError("No inputs given: send images, clinical records or both.")
    columns = list(cleaner.columns_)
    given = [
        i for i, r in enumerate(records) if r is not None and any(clean_token(r.get(c)) is not None for c in columns)
    ]
    record_rows: list[torch.Tensor | None] = [None] * n
    if given:
        frame = pd.DataFrame([dict(records[i]) for i in given]).astype(object)  # type: ignore[arg-type]
        cleaned = torch.as_tensor(cleaner.transform(frame), dtype=torch.float32)
        for row, i in zip(cleaned, given, strict=True):
            record_rows[i] = row
    image_rows = [None if image is None else prepare_image(image) for image in images]
    return prepare_fusion_batch(
        image_rows, record_rows, n, image_shape=image_shape, record_width=len(cleaner.feature_names_)
    )
