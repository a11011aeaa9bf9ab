"""What one prediction request does, on a worker thread: uploads and a record in, the answer out.

Memory is bounded per request. An upload is decoded at full resolution (the readers'
float32 array) and at once reduced to the two things kept: the model's input, made by the
predictor's own ``prepare`` (so the service predicts exactly what the CLI predicts for the
same file: preparing a prepared image changes nothing), and, for the single-image route, a
display copy at most ``overlay_side`` pixels on its longest side. The full-resolution
array is dropped before the next upload of a batch is decoded. Heat maps come at the
model's input size and are upsampled to the display size only; the pictures in the answer
(``image_png``, ``heatmap_png``, ``overlay_png``) are display-sized PNGs.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

import numpy as np

from medpredict.errors import DataError
from medpredict.service.audit import input_digest
from medpredict.service.pool import MemoryBudget
from medpredict.service.records import RecordCheck, check_record, parse_record, record_from_body
from medpredict.service.uploads import declared_shape, decode_upload, source_name

logger = logging.getLogger(__name__)

#: Peak bytes decoding takes per declared sample (pixel x channel): an 8-bit grey PNG of
#: 8192² measured 576 MiB (8.6 B/px) through the readers, the prepared input and the display copy.
DECODE_BYTES_PER_SAMPLE = 10


@dataclass
class Upload:
    """One uploaded file: the client's name (display only) and its bytes or an open file."""

    name: str | None
    content: bytes | BinaryIO

    def read(self) -> bytes:
        if isinstance(self.content, bytes):
            return self.content
        self.content.seek(0)
        self.content = self.content.read()
        return self.content


@dataclass
class Inputs:
    """A request's inputs as they came: uploads, and a record as JSON text or a whole JSON body.

    Attributes:
        uploads: the files, read on the worker (a waiting request keeps them spooled, not in memory).
        record: JSON text of a record (a form field), the bytes of a ``{"record": ...}`` body
            (``record_is_body``), or None.
    """

    uploads: list[Upload] = field(default_factory=list)
    record: str | bytes | None = None
    record_is_body: bool = False

    def digest(self) -> str:
        """SHA-256 of the bytes received (files read so far, and the record text)."""
        record = self.record.encode("utf-8", "surrogatepass") if isinstance(self.record, str) else self.record
        files = [u.content for u in self.uploads if isinstance(u.content, bytes)]
        return input_digest(*files, record or b"")

    def kind(self) -> str:
        parts = [k for k, present in (("image", self.uploads), ("record", self.record)) if present]
        return "+".join(parts) or "none"


@dataclass
class PreparedImage:
    """What is kept of one upload: the model's input, a display copy, and what it was.

    Attributes:
        model_input: ``(C, S, S)`` float32 in [0, 1], the predictor's prepared input.
        display: ``(C, h, w)`` float32 in [0, 1], at most ``overlay_side`` on its longest side, or None.
        tags: the DICOM's descriptive tags (empty for PNG/JPEG).
        source: the name the result is shown under (:func:`~medpredict.service.uploads.source_name`).
        info: ``format``, ``modality`` and the original ``size`` ``[H, W]``, for the answer.
    """

    model_input: np.ndarray
    display: np.ndarray | None
    tags: dict[str, str]
    source: str | None
    info: dict[str, Any]


class Pipeline:
    """Turns :class:`Inputs` into the answer body; one instance per app, shared by the workers.

    Args:
        predictor: a loaded predictor (PyTorch, ONNX bundle or bring-your-own ONNX).
        settings: the service's :class:`~medpredict.service.app.ServiceSettings`.
    """

    def __init__(self, predictor: Any, settings: Any) -> None:
        self.predictor = predictor
        self.settings = settings
        self.identity = predictor.identity
        self.input_kind = str(getattr(predictor, "input_kind", "image"))
        self.channels = _channels(predictor)
        self.cleaner = getattr(predictor, "cleaner", None)
        self.budget = MemoryBudget(int(settings.decode_memory_mb) * 2**20)
        # Grad-CAM hooks the model while it runs: predictions go through it one at a time.
        self._model_lock = threading.Lock()

    def run(self, inputs: Inputs, *, explain: bool, fhir: bool, batch: bool, request_id: str) -> dict[str, Any]:
        """The answer body (without request id, model and latency).

        Raises:
            DataError: bad inputs (an :class:`~medpredict.service.uploads.UnsupportedUpload` for 415).
        """
        record = record_from_body(inputs.record) if inputs.record_is_body else parse_record(inputs.record)
        self._check_kinds(bool(inputs.uploads), record)
        check = check_record(record, self.cleaner) if record is not None and self.cleaner is not None else None
        display = explain and not batch
        prepared = [self._prepare(upload, display=display) for upload in inputs.uploads]
        want_map = display and self.input_kind == "image" and bool(prepared)
        cases = self._predict(prepared, record, explain=want_map)
        items = []
        for i, case in enumerate(cases):
            image = prepared[i] if prepared else None
            items.append(self._item(case, image, check, fhir=fhir, request_id=f"{request_id}-{i}"))
        if batch:
            return {"results": items}
        body = items[0]
        if prepared and prepared[0].display is not None:
            explanation = cases[0].explanation
            body.update(pictures(prepared[0].display, None if explanation is None else explanation.heatmap))
            if explanation is not None:
                body["explanation"] = explanation.caption()
                # the caption's parts, so that the web page can word it in its language
                body["explanation_of"] = {"method": explanation.method, "class_label": explanation.class_label}
        return body

    def _check_kinds(self, images: bool, record: dict[str, Any] | None) -> None:
        kind = self.input_kind
        if not images and record is None:
            raise DataError("Send an image file, a record, or both.")
        if kind == "image" and record is not None:
            raise DataError("This model reads images only; leave the record out.")
        if kind == "table" and images:
            raise DataError("This model reads clinical records only; send a record, not an image.")
        if kind == "fusion" and (not images or record is None):
            raise DataError("This model needs both an image and a record.")

    def _prepare(self, upload: Upload, *, display: bool) -> PreparedImage:
        data = upload.read()
        if not data:
            raise DataError("The uploaded file is empty.")
        s = self.settings
        shape = declared_shape(data)
        with self.budget.reserve(0 if shape is None else DECODE_BYTES_PER_SAMPLE * math.prod(shape)):
            decoded = decode_upload(
                data, channels=self.channels, min_side=s.min_side, max_side=s.max_side, modalities=s.modalities
            )
            pixels = decoded.pixels
            decoded.pixels = np.empty((0,), np.float32)  # the decoded object no longer holds the large array
            height, width = (int(v) for v in pixels.shape[-2:])
            model_input = np.asarray(self.predictor.prepare(pixels), dtype=np.float32)
            small = display_copy(pixels, s.overlay_side) if display else None
            del pixels
        return PreparedImage(
            model_input=model_input,
            display=small,
            tags=decoded.tags,
            source=source_name(upload.name, decoded.tags),
            info={"format": decoded.fmt, "modality": decoded.modality, "size": [height, width]},
        )

    def _predict(self, prepared: list[PreparedImage], record: dict[str, Any] | None, *, explain: bool) -> list[Any]:
        arrays = [p.model_input for p in prepared] or None
        with self._model_lock:
            if self.input_kind == "image":
                cases = self.predictor.predict(
                    images=arrays,
                    tags=[p.tags for p in prepared],
                    explain=explain,
                    ignore_intended_use=self.settings.ignore_intended_use,
                )
            else:
                records = None if record is None else [record] * max(1, len(prepared))
                cases = self.predictor.predict(images=arrays, records=records)
        return [replace(c, source=p.source) for c, p in zip(cases, prepared, strict=True)] if prepared else cases

    def _item(
        self, case: Any, image: PreparedImage | None, check: RecordCheck | None, *, fhir: bool, request_id: str
    ) -> dict[str, Any]:
        """One case's part of the answer; ``request_id`` is this case's own (FHIR identifiers derive from it)."""
        row = jsonable(case.to_dict())
        item: dict[str, Any] = {"prediction": row}
        if fhir:
            from medpredict.deploy import fhir as fhir_out

            item["fhir"] = fhir_out.prediction_resources(
                row,
                identity=self.identity,
                input_kind=self.input_kind,
                positive_label=self.predictor.positive_label,
                request_id=request_id,
            )
        if image is not None:
            item["input"] = dict(image.info)
        if check is not None:
            item["record_check"] = check.to_dict()
        return item


def display_copy(pixels: np.ndarray, side: int) -> np.ndarray:
    """``(C, H, W)`` shrunk (area averaging) to at most ``side`` pixels on its longest side."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - the PyTorch convention

    height, width = pixels.shape[-2:]
    scale = min(1.0, side / max(height, width))
    if scale >= 1.0:
        return np.array(pixels, dtype=np.float32, copy=True)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None]
    return F.interpolate(tensor, size=size, mode="area")[0].numpy()


def pictures(display: np.ndarray, heatmap: np.ndarray | None) -> dict[str, str]:
    """PNG data URLs for people: the image, and with a heat map its colours and their blend.

    Args:
        display: ``(C, h, w)`` in [0, 1], already display-sized.
        heatmap: ``(S, S)`` in [0, 1] at the model's input size, or None.

    Returns:
        ``image_png``; with a heat map also ``heatmap_png`` (jet colours at the image's size)
        and ``overlay_png`` (the two blended, for API clients that show one picture).
    """
    from medpredict.explain.maps import heat_colours, overlay

    grey = display[0] if display.shape[0] == 1 else np.moveaxis(display, 0, -1)
    out = {"image_png": _png_url(np.round(np.clip(grey, 0.0, 1.0) * 255.0).astype(np.uint8))}
    if heatmap is not None:
        out["heatmap_png"] = _png_url(heat_colours(heatmap, display.shape[-2:]))
        out["overlay_png"] = _png_url(overlay(display, heatmap))
    return out


def _png_url(array: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN as null, anything else as text."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _channels(predictor: Any) -> int:
    """Channels the predictor's images are read with (1 when it does not say, e.g. record models)."""
    try:
        channels = getattr(predictor, "channels", None)
    except (KeyError, ValueError):  # a record model's bundle has no image preprocessing
        channels = None
    if channels in (1, 3):
        return int(channels)
    shapes = getattr(predictor, "input_shapes", None)
    if shapes and shapes[0] and shapes[0][0] in (1, 3):
        return int(shapes[0][0])
    return 1


def warm_up(pipeline: Pipeline) -> float:
    """Run one prediction with an explanation (and FHIR where installed) on a synthetic input.

    The first prediction of a process pays for imports, the network's first pass and
    Grad-CAM's set-up; doing it before the server accepts requests makes the first real
    request as fast as the next. Returns the seconds it took.
    """
    from PIL import Image

    began = time.perf_counter()
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    picture = ((ramp[None, :] + ramp[:, None]) / 2).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    kind = pipeline.input_kind
    uploads = [Upload("warm-up.png", buffer.getvalue())] if kind in ("image", "fusion") else []
    record = None
    if kind in ("table", "fusion") and pipeline.cleaner is not None:
        import json

        record = json.dumps({column: None for column in pipeline.cleaner.columns_})
    try:
        pipeline.run(Inputs(uploads, record), explain=True, fhir=_fhir_installed(), batch=False, request_id="warm-up")
    except Exception as exc:  # noqa: BLE001 - a failed warm-up is reported; real requests say why in full
        logger.warning("Warm-up prediction failed (%s: %s); the first request will be slow.", type(exc).__name__, exc)
    return time.perf_counter() - began


def _fhir_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("fhir") is not None
