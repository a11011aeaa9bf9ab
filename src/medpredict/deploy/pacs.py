"""Pull new images from a DICOMweb server, predict, and push the results back into each study.

One pass (:func:`process_new_studies`), all through ``dicomweb-client``:

1. QIDO-RS lists the studies with their modalities and instance counts. A study the
   :class:`~medpredict.deploy.pacs_ledger.Ledger` knows, whose instance count has not
   changed and that has no quarantined image due for a retry, is not looked at again.
2. A study whose modalities all lie outside the model's intended use is skipped; in the
   others each image instance is checked against the intended use (Modality, Body Part
   Examined, View Position from QIDO, then again from the retrieved file) and, where the
   user narrowed it, the ``--modality`` list. Images outside are skipped: one log line per
   study or series, and the reason in the ledger.
3. WADO-RS retrieves each remaining image that has no result yet; the one shared
   predictor predicts and explains it.
4. STOW-RS stores a Comprehensive SR and a Secondary Capture of the heat-map overlay in
   the source study (:mod:`medpredict.deploy.dicom_out`); a FHIR R4 transaction bundle is
   written and/or POSTed (:mod:`medpredict.deploy.fhir`, :mod:`medpredict.deploy.fhir_send`).

An image whose processing fails goes to the ledger's quarantine with the reason and is
retried with backoff, at most :class:`~medpredict.deploy.pacs_ledger.RetryPolicy`
``max_attempts`` times; nothing is stored for it half-way (SR, overlay and FHIR are all
built before anything is sent). An image added later to a processed study changes the
study's instance count, so the study is looked at again and only the new image is
processed. A result already in the study (an SR of this model referencing the image) is
recognised, so a lost ledger does not produce duplicates.

Logs carry no UID in clear: while a pass runs, :func:`medpredict.deploy.uid_log.hashed_uids`
hashes UIDs in the records of dicomweb-client, highdicom, urllib3 and medpredict.
A refused connection, a TLS failure or a 401/403 from the server raises
:class:`~medpredict.errors.ServerError` (one line, no traceback, exit 2 in the CLI).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from medpredict.data.intended_use import IntendedUse, tags_of
from medpredict.deploy.pacs_ledger import Ledger, RetryPolicy, now_utc
from medpredict.deploy.remote import server_error
from medpredict.deploy.uid_log import hashed_uids, scrub, short_id
from medpredict.errors import ConfigError, DataError, MedpredictError, ServerError, require_extra

logger = logging.getLogger(__name__)

_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"
_SOP_UID = "00080018"
_SOP_CLASS = "00080016"
_MODALITY = "00080060"
_SERIES_DESCRIPTION = "0008103E"
_MODALITIES_IN_STUDY = "00080061"
_INSTANCES_IN_STUDY = "00201208"
_BODY_PART = "00180015"
_VIEW_POSITION = "00185101"
#: QIDO fields each instance is listed with (the intended-use tags among them).
_INSTANCE_FIELDS = ("Modality", "SeriesDescription", "SOPClassUID", "BodyPartExamined", "ViewPosition")
#: SOP classes that hold no image to predict on (SR, presentation states, KOS, encapsulated docs).
_NON_IMAGE_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",
    "1.2.840.10008.5.1.4.1.1.11.",
    "1.2.840.10008.5.1.4.1.1.104.",
)
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_PACS_CREDENTIALS = "Check --user and the MEDPREDICT_PACS_PASSWORD environment variable."

__all__ = [
    "InputPolicy",
    "Ledger",
    "RetryPolicy",
    "StudyResult",
    "connect",
    "find_studies",
    "process_new_studies",
    "process_study",
    "run_pacs",
    "short_id",
]


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
    client = DICOMwebClient(url.rstrip("/"), session=session, headers=headers)
    # dicomweb-client retries every failed request (a refused connection too) for ~30 s by default;
    # three tries 0.2 and 0.4 s apart ride out a blip, and the next pass retries the rest.
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=100)
    return client


@dataclass(frozen=True)
class StudyEntry:
    """One study as QIDO lists it: UID, modalities in it, and instance count (None if not given)."""

    uid: str
    modalities: tuple[str, ...] = ()
    instances: int | None = None


def find_studies(
    client: Any,
    *,
    modalities: Sequence[str] = (),
    since: _dt.date | str | None = None,
) -> list[StudyEntry]:
    """Every study on the server (QIDO-RS, paged through), optionally of some modalities or since a date.

    Args:
        modalities: keep studies whose ModalitiesInStudy include one of these (one query each).
        since: keep studies with StudyDate on or after this date (``date`` or ``YYYYMMDD``).
    """
    base: dict[str, Any] = {}
    if since is not None:
        day = since.strftime("%Y%m%d") if isinstance(since, _dt.date) else str(since)
        base["StudyDate"] = f"{day}-"
    queries = [{**base, "ModalitiesInStudy": m} for m in modalities] or [base]
    found: dict[str, StudyEntry] = {}
    for filters in queries:
        items = _all_pages(partial(_search_studies, client, filters), _STUDY_UID)
        for item in items:
            uid = _value(item, _STUDY_UID)
            if uid and uid not in found:
                count = _value(item, _INSTANCES_IN_STUDY)
                found[uid] = StudyEntry(uid, tuple(_values(item, _MODALITIES_IN_STUDY)), int(count) if count else None)
    return list(found.values())


def _search_studies(client: Any, filters: dict[str, Any], offset: int) -> list[dict[str, Any]]:
    return list(
        client.search_for_studies(
            search_filters=filters or None,
            fields=["ModalitiesInStudy", "NumberOfStudyRelatedInstances"],
            offset=offset or None,
        )
    )


def _all_pages(search: Callable[[int], list[dict[str, Any]]], key: str) -> list[dict[str, Any]]:
    """Every result of a QIDO search, page after page, until a page brings nothing new.

    dicomweb-client's ``get_remaining`` stops only on an empty page; a server that ignores
    ``offset`` for some filters (Orthanc with ``ModalitiesInStudy``) would repeat the first
    page for ever.
    """
    found: dict[str, dict[str, Any]] = {}
    while True:
        page = search(len(found))
        new = {_value(item, key): item for item in page if _value(item, key) not in found}
        if not new:
            return list(found.values())
        found.update(new)


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = _values(item, tag)
    return values[0] if values else ""


def _values(item: Mapping[str, Any], tag: str) -> list[str]:
    return [str(v) for v in ((item.get(tag) or {}).get("Value") or []) if v is not None]


# --------------------------------------------------------------------------- what to process


@dataclass(frozen=True)
class InputPolicy:
    """Which images the node may predict on: the model's intended use, narrowed by ``--modality``.

    Attributes:
        intended_use: the declaration checked against each image's tags (empty when the
            user passed ``--ignore-intended-use``).
        modalities: the ``--modality`` values (upper case); empty means no narrowing.
        overridden: the user passed ``--ignore-intended-use`` (the predictor must not refuse either).
    """

    intended_use: IntendedUse = field(default_factory=IntendedUse)
    modalities: tuple[str, ...] = ()
    overridden: bool = False

    @classmethod
    def for_predictor(
        cls, predictor: Any, *, modalities: Iterable[str] = (), ignore_intended_use: bool = False
    ) -> InputPolicy:
        """The policy for ``predictor`` (its ``intended_use``) and the user's flags.

        Raises:
            ConfigError: the model declares no intended use and ``ignore_intended_use`` is
                false, or a ``--modality`` lies outside the declared modalities.
        """
        chosen = tuple(dict.fromkeys(str(m).strip().upper() for m in modalities if str(m).strip()))
        declared: IntendedUse = getattr(predictor, "intended_use", None) or IntendedUse()
        if ignore_intended_use:
            logger.warning(
                "--ignore-intended-use: results will be written for images the model may not be built for%s",
                f" (modalities {'/'.join(chosen)})" if chosen else " (any modality)",
            )
            return cls(IntendedUse(), chosen, overridden=True)
        if not declared.declared:
            raise ConfigError(
                "The model declares no intended use (modalities, body parts, views), so the PACS node cannot tell "
                "which images it may write results for. Train it with an intended_use (e.g. the chest radiograph "
                "declaration), or pass --ignore-intended-use with --modality to choose the images yourself."
            )
        outside = [m for m in chosen if declared.modalities and m not in declared.modalities]
        if outside:
            raise ConfigError(
                f"--modality {'/'.join(outside)} is outside the model's intended use ({declared.summary()}); "
                "leave it out, or pass --ignore-intended-use to override."
            )
        return cls(declared, chosen)

    def reasons(self, tags: Mapping[str, Any]) -> list[str]:
        """Why an image with these DICOM tags (keyword -> value) may not be processed; empty if it may."""
        reasons = self.intended_use.contradictions(tags)
        modality = str(tags.get("Modality") or "").strip().upper()
        if self.modalities and modality and modality not in self.modalities and not reasons:
            reasons.append(f"Modality is {modality}; --modality allows {'/'.join(self.modalities)}")
        return reasons

    def study_reason(self, modalities: Sequence[str]) -> str | None:
        """Why a study holding only these modalities can be skipped unopened; None if it may hold input."""
        listed = [m for m in modalities if m.upper() not in ("SR", "KO", "PR", "OT", "DOC")]
        if not listed:
            return None
        reasons = [self.reasons({"Modality": m}) for m in listed]
        return reasons[0][0] if all(reasons) else None


# --------------------------------------------------------------------------- results


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
    """What one pass did with one study.

    ``status`` is ``processed`` (at least one image got its result), ``skipped`` (nothing
    to do, see ``reason``), ``quarantined`` (every image tried failed and is quarantined)
    or ``failed`` (the study could not be examined; tried again next pass).
    """

    study_short_id: str
    status: str
    reason: str = ""
    images: list[ImageResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Outputs:
    """Where results go besides the PACS: overlay on/off, FHIR folder, FHIR server outbox, patient identity."""

    overlay: bool = True
    fhir_dir: Path | None = None
    outbox: Any = None  # a medpredict.deploy.fhir_send.FhirOutbox
    patient_system: str | None = None
    patient_map: Mapping[str, str] | None = None

    @property
    def fhir(self) -> bool:
        return self.fhir_dir is not None or self.outbox is not None


# --------------------------------------------------------------------------- one study


def process_study(
    client: Any,
    predictor: Any,
    study: StudyEntry | str,
    *,
    policy: InputPolicy,
    ledger: Ledger,
    retry: RetryPolicy | None = None,
    outputs: Outputs | None = None,
    max_images: int = 4,
    now: _dt.datetime | None = None,
) -> StudyResult:
    """Examine one study: skip what is outside the intended use, predict on new images, store results.

    Args:
        client: a ``DICOMwebClient`` (see :func:`connect`).
        predictor: the shared predictor (``predict``, ``explain``, ``identity``, ``positive_label``).
        study: the study (a :class:`StudyEntry`, or its UID).
        policy: which images may be processed.
        ledger: what was done before; updated as the study is processed.
        retry: the retry policy for failing images.
        outputs: overlay and FHIR settings.
        max_images: at most this many images get a result per pass (the rest wait).

    Raises:
        ServerError: connection, TLS or authentication failure.
    """
    entry = study if isinstance(study, StudyEntry) else StudyEntry(study)
    retry = retry or RetryPolicy()
    outputs = outputs or Outputs()
    now = now or now_utc()
    sid = short_id(entry.uid)
    reason = policy.study_reason(entry.modalities)
    if reason:
        if ledger.record_skip(entry.uid, entry.uid, reason, level="study"):
            logger.info("Study %s skipped: %s", sid, reason)
        ledger.record_study(entry.uid, instances=entry.instances, status="skipped")
        return StudyResult(sid, "skipped", reason)

    listed = _all_pages(
        lambda offset: client.search_for_instances(
            study_instance_uid=entry.uid, fields=list(_INSTANCE_FIELDS), offset=offset or None
        ),
        _SOP_UID,
    )
    result = StudyResult(sid, "skipped")
    candidates = []
    for item in listed:
        sop = _value(item, _SOP_UID)
        if not _is_image(item) or ledger.has_result(sop):
            continue
        quarantined = ledger.quarantined(sop)
        if quarantined is not None and not ledger.retry_due(sop, now):
            continue
        reasons = policy.reasons(_qido_tags(item))
        if reasons:
            _skip(ledger, result, entry.uid, _value(item, _SERIES_UID), "; ".join(reasons))
            continue
        candidates.append(item)
    if candidates:
        for sop in _already_reported(client, predictor, entry.uid, listed):
            ledger.record_result(sop, entry.uid, recovered="an SR of this model in the study references it")
        candidates = [item for item in candidates if not ledger.has_result(_value(item, _SOP_UID))]
    chosen, waiting = candidates[: max(1, int(max_images))], candidates[max(1, int(max_images)) :]
    stored = 0
    for item in chosen:
        sop = _value(item, _SOP_UID)
        try:
            outcome = _process_image(client, predictor, entry.uid, item, policy, outputs)
        except ServerError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the node; the type is recorded
            fatal = server_error(exc, what="the DICOMweb server", url=str(getattr(client, "base_url", "")),
                                 credentials_hint=_PACS_CREDENTIALS)
            if fatal is not None:
                raise fatal from None
            why = scrub(f"{type(exc).__name__}: {exc}")[:500]
            quarantine = ledger.put_in_quarantine(sop, entry.uid, why, retry, now)
            result.quarantined.append(f"{short_id(sop)}: {why}")
            if quarantine["retry_after"] is None:
                logger.warning("Image %s of study %s given up after %d attempts: %s",
                               short_id(sop), sid, quarantine["attempts"], why)
            else:
                logger.warning("Image %s of study %s quarantined (attempt %d, retry after %s): %s",
                               short_id(sop), sid, quarantine["attempts"], quarantine["retry_after"], why)
            continue
        if isinstance(outcome, str):  # the retrieved file contradicts the intended use
            _skip(ledger, result, entry.uid, _value(item, _SERIES_UID), outcome)
            continue
        stored += 2 if outcome.sc_sop_instance_uid else 1
        ledger.record_result(
            sop,
            entry.uid,
            label=outcome.label,
            score=outcome.score,
            sr=short_id(outcome.sr_sop_instance_uid),
            sc=None if outcome.sc_sop_instance_uid is None else short_id(outcome.sc_sop_instance_uid),
        )
        result.images.append(outcome)
    if result.images:
        result.status = "processed"
    elif result.quarantined:
        result.status, result.reason = "quarantined", result.quarantined[0]
    else:
        result.reason = result.skipped[0] if result.skipped else "no new image to predict on"
    # The count the server will report next time: what was listed plus what was stored now.
    count = len(listed) + stored if entry.instances is not None else None
    ledger.record_study(entry.uid, instances=count, status=result.status, pending=bool(waiting))
    if result.images or result.quarantined:
        logger.info("Study %s: %d image(s) processed, %d quarantined, %d waiting for the next pass",
                    sid, len(result.images), len(result.quarantined), len(waiting))
    return result


def _skip(ledger: Ledger, result: StudyResult, study_uid: str, series_uid: str, reason: str) -> None:
    if ledger.record_skip(series_uid or study_uid, study_uid, reason, level="series"):
        logger.info("Study %s series %s skipped: %s", short_id(study_uid), short_id(series_uid), reason)
    if reason not in result.skipped:
        result.skipped.append(reason)


def _qido_tags(item: Mapping[str, Any]) -> dict[str, str]:
    tags = {"Modality": _value(item, _MODALITY), "BodyPartExamined": _value(item, _BODY_PART),
            "ViewPosition": _value(item, _VIEW_POSITION)}
    return {k: v for k, v in tags.items() if v}


def _is_image(item: Mapping[str, Any]) -> bool:
    sop_class = _value(item, _SOP_CLASS)
    # reports, presentation states, documents, and secondary captures (our overlays among them)
    return not (sop_class.startswith(_NON_IMAGE_PREFIXES) or sop_class == _SECONDARY_CAPTURE)


def _already_reported(client: Any, predictor: Any, study_uid: str, listed: Sequence[Mapping[str, Any]]) -> set[str]:
    """SOP Instance UIDs that an SR of this model in the study already reports on (from its evidence)."""
    from medpredict.deploy.dicom_out import sr_series_description

    description = sr_series_description(predictor.identity)
    found: set[str] = set()
    for item in listed:
        if _value(item, _MODALITY) != "SR" or _value(item, _SERIES_DESCRIPTION) != description:
            continue
        metadata = client.retrieve_instance_metadata(study_uid, _value(item, _SERIES_UID), _value(item, _SOP_UID))
        for evidence in _values_raw(metadata, "0040A375"):
            for series in _values_raw(evidence, "00081115"):
                for sop in _values_raw(series, "00081199"):
                    found.add(_value(sop, "00081155"))
    found.discard("")
    return found


def _values_raw(item: Mapping[str, Any], tag: str) -> list[Mapping[str, Any]]:
    return list((item.get(tag) or {}).get("Value") or [])


def _process_image(
    client: Any, predictor: Any, study_uid: str, item: Mapping[str, Any], policy: InputPolicy, outputs: Outputs
) -> ImageResult | str:
    """Retrieve, check, predict, build every output, then store; a str is a skip reason."""
    from medpredict.deploy import dicom_out
    from medpredict.explain.maps import overlay as blend
    from medpredict.readers.dicom import read_dicom

    source = client.retrieve_instance(
        study_uid,
        _value(item, _SERIES_UID),
        _value(item, _SOP_UID),
        media_types=(("application/dicom", "*"),),  # any transfer syntax: no server transcoding
    )
    reasons = policy.reasons(tags_of(source))  # the file's own tags are the authority
    if reasons:
        return "; ".join(reasons)
    channels = int(getattr(predictor, "channels", 1) or 1)
    with tempfile.TemporaryDirectory(prefix="medpredict-pacs-") as tmp:
        path = Path(tmp) / "instance.dcm"
        source.save_as(path, enforce_file_format=False)
        image = read_dicom(path, channels=channels).pixels
    prediction = predictor.predict(
        images=[image], tags=[tags_of(source)], explain=outputs.overlay, ignore_intended_use=policy.overridden
    )[0]
    identity, positive = predictor.identity, predictor.positive_label
    outputs_to_store = [dicom_out.structured_report(source, prediction, identity=identity, positive_label=positive)]
    explanation = getattr(prediction, "explanation", None)
    if outputs.overlay:
        caption = dicom_out.caption_for(prediction, identity=identity, positive_label=positive)
        if explanation is not None:
            caption += f" {explanation.caption()}."
        heat = explanation.heatmap if explanation is not None else predictor.explain(image)
        outputs_to_store.append(dicom_out.overlay_capture(source, blend(image, heat), caption=caption))
    bundle = _fhir_bundle(prediction, predictor, source, outputs) if outputs.fhir else None
    client.store_instances(datasets=outputs_to_store, study_instance_uid=study_uid)
    fhir_path = _deliver_fhir(bundle, source, outputs) if bundle is not None else None
    values = prediction.to_dict() if hasattr(prediction, "to_dict") else dict(prediction)
    return ImageResult(
        sop_short_id=short_id(str(source.SOPInstanceUID)),
        label=str(values["label"]),
        score=None if values.get("score") is None else float(values["score"]),
        sr_sop_instance_uid=str(outputs_to_store[0].SOPInstanceUID),
        sc_sop_instance_uid=str(outputs_to_store[1].SOPInstanceUID) if len(outputs_to_store) > 1 else None,
        fhir_path=fhir_path,
    )


def _fhir_bundle(prediction: Any, predictor: Any, source: Any, outputs: Outputs) -> dict[str, Any]:
    """The transaction bundle for one image; refuses (DataError) when the patient cannot be named."""
    from medpredict.deploy import fhir

    subject = fhir.patient_reference(
        str(source.get("PatientID") or ""), system=outputs.patient_system, mapping=outputs.patient_map
    )
    if subject is None:
        raise DataError(
            "The image's Patient ID is empty or not in the patient mapping, and no patient identifier system is "
            "set; the FHIR result could not name its patient. Add the id to the mapping or set "
            "--fhir-patient-system."
        )
    identity = predictor.identity
    key = uuid.uuid5(uuid.NAMESPACE_OID, f"{identity.weights_sha256 or identity.version}/{source.SOPInstanceUID}")
    return fhir.prediction_resources(
        prediction,
        identity=identity,
        input_kind="image",
        positive_label=predictor.positive_label,
        subject=subject,
        study_uid=str(source.StudyInstanceUID),
        request_id=key.hex,
    )


def _deliver_fhir(bundle: dict[str, Any], source: Any, outputs: Outputs) -> str | None:
    from medpredict.atomic import write_json

    name = short_id(str(source.SOPInstanceUID))
    path = None
    if outputs.fhir_dir is not None:
        path = outputs.fhir_dir / f"{name}.fhir.json"
        write_json(path, bundle)
    if outputs.outbox is not None:
        outputs.outbox.add(name, bundle)
        outputs.outbox.flush()
    return None if path is None else str(path)


# --------------------------------------------------------------------------- passes


def process_new_studies(
    client: Any,
    predictor: Any,
    *,
    policy: InputPolicy,
    ledger: Ledger | None = None,
    retry: RetryPolicy | None = None,
    outputs: Outputs | None = None,
    since: _dt.date | str | None = None,
    limit: int = 50,
    max_images: int = 4,
    on_result: Callable[[StudyResult], None] | None = None,
    now: _dt.datetime | None = None,
) -> list[StudyResult]:
    """One pass: list studies, examine those that are new or changed (at most ``limit``), record each outcome.

    A study that cannot be examined (a server error for it) is ``failed`` and examined
    again next pass; a failing image is quarantined (see :func:`process_study`).

    Returns:
        One :class:`StudyResult` per study examined in this pass (unchanged studies are not listed).

    Raises:
        ServerError: connection, TLS or authentication failure (the pass stops).
    """
    ledger = ledger if ledger is not None else Ledger()
    outputs = outputs or Outputs()
    now = now or now_utc()
    url = str(getattr(client, "base_url", ""))
    results: list[StudyResult] = []
    with hashed_uids():
        try:
            if outputs.outbox is not None:
                outputs.outbox.flush()  # bundles left by an earlier pass first
            studies = find_studies(client, modalities=policy.modalities, since=since)
        except ServerError:
            raise
        except Exception as exc:
            fatal = server_error(exc, what="the DICOMweb server", url=url, credentials_hint=_PACS_CREDENTIALS)
            if fatal is not None:
                raise fatal from None
            raise
        for study in studies:
            if len(results) >= limit:
                break
            if not ledger.needs_look(study.uid, study.instances, now):
                continue
            try:
                result = process_study(
                    client, predictor, study, policy=policy, ledger=ledger, retry=retry, outputs=outputs,
                    max_images=max_images, now=now,
                )
            except ServerError:
                raise
            except (MedpredictError, OSError, ValueError) as exc:  # requests' errors are OSErrors
                fatal = server_error(exc, what="the DICOMweb server", url=url, credentials_hint=_PACS_CREDENTIALS)
                if fatal is not None:
                    raise fatal from None
                result = StudyResult(short_id(study.uid), "failed", scrub(f"{type(exc).__name__}: {exc}")[:500])
                logger.warning("Study %s failed: %s", result.study_short_id, result.reason)
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
    backend: str = "torch",
    ledger_path: str | os.PathLike[str] | None = None,
    modalities: Sequence[str] = (),
    ignore_intended_use: bool = False,
    since: str | None = None,
    limit: int = 50,
    max_images: int = 4,
    overlay: bool = True,
    fhir_dir: str | os.PathLike[str] | None = None,
    fhir_url: str | None = None,
    fhir_patient_system: str | None = None,
    fhir_patient_map: str | os.PathLike[str] | None = None,
    retry: RetryPolicy | None = None,
    retry_quarantined: bool = False,
    interval_s: float = 30.0,
    max_rounds: int = 1,
    username: str | None = None,
    password: str | None = None,
) -> list[StudyResult]:
    """What ``medpredict pacs RUN --url URL`` does: load the model, connect, process new images.

    ``model`` is a run folder, a bundle folder or a bring-your-own-model YAML; ``backend``
    is ``torch``, ``onnx`` or ``int8``. The ledger defaults to ``pacs_ledger.json`` beside
    the model; the FHIR outbox (with ``fhir_url``) is the folder ``fhir_outbox`` beside the ledger.

    Raises:
        ConfigError: bad flags (see :meth:`InputPolicy.for_predictor`, FHIR settings).
        ServerError: the DICOMweb or FHIR server cannot be reached or refuses the credentials.
    """
    from medpredict.deploy.fhir_send import FhirOutbox
    from medpredict.inference.loader import load_predictor

    predictor = load_predictor(model, backend=backend)
    policy = InputPolicy.for_predictor(predictor, modalities=modalities, ignore_intended_use=ignore_intended_use)
    mapping = _patient_map(fhir_patient_map) if fhir_patient_map else None
    if (fhir_dir or fhir_url) and not (fhir_patient_system or mapping):
        raise ConfigError(
            "FHIR output names the patient by the DICOM Patient ID: give --fhir-patient-system (the identifier "
            "system of those ids in your FHIR server, e.g. urn:oid:1.2.3.4) or --fhir-patient-map (a JSON file "
            "of Patient ID -> 'Patient/<id>')."
        )
    client = connect(url, username=username, password=password)
    base = Path(model)
    default_ledger = (base if base.is_dir() else base.parent) / "pacs_ledger.json"
    ledger = Ledger(ledger_path if ledger_path is not None else default_ledger)
    if retry_quarantined:
        logger.info("%d quarantined image(s) released for a retry now", ledger.release_quarantine())
    outbox_dir = (ledger.path.parent if ledger.path else Path(tempfile.gettempdir())) / "fhir_outbox"
    outputs = Outputs(
        overlay=overlay,
        fhir_dir=Path(fhir_dir) if fhir_dir else None,
        outbox=FhirOutbox(outbox_dir, fhir_url) if fhir_url else None,
        patient_system=fhir_patient_system,
        patient_map=mapping,
    )
    return watch(
        client, predictor, interval_s=interval_s, max_rounds=max_rounds, policy=policy, ledger=ledger,
        retry=retry, outputs=outputs, since=since, limit=limit, max_images=max_images,
    )


def _patient_map(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a JSON object of DICOM Patient ID -> FHIR Patient reference.

    Raises:
        ConfigError: the file is missing, not JSON, or not an object of strings.
    """
    source = Path(path)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read the patient mapping {source}: {exc}.") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"{source} must be a JSON object of Patient ID -> 'Patient/<id>' strings.")
    return {str(k): v for k, v in data.items()}
