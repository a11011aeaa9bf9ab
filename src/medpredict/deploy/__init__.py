"""Into the hospital: ONNX export, the PACS node, DICOM SR and overlays, FHIR results, de-identification."""
