"""A JPEG Lossless chest CR (process 14, selection value 1) through ``medpredict pacs`` and a real Orthanc.

JPEG Lossless SV1 (1.2.840.10008.1.2.4.70) is one of the commonest encodings of CR/DX films in
hospital archives. The file is made from the shipped chest CR ``RG1_J2KI.dcm``: pydicom decodes
its JPEG 2000 pixels, and GDCM re-encodes them as JPEG Lossless SV1 (pydicom has no encoder for
that syntax; pylibjpeg-libjpeg only decodes). Orthanc stores the instance as sent, the CLI
fetches it in its own transfer syntax, decodes it and stores an SR back in the study.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dicomweb_client")
pytest.importorskip("highdicom")
gdcm = pytest.importorskip("gdcm")

import orthanc_server  # noqa: E402
from fixtures_images import SHARED_DATA  # noqa: E402
from medpredict.readers import read_dicom  # noqa: E402

CHEST_CR = SHARED_DATA / "dicom" / "pydicom_data" / "RG1_J2KI.dcm"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"


def jpeg_lossless_copy(source: Path, folder: Path) -> Path:
    """``source`` with its pixels as pydicom decodes them, re-encoded by GDCM as JPEG Lossless SV1."""
    import pydicom

    ds = pydicom.dcmread(source)
    ds.decompress(decoding_plugin="pylibjpeg")  # native pixels, and a new SOP Instance UID
    native = folder / "native.dcm"
    ds.save_as(native, enforce_file_format=True)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(native))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    out = folder / "chest_jpeg_lossless.dcm"
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(out))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return out


@pytest.fixture
def chest_run(tiny_run: Path, tmp_path: Path) -> Path:
    """The session's tiny model re-saved with the chest-radiograph intended use (CR/DX, chest, PA/AP)."""
    from test_service import chest_radiograph_copy

    return chest_radiograph_copy(tiny_run, tmp_path / "chest-run")


@pytest.mark.orthanc
@pytest.mark.skipif(not CHEST_CR.is_file(), reason="shared chest CR RG1_J2KI.dcm is missing")
def test_pacs_stores_an_sr_for_a_jpeg_lossless_chest_cr(
    chest_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pydicom

    from medpredict.cli import main
    from medpredict.deploy import pacs
    from medpredict.inference.predictor import Predictor

    if not orthanc_server.available():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    path = jpeg_lossless_copy(CHEST_CR, tmp_path)
    source = pydicom.dcmread(path, stop_before_pixels=True)
    assert source.file_meta.TransferSyntaxUID == JPEG_LOSSLESS_SV1
    pixels = read_dicom(path).pixels
    # Lossless: the same display pixels as the JPEG 2000 original.
    np.testing.assert_array_equal(pixels, read_dicom(CHEST_CR).pixels)
    predictor = Predictor.from_bundle(chest_run)  # conftest's session model, declared for chest radiographs
    expected = predictor.predict(images=[pixels])[0]

    with orthanc_server.OrthancServer(tmp_path / "orthanc") as orthanc:
        stored = orthanc.upload(path.read_bytes())
        with orthanc_server.urllib.request.urlopen(
            f"{orthanc.url}/instances/{stored['ID']}/metadata/TransferSyntax", timeout=10
        ) as response:
            assert response.read().decode() == JPEG_LOSSLESS_SV1  # Orthanc keeps the encoding as sent

        # the bundle's intended use (chest CR/DX) chooses the study: no --modality, no override
        code = main(["pacs", str(chest_run), "--url", orthanc.dicomweb_url,
                     "--ledger", str(tmp_path / "ledger.json")])  # fmt: skip

        assert code == 0
        assert "1 processed, 0 skipped, 0 quarantined, 0 failed" in capsys.readouterr().out
        client = pacs.connect(orthanc.dicomweb_url)
        series = client.search_for_series(source.StudyInstanceUID, fields=["Modality"])
        assert sorted(item["00080060"]["Value"][0] for item in series) == ["CR", "OT", "SR"]  # + overlay
        reports = client.search_for_instances(source.StudyInstanceUID, search_filters={"Modality": "SR"})
        assert len(reports) == 1
        sr = client.retrieve_instance(
            source.StudyInstanceUID,
            reports[0]["0020000E"]["Value"][0],
            reports[0]["00080018"]["Value"][0],
            media_types=(("application/dicom", "*"),),
        )
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert _probability(sr, predictor.positive_label) == pytest.approx(expected.score, abs=1e-6)


def _probability(sr: object, label: str | None) -> float:
    """The SR's numeric 'Probability of LABEL'."""
    found = []

    def walk(items: object) -> None:
        for item in items:  # type: ignore[attr-defined]
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if item.get("ValueType") == "NUM" and name == f"Probability of {label}":
                found.append(float(item.MeasuredValueSequence[0].NumericValue))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)  # type: ignore[attr-defined]
    assert len(found) == 1
    return found[0]
