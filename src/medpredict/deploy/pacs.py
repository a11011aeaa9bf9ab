"""Pull new studies from a DICOMweb server, predict, and push the results back into each study.

The flow, all through ``dicomweb-client``:

1. QIDO-RS: :func:`find_studies` lists studies (optionally of one modality or since a date).
2. WADO-RS: the image instances of each new study are retrieved.
3. The one shared :class:`~medpredict.inference.predictor.Predictor` predicts and explains each image.
4. STOW-RS: a Comprehensive SR (finding, probabilities, model name and version) and a
   Secondary Capture of the heat-map overlay are stored back, in the source study
   (:mod:`medpredict.deploy.dicom_out`). Optionally a FHIR Bundle is written per image.

:class:`Ledger` remembers which studies were done, so a study is processed once. It keys
studies by a SHA-256 of their UID and holds no patient identifiers; logs use the same
short hash. A study that already holds an SR from the same model is skipped too, so a
lost ledger does not produce duplicates.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medpredict.atomic import write_json
from medpredict.errors import ConfigError, DataError, MedpredictError, require_extra

logger = logging.getLogger(__name__)

_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"
_SOP_UID = "00080018"
_SOP_CLASS = "00080016"
_MODALITY = "00080060"
_SERIES_DESCRIPTION = "0008103E"
#: SOP classes that hold no image to predict on (SR, presentation states, KOS, encapsulated docs).
_NON_IMAGE_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",
    "1.2.840.10008.5.1.4.1.1.11.",
    "1.2.840.10008.5.1.4.1.1.104.",
)
_OWN_SERIES_NUMBERS = (9901, 9902)


def short_id(uid: str) -> str:
    """A 12-hex-digit SHA-256 prefix of ``uid``: safe to log and to store."""
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:12]


def connect(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """A ``dicomweb_client.DICOMwebClient`` for the DICOMweb root ``url`` (e.g. ``…/dicom-web``).

    Raises:
        ConfigError: ``url`` is not an http(s) URL.
        DependencyError: the ``pacs`` extra is not installed.
    """
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"DICOMweb URL '{url}' must start with http:// or https:// (e.g. http://127.0.0.1:8042/dicom-web)."
        )
    require_extra("dicomweb_client", "pacs")
    from dicomweb_client.api import DICOMwebClient

    session = None
    if username is not None:
        from dicomweb_client.session_utils import create_session_from_user_pass

        session = create_session_from_user_pass(username, password or "")
    return DICOMwebClient(url.rstrip("/"), session=session, headers=headers)


def find_studies(
    client: Any, *, modality: str | None = None, since: _dt.date | str | None = None, limit: int = 100
) -> list[str]:
    """Study Instance UIDs on the server (QIDO-RS), newest server order, at most ``limit``.

    Args:
        modality: keep studies whose ModalitiesInStudy includes this (e.g. ``"CR"``).
        since: keep studies with StudyDate on or after this date (``date`` or ``YYYYMMDD``).
        limit: the most studies one call returns (bounded work per pass).
    """
    filters: dict[str, Any] = {}
    if modality:
        filters["ModalitiesInStudy"] = modality
    if since is not None:
        day = since.strftime("%Y%m%d") if isinstance(since, _dt.date) else str(since)
        filters["StudyDate"] = f"{day}-"
    found = client.search_for_studies(search_filters=filters or None, limit=int(limit))
    return [_value(item, _STUDY_UID) for item in found if _value(item, _STUDY_UID)]


def _value(item: dict[str, Any], tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else ""


# --------------------------------------------------------------------------- ledger


class Ledger:
    """Which studies were processed, kept in a JSON file keyed by hashed study UID.

    Args:
        path: the JSON file; created on the first :meth:`record`. ``None`` keeps it in memory.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.is_file():
            import json

            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise DataError(
                    f"The PACS ledger {self.path} is not valid JSON ({exc}); move it aside."
                ) from None
            self.entries = dict(data.get("studies", {}))

    def done(self, study_uid: str) -> bool:
        return short_id(study_uid) in self.entries

    def record(self, study_uid: str, **details: Any) -> None:
        self.entries[short_id(study_uid)] = {
            "at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **details,
        }
        if self.path is not None:
            write_json(self.path, {"format": "medpredict-pacs-ledger/1", "studies": self.entries})


# --------------------------------------------------------------------------- processing


@dataclass
class ImageResult:
    """What was stored for one source image (UIDs of the new SR and SC, and the prediction)."""

    sop_short_id: str
    label: str
    score: float | None
    sr_sop_instance_uid: str
    sc_sop_instance_uid: str | None
    fhir_path: str | None = None


@dataclass
class StudyResult:
    """The outcome for one study: ``processed``, ``skipped`` (with a reason) or ``failed``."""

    study_short_id: str
    status: str
    reason: str = ""
    images: list[ImageResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def process_study(
    client: Any,
    predictor: Any,
    study_uid: str,
    *,
    modalities: Sequence[str] | None = None,
    max_images: int = 4,
    overlay: bool = True,
    fhir_dir: str | os.PathLike[str] | None = None,
) -> StudyResult:
    """Predict on the images of one study and store SR (+ overlay SC) back with STOW-RS.

    Args:
        client: a ``DICOMwebClient`` (see :func:`connect`).
        predictor: the shared Predictor (``predict``, ``explain``, ``labels``, ``card``, ``version``).
        study_uid: the study to process.
        modalities: only images of these modalities (e.g. ``("CR", "DX")``); ``None`` takes all.
        max_images: at most this many images per study (bounded work).
        overlay: also store the heat-map overlay as a Secondary Capture.
        fhir_dir: if given, write a FHIR R4 Bundle per image there.

    Returns:
        A :class:`StudyResult`; a study without suitable images is ``skipped``.
    """
    sid = short_id(study_uid)
    name, version = model_identity(predictor)
    instances = client.search_for_instances(
        study_instance_uid=study_uid, fields=["Modality", "SeriesDescription", "SOPClassUID"]
    )
    if any(_is_own_result(item, name) for item in instances):
        return StudyResult(sid, "skipped", "already holds a result from this model")
    images = [item for item in instances if _is_candidate(item, modalities)]
    if not images:
        wanted = f" of modality {list(modalities)}" if modalities else ""
        return StudyResult(sid, "skipped", f"no image{wanted} to predict on")
    result = StudyResult(sid, "processed")
    for item in images[: max(1, int(max_images))]:
        source = client.retrieve_instance(
            study_uid,
            _value(item, _SERIES_UID),
            _value(item, _SOP_UID),
            media_types=(("application/dicom", "*"),),  # any transfer syntax: no server transcoding
        )
        result.images.append(_process_image(client, predictor, source, name, version, overlay, fhir_dir))
    logger.info("Study %s: %d image(s) processed", sid, len(result.images))
    return result


def _process_image(
    client: Any,
    predictor: Any,
    source: Any,
    name: str,
    version: str,
    overlay: bool,
    fhir_dir: str | os.PathLike[str] | None,
) -> ImageResult:
    from medpredict.deploy import dicom_out
    from medpredict.readers.dicom import read_dicom

    channels = int(getattr(predictor, "channels", 1) or 1)
    with tempfile.TemporaryDirectory(prefix="medpredict-pacs-") as tmp:
        path = Path(tmp) / "instance.dcm"
        source.save_as(path, enforce_file_format=False)
        image = read_dicom(path, channels=channels).pixels
    prediction = predictor.predict(images=[image])[0]
    positive = positive_label(predictor)
    sr = dicom_out.structured_report(
        source, prediction, model_name=name, model_version=version, positive_label=positive
    )
    outputs = [sr]
    sc = None
    if overlay:
        from medpredict.explain.maps import overlay as blend

        heat = predictor.explain(image)
        caption = dicom_out.caption_for(prediction, model_name=name, model_version=version)
        sc = dicom_out.overlay_capture(source, blend(image, heat), caption=caption)
        outputs.append(sc)
    client.store_instances(datasets=outputs, study_instance_uid=str(source.StudyInstanceUID))
    fhir_path = None
    if fhir_dir is not None:
        fhir_path = _write_fhir(fhir_dir, prediction, predictor, name, version, source)
    values = prediction.to_dict() if hasattr(prediction, "to_dict") else dict(prediction)
    return ImageResult(
        sop_short_id=short_id(str(source.SOPInstanceUID)),
        label=str(values["label"]),
        score=None if values.get("score") is None else float(values["score"]),
        sr_sop_instance_uid=str(sr.SOPInstanceUID),
        sc_sop_instance_uid=None if sc is None else str(sc.SOPInstanceUID),
        fhir_path=fhir_path,
    )


def _write_fhir(
    folder: str | os.PathLike[str], prediction: Any, predictor: Any, name: str, version: str, source: Any
) -> str:
    from medpredict.deploy import fhir

    bundle = fhir.prediction_resources(
        prediction,
        model_name=name,
        model_version=version,
        input_kind="image",
        positive_label=positive_label(predictor),
        sources=[f"ImagingStudy/{short_id(str(source.StudyInstanceUID))}"],
    )
    path = Path(folder) / f"{short_id(str(source.SOPInstanceUID))}.fhir.json"
    write_json(path, bundle)
    return str(path)


def process_new_studies(
    client: Any,
    predictor: Any,
    *,
    ledger: Ledger | None = None,
    modality: str | None = None,
    since: _dt.date | str | None = None,
    limit: int = 50,
    max_images: int = 4,
    overlay: bool = True,
    fhir_dir: str | os.PathLike[str] | None = None,
    on_result: Callable[[StudyResult], None] | None = None,
) -> list[StudyResult]:
    """One pass: find studies, process those not in the ledger, record each outcome.

    A failure on one study (an undecodable image, a refused STOW) is recorded as
    ``failed`` with its reason and does not stop the pass; such a study is tried again on
    the next pass.

    Returns:
        One :class:`StudyResult` per study looked at in this pass.
    """
    ledger = ledger if ledger is not None else Ledger()
    results: list[StudyResult] = []
    for study_uid in find_studies(client, modality=modality, since=since, limit=limit):
        if ledger.done(study_uid):
            continue
        try:
            result = process_study(
                client,
                predictor,
                study_uid,
                modalities=[modality] if modality else None,
                max_images=max_images,
                overlay=overlay,
                fhir_dir=fhir_dir,
            )
        # requests.RequestException (HTTP errors from the server) is an OSError.
        except (MedpredictError, OSError, ValueError) as exc:
            result = StudyResult(short_id(study_uid), "failed", f"{type(exc).__name__}: {exc}")
            logger.warning("Study %s failed: %s", result.study_short_id, result.reason)
        if result.status != "failed":
            ledger.record(
                study_uid,
                status=result.status,
                reason=result.reason,
                images=[asdict(i) for i in result.images],
            )
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def watch(
    client: Any, predictor: Any, *, interval_s: float = 30.0, max_rounds: int = 1, **kwargs: Any
) -> list[StudyResult]:
    """Run :func:`process_new_studies` ``max_rounds`` times, ``interval_s`` apart (bounded)."""
    import time

    if max_rounds < 1 or interval_s < 0:
        raise ConfigError(f"watch needs max_rounds >= 1 and interval_s >= 0, got {max_rounds}, {interval_s}.")
    results: list[StudyResult] = []
    for round_index in range(int(max_rounds)):
        results.extend(process_new_studies(client, predictor, **kwargs))
        if round_index + 1 < max_rounds:
            time.sleep(interval_s)
    return results


def run_pacs(
    model: str | os.PathLike[str],
    url: str,
    *,
    ledger_path: str | os.PathLike[str] | None = None,
    modality: str | None = None,
    limit: int = 50,
    max_images: int = 4,
    overlay: bool = True,
    fhir_dir: str | os.PathLike[str] | None = None,
    interval_s: float = 30.0,
    max_rounds: int = 1,
    username: str | None = None,
    password: str | None = None,
) -> list[StudyResult]:
    """What ``medpredict pacs RUN --url URL`` does: load the model, connect, process new studies.

    ``model`` is a run folder, a bundle folder or a bring-your-own-model YAML. The ledger
    defaults to ``pacs_ledger.json`` beside the model.
    """
    from medpredict.inference.loader import load_predictor

    predictor = load_predictor(model)
    client = connect(url, username=username, password=password)
    base = Path(model)
    default_ledger = (base if base.is_dir() else base.parent) / "pacs_ledger.json"
    ledger = Ledger(ledger_path if ledger_path is not None else default_ledger)
    return watch(
        client,
        predictor,
        interval_s=interval_s,
        max_rounds=max_rounds,
        ledger=ledger,
        modality=modality,
        limit=limit,
        max_images=max_images,
        overlay=overlay,
        fhir_dir=fhir_dir,
    )


# --------------------------------------------------------------------------- helpers


def model_identity(predictor: Any) -> tuple[str, str]:
    """``(name, version)`` of a predictor, from its model card."""
    card = getattr(predictor, "card", None) or {}
    name = str(card.get("name") or card.get("model_name") or card.get("model") or "medpredict-model")
    version = str(getattr(predictor, "version", None) or card.get("version") or "unversioned")
    return name, version


def positive_label(predictor: Any) -> str | None:
    """The class a binary predictor's threshold applies to (card's ``positive_label``, else the last)."""
    labels = list(getattr(predictor, "labels", []) or [])
    card = getattr(predictor, "card", None) or {}
    positive = card.get("positive_label")
    if positive in labels:
        return str(positive)
    return labels[-1] if len(labels) == 2 else None


def _is_candidate(item: dict[str, Any], modalities: Iterable[str] | None) -> bool:
    sop_class = _value(item, _SOP_CLASS)
    if sop_class.startswith(_NON_IMAGE_PREFIXES) or sop_class == "1.2.840.10008.5.1.4.1.1.7":
        return False  # reports, presentation states, documents, and secondary captures (ours included)
    modality = _value(item, _MODALITY)
    return not modalities or not modality or modality in set(modalities)


def _is_own_result(item: dict[str, Any], model_name: str) -> bool:
    description = _value(item, _SERIES_DESCRIPTION)
    return _value(item, _MODALITY) == "SR" and description.startswith(f"AI result {model_name}"[:64])
