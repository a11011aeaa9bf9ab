"""What a model was built for, and whether an input's DICOM tags contradict it.

A bundle declares its intended use: the modalities, body parts and views of its training
images (read from their DICOM tags when the training data is DICOM, else set by the user
or the recipe), the image channels and the range of image sizes it saw. At prediction time
:meth:`IntendedUse.contradictions` compares an input's tags with that declaration: a tag
that is present and names something else (a head MR sent to a chest radiograph model) is a
contradiction and the input is refused. A tag that is absent contradicts nothing; the
out-of-distribution detector (:mod:`medpredict.calibration.ood`) is the second line.

Values are compared upper-case with spaces and underscores folded, and a few synonyms
archives use for the same body part are accepted (``THORAX`` for ``CHEST``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from medpredict.errors import ConfigError, did_you_mean

#: DICOM keywords the check reads, and the intended-use field each one is compared with.
TAGS = {"Modality": "modalities", "BodyPartExamined": "body_parts", "ViewPosition": "views"}

#: Body-part spellings archives use for one region (CID 4031 term first).
_BODY_PART_SYNONYMS = {
    "CHEST": ("CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_PA", "CHEST_AP"),
}

#: Intended use of a chest radiograph model (the demo's and the Kermany recipes').
CHEST_RADIOGRAPH: dict[str, Any] = {
    "description": "frontal chest radiographs (X-ray)",
    "modalities": ["CR", "DX"],
    "body_parts": ["CHEST"],
    "views": ["PA", "AP"],
}


def _fold(value: Any) -> str:
    return " ".join(str(value).upper().replace("_", " ").split())


def _as_tuple(values: Any, key: str) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, Iterable):
        raise ConfigError(f"intended_use.{key} must be a list of strings (e.g. [CR, DX]); got {values!r}.")
    out = tuple(_fold(v) for v in values if str(v).strip())
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class IntendedUse:
    """The inputs a model was built for. Empty tuples mean "not declared" (nothing is checked).

    Attributes:
        description: one line for people, e.g. "frontal chest radiographs (X-ray)".
        modalities: DICOM Modality values, e.g. ``("CR", "DX")``.
        body_parts: DICOM Body Part Examined values, e.g. ``("CHEST",)``.
        views: DICOM View Position values, e.g. ``("PA", "AP")``.
        channels: image channels the network takes (1 grey, 3 colour), or None.
        size_range: ``(smallest, largest)`` image side in pixels seen in training, or None.
        source: where the declaration came from: ``"dicom"`` (training tags), ``"user"``
            (config), ``"recipe"`` (a built-in recipe such as the demo's), or ``"none"``.
    """

    description: str = ""
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    channels: int | None = None
    size_range: tuple[int, int] | None = None
    source: str = "none"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> IntendedUse:
        """Rebuild from :meth:`to_dict` output or a config mapping (lists of strings).

        Raises:
            ConfigError: an unknown key or a value of the wrong type (names it).
        """
        if not data:
            return cls()
        known = {"description", "modalities", "body_parts", "views", "channels", "size_range", "source"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown intended_use key(s) {unknown}{did_you_mean(unknown[0], known)}; "
                f"valid keys: {sorted(known)}."
            )
        size = data.get("size_range")
        return cls(
            description=str(data.get("description") or ""),
            modalities=_as_tuple(data.get("modalities"), "modalities"),
            body_parts=_as_tuple(data.get("body_parts"), "body_parts"),
            views=_as_tuple(data.get("views"), "views"),
            channels=None if data.get("channels") is None else int(data["channels"]),
            size_range=None if not size else (int(size[0]), int(size[1])),
            source=str(data.get("source") or "user"),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for ``bundle.json``."""
        return {
            "description": self.description,
            "modalities": list(self.modalities),
            "body_parts": list(self.body_parts),
            "views": list(self.views),
            "channels": self.channels,
            "size_range": None if self.size_range is None else list(self.size_range),
            "source": self.source,
        }

    @property
    def declared(self) -> bool:
        """True when at least one DICOM-checkable field is declared."""
        return bool(self.modalities or self.body_parts or self.views)

    def summary(self) -> str:
        """One line for people: what the model is for."""
        parts = [self.description] if self.description else []
        for label, values in (("modality", self.modalities), ("body part", self.body_parts), ("view", self.views)):
            if values:
                parts.append(f"{label} {'/'.join(values)}")
        return "; ".join(parts) or "not declared"

    def contradictions(self, tags: Mapping[str, Any]) -> list[str]:
        """Reasons the DICOM ``tags`` (keyword -> value) contradict this intended use; empty if none.

        A missing or empty tag contradicts nothing. Example reason:
        ``"Modality is MR; this model is for CR/DX"``.
        """
        reasons = []
        for keyword, attribute in TAGS.items():
            allowed: tuple[str, ...] = getattr(self, attribute)
            raw = tags.get(keyword)
            if not allowed or raw is None or not str(raw).strip():
                continue
            value = _fold(raw)
            if not _allowed(value, allowed, attribute):
                reasons.append(f"{keyword} is {value}; this model is for {'/'.join(allowed)}")
        return reasons


def _allowed(value: str, allowed: tuple[str, ...], attribute: str) -> bool:
    if value in allowed:
        return True
    if attribute == "body_parts":
        for name in allowed:
            synonyms = {_fold(s) for s in _BODY_PART_SYNONYMS.get(name, ())}
            if value in synonyms:
                return True
    return False


def tags_of(dataset: Any) -> dict[str, str]:
    """The keywords :data:`TAGS` reads from a pydicom ``Dataset`` (absent ones left out).

    Only these three non-identifying attributes are read, so the result is safe to log.
    """
    out = {}
    for keyword in TAGS:
        value = getattr(dataset, keyword, None)
        if value is not None and str(value).strip():
            out[keyword] = str(value)
    return out


def from_training_tags(tag_rows: Iterable[Mapping[str, Any]], *, min_share: float = 0.01) -> IntendedUse:
    """Declare the intended use from the DICOM tags of the training images.

    A value is kept when at least ``min_share`` of the images that carry the tag have it,
    so one mislabelled file does not widen the declaration.
    """
    rows = list(tag_rows)
    fields: dict[str, tuple[str, ...]] = {}
    for keyword, attribute in TAGS.items():
        values = [_fold(r[keyword]) for r in rows if r.get(keyword) is not None and str(r[keyword]).strip()]
        if not values:
            fields[attribute] = ()
            continue
        counts: dict[str, int] = {}
        for v in values:
            counts[v] = counts.get(v, 0) + 1
        fields[attribute] = tuple(sorted(v for v, n in counts.items() if n / len(values) >= min_share))
    return IntendedUse(
        source="dicom", modalities=fields["modalities"], body_parts=fields["body_parts"], views=fields["views"]
    )


def declare(
    configured: Mapping[str, Any], image_paths: Iterable[str], *, channels: int, sample: int = 200
) -> IntendedUse:
    """The intended use a training run writes into its bundle.

    Fields set in the run's ``intended_use`` config win. Those left empty are read from the
    DICOM tags of up to ``sample`` training images (headers only; non-DICOM files are
    skipped). Nothing is guessed for other data.

    Args:
        configured: the run's ``intended_use`` section (description, modalities, body_parts, views).
        image_paths: the training images.
        channels: the network's input channels.
    """
    import itertools

    user = IntendedUse.from_dict({k: v for k, v in configured.items() if v})
    rows = []
    for path in itertools.islice((p for p in image_paths if _looks_dicom(p)), sample):
        rows.append(_header_tags(path))
    seen = from_training_tags(r for r in rows if r)
    pick = {
        attr: getattr(user, attr) or getattr(seen, attr) for attr in ("modalities", "body_parts", "views")
    }
    source = "user" if user.declared else ("dicom" if seen.declared else "none")
    if user.declared and seen.declared and any(not getattr(user, a) for a in pick):
        source = "user+dicom"
    return IntendedUse(description=user.description, channels=channels, source=source, **pick)


def _looks_dicom(path: str) -> bool:
    text = str(path)
    if "::" in text:
        return False
    lower = text.lower()
    return lower.endswith((".dcm", ".dicom")) or "." not in lower.rsplit("/", 1)[-1]


def _header_tags(path: str) -> dict[str, str]:
    try:
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - an unreadable header declares nothing; training reports the file
        return {}
    return tags_of(header)
