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
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

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
METHOD = "medpredict basic profile (DICOM PS3.15 Annex E); dates removed; private tags removed"
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
    import pydicom

    from medpredict.atomic import atomic_open

    source = os.fspath(src)
    try:
        ds = pydicom.dcmread(source, force=True)
    except Exception as exc:  # corrupt input makes pydicom raise many unrelated types
        raise DataError(f"'{source}' is not a readable DICOM file ({type(exc).__name__}: {exc}).") from exc
    meta = getattr(ds, "file_meta", None)
    if "SOPClassUID" not in ds and not (meta is not None and "MediaStorageSOPClassUID" in meta):
        raise DataError(f"'{source}' has no SOP Class UID; it is not a DICOM object that can be de-identified.")
    try:
        clean = deidentify(ds, **options)  # type: ignore[arg-type]
    except DataError:
        raise
    except Exception as exc:  # malformed elements surface only while they are parsed
        raise DataError(f"'{source}' has malformed data elements ({type(exc).__name__}: {exc}).") from exc
    has_meta = "TransferSyntaxUID" in getattr(clean, "file_meta", {})
    with atomic_open(dst, "wb") as handle:
        clean.save_as(handle, enforce_file_format=has_meta)
    return Path(dst)


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
    ds.DeidentificationMethod = METHOD + ("; UIDs retained" if keep_uids else "; UIDs replaced")
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
