"""De-identify DICOM leaving the system: a basic profile of DICOM PS3.15 Annex E.

:func:`deidentify` returns a copy of a pydicom ``Dataset`` with the identifying attributes
of the Basic Application Level Confidentiality Profile (PS3.15 Table E.1-1) blanked or
removed, in the main data set and in every sequence item:

* patient name, id, birth date and sex are emptied (Type 2: they must stay, empty);
  other patient, physician, operator, institution, address, accession, request and
  free-text attributes listed in :data:`REMOVE` are removed;
* every Person Name (PN) element anywhere is emptied or removed, whatever its keyword;
* every date, date-time and time (DA, DT, TM) is emptied: the profile's default, without
  the *Retain Longitudinal Temporal Information* option (no date shifting is done);
* instance UIDs (every UI value outside the DICOM root ``1.2.840.10008``, which names
  standard classes and transfer syntaxes) are replaced by ``generate_uid`` hashed from a
  salt and the original, so the same study keeps one new Study Instance UID across files
  de-identified with the same salt (``keep_uids=True`` is the *Retain UIDs* option);
* private tags, curves (group 50xx) and overlays (group 60xx: they can hold burned-in text)
  are removed;
* Patient Identity Removed is set to ``YES`` and De-identification Method (plus its code
  sequence, DCM 113100 and 113110 for retained UIDs) says what was done.

Pixel data is not changed. A file whose Burned In Annotation is ``YES`` is refused
(text in the pixels would survive), unless ``allow_burned_in=True``, which logs a warning.

:func:`deidentify_folder` (``medpredict data deid IN OUT``) applies this to a PACS export
before it becomes training data: outputs are named by their new UIDs (export folder names
often hold patient names), and images of text-prone modalities that do not declare Burned
In Annotation are flagged for a look at their pixels.
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medpredict.errors import DataError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

#: Type 2 attributes of Table E.1-1 with action Z: kept, with an empty value.
EMPTY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "ContentCreatorName",
    "VerifyingObserverName",
)

#: Attributes of Table E.1-1 with action X (removed), the ones that carry identity.
REMOVE = (
    "AdditionalPatientHistory",
    "AdmissionID",
    "AdmittingDiagnosesDescription",
    "Allergies",
    "Arbitrary",
    "AuthorObserverSequence",
    "BranchOfService",
    "CassetteID",
    "CommentsOnThePerformedProcedureStep",
    "ConfidentialityConstraintOnPatientDataDescription",
    "ConsultingPhysicianName",
    "ContentCreatorIdentificationCodeSequence",
    "ContributionDescription",
    "CountryOfResidence",
    "CurrentPatientLocation",
    "CustodialOrganizationSequence",
    "DataSetTrailingPadding",
    "DerivationDescription",
    "DetectorID",
    "DeviceSerialNumber",
    "DigitalSignaturesSequence",
    "DischargeDiagnosisDescription",
    "DistributionAddress",
    "DistributionName",
    "EthnicGroup",
    "FrameComments",
    "GantryID",
    "GeneratorID",
    "GraphicAnnotationSequence",
    "HumanPerformerName",
    "HumanPerformerOrganization",
    "IconImageSequence",
    "IdentifyingComments",
    "ImageComments",
    "ImagePresentationComments",
    "ImagingServiceRequestComments",
    "Impressions",
    "InstitutionAddress",
    "InstitutionCodeSequence",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "InsurancePlanIdentification",
    "IntendedRecipientsOfResultsIdentificationSequence",
    "InterpretationApproverSequence",
    "InterpretationAuthor",
    "InterpretationDiagnosisDescription",
    "InterpretationIDIssuer",
    "InterpretationRecorder",
    "InterpretationText",
    "InterpretationTranscriber",
    "IssuerOfAdmissionID",
    "IssuerOfPatientID",
    "IssuerOfServiceEpisodeID",
    "MedicalAlerts",
    "MedicalRecordLocator",
    "MilitaryRank",
    "ModifiedAttributesSequence",
    "ModifyingDeviceID",
    "NameOfPhysiciansReadingStudy",
    "NamesOfIntendedRecipientsOfResults",
    "Occupation",
    "OperatorIdentificationSequence",
    "OperatorsName",
    "OriginalAttributesSequence",
    "OrderCallbackPhoneNumber",
    "OrderEnteredBy",
    "OrderEntererLocation",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "ParticipantSequence",
    "PatientAddress",
    "PatientAge",
    "PatientAlternativeCalendar",
    "PatientBirthDateInAlternativeCalendar",
    "PatientBirthName",
    "PatientBirthTime",
    "PatientComments",
    "PatientDeathDateInAlternativeCalendar",
    "PatientInstitutionResidence",
    "PatientInsurancePlanCodeSequence",
    "PatientMotherBirthName",
    "PatientPrimaryLanguageCodeSequence",
    "PatientPrimaryLanguageModifierCodeSequence",
    "PatientReligiousPreference",
    "PatientSexNeutered",
    "PatientSize",
    "PatientState",
    "PatientTelephoneNumbers",
    "PatientTransportArrangements",
    "PatientWeight",
    "PerformedLocation",
    "PerformedProcedureStepDescription",
    "PerformedProcedureStepID",
    "PerformingPhysicianIdentificationSequence",
    "PerformingPhysicianName",
    "PersonAddress",
    "PersonIdentificationCodeSequence",
    "PersonName",
    "PersonTelephoneNumbers",
    "PhysicianApprovingInterpretation",
    "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence",
    "PhysiciansReadingStudyIdentificationSequence",
    "PlateID",
    "PreMedication",
    "PregnancyStatus",
    "ProtocolName",
    "ReasonForStudy",
    "ReasonForTheImagingServiceRequest",
    "ReasonForTheRequestedProcedure",
    "ReferencedPatientAliasSequence",
    "ReferencedPatientPhotoSequence",
    "ReferencedPatientSequence",
    "ReferringPhysicianAddress",
    "ReferringPhysicianIdentificationSequence",
    "ReferringPhysicianTelephoneNumbers",
    "RegionOfResidence",
    "RequestAttributesSequence",
    "RequestedContrastAgent",
    "RequestedProcedureComments",
    "RequestedProcedureID",
    "RequestedProcedureLocation",
    "RequestingPhysician",
    "RequestingPhysicianIdentificationSequence",
    "RequestingService",
    "ResponsibleOrganization",
    "ResponsiblePerson",
    "ResultsComments",
    "ResultsDistributionListSequence",
    "ResultsIDIssuer",
    "ScheduledPatientInstitutionResidence",
    "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepLocation",
    "SeriesDescription",
    "ServiceEpisodeDescription",
    "ServiceEpisodeID",
    "SmokingStatus",
    "SpecialNeeds",
    "StationName",
    "StudyComments",
    "StudyDescription",
    "TextComments",
    "TextString",
    "TopicAuthor",
    "TopicKeywords",
    "TopicSubject",
    "TopicTitle",
    "VerifyingObserverIdentificationCodeSequence",
    "VerifyingOrganization",
    "VisitComments",
)

#: Root of the UIDs the standard itself defines (SOP classes, transfer syntaxes): never replaced.
DICOM_ROOT = "1.2.840.10008."
#: De-identification Method values (LO: 64 characters each, so one step per value).
METHOD = ("medpredict basic profile (DICOM PS3.15 Annex E)", "dates removed", "private tags removed")
_DATE_VRS = ("DA", "DT", "TM")
_PROCESS_SALT: list[str] = []


def deidentify(
    ds: Dataset,
    *,
    keep_uids: bool = False,
    salt: str | None = None,
    allow_burned_in: bool = False,
    keep: Iterable[str] = (),
) -> Dataset:
    """Return a de-identified copy of ``ds`` (the input is not changed); see the module docstring.

    Args:
        ds: a pydicom data set, with or without File Meta.
        keep_uids: keep the original UIDs (the profile's *Retain UIDs* option).
        salt: secret mixed into the replacement UIDs. Files de-identified with the same salt
            keep consistent UIDs (one study, one new Study Instance UID); without a salt a
            random one is drawn once per process, so runs cannot be linked afterwards.
        allow_burned_in: de-identify even when Burned In Annotation is ``YES`` (the pixel
            text remains; a warning is logged).
        keep: keywords to retain although the profile removes them (e.g. ``("PatientAge",)``),
            for a study protocol that needs them. Names and ids cannot be kept.

    Raises:
        DataError: Burned In Annotation is ``YES`` and ``allow_burned_in`` is false, or
            ``keep`` names an unknown keyword or a patient name/id/birth date.
    """
    from pydicom.datadict import tag_for_keyword

    kept = set(keep)
    for keyword in kept:
        if tag_for_keyword(keyword) is None:
            raise DataError(f"Unknown DICOM keyword {keyword!r} in keep=; use keywords such as 'PatientAge'.")
        if keyword in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames"):
            raise DataError(f"{keyword} identifies the patient and cannot be kept by de-identification.")
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        if not allow_burned_in:
            raise DataError(
                "The image has Burned In Annotation = YES: text in the pixels may identify the patient and "
                "header de-identification cannot remove it. Mask the pixels first, or pass "
                "allow_burned_in=True to de-identify the header anyway."
            )
        logger.warning("De-identifying a header whose pixels carry burned-in annotation (left in place).")
    out = copy.deepcopy(ds)
    uid_salt = salt if salt is not None else _process_salt()
    _clean(out, kept, None if keep_uids else uid_salt)
    meta = getattr(out, "file_meta", None)
    if meta is not None:
        if "SourceApplicationEntityTitle" in meta:
            del meta.SourceApplicationEntityTitle
        if not keep_uids and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = _new_uid(str(meta.MediaStorageSOPInstanceUID), uid_salt)
    _mark(out, keep_uids)
    return out


def deidentify_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], **options: object) -> Path:
    """De-identify the DICOM file ``src`` into ``dst``, written atomically (see :func:`deidentify`).

    Raises:
        DataError: ``src`` is not a readable DICOM file, or :func:`deidentify` refuses it.
    """
    clean = _deidentified(src, **options)
    _write(clean, Path(dst))
    return Path(dst)


def _deidentified(src: str | os.PathLike[str], **options: object) -> Dataset:
    import pydicom

    source = os.fspath(src)
    try:
        ds = pydicom.dcmread(source, force=True)
    except Exception as exc:  # corrupt input makes pydicom raise many unrelated types
        raise DataError(f"'{source}' is not a readable DICOM file ({type(exc).__name__}: {exc}).") from exc
    meta = getattr(ds, "file_meta", None)
    if "SOPClassUID" not in ds and not (meta is not None and "MediaStorageSOPClassUID" in meta):
        raise DataError(f"'{source}' has no SOP Class UID; it is not a DICOM object that can be de-identified.")
    try:
        return deidentify(ds, **options)  # type: ignore[arg-type]
    except DataError:
        raise
    except Exception as exc:  # malformed elements surface only while they are parsed
        raise DataError(f"'{source}' has malformed data elements ({type(exc).__name__}: {exc}).") from exc


def _write(clean: Dataset, dst: Path) -> None:
    from medpredict.atomic import atomic_open

    has_meta = "TransferSyntaxUID" in getattr(clean, "file_meta", {})
    with atomic_open(dst, "wb") as handle:
        clean.save_as(handle, enforce_file_format=has_meta)


#: Modalities and SOP classes whose pixels often carry burned-in text when the header does not say.
_TEXT_PRONE_MODALITIES = ("US", "SC", "OT", "XC", "ES", "DOC", "SM")
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class FolderReport:
    """What :func:`deidentify_folder` did.

    Attributes:
        written: de-identified files written.
        refused: source path -> reason, for the operator's console only (a path may hold a
            name); never written into the output folder.
        not_dicom: source files skipped because they are not DICOM (DICOMDIR included).
        flagged: output path -> why its pixels may carry text although the header does not say so.
        report_path: the JSON report in the output folder (counts and reasons, no source paths).
    """

    written: int = 0
    refused: dict[str, str] = field(default_factory=dict)
    not_dicom: list[str] = field(default_factory=list)
    flagged: dict[str, str] = field(default_factory=dict)
    report_path: Path | None = None


def deidentify_folder(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    **options: Any,
) -> FolderReport:
    """De-identify every DICOM file under ``src`` into ``dst`` (e.g. a PACS export before training).

    Outputs are named by their new UIDs, ``DST/<study>/<series>/<instance>.dcm``, because
    the folder and file names of an export often carry patient names. Options are those of
    :func:`deidentify` (``salt``, ``keep_uids``, ``keep``, ``allow_burned_in``); one salt
    serves the whole folder, so a study keeps one new Study Instance UID. Files with
    Burned In Annotation ``YES`` are refused (unless ``allow_burned_in``); files of
    text-prone modalities (ultrasound, secondary capture...) that do not declare Burned In
    Annotation are written but flagged for a look at their pixels.

    Raises:
        DataError: ``src`` does not exist, or ``dst`` lies inside ``src``.
    """
    from pydicom.misc import is_dicom

    from medpredict.atomic import write_json

    source, out = Path(src).resolve(), Path(dst).resolve()
    if not source.exists():
        raise DataError(f"'{src}' does not exist; give a folder of DICOM files (or one file).")
    if source.is_dir() and (out == source or source in out.parents):
        raise DataError(f"The output folder '{dst}' lies inside the input '{src}'; choose a folder outside it.")
    if options.get("salt") is None and not options.get("keep_uids"):
        options = {**options, "salt": secrets.token_hex(16)}  # one salt for the folder: studies stay whole
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    report = FolderReport()
    reasons: dict[str, int] = {}
    for path in files:
        if path.name.upper() == "DICOMDIR" or not is_dicom(path):
            report.not_dicom.append(str(path))
            continue
        try:
            clean = _deidentified(path, **options)
        except DataError as exc:
            report.refused[str(path)] = str(exc)
            key = "burned-in annotation" if "Burned In Annotation" in str(exc) else "unreadable or malformed"
            reasons[key] = reasons.get(key, 0) + 1
            continue
        name = Path(*(str(clean.get(k) or "unknown") for k in ("StudyInstanceUID", "SeriesInstanceUID")))
        target = out / name / f"{clean.get('SOPInstanceUID') or f'file{report.written}'}.dcm"
        _write(clean, target)
        report.written += 1
        flag = _text_prone(clean)
        if flag:
            report.flagged[str(target.relative_to(out))] = flag
    report.report_path = out / "deid_report.json"
    write_json(
        report.report_path,
        {
            "method": "; ".join(METHOD),
            "written": report.written,
            "refused": len(report.refused),
            "refused_by_reason": reasons,
            "not_dicom": len(report.not_dicom),
            "flagged_for_pixel_review": report.flagged,
        },
    )
    logger.info("De-identified %d file(s); %d refused, %d not DICOM, %d flagged for pixel review",
                report.written, len(report.refused), len(report.not_dicom), len(report.flagged))
    return report


def _text_prone(ds: Dataset) -> str:
    """Why ``ds``'s pixels may carry burned-in text the header does not declare; empty if no reason."""
    if str(ds.get("BurnedInAnnotation", "") or "").strip():
        return ""  # declared (NO, or YES with allow_burned_in): the header says
    modality = str(ds.get("Modality") or "").upper()
    if modality in _TEXT_PRONE_MODALITIES or str(ds.get("SOPClassUID") or "").startswith(_SECONDARY_CAPTURE_PREFIX):
        return f"modality {modality or 'SC'} often has burned-in text and Burned In Annotation is not declared"
    return ""


def _process_salt() -> str:
    if not _PROCESS_SALT:
        _PROCESS_SALT.append(secrets.token_hex(16))
    return _PROCESS_SALT[0]


def _new_uid(uid: str, salt: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[salt, uid]))


def _clean(ds: Dataset, kept: set[str], uid_salt: str | None) -> None:
    """Apply the profile to ``ds`` and, recursively, to every sequence item (in place)."""
    from pydicom.datadict import tag_for_keyword

    ds.remove_private_tags()
    for elem in list(ds):
        group = elem.tag.group
        if 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            del ds[elem.tag]  # curves and overlays: overlay bitmaps can hold burned-in text
    for keyword in REMOVE:
        tag = tag_for_keyword(keyword)
        if keyword not in kept and tag is not None and tag in ds:
            del ds[tag]
    for keyword in EMPTY:
        tag = tag_for_keyword(keyword)
        if tag is not None and tag in ds:
            ds[tag].value = None
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value or ():
                _clean(item, kept, uid_salt)
        elif elem.keyword in kept:
            continue
        elif elem.VR == "PN" or elem.VR in _DATE_VRS:
            elem.value = None
        elif elem.VR == "UI" and uid_salt is not None and elem.value:
            elem.value = _replace_uids(elem.value, uid_salt)


def _replace_uids(value: object, salt: str) -> object:
    from pydicom.multival import MultiValue

    if isinstance(value, MultiValue | list | tuple):
        return [_replace_uids(v, salt) for v in value]
    text = str(value)
    return text if not text or text.startswith(DICOM_ROOT) else _new_uid(text, salt)


def _mark(ds: Dataset, keep_uids: bool) -> None:
    """Record what was done: Patient Identity Removed, the method and its codes."""
    from pydicom.dataset import Dataset as PydicomDataset
    from pydicom.sequence import Sequence

    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [*METHOD, "UIDs retained" if keep_uids else "UIDs replaced"]
    codes = [("113100", "Basic Application Confidentiality Profile")]
    if keep_uids:
        codes.append(("113110", "Retain UIDs Option"))
    items = []
    for value, meaning in codes:
        item = PydicomDataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = "REMOVED"
